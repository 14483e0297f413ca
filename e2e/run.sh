#!/usr/bin/env bash
# End-to-end run with real clients (called by `make e2e`).
#
#   GATEWAY_CMD='.venv/bin/python -m gateway serve --config e2e/gateway.yaml --port $PORT --upstream-url $UPSTREAM' \
#     bash e2e/run.sh
#
# GATEWAY_CMD is run by bash with PORT (the gateway's port) and UPSTREAM (the upstream's
# Chat Completions base URL, http://127.0.0.1:P/v1) in its environment, so keep `$PORT` and
# `$UPSTREAM` literal in it (single quotes; `$$PORT` inside a Makefile).
# Phases:
#   1. Codex CLI (pinned, e2e/install_codex.sh) -> gateway -> e2e/scripted_upstream.py, plain and
#      --reasoning: wire_check.py (raw SSE judged by gateway.check), llama_sdk_check.py (openai SDK),
#      then codex_probe.sh (text + shell-tool round trip). Everything used here is in the repository.
#      In the plain phase codex_probe.sh runs again with the provider's `supports_websockets = true`
#      (codex-ws-*): the gateway's log must show those turns as `transport: websocket`; a Codex that
#      does not honour the key is reported (a `..` line), not failed.
#   2. llama-server (e2e/llama.sh, tiny random model) -> gateway: llama_sdk_check.py (openai SDK)
#      and one `codex exec` turn (gibberish model: judged on the wire, see codex_llama below).
# env: E2E_SKIP_LLAMA=1 skips phase 2; E2E_SCRIPTED (default "plain reasoning") picks phase 1's
#      runs; E2E_LOG_DIR (default e2e/logs/run-<time>).
# Prints PASS/FAIL per case and a closing "N passed, N failed"; exit 1 on any failure.
# Every process started here is killed on exit; every step has a timeout. Codex gets </dev/null
# (`codex exec` reads extra prompt input from a non-tty stdin and would wait on an open pipe).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
E2E=e2e
GATEWAY_CMD=${GATEWAY_CMD:-'.venv/bin/python -m gateway serve --config e2e/gateway.yaml --port $PORT --upstream-url $UPSTREAM'}
PYTHON=${E2E_PYTHON:-.venv/bin/python}
LOG=${E2E_LOG_DIR:-$ROOT/$E2E/logs/run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$LOG"
MODEL=e2e-model
export GATEWAY_API_KEY=${GATEWAY_API_KEY:-sk-e2e-client}
PASS=0; FAIL=0; FAILED_NAMES=()
PIDS=()

pass() { echo "PASS $1${2:+: $2}"; PASS=$((PASS + 1)); }
fail() { echo "FAIL $1${2:+: $2}"; FAIL=$((FAIL + 1)); FAILED_NAMES+=("$1"); }
note() { echo "  .. $*"; }

cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    # each service runs in its own session/process group (setsid): kill the group, then the pid
    kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  done
  sleep 0.5
  for p in "${PIDS[@]}"; do
    kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
  done
  PIDS=()
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

stop_pid() { # stop one service started by start_bg and forget it
  local p=$1 q keep=()
  kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -KILL -- "-$p" 2>/dev/null || true
  for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  PIDS=("${keep[@]}")
}

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start_bg() { # logfile cmd... ; sets BG_PID
  local logf=$1; shift
  setsid "$@" >"$logf" 2>&1 < /dev/null &
  BG_PID=$!
  PIDS+=("$BG_PID")
}

wait_http() { # url seconds pid -> 0 when anything answers HTTP
  local url=$1 secs=$2 pid=$3 i code
  for ((i = 0; i < secs * 4; i++)); do
    kill -0 "$pid" 2>/dev/null || return 2
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null)
    [ -n "$code" ] && [ "$code" != 000 ] && return 0
    sleep 0.25
  done
  return 1
}

GW_PID=; GW_URL=; GW_LOG=
start_gateway() { # upstream_base_url label
  local up=$1 label=$2 port rc
  port=$(free_port)
  GW_LOG="$LOG/gateway-$label.log"
  PORT=$port UPSTREAM=$up start_bg "$GW_LOG" bash -c "exec $GATEWAY_CMD"
  GW_PID=$BG_PID
  GW_URL="http://127.0.0.1:$port/v1"
  wait_http "http://127.0.0.1:$port/v1/models" 30 "$GW_PID"; rc=$?
  if [ $rc -ne 0 ]; then
    fail "gateway_start_$label" "gateway not answering on :$port (rc=$rc); log tail: $(tail -5 "$GW_LOG" | tr '\n' ' ' | cut -c1-600)"
    stop_pid "$GW_PID"
    return 1
  fi
  note "gateway for $label on $GW_URL (pid $GW_PID, log $GW_LOG)"
}

