# The sandgate server image: installs sandgate, compiles CPython-WASI once at build time, and
# runs `sandgate serve` (stdio by default; pass `--transport streamable-http --host 0.0.0.0`).
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 sandgate
WORKDIR /opt/sandgate
COPY pyproject.toml README.md ./
COPY runner ./runner
COPY sandboxes ./sandboxes
COPY policies ./policies
RUN pip install --no-cache-dir .

USER sandgate
ENV SANDGATE_HOME=/home/sandgate/state
# The first compile of the CPython-WASI module (~90 s) happens here, not at the first call.
RUN sandgate setup wasm

ENTRYPOINT ["sandgate", "serve"]
