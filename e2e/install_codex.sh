#!/usr/bin/env bash
# Install the pinned Codex CLI into e2e/node_modules (local npm prefix). Idempotent.
# usage: e2e/install_codex.sh   -> prints the codex binary path on the last line
set -euo pipefail
CODEX_VERSION=${CODEX_VERSION:-0.169.0}
E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN="$E2E_DIR/node_modules/.bin/codex"
PKG_JSON="$E2E_DIR/node_modules/@openai/codex/package.json"

installed_version() {
  [ -f "$PKG_JSON" ] || return 0
  node -e 'process.stdout.write(require(process.argv[1]).version)' "$PKG_JSON" 2>/dev/null || true
}

if [ "$(installed_version)" = "$CODEX_VERSION" ] && [ -x "$BIN" ] && timeout 60 "$BIN" --version >/dev/null 2>&1; then
  echo "codex $CODEX_VERSION already installed" >&2
else
  command -v npm >/dev/null || { echo "npm not found" >&2; exit 1; }
  echo "installing @openai/codex@$CODEX_VERSION into $E2E_DIR/node_modules" >&2
  # --no-save/--no-package-lock: keep the prefix self-contained, no package.json churn.
  timeout 600 npm install --prefix "$E2E_DIR" --no-save --no-package-lock --no-audit --no-fund \
    "@openai/codex@$CODEX_VERSION" >&2
  timeout 60 "$BIN" --version >&2
fi
echo "$BIN"
