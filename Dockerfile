# syntax=docker/dockerfile:1
# The exporter's container image. At the repository root:
#   docker build -t letta-environments-exporter:0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
# Both stages use python:3.11.14-slim-bookworm, pinned by tag and by the digest of its
# multi-architecture index, so a re-pushed tag cannot change the build. Where Docker Hub cannot
# be reached, --build-arg PYTHON_IMAGE=... names another base with `python` and `pip` on PATH
# (the test suite builds one from Debian's packages).
ARG PYTHON_IMAGE=docker.io/library/python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY exporter/ exporter/
COPY letta_simulator/ letta_simulator/
# The project and every dependency as wheels: the runtime stage installs offline from them.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="letta-environments-exporter" \
      org.opencontainers.image.description="Prometheus exporter for fleets of Letta Code environments" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin exporter \
    && pip install --no-cache-dir --no-index --find-links=/wheels /wheels/letta_environments_exporter-*.whl
USER 10001:10001
EXPOSE 8377
# It asks /-/healthy where the exporter was told to listen (--web.listen-address, TLS and
# basic auth from --web.config.file), read from the exporter's own command line in /proc.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "exporter.healthcheck"]
ENTRYPOINT ["letta-environments-exporter"]
