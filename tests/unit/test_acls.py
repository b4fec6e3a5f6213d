"""The ACLs each service is granted match the names the services really use (no broker: the grant list)."""

from __future__ import annotations

from kafka.admin import ACLOperation, ResourceType

from pipeline_core.acls import service_grants
from pipeline_core.runtime import transactional_id
from pipeline_core.settings import PipelineSettings


def settings() -> PipelineSettings:
    return PipelineSettings(  # type: ignore[call-arg]
        _env_file=None,
        topic_images="t-images",
        consumer_group_inference="g-inf",
        consumer_instance_id="inference-3",
    )


def test_the_inference_transactional_ids_are_under_the_granted_prefix() -> None:
    s = settings()
    grants = [g for g in service_grants(s)["inference"] if g.resource == ResourceType.TRANSACTIONAL_ID]
    assert {g.operation for g in grants} == {ACLOperation.WRITE, ACLOperation.DESCRIBE}
    assert all(g.prefixed for g in grants)
    for group in (s.consumer_group_inference, s.consumer_group_shadow):
        tid = transactional_id(s, group)
        for operation in (ACLOperation.WRITE, ACLOperation.DESCRIBE):
            assert any(tid.startswith(g.name) for g in grants if g.operation == operation), (group, operation)


def test_each_service_reads_and_writes_only_its_own_topics() -> None:
    s = settings()
    grants = service_grants(s)

    def named(service: str, operation: ACLOperation) -> set[str]:
        return {
            g.name for g in grants[service] if g.operation == operation and g.resource == ResourceType.TOPIC
        }

    assert named("api", ACLOperation.WRITE) == {s.topic_images, s.topic_feedback}
    assert named("api", ACLOperation.READ) == set()
    assert named("inference", ACLOperation.READ) == {s.topic_images}
    assert named("inference", ACLOperation.WRITE) == {
        s.topic_predictions,
        s.topic_dead_letter,
        s.topic_predictions_shadow,
        s.topic_dead_letter_shadow,
    }
    assert named("sink", ACLOperation.READ) == {
        s.topic_predictions,
        s.topic_predictions_shadow,
        s.topic_feedback,
    }
    assert named("sink", ACLOperation.WRITE) == {s.topic_dead_letter}
    for service in grants:
        assert not any(g.operation == ACLOperation.CREATE for g in grants[service]), service
