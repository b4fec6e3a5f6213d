"""What tracing costs per image: the spans one image gets in the inference consumer, off and on.

`.venv/bin/python -m benchmarks.tracing_cost` (a few seconds): runs the consumer's per-image tracing
(`InferenceHandler._trace`: read the record's context, six spans at given times, the prediction's headers and
traceparent) with tracing off (TRACING_EXPORTER=none), off with a context that came in the record, and on (the
SDK with the batch processor, exporting to nowhere), interleaved, and prints the median CPU time per image.
The figures are in docs/operations.md.
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from inference_consumer.settings import ConsumerSettings
from inference_consumer.worker import InferenceHandler
from pipeline_core import tracing
from pipeline_core.events import ImageEvent, ImageMeta, Record

IMAGES = 2_000
ROUNDS = 5
INCOMING = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]


class _Nowhere(SpanExporter):
    def export(self, spans: object) -> SpanExportResult:  # type: ignore[override]
        return SpanExportResult.SUCCESS


def _handler() -> InferenceHandler:
    # Only the model's name is read by the tracing: no model is loaded.
    classifier = SimpleNamespace(model_name="efficientnet-lite0")
    return InferenceHandler(ConsumerSettings(_env_file=None), classifier)  # type: ignore[call-arg, arg-type]


def _record(incoming: list[tuple[str, bytes | None]]) -> Record[ImageEvent]:
    meta = ImageMeta(job_id="abc", filename="a.jpg", content_type="image/jpeg", received_at=time.time())
    return Record("images", 0, 1, b"abc", ImageEvent(meta, b"jpeg"), tuple(incoming))


def per_image_us(incoming: list[tuple[str, bytes | None]]) -> float:
    """`InferenceHandler._trace`, the consumer's per-image tracing, as `handle` calls it."""
    handler, record = _handler(), _record(incoming)
    now = time.time()
    started = time.process_time()
    for _ in range(IMAGES):
        handler._trace(record, now, now + 0.02, 0.005, 8)
    return (time.process_time() - started) / IMAGES * 1e6


def main() -> None:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Nowhere()))
    off, passed_on, on = [], [], []
    for _ in range(ROUNDS):
        tracing.use_provider(None)
        off.append(per_image_us([]))  # as with TRACING_EXPORTER=none everywhere: no context comes
        passed_on.append(per_image_us(INCOMING))  # off here, but the record came with a context
        tracing.use_provider(provider)
        on.append(per_image_us(INCOMING))
    provider.shutdown()
    print(f"median CPU per image of {ROUNDS} rounds of {IMAGES}:")
    print(f"  tracing off, no context:       {statistics.median(off):6.1f} us")
    print(f"  tracing off, context passed on: {statistics.median(passed_on):6.1f} us")
    print(f"  tracing on (SDK, 6 spans):      {statistics.median(on):6.1f} us")


if __name__ == "__main__":
    main()
