# capillary-aep: one image for the connector (`run`, the default), `check`, the webhook ingress
# (`ingest`), the AEP/IMS emulator (`emulator`) and the sample producer (`produce-samples`).
ARG PYTHON_VERSION=3.12

# Any CPU: `docker buildx build --platform linux/amd64,linux/arm64 .` Every dependency comes as a
# binary wheel (--only-binary), so the slim build stage needs no compiler; cavro, which has wheels
# only for x86-64, is left out elsewhere by its marker in pyproject.toml (fastavro reads instead).

# -- build: the project wheel and the wheels of its dependencies, installed into a venv ---------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md* : optional (pyproject names it; the glob keeps the build working without it).
COPY pyproject.toml README.md* ./
COPY connector ./connector
# The compose stack runs the emulator and the sample producer from this image: the `emulator` extra
# (jsonschema). `--build-arg EXTRAS=` builds the runtime alone (connector, ingress, check, provision).
ARG EXTRAS=emulator
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && whl=$(ls /wheels/capillary_aep_connector-*.whl) \
 && pip wheel --only-binary=:all: --wheel-dir /wheels "${whl}${EXTRAS:+[$EXTRAS]}" \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links=/wheels "capillary-aep-connector${EXTRAS:+[$EXTRAS]}"

# -- runtime: slim, non-root, only the venv (no compiler, no wheels, no sources) -----------------------
FROM python:${PYTHON_VERSION}-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH \
    CAPILLARY_AEP_CONFIG=/etc/capillary-aep/connector.toml
COPY --from=build /opt/venv /opt/venv
# The Avro schemas are not inside the package: avro_schemas.DEFAULT_DIR is `schemas/` next to it.
COPY schemas /opt/capillary-aep/schemas
RUN ln -s /opt/capillary-aep/schemas \
      "$(python -c 'import connector.avro_schemas as m; print(m.DEFAULT_DIR)')" \
 && capillary-aep --version \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin capillary
WORKDIR /opt/capillary-aep
USER 10001:10001
# Metrics, /healthz and /readyz (metrics.listen must be 0.0.0.0:9400 in the config, as in
# deploy/connector.compose.toml). Health checks are declared per service in docker-compose.yml.
EXPOSE 9400
ENTRYPOINT ["capillary-aep"]
CMD ["run"]
