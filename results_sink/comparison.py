"""How each model does on live traffic: `GET /v1/models` from the store's newest results, and the `sink_model_*`
metrics counted as results are stored. A shadow model is compared with the primary on the same images."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import Literal

from pipeline_core.events import PredictionEvent, bounded
from results_sink import metrics
from results_sink.models import ModelInfo, ModelReport, ModelsResponse, Percentiles
from results_sink.store import ResultStore, StoredResult

Role = Literal["primary", "shadow"]
WINDOW = 1000  # the newest results of each role that `GET /v1/models` reads
MAX_MODEL_LABELS = 8  # distinct model names the metrics label; any further one is counted as "other"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _key(e: PredictionEvent) -> tuple[str | None, str | None, str | None]:
    return e.model_name, e.model_version, e.runtime


def compare(
    primary: Sequence[StoredResult], shadow: Sequence[StoredResult], primary_of_shadow: Sequence[StoredResult]
) -> list[ModelReport]:
    """One report per (role, model) in the window. `primary_of_shadow` are the primary's results of the jobs in
    `shadow` (a shadow that lags answers older jobs than the primary's newest)."""
    reference = {r.job_id: r.event for r in primary_of_shadow}
    reports: list[ModelReport] = []
    roles: tuple[tuple[Role, Sequence[StoredResult]], ...] = (("primary", primary), ("shadow", shadow))
    for role, results in roles:
        groups: dict[tuple[str | None, str | None, str | None], list[StoredResult]] = {}
        for r in results:
            groups.setdefault(_key(r.event), []).append(r)
        for (name, version, runtime), rows in groups.items():
            compared = agreed = 0
            if role == "shadow":
                for r in rows:
                    theirs = reference.get(r.job_id)
                    if r.event.status == "done" and theirs is not None and theirs.status == "done":
                        compared += 1
                        agreed += r.event.label == theirs.label
            timed = [r for r in rows if r.event.timings is not None]
            inference = [r.event.timings.inference_ms for r in timed if r.event.timings is not None]
            trips = [
                (r.stored_at - r.event.timings.received_at) * 1000
                for r in timed
                if r.event.timings is not None
            ]
            reports.append(
                ModelReport(
                    role=role,
                    model=ModelInfo(name=name, version=version, runtime=runtime),
                    images=len(rows),
                    failures=sum(r.event.status == "failed" for r in rows),
                    compared=compared,
                    top1_agreement=agreed / compared if compared else None,
                    inference_ms=Percentiles(p50=percentile(inference, 50), p99=percentile(inference, 99)),
                    round_trip_ms=Percentiles(p50=percentile(trips, 50), p99=percentile(trips, 99)),
                )
            )
    return reports


def models_report(store: ResultStore, window: int = WINDOW) -> ModelsResponse:
    """The comparison of the newest `window` results of each role, read from the store."""
    primary = store.recent(window)
    shadow = store.recent(window, shadow=True)
    primary_of_shadow = store.results_after([r.job_id for r in shadow], 0) if shadow else []
    return ModelsResponse(window=window, models=compare(primary, shadow, primary_of_shadow))


class ModelMetrics:
    """Counts each stored result by role and model, and each primary/shadow pair once, when its second half is
    stored. Model names come from records, which anyone with write access to a topic can forge: only the first
    `MAX_MODEL_LABELS` names become label values."""

    def __init__(self, max_labels: int = MAX_MODEL_LABELS) -> None:
        self._names: set[str] = set()
        self._max = max_labels
        self._lock = threading.Lock()

    def label(self, name: str | None) -> str:
        """The metrics label of a model name."""
        name = bounded(name or "unnamed", 64)
        with self._lock:
            if name in self._names:
                return name
            if len(self._names) < self._max:
                self._names.add(name)
                return name
        return "other"

    def stored(self, role: Role, results: Iterable[StoredResult]) -> None:
        """Count newly stored results of one role."""
        for r in results:
            e = r.event
            model = self.label(e.model_name)
            metrics.MODEL_RESULTS.labels(role, model, e.status).inc()
            if e.timings is not None:
                metrics.MODEL_INFERENCE_SECONDS.labels(role, model).observe(e.timings.inference_ms / 1000)
                metrics.MODEL_ROUND_TRIP_SECONDS.labels(role, model).observe(
                    max(0.0, r.stored_at - e.timings.received_at)
                )

    def paired(self, primary: PredictionEvent, shadow: PredictionEvent) -> None:
        """Count one image both models answered."""
        if primary.status == "done" and shadow.status == "done":
            outcome = "agree" if primary.label == shadow.label else "disagree"
            metrics.MODEL_COMPARED.labels(self.label(shadow.model_name), outcome).inc()