show_failure_context() { # dumpfile
  local dump=${1:-}
  note "gateway log tail ($GW_LOG):"
  tail -15 "$GW_LOG" 2>/dev/null | cut -c1-400 | sed 's/^/     /'
  if [ -n "$dump" ] && [ -s "$dump" ]; then
    note "upstream requests ($dump): verdicts"
    "$PYTHON" - "$dump" <<'EOF' | sed 's/^/     /'
import json, sys
for i, l in enumerate(open(sys.argv[1])):
    r = json.loads(l); b = r["body"] if isinstance(r["body"], dict) else {}
    msgs = b.get("messages") or []
    print(f"#{i} {r['verdict'][:300]} | roles={[m.get('role') for m in msgs]} tools={[(t.get('function') or {}).get('name') for t in b.get('tools') or []]}"[:700])
EOF
  fi
}

run_probe_output() { # label file: count PASS/FAIL lines of a probe's output
  local label=$1 f=$2 line rest name
  while IFS= read -r line; do
    case "$line" in
      PASS\ *|FAIL\ *)
        rest=${line#* }; name=${rest%%[ :]*}; rest=${rest#"$name"}; rest=${rest#:}; rest=${rest# }
        if [ "${line%% *}" = PASS ]; then pass "$label/$name" "$rest"; else fail "$label/$name" "$rest"; fi ;;
    esac
  done < "$f"
}

# ---------------------------------------------------------------- phase 0: Codex CLI
echo "== e2e logs in $LOG"
if CODEX_BIN=$(timeout 900 bash "$E2E/install_codex.sh" 2>"$LOG/install_codex.log" | tail -1) && [ -x "$CODEX_BIN" ]; then
  pass install_codex "$(timeout 30 "$CODEX_BIN" --version 2>/dev/null)"
else
  fail install_codex "$(tail -5 "$LOG/install_codex.log" | tr '\n' ' ')"
  CODEX_BIN=
fi

