"""A jar-launched Apache Kafka broker for machines with no Docker engine."""

from kafka_local.broker import KAFKA_VERSION, LocalBroker, ensure_jars, free_port

__all__ = ["KAFKA_VERSION", "LocalBroker", "ensure_jars", "free_port"]
