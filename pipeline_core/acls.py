"""The Kafka ACLs each service needs, and nothing more, for the topics and groups its settings name.

On a cluster with an authorizer (`allow.everyone.if.no.acl.found=false`), each service connects as its own
principal and gets:

- api: Write on the images and feedback topics; Describe on the inference group (the backlog it sheds by);
- inference: Read on images, Write on predictions and dead letters; Read on the inference group; Write and
  Describe on transactional ids starting `<KAFKA_CLIENT_ID_PREFIX>-<inference group>-`;
- sink: Read on predictions and feedback, Write on dead letters; Read on the sink group;
- all three: Describe and DescribeConfigs on every pipeline topic.

Describe and DescribeConfigs on every pipeline topic are what each service's start-up check reads (that the
topics exist with their partitions and `max.message.bytes`); creating topics is left to an administrator
(`make run`'s launcher does it as `admin`), so no service holds Create. The table in docs/operations.md is this
one; `tests/cluster/test_secured_cluster.py` runs the whole system on them, and shows a missing one named.
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourcePattern,
    ResourceType,
)

from pipeline_core.errors import KafkaAccessError
from pipeline_core.settings import PipelineSettings

SERVICES = ("api", "inference", "sink")


@dataclass(frozen=True, slots=True)
class Grant:
    """One allowed operation on one resource (a literal name, or every name with `prefix`)."""

    resource: ResourceType
    name: str
    operation: ACLOperation
    prefixed: bool = False

    def describe(self) -> str:
        """`Write on topic images`, for logs and errors."""
        kind = self.resource.name.lower().replace("_", " ")
        pattern = f"names starting {self.name!r}" if self.prefixed else repr(self.name)
        return f"{self.operation.name.replace('_', ' ').title()} on {kind} {pattern}"


def service_grants(settings: PipelineSettings) -> dict[str, list[Grant]]:
    """What each service (`api`, `inference`, `sink`) may do, for the topics and groups in `settings`."""
    s = settings
    topic, group, txn = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
    op = ACLOperation
    every_topic = [
        s.topic_images,
        s.topic_predictions,
        s.topic_dead_letter,
        s.topic_feedback,
        s.topic_predictions_shadow,
        s.topic_dead_letter_shadow,
    ]
    inspect = [Grant(topic, name, o) for name in every_topic for o in (op.DESCRIBE, op.DESCRIBE_CONFIGS)]
    # The inference principal runs the primary's group and a shadow model's (INFERENCE_ROLE=shadow).
    transactions = [
        f"{s.kafka_client_id_prefix}-{group}-"
        for group in (s.consumer_group_inference, s.consumer_group_shadow)
    ]
    return {
        "api": [
            *inspect,
            Grant(topic, s.topic_images, op.WRITE),
            Grant(topic, s.topic_feedback, op.WRITE),
            Grant(group, s.consumer_group_inference, op.DESCRIBE),
        ],
        "inference": [
            *inspect,
            Grant(topic, s.topic_images, op.READ),
            Grant(topic, s.topic_predictions, op.WRITE),
            Grant(topic, s.topic_dead_letter, op.WRITE),
            Grant(topic, s.topic_predictions_shadow, op.WRITE),
            Grant(topic, s.topic_dead_letter_shadow, op.WRITE),
            Grant(group, s.consumer_group_inference, op.READ),
            Grant(group, s.consumer_group_shadow, op.READ),
            *(
                Grant(txn, prefix, o, prefixed=True)
                for prefix in transactions
                for o in (op.WRITE, op.DESCRIBE)
            ),
        ],
        "sink": [
            *inspect,
            Grant(topic, s.topic_predictions, op.READ),
            Grant(topic, s.topic_predictions_shadow, op.READ),
            Grant(topic, s.topic_feedback, op.READ),
            Grant(topic, s.topic_dead_letter, op.WRITE),
            Grant(group, s.consumer_group_sink, op.READ),
        ],
    }


def grant_service_acls(
    admin: KafkaAdminClient, settings: PipelineSettings, principals: dict[str, str] | None = None
) -> int:
    """Create every service's ACLs (idempotent: Kafka keeps one of each). `principals` maps a service to its
    user name (default: the service's own name). Returns how many ACLs were asked for."""
    acls = [
        ACL(
            principal=f"User:{(principals or {}).get(service, service)}",
            host="*",
            operation=grant.operation,
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(
                grant.resource,
                grant.name,
                ACLResourcePatternType.PREFIXED if grant.prefixed else ACLResourcePatternType.LITERAL,
            ),
        )
        for service, grants in service_grants(settings).items()
        for grant in grants
    ]
    result = admin.create_acls(acls)
    failed = result.get("failed", [])
    if failed:
        raise KafkaAccessError(f"creating {len(failed)} of {len(acls)} ACLs failed: {failed[0]}")
    return len(acls)
