"""Topic administration: create what the services need, idempotently, and check what exists is usable."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline_core.errors import ConfigurationError
from pipeline_core.kafka_client import AdminClient
from pipeline_core.settings import PipelineSettings

logger = logging.getLogger(__name__)

BROKER_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # Kafka's `message.max.bytes` default


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic the pipeline needs, with the partition count and config it must have."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]

    @property
    def max_message_bytes(self) -> int:
        """The largest record batch the topic takes (the broker's default when the spec sets none)."""
        return int(self.config.get("max.message.bytes", BROKER_DEFAULT_MAX_MESSAGE_BYTES))


def pipeline_topics(settings: PipelineSettings) -> list[TopicSpec]:
    """Every topic of the pipeline. Image topics hold records as large as the largest accepted upload."""
    replicas = (
        {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
        if settings.topic_min_insync_replicas
        else {}
    )
    large = replicas | {"max.message.bytes": str(settings.max_record_bytes)}
    rf = settings.topic_replication_factor
    parts = settings.topic_partitions
    images = large | {"retention.ms": str(settings.topic_images_retention_ms)}
    dead_letters = large | {"retention.ms": str(settings.topic_dead_letter_retention_ms)}
    return [
        TopicSpec(settings.topic_images, parts, rf, images),
        TopicSpec(settings.topic_dead_letter, 1, rf, dead_letters),
        TopicSpec(settings.topic_predictions, parts, rf, replicas),
        TopicSpec(settings.topic_feedback, 1, rf, replicas),
        # Always there, so that the sink can subscribe whether or not a shadow model runs.
        TopicSpec(settings.topic_predictions_shadow, parts, rf, replicas),
        TopicSpec(settings.topic_dead_letter_shadow, 1, rf, dead_letters),
    ]


def ensure_topics(admin: AdminClient, specs: list[TopicSpec]) -> None:
    """Create missing topics; refuse existing ones that cannot hold what the pipeline will write."""
    existing = admin.topic_names()
    missing = [s for s in specs if s.name not in existing]
    if missing:
        created = admin.create_topics(missing)
        if created:
            logger.info(
                "created topics %s",
                ", ".join(f"{s.name}({s.partitions})" for s in missing if s.name in created),
            )
        raced = [s.name for s in missing if s.name not in created]
        if raced:
            logger.info("topics %s were created concurrently by another service", raced)
    _check_existing(admin, [s for s in specs if s.name in existing])


def _check_existing(admin: AdminClient, specs: list[TopicSpec]) -> None:
    if not specs:
        return
    counts = admin.partition_counts([s.name for s in specs])
    for spec in specs:
        partitions = counts[spec.name]
        if partitions < spec.partitions:
            logger.warning(
                "topic %s has %d partitions, fewer than the %d configured: at most %d consumers can share it",
                spec.name,
                partitions,
                spec.partitions,
                partitions,
            )
    _check_message_size(admin, specs)


def _check_message_size(admin: AdminClient, specs: list[TopicSpec]) -> None:
    wanted = {s.name: int(s.config["max.message.bytes"]) for s in specs if "max.message.bytes" in s.config}
    if not wanted:
        return
    described = admin.topic_config(list(wanted), "max.message.bytes")
    for name, minimum in wanted.items():
        actual = int(described[name])
        if actual < minimum:
            raise ConfigurationError(
                f"topic {name} has max.message.bytes={actual}, below the {minimum} that "
                f"MAX_IMAGE_BYTES needs; raise the topic's limit or lower MAX_IMAGE_BYTES"
            )
