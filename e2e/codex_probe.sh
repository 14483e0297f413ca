#!/usr/bin/env bash
# Codex CLI (`codex exec`) against a Responses endpoint: a text turn and a shell-tool round trip.
#   CODEX_BIN=… GATEWAY_API_KEY=x bash e2e/codex_probe.sh BASE_URL MODEL [KEY_ENV_VAR]
# The tool case needs an upstream that calls the offered tool and then quotes its output (the
# scripted upstream does). Prints PASS/FAIL per case and "N passed, N failed"; exit 1 on a failure.
set -u
base_url=${1:?BASE_URL}; model=${2:?MODEL}; key_var=${3:-GATEWAY_API_KEY}
export "$key_var"="${!key_var:-sk-e2e-client}"
codex=${CODEX_BIN:-codex}
work=$(mktemp -d "${PROBE_TMP:-/tmp}/codex_probe.XXXXXX")
export CODEX_HOME=$work/home
mkdir -p "$CODEX_HOME" "$work/ws"
cat >"$CODEX_HOME/config.toml" <<TOML
model = "$model"
model_provider = "gw"

[model_providers.gw]
name = "gateway under test"
base_url = "$base_url"
env_key = "$key_var"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 60000
TOML
passed=0; failed=0
probe() { # name, regex the last message must match, prompt
  local name=$1 want=$2 prompt=$3 rc
  (cd "$work/ws" && timeout 300 "$codex" exec --skip-git-repo-check --ephemeral --strict-config \
     --sandbox workspace-write -o "$work/$name.last" "$prompt" >"$work/$name.out" 2>"$work/$name.err" </dev/null)
  rc=$?
  if [ $rc -eq 0 ] && grep -qE "$want" "$work/$name.last" 2>/dev/null; then
    echo "PASS $name: $(tr '\n' ' ' <"$work/$name.last" | cut -c1-100)"; passed=$((passed + 1))
  else
    echo "FAIL $name (rc=$rc): $(grep -iE 'error' "$work/$name.err" | grep -v bubblewrap | tail -2 | tr '\n' ' ' | cut -c1-300)"
    failed=$((failed + 1))
  fi
}
"$codex" --version
probe text '.+' 'Reply with the single word: pong'
probe tool 'probe-7319' 'Run the shell command `echo probe-7319` and reply with exactly what it printed.'
echo "logs in $work"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