# ---------------------------------------------------------------- phase 1: scripted upstream
scripted_phase() { # label extra-args...
  local label=$1; shift
  local uport dump="$LOG/upstream-$label.jsonl" out rc reasoning_expect=()
  uport=$(free_port)
  start_bg "$LOG/upstream-$label.log" "$PYTHON" "$E2E/scripted_upstream.py" --port "$uport" --dump "$dump" "$@"
  local UP_PID=$BG_PID
  if ! wait_http "http://127.0.0.1:$uport/health" 20 "$UP_PID"; then
    fail "upstream_start_$label" "$(tail -5 "$LOG/upstream-$label.log" | tr '\n' ' ')"; stop_pid "$UP_PID"; return
  fi
  if ! start_gateway "http://127.0.0.1:$uport/v1" "$label"; then stop_pid "$UP_PID"; return; fi
  [ "$label" = reasoning ] && reasoning_expect=(--expect-reasoning "Let me think. The user wants me to act; I will do it.")

  # wire checks with the project's stream validator
  out=$(OPENAI_API_KEY=$GATEWAY_API_KEY timeout 60 "$PYTHON" "$E2E/wire_check.py" "$GW_URL/responses" --timeout 30 \
        --save "$LOG/$label-text.sse" --body '{"model":"'$MODEL'","input":"Reply with the single word: pong"}' \
        --expect-text pong --expect-status completed "${reasoning_expect[@]}" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then pass "$label/wire_text" "$(echo "$out" | tail -1)"; else fail "$label/wire_text" "$(echo "$out" | tail -6 | tr '\n' ' ' | cut -c1-900)"; fi
  out=$(OPENAI_API_KEY=$GATEWAY_API_KEY timeout 60 "$PYTHON" "$E2E/wire_check.py" "$GW_URL/responses" --timeout 30 \
        --save "$LOG/$label-tool.sse" --body '{"model":"'$MODEL'","input":"Run the shell command `echo probe-7319`.",
          "tools":[{"type":"function","name":"exec_command","parameters":{"type":"object","properties":{"cmd":{"type":"string"}},"required":["cmd"]}}]}' \
        --expect-tool 'exec_command={"cmd": "echo probe-7319"}' --expect-status completed "${reasoning_expect[@]}" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then pass "$label/wire_tool" "$(echo "$out" | tail -1)"; else fail "$label/wire_tool" "$(echo "$out" | tail -6 | tr '\n' ' ' | cut -c1-900)"; fi

  # openai SDK (stream helper, strict validation, tool_choice required, tool round trip)
  timeout 300 "$PYTHON" "$E2E/llama_sdk_check.py" "$GW_URL" --model "$MODEL" --save-dir "$LOG" --tag "$label" \
    >"$LOG/sdk-$label.out" 2>&1; rc=$?
  run_probe_output "sdk-$label" "$LOG/sdk-$label.out"
  grep -q ' passed, ' "$LOG/sdk-$label.out" || fail "sdk-$label" "did not finish (rc=$rc): $(tail -3 "$LOG/sdk-$label.out" | tr '\n' ' ' | cut -c1-600)"

  if [ -n "$CODEX_BIN" ]; then
    local before=$FAIL
    PROBE_TMP="$LOG" CODEX_BIN="$CODEX_BIN" timeout 700 bash "$E2E/codex_probe.sh" "$GW_URL" "$MODEL" GATEWAY_API_KEY \
      >"$LOG/codex-$label.out" 2>"$LOG/codex-$label.err" </dev/null; rc=$?
    run_probe_output "codex-$label" "$LOG/codex-$label.out"
    grep -q ' passed, ' "$LOG/codex-$label.out" || fail "codex-$label" "probe did not finish (rc=$rc): $(tail -3 "$LOG/codex-$label.err" | tr '\n' ' ')"
    note "$(grep '^logs in' "$LOG/codex-$label.out")"
    [ $FAIL -gt $before ] && show_failure_context "$dump"
    [ "$label" = plain ] && codex_ws_case "$label" "$dump"
  fi
  stop_pid "$GW_PID"; stop_pid "$UP_PID"
}

finished_lines() { # from-line transport [status]: response.finished lines of the gateway log after from-line
  tail -n +"$(($1 + 1))" "$GW_LOG" | grep '"response.finished"' | grep -E "\"transport\": ?\"$2\"" \
    | grep -cE "\"status\": ?${3:-}"
}

codex_ws_case() { # label dump: codex_probe.sh again, the provider with supports_websockets = true
  local label=$1 dump=$2 before=$FAIL from ws done http rc version wrapper
  wrapper=$(cd "$LOG" && pwd)/codex-ws
  from=$(wc -l < "$GW_LOG")
  version=$(timeout 30 "$CODEX_BIN" --version 2>/dev/null)
  # codex_probe.sh writes the provider block; Codex's `-c` override adds the key to it.
  printf '#!/usr/bin/env bash\nexec %q -c model_providers.gw.supports_websockets=true "$@"\n' "$CODEX_BIN" >"$wrapper"
  chmod +x "$wrapper"
  PROBE_TMP="$LOG" CODEX_BIN="$wrapper" timeout 700 bash "$E2E/codex_probe.sh" "$GW_URL" "$MODEL" GATEWAY_API_KEY \
    >"$LOG/codex-ws-$label.out" 2>"$LOG/codex-ws-$label.err" </dev/null; rc=$?
  sleep 0.5  # the gateway writes a turn's line as it ends
  ws=$(finished_lines "$from" websocket); http=$(finished_lines "$from" http)
  done=$(finished_lines "$from" websocket '"completed"')
  if [ "$ws" -eq 0 ] && { [ "$http" -gt 0 ] || grep -qs supports_websockets "$LOG"/codex_probe.*/*.err; }; then
    note "codex-ws-$label: $version does not honour supports_websockets ($http turns over HTTP, none over" \
         "the WebSocket): reported, not failed"
    return
  fi
  run_probe_output "codex-ws-$label" "$LOG/codex-ws-$label.out"
  grep -q ' passed, ' "$LOG/codex-ws-$label.out" || fail "codex-ws-$label" "probe did not finish (rc=$rc)"
  # Codex falls back to HTTP when a WebSocket turn fails: every turn must have come over the socket
  # and completed there (a refused message is a line with its error status).
  if [ "$done" -ge 2 ] && [ "$done" -eq "$ws" ] && [ "$http" -eq 0 ]; then
    pass "codex-ws-$label/transport" "$ws turns completed with transport websocket, none over HTTP ($version)"
  else
    fail "codex-ws-$label/transport" "$done of $ws WebSocket turns completed, $http over HTTP"
  fi
  note "$(grep '^logs in' "$LOG/codex-ws-$label.out")"
  [ $FAIL -gt $before ] && show_failure_context "$dump"
}

for run in ${E2E_SCRIPTED:-plain reasoning}; do
  case $run in
    plain) scripted_phase plain ;;
    reasoning) scripted_phase reasoning --reasoning ;;
    *) fail "e2e_scripted" "unknown E2E_SCRIPTED run $run (plain, reasoning)" ;;
  esac
done

# ---------------------------------------------------------------- phase 2: llama-server
# The tiny random-weight model comes from e2e/make_tiny_gguf.py (llama.sh model): nothing outside the repository.
if [ "${E2E_SKIP_LLAMA:-0}" = 1 ]; then
  note "E2E_SKIP_LLAMA=1: skipping llama-server phase"
else
  t0=$SECONDS
  if bash "$E2E/llama.sh" build >"$LOG/llama-build.log" 2>&1 && bash "$E2E/llama.sh" model >>"$LOG/llama-build.log" 2>&1; then
    pass llama_build "$((SECONDS - t0))s"
    lport=$(free_port)
    # llama.sh start backgrounds the server itself; run it in its own session so cleanup can kill the group
    LLAMA_PID=$(setsid bash "$E2E/llama.sh" start "$lport" "$LOG/llama-server.log" 2>>"$LOG/llama-build.log" | tail -1)
    if [ -n "$LLAMA_PID" ] && kill -0 "$LLAMA_PID" 2>/dev/null; then
      PIDS+=("$LLAMA_PID")
      if out=$(timeout 400 bash "$E2E/llama.sh" verify "$lport" "$LOG" 2>&1); then pass llama_direct "$(echo "$out" | tr '\n' ' ' | cut -c1-300)"
      else fail llama_direct "$(echo "$out" | tr '\n' ' ' | cut -c1-900)"; fi
      if start_gateway "http://127.0.0.1:$lport/v1" llama; then
        timeout 900 "$PYTHON" "$E2E/llama_sdk_check.py" "$GW_URL" --model tiny --save-dir "$LOG" >"$LOG/llama-sdk.out" 2>&1; rc=$?
        before=$FAIL
        run_probe_output llama-sdk "$LOG/llama-sdk.out"
        grep -q ' passed, ' "$LOG/llama-sdk.out" || fail llama-sdk "did not finish (rc=$rc): $(tail -5 "$LOG/llama-sdk.out" | tr '\n' ' ' | cut -c1-600)"
        [ $FAIL -gt $before ] && show_failure_context

        # One Codex turn on the gibberish model. Codex always offers tools and the tiny model may call
        # them, so the agent may loop on gibberish tool calls: PASS when codex exits 0, or when it is
        # still running at the timeout having had >= 2 successful upstream round trips and no ERROR.
        if [ -n "$CODEX_BIN" ]; then
          CW=$(mktemp -d "$LOG/codex_llama.XXXXXX"); mkdir -p "$CW/home" "$CW/ws"
          cat >"$CW/home/config.toml" <<EOF
model = "tiny"
model_provider = "gw"

[model_providers.gw]
name = "gateway under test"
base_url = "$GW_URL"
env_key = "GATEWAY_API_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 120000
EOF
          # llama-server logs one "stop processing" line per finished generation (no per-request HTTP lines)
          n0=$(grep -c 'stop processing' "$LOG/llama-server.log" 2>/dev/null)
          (cd "$CW/ws" && CODEX_HOME="$CW/home" timeout "${E2E_CODEX_LLAMA_TIMEOUT:-180}" "$CODEX_BIN" exec --skip-git-repo-check \
             --ephemeral --strict-config --sandbox workspace-write -o "$CW/last.txt" 'Reply with the single word: pong' \
             >"$CW/out.txt" 2>"$CW/err.txt" </dev/null); rc=$?
          n1=$(grep -c 'stop processing' "$LOG/llama-server.log" 2>/dev/null)
          ok200=$((n1 - n0))
          errs=$(grep -E '^ERROR|error:' "$CW/err.txt" | grep -v bubblewrap | tail -2 | tr '\n' ' ' | cut -c1-400)
          detail="rc=$rc upstream_generations=$ok200 last=$(head -c 60 "$CW/last.txt" 2>/dev/null | tr '\n' ' ')"
          if [ -z "$errs" ] && { [ $rc -eq 0 ] || { [ $rc -eq 124 ] && [ "$ok200" -ge 2 ]; }; }; then
            pass codex_llama "$detail"
          else
            fail codex_llama "$detail errors: $errs (logs $CW)"; show_failure_context
          fi
        fi
        stop_pid "$GW_PID"
      fi
    else
      fail llama_start "$(tail -5 "$LOG/llama-build.log" | tr '\n' ' ' | cut -c1-600)"
    fi
  else
    fail llama_build "after $((SECONDS - t0))s: $(tail -5 "$LOG/llama-build.log" | tr '\n' ' ' | cut -c1-600)"
  fi
fi

cleanup
echo "== logs in $LOG"
[ $FAIL -gt 0 ] && echo "failed: ${FAILED_NAMES[*]}"
echo "$PASS passed, $FAIL failed"
[ $FAIL -eq 0 ]
