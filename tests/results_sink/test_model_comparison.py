"""The model comparison on its own (`GET /v1/models`'s numbers, the `sink_model_*` metrics): agreement counted on
the images both models answered, failures apart, percentiles per model, and bounded metric labels."""

from __future__ import annotations

from prometheus_client import REGISTRY
from sink_helpers import prediction

from pipeline_core.events import PredictionEvent
from results_sink.comparison import ModelMetrics, compare, percentile
from results_sink.store import StoredResult


def stored(seq: int, event: PredictionEvent, **changes: object) -> StoredResult:
    event = event.model_copy(update=changes)
    return StoredResult(
        seq, event.job_id, event, (event.timings.received_at if event.timings else 0) + seq / 10
    )


def failed(job_id: str, model: str = "efficientnet-lite0") -> PredictionEvent:
    """A failed result as a consumer writes it: with the model that failed it."""
    return prediction(job_id, status="failed").model_copy(
        update={"model_name": model, "model_version": "1", "runtime": "litert"}
    )


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile(list(reversed(values)), 50) == 50.0, "order does not matter"


def test_agreement_is_counted_on_the_images_both_models_classified() -> None:
    primary = [
        stored(1, prediction("a", label="tabby")),
        stored(2, prediction("b", label="lynx")),
        stored(3, failed("c")),
        stored(4, prediction("d", label="tabby")),
    ]
    shadow = [
        stored(1, prediction("a", label="tabby"), model_name="efficientnet-lite1"),
        stored(2, prediction("b", label="tabby"), model_name="efficientnet-lite1"),
        stored(3, prediction("c", label="tabby"), model_name="efficientnet-lite1"),  # the primary failed it
        stored(4, failed("e", "efficientnet-lite1")),
    ]
    reports = compare(primary, shadow, primary)

    by_role = {r.role: r for r in reports}
    assert set(by_role) == {"primary", "shadow"}
    p, s = by_role["primary"], by_role["shadow"]
    assert (p.images, p.failures, p.compared, p.top1_agreement) == (4, 1, 0, None)
    assert s.model.name == "efficientnet-lite1"
    assert (s.images, s.failures, s.compared) == (4, 1, 2), (
        "a and b; c failed at the primary, e has no primary"
    )
    assert s.top1_agreement == 0.5
    assert p.inference_ms.p50 == 12.5 and p.round_trip_ms.p50 is not None and p.round_trip_ms.p50 > 200


def test_each_model_of_a_role_gets_its_own_report() -> None:
    """During a promotion the primary's window holds two models; neither hides the other."""
    primary = [
        stored(1, prediction("a")),
        stored(2, prediction("b"), model_name="efficientnet-lite1", model_version="2"),
    ]
    reports = compare(primary, [], [])
    assert sorted((r.model.name, r.images) for r in reports) == [
        ("efficientnet-lite0", 1),
        ("efficientnet-lite1", 1),
    ]


def test_the_metrics_count_each_pair_once_and_bound_the_model_labels() -> None:
    models = ModelMetrics(max_labels=2)

    def value(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    shadow_name = "test-shadow-model"
    agree = {"model": shadow_name, "outcome": "agree"}
    disagree = {"model": shadow_name, "outcome": "disagree"}
    before = value("sink_model_compared_total", agree), value("sink_model_compared_total", disagree)
    lite1 = prediction("a").model_copy(update={"model_name": shadow_name})
    models.paired(prediction("a"), lite1)
    models.paired(prediction("b", label="lynx"), lite1)
    models.paired(failed("c"), lite1)
    assert value("sink_model_compared_total", agree) - before[0] == 1
    assert value("sink_model_compared_total", disagree) - before[1] == 1

    models = ModelMetrics(max_labels=2)
    assert models.label("first") == "first" and models.label("x" * 10_000) != "other"
    assert models.label("third") == "other", "a forged name beyond the cap is not a new series"
    assert models.label("first") == "first"
    assert len(models.label("y" * 10_000)) <= 64
