# capillary-aep: one image for the connector (`run`, the default), `check`, `provision`, the webhook
# ingress (`ingest`) and dead-letter replay. Two targets:
#   runtime (the default, last stage): the runtime and the `aws` extra (MSK IAM), no emulator;
#   dev:     + the `emulator` extra, for the compose stack's emulator and sample producer.
#   docker build -t capillary-aep-connector .              # runtime
#   docker build --target dev -t capillary-aep-connector:dev .
ARG PYTHON_VERSION=3.12

# Any CPU: `docker buildx build --platform linux/amd64,linux/arm64 .` Every dependency comes from the
# lock file (requirements/*.txt: pinned, each file checked against its hash) as a binary wheel, so the
# slim build stage needs no compiler; cavro, which has wheels only for x86-64, is left out elsewhere
# by its marker (fastavro reads instead).

# -- build: the locked dependencies and the project wheel, installed into a venv ---------------------
FROM python:${PYTHON_VERSION}-slim AS build-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md* : optional (pyproject names it; the glob keeps the build working without it).
COPY pyproject.toml README.md* ./
COPY requirements ./requirements
COPY connector ./connector
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM build-base AS build-runtime
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r requirements/runtime.txt \
 && /opt/venv/bin/pip install --no-deps /wheels/capillary_aep_connector-*.whl

FROM build-base AS build-dev
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r requirements/image-dev.txt \
 && /opt/venv/bin/pip install --no-deps /wheels/capillary_aep_connector-*.whl

# -- what both images share: slim, non-root, no compiler, no wheels, no sources -----------------------
FROM python:${PYTHON_VERSION}-slim AS base
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="capillary-aep-connector" \
      org.opencontainers.image.description="Streams Capillary loyalty events from Kafka into Adobe Experience Platform, at least once." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# CAPILLARY_AEP_METRICS_DEFAULT: metrics.listen's default in a container is every interface, so
# the EXPOSEd port answers (a config file's metrics.listen still wins).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    CAPILLARY_AEP_CONFIG=/etc/capillary-aep/connector.toml CAPILLARY_AEP_METRICS_DEFAULT=0.0.0.0:9400
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin capillary
WORKDIR /opt/capillary-aep
# Metrics, /healthz and /readyz. Health checks are declared per service in docker-compose.yml.
EXPOSE 9400
ENTRYPOINT ["capillary-aep"]
CMD ["run"]

FROM base AS dev
COPY --from=build-dev /opt/venv /opt/venv
RUN capillary-aep --version
USER 10001:10001

FROM base AS runtime
COPY --from=build-runtime /opt/venv /opt/venv
RUN capillary-aep --version \
 && ! python -c 'import jsonschema' 2>/dev/null
USER 10001:10001
