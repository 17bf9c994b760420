#!/usr/bin/env bash
# Prepare the `container` engine on this machine: Docker + gVisor (runsc) + debootstrap, runsc
# registered with dockerd, dockerd running with experimental features (its checkpoint API, which
# gVisor snapshots of sessions use), and the sandbox image built offline (no registry).
# Idempotent, and fast when everything is already in place. Run as root (CI does).
#
# Environment:
#   SANDGATE_PYTHON  a Python with the project's dependencies (default: .venv/bin/python, else
#                    /tmp/venv/bin/python, else a small tool venv made under the cache folder)
#   SANDGATE_IMAGE   image tag to build (default: sandgate-python:latest)
#   SANDGATE_CACHE   cache folder for the debootstrap root filesystem (default: ~/.cache/sandgate)
#   DOCKERD_LOG      where a dockerd started here logs (default: /var/log/sandgate-dockerd.log)
#   DOCKER_WAIT_S    how long to wait for dockerd to answer (default: 60)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

IMAGE="${SANDGATE_IMAGE:-sandgate-python:latest}"
CACHE="${SANDGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sandgate}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/sandgate-dockerd.log}"
DOCKER_WAIT_S="${DOCKER_WAIT_S:-60}"
DAEMON_JSON=/etc/docker/daemon.json
PACKAGES=(docker.io runsc debootstrap)

say() { echo "==> docker-setup: $*"; }

if [ "$(id -u)" != 0 ]; then
  echo "docker-setup: run as root (it installs packages and starts dockerd): sudo bash $0" >&2
  exit 1
fi

# 1. System packages.
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
RUNSC="$(command -v runsc || echo /usr/bin/runsc)"

# 2. Register runsc with dockerd and turn on its experimental features (the checkpoint API;
#    `experimental` is not reloaded by SIGHUP), merged into an existing daemon.json.
mkdir -p /etc/docker
changed="$(python3 - "$DAEMON_JSON" "$RUNSC" <<'EOF'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
config = {}
if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path) as f:
        config = json.load(f)
# --host-uds=open: the sandbox may connect to (never create) a host Unix socket that one of its
# own mounts shows it; the container engine lends an egress run the proxy's socket that way.
wanted = {
    "path": runsc,
    "runtimeArgs": ["--platform=ptrace", "--network=none", "--host-uds=open"],
}
runtimes = config.setdefault("runtimes", {})
if runtimes.get("runsc") == wanted and config.get("experimental") is True:
    print("no")
else:
    runtimes["runsc"] = wanted
    config["experimental"] = True
    with open(path + ".tmp", "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print("yes")
EOF
)"
[ "$changed" = yes ] && say "registered runsc and experimental features in $DAEMON_JSON"

# 3. dockerd running (started in the background here when it is not), answering `docker info`.
#    The daemon is found by its pid file, never by process name.
DOCKERD_PIDFILE=/var/run/docker.pid
dockerd_pid() {
  local pid
  pid="$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}
pid="$(dockerd_pid)"
if [ -n "$pid" ] && [ "$(docker version --format '{{.Server.Experimental}}' 2>/dev/null)" = false ]; then
  say "stopping dockerd (pid $pid): it runs without experimental features, which need a restart"
  kill -TERM "$pid"
  for _ in $(seq 1 $(( DOCKER_WAIT_S * 2 ))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  pid="$(dockerd_pid)"
fi
if [ -n "$pid" ]; then
  if [ "$changed" = yes ]; then
    say "reloading dockerd (SIGHUP to pid $pid) for the new runtime"
    kill -HUP "$pid"
  fi
else
  say "starting dockerd (log: $DOCKERD_LOG)"
  mkdir -p "$(dirname "$DOCKERD_LOG")"
  setsid nohup dockerd --pidfile "$DOCKERD_PIDFILE" >>"$DOCKERD_LOG" 2>&1 </dev/null &
fi
deadline=$(( $(date +%s) + DOCKER_WAIT_S ))
until docker info >/dev/null 2>&1; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "docker-setup: dockerd did not answer within ${DOCKER_WAIT_S} s; last lines of $DOCKERD_LOG:" >&2
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    exit 1
  fi
  sleep 0.5
done
deadline=$(( $(date +%s) + DOCKER_WAIT_S ))
until docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "docker-setup: dockerd does not list the runsc runtime; check $DAEMON_JSON" >&2
    exit 1
  fi
  sleep 0.5
done
say "dockerd is up with runtimes: $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}')"

# 4. The sandbox image, built offline when missing or older than the server script.
pick_python() {
  local candidate
  for candidate in "${SANDGATE_PYTHON:-}" "$repo/.venv/bin/python" /tmp/venv/bin/python; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c 'import docker' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  local tools="$CACHE/setup-venv"
  if ! "$tools/bin/python" -c 'import docker' 2>/dev/null; then
    say "making a small venv with the docker SDK in $tools" >&2
    python3 -m venv "$tools" >&2
    "$tools/bin/python" -m pip install -q 'docker>=7,<8' >&2
  fi
  echo "$tools/bin/python"
}
PY="$(pick_python)"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" SANDGATE_CACHE="$CACHE" \
  "$PY" -m sandboxes.container build-image --tag "$IMAGE" --if-missing
say "ready (image $IMAGE; runtimes runc and runsc)"
