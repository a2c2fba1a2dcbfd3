#!/usr/bin/env bash
# Builds the chat page and the binaries, then drives the page in Debian's Chromium against
# the real gateway and the mock upstream (tests/browser). Exits non-zero on any failure.
#   scripts/browser-tests.sh              all browser tests
#   scripts/browser-tests.sh --screenshots  also refresh docs/screenshots/
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [[ ! -x "$CHROMIUM" ]]; then
  echo "error: $CHROMIUM not found. The browser tests use Debian's Chromium (no browser download):" >&2
  echo "       apt-get update && apt-get install -y chromium" >&2
  exit 1
fi
for tool in node npm cargo; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done

echo "==> building the chat page (web/)"
if [[ ! -d web/node_modules ]]; then npm ci --prefix web --no-audit --no-fund; fi
npm run build --prefix web

echo "==> installing the browser test dependencies (tests/browser/)"
npm ci --prefix tests/browser --no-audit --no-fund

echo "==> building chatgate and mockllm"
cargo build --bins --workspace

if [[ "${1:-}" == "--screenshots" ]]; then
  echo "==> refreshing docs/screenshots/"
  npm run screenshots --prefix tests/browser
fi

echo "==> running the browser tests"
npm test --prefix tests/browser
