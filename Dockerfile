# ojs-runtime: ojs-run (supervisor, pool processes, the OJS HTTP endpoint) against an external
# Redis (REDIS_URL). No Redis inside: compose.yaml runs one beside it.
#
#   docker build -t ojs-runtime .
#   docker run --rm -e REDIS_URL=redis://redis:6379/0 -e OJS_API_KEY=... -p 8080:8080 ojs-runtime
#
# An application builds its own image on top, with its handlers module (README "Containers").

ARG PYTHON_VERSION=3.12

# --- build: the project as a wheel, and the wheels of everything it needs -----------------------
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY handlers_example ./handlers_example
# The otel extra (the OpenTelemetry SDK and its OTLP exporter): traces go to a collector once
# OTEL_EXPORTER_OTLP_ENDPOINT is set, and cost nothing until then.
ARG OJS_EXTRAS=otel
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[${OJS_EXTRAS}]"

# --- runtime: a slim Python with the wheels installed, run as a non-root user -------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ARG OJS_EXTRAS=otel
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OJS_HTTP=0.0.0.0:8080 \
    OJS_LOG_FORMAT=json \
    PROMETHEUS_MULTIPROC_DIR=/run/ojs/metrics
RUN groupadd --system --gid 10001 ojs \
    && useradd --system --uid 10001 --gid ojs --home-dir /app --shell /usr/sbin/nologin ojs \
    && mkdir -p /app /run/ojs/metrics \
    && chown -R ojs:ojs /app /run/ojs
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "ojs-runtime[${OJS_EXTRAS}]" \
    && rm -rf /wheels
WORKDIR /app
USER 10001:10001
EXPOSE 8080
# /health is an open path (no API key): 200 while the process serves, 503 when Redis does not
# answer. The slim image has no curl; Python reads the port from OJS_HTTP.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=6 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('OJS_HTTP', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4)"]
# Exec form: ojs-run is PID 1 and gets SIGTERM itself (it drains the pools, then exits).
ENTRYPOINT ["ojs-run"]
CMD ["handlers_example"]
