# The project's Kafka broker: Apache Kafka from the same Maven jars as kafka_local (`make jars`), for where
# apache/kafka cannot be pulled. It reads apache/kafka's KAFKA_* variables, so docker-compose.yml runs either.
# Built by `python -m docker_local build` from a context it assembles: libs/ (the jars), container.py (the
# entrypoint, kafka_local/container.py) and log4j2.yaml.
#   docker build -f docker/kafka.Dockerfile -t kafka-image-classifier/kafka:4.3.1 <that context>

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
# Java from Debian (the image's own package mirror); no JDK, no Kafka scripts: the entrypoint runs the JVM.
# Not pinned: Debian's security updates replace the exact version, and a pinned one would stop building.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 kafka \
    && useradd --system --uid 10001 --gid kafka --no-create-home --shell /usr/sbin/nologin kafka \
    && install -d -o kafka -g kafka -m 0750 /var/lib/kafka/data
COPY libs/ /opt/kafka/libs/
COPY log4j2.yaml /opt/kafka/config/log4j2.yaml
COPY container.py /opt/kafka/container.py
# apache/kafka's health-check command, by that name: the entrypoint sends an ApiVersions request (without an
# address, to the first listener that is not the controller's).
RUN chmod 0755 /opt/kafka/container.py \
    && install -d /opt/kafka/bin \
    && ln -s /opt/kafka/container.py /opt/kafka/bin/kafka-broker-api-versions.sh
USER 10001:10001
EXPOSE 9092
VOLUME ["/var/lib/kafka/data"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=10 \
    CMD ["python3", "/opt/kafka/container.py", "check"]
CMD ["python3", "/opt/kafka/container.py"]
