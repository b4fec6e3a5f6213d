# inference_consumer: one member of the `inference` consumer group, EfficientNet-Lite0 on LiteRT. No port by default
# (METRICS_PORT turns on Prometheus metrics). Build from the repository root:
#   docker build -f docker/inference.Dockerfile -t image-classifier-inference .
# The model is converted to .tflite at build time, so a container starts in seconds and never runs TensorFlow.

ARG PYTHON_IMAGE=python:3.11-slim

# Stage 1: wheels for the project and its `inference` extra.
FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
# The pinned dependencies first, hash-checked: requirements/inference.lock (`make lock`), the versions of the tested
# dev.lock. This layer is rebuilt only when the lock changes.
COPY requirements/inference.lock requirements/
# A registry reached through a TLS proxy needs its CA: given as the build secret `ca` (docker_local passes the
# host's bundle), never copied into a layer. pip runs from a venv of its own, as Debian's python3 wants.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels -r requirements/inference.lock
# Then the project itself, with --no-deps: everything it needs is in /wheels already.
COPY pyproject.toml README.md ./
COPY pipeline_core/ pipeline_core/
COPY inference_consumer/ inference_consumer/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ".[inference]"

# Stage 2: the runtime, installed from those wheels offline (so exactly the locked versions); the wheels are
# mounted, never copied into a layer.
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    MODEL_CACHE_DIR=/opt/model-cache \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9100
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0755 /opt/model-cache
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels "kafka-image-classifier[inference]"

USER 10001:10001
WORKDIR /home/app
# Prepare the model now: convert the shipped EfficientNet-Lite0 weights to .tflite (TensorFlow, in a child process)
# and load it once on LiteRT, so a broken model fails the build rather than the first container. The cache is keyed
# by the weights' sha256, which the consumer recomputes at start and finds here. Keras' and TF's caches go away.
RUN python -c "from inference_consumer.model import load_classifier; from pathlib import Path; load_classifier(cache_dir=Path('/opt/model-cache'))" \
    && rm -rf /home/app/.keras /home/app/.cache
EXPOSE 9100
# Readiness, not liveness: healthy while the consumer loop holds partitions or polled within 30 s (the
# `inference_ready` gauge on /metrics), so a member stuck reconnecting or retrying a batch shows as unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as r; t = r.urlopen('http://127.0.0.1:' + os.environ.get('METRICS_PORT', '9100') + '/metrics', timeout=2).read(); sys.exit(0 if b'\\ninference_ready 1.0' in t else 1)"]
# Exec form: python is PID 1 and receives SIGTERM itself; inference_consumer's handler finishes the batch in hand,
# commits and leaves the group within SHUTDOWN_GRACE_S (15 s), so give `docker stop` more than that (compose: 30 s).
CMD ["python", "-m", "inference_consumer"]
