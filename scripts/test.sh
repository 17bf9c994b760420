#!/usr/bin/env bash
# Run the whole sandgate test suite on a fresh machine: system packages (when root), a venv with
# the project and its test dependencies, the one-time WASM compile, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${SANDGATE_VENV:-.venv}"
SYSTEM_PACKAGES=(redis-server docker.io docker-compose runsc debootstrap chromium chromium-driver)

# Preparations that do not depend on each other run at the same time (the wasm compile is
# CPU-bound, the others mostly wait on downloads), each logging to its own file; a failed one
# prints its log and stops the run.
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/sandgate-setup.XXXXXX")"
declare -A STEPS=()
step() {  # step NAME DESCRIPTION COMMAND...: start COMMAND in the background
  local name="$1" what="$2"
  shift 2
  echo "==> started: $what (log: $LOGS/$name.log)"
  ( began=$(date +%s)
    if "$@" >"$LOGS/$name.log" 2>&1; then status=0; else status=$?; fi
    echo "$status $(( $(date +%s) - began ))" >"$LOGS/$name.done"
    exit "$status" ) &
  STEPS[$name]="$!"
}
finish() {  # finish NAME...: wait for the steps; stop on the first that failed
  local name status seconds failed=0
  for name in "$@"; do
    [ -n "${STEPS[$name]:-}" ] || continue  # finished already
    wait "${STEPS[$name]}" || true
    unset "STEPS[$name]"
    read -r status seconds <"$LOGS/$name.done" || status=1
    if [ "$status" = 0 ]; then
      echo "==> done: $name (${seconds} s)"
    else
      echo "==> FAILED: $name (exit $status); its log:" >&2
      cat "$LOGS/$name.log" >&2
      failed=1
    fi
  done
  [ "$failed" = 0 ] || { echo "test.sh: a preparation failed (its log is above); fix it and run again" >&2; exit 1; }
}

install_system_packages() {
  local missing=() pkg
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

ROOT_WITH_APT=no
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  ROOT_WITH_APT=yes  # the system packages install while pip fills the venv
  step apt "installing the system packages (${SYSTEM_PACKAGES[*]}) when missing" \
    install_system_packages
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  python3 -m venv "$VENV"
fi
echo "==> installing sandgate and its test dependencies"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[dev]'
[ "$ROOT_WITH_APT" = no ] || finish apt

step wasm "preparing the wasm engine (the first time compiles CPython-WASI, ~90 s)" \
  "$VENV/bin/sandgate" setup wasm
step egress "preparing the egress proxy (mitmproxy in a venv of its own: ~/.cache/sandgate/egress-venv)" \
  "$VENV/bin/sandgate" setup egress
if [ "$ROOT_WITH_APT" = yes ]; then
  step container "preparing the container engine (dockerd + gVisor, sandbox image built offline)" \
    env SANDGATE_PYTHON="$VENV/bin/python" bash scripts/docker-setup.sh
else
  echo "==> not root: the container engine is not prepared (its tests skip outside CI)"
fi
if command -v npm >/dev/null; then
  step npm "installing the MCP TypeScript SDK client of the end-to-end suite (tests/e2e_ts)" \
    bash -c 'cd tests/e2e_ts && npm ci --silent --no-audit --no-fund'
else
  echo "==> npm not found: tests/e2e_ts skips outside CI"
fi
if [ "$ROOT_WITH_APT" = yes ]; then
  # The server image (tests/image) builds on the sandbox image's root filesystem and is seeded
  # with the compiled module: it starts once both are ready, while the other steps go on.
  finish wasm container
  step server-image "building the server image (tests/image; seeded with the compiled module)" \
    env SANDGATE_PYTHON="$VENV/bin/python" bash scripts/server-image.sh
fi
finish "${!STEPS[@]}"

echo "==> running the tests"
exec "$VENV/bin/python" -m pytest "$@"
