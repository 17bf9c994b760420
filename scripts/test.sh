#!/usr/bin/env bash
# Run the whole sandgate test suite on a fresh machine: system packages (when root), a venv with
# the project and its test dependencies, the one-time WASM compile, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${SANDGATE_VENV:-.venv}"
SYSTEM_PACKAGES=(redis-server docker.io docker-compose runsc debootstrap chromium chromium-driver)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  python3 -m venv "$VENV"
fi
echo "==> installing sandgate and its test dependencies"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'

echo "==> preparing the wasm engine (the first time compiles CPython-WASI, ~90 s)"
"$VENV/bin/sandgate" setup wasm

echo "==> preparing the egress proxy (mitmproxy in a venv of its own: ~/.cache/sandgate/egress-venv)"
"$VENV/bin/sandgate" setup egress

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "==> preparing the container engine (dockerd + gVisor, sandbox image built offline)"
  SANDGATE_PYTHON="$VENV/bin/python" bash scripts/docker-setup.sh
else
  echo "==> not root: the container engine is not prepared (its tests skip outside CI)"
fi

if command -v npm >/dev/null; then
  echo "==> installing the MCP TypeScript SDK client of the end-to-end suite (tests/e2e_ts)"
  (cd tests/e2e_ts && npm ci --silent --no-audit --no-fund)
else
  echo "==> npm not found: tests/e2e_ts skips outside CI"
fi

echo "==> running the tests"
exec "$VENV/bin/python" -m pytest "$@"
