"""The local servers the tests, the benchmarks and `make run` start, for machines with no Docker engine: a
jar-launched Apache Kafka broker (`broker.py`) or cluster (`cluster.py`), the rule for choosing one
(`provision.py`), and a throwaway PostgreSQL server from Debian's binaries (`postgres.py`)."""

from kafka_local.broker import KAFKA_VERSION, LocalBroker, ensure_jars, free_port

__all__ = ["KAFKA_VERSION", "LocalBroker", "ensure_jars", "free_port"]
