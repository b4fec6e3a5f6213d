# results_sink: stores predictions, serves results and their live SSE stream (FastAPI on uvicorn), port 8001.
# Build from the repository root:
#   docker build -f docker/sink.Dockerfile -t image-classifier-sink .
# Installs the `sink` and `postgres` extras only (SQLite by default, PostgreSQL with RESULTS_STORE_URL=postgresql://...):
# no TensorFlow, no model.

ARG PYTHON_IMAGE=python:3.11-slim

# Stage 1: wheels for the project and its `sink` and `postgres` extras.
FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
# The pinned dependencies first, hash-checked: requirements/sink.lock (`make lock`), the versions of the tested
# dev.lock. This layer is rebuilt only when the lock changes.
COPY requirements/sink.lock requirements/
# A registry reached through a TLS proxy needs its CA: given as the build secret `ca` (docker_local passes the
# host's bundle), never copied into a layer. pip runs from a venv of its own, as Debian's python3 wants.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements/sink.lock
# Then the project itself, with --no-deps: everything it needs is in /wheels already.
COPY pyproject.toml README.md ./
COPY pipeline_core/ pipeline_core/
COPY results_sink/ results_sink/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ".[sink,postgres]"

# Stage 2: the runtime, installed from those wheels offline (so exactly the locked versions); the wheels are
# mounted, never copied into a layer.
FROM ${PYTHON_IMAGE} AS runtime
# Four slashes: an absolute path, /var/lib/results-sink/results.db, where compose mounts a named volume.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    SINK_HOST=0.0.0.0 \
    SINK_PORT=8001 \
    RESULTS_STORE_URL=sqlite:////var/lib/results-sink/results.db
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0750 /var/lib/results-sink
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels "kafka-image-classifier[sink,postgres]"

USER 10001:10001
WORKDIR /home/app
EXPOSE 8001
# slim has no curl: ask /healthz with the standard library (urlopen raises, so exit 1, on any non-2xx answer).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:' + os.environ.get('SINK_PORT', '8001') + '/readyz', timeout=2)"]
# Exec form: python is PID 1 and receives SIGTERM itself (uvicorn handles it: close SSE streams, drain, shut down).
CMD ["python", "-m", "results_sink"]
