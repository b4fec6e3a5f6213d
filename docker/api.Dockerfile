# producer_api: the upload API (FastAPI on uvicorn), port 8000. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t image-classifier-api .
# Installs the project with its `api` extra only: no TensorFlow, no model.

ARG PYTHON_IMAGE=python:3.11-slim

# Stage 1: wheels for the project and its `api` extra; only this stage needs network and build tooling.
FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
# The pinned dependencies first, hash-checked: requirements/api.lock (`make lock`), the versions of the tested
# dev.lock. This layer is rebuilt only when the lock changes.
COPY requirements/api.lock requirements/
# A registry reached through a TLS proxy needs its CA: given as the build secret `ca` (docker_local passes the
# host's bundle), never copied into a layer. pip runs from a venv of its own, as Debian's python3 wants.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements/api.lock
# Then the project itself, with --no-deps: everything it needs is in /wheels already.
COPY pyproject.toml README.md ./
COPY pipeline_core/ pipeline_core/
COPY producer_api/ producer_api/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ".[api]"

# Stage 2: the runtime, installed from those wheels offline (so exactly the locked versions); the wheels are
# mounted, never copied into a layer.
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    API_HOST=0.0.0.0 \
    API_PORT=8000
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels "kafka-image-classifier[api]"

USER 10001:10001
WORKDIR /home/app
EXPOSE 8000
# slim has no curl: ask /healthz with the standard library (urlopen raises, so exit 1, on any non-2xx answer).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:' + os.environ.get('API_PORT', '8000') + '/readyz', timeout=2)"]
# Exec form: python is PID 1 and receives SIGTERM itself (uvicorn handles it: stop accepting, drain, lifespan shutdown).
CMD ["python", "-m", "producer_api"]
