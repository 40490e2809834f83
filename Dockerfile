# syntax=docker/dockerfile:1
# The tailwatch agent image (`make image`). Two stages: `build` installs every package from the
# hash-locked files in requirements/ as prebuilt wheels and builds tailwatch's own wheel; the
# final stage only copies that virtual environment onto a fresh slim Python: no compiler, no
# package installation, UID 65534, nothing written at run time (read-only root filesystem).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first, so this layer is rebuilt only when a lock file changes.
COPY requirements/image.txt requirements/build.txt requirements/
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: \
      -r requirements/build.txt \
 && python -m venv --without-pip /opt/tailwatch \
 && pip --python /opt/tailwatch/bin/python install --require-hashes --no-deps \
      --only-binary=:all: -r requirements/image.txt
COPY pyproject.toml README.md ./
COPY exporter exporter
# Bytecode is compiled here, valid regardless of file times, so the read-only root filesystem
# never needs a __pycache__ write.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && pip --python /opt/tailwatch/bin/python install --no-deps --no-index /tmp/wheels/tailwatch-*.whl \
 && python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /opt/tailwatch/lib

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG CREATED=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="tailwatch" \
      org.opencontainers.image.description="Kubernetes node agent that ties tail latency to pod lifecycle events" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
COPY --from=build /opt/tailwatch /opt/tailwatch
# TAILWATCH_REVISION: the commit on tailwatch_build_info{revision}.
ENV PATH=/opt/tailwatch/bin:$PATH \
    TAILWATCH_REVISION=${REVISION} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# nobody:nogroup, as docs/design.md (*Security posture*) and the chart's securityContext
# expect.
USER 65534:65534
# /metrics, health and the JSON API; the OTLP/HTTP receiver.
EXPOSE 9808 4318
# The agent. Arguments are its flags (the Helm chart passes them as the container's args);
# run another command with --entrypoint, e.g. `--entrypoint tailwatch IMAGE demo`.
ENTRYPOINT ["tailwatch", "run"]
