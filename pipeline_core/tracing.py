"""One trace per image across the hops: W3C trace context in the Kafka headers, OpenTelemetry spans per hop.

The API starts (or continues, from the client's `traceparent`) a trace for each upload and puts the context of
each image's publish span in that image record's headers; the inference consumer continues it (queue wait,
preprocessing, inference, publish) and puts its own context in the prediction's headers; the sink continues it
again (store) and keeps the context with the stored result, so that each SSE event that delivers it is a span
of the same trace. docs/operations.md (Tracing) shows one.

Recording is off by default (TRACING_EXPORTER=none): spans are then the API's no-op ones, which cost next to
nothing, and the API starts no context (a record that arrives with one passes it on unchanged). `otlp` exports
over OTLP/HTTP to the collector the standard OTEL_EXPORTER_OTLP_* variables name (default
http://localhost:4318); `console` prints them.

The context is read from untrusted records: only the two W3C headers are read, each bounded, and one the
propagator cannot parse is ignored (the hop then starts a trace of its own), never an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pipeline_core.settings import PipelineSettings

logger = logging.getLogger(__name__)

TRACER_NAME = "image_classifier"
TRACE_HEADERS = ("traceparent", "tracestate")
# A traceparent is 55 characters. The spec lets a tracestate grow to 32 entries of 256, but 512 bytes hold a few
# vendors' entries; a longer one is dropped (its traceparent still read), so no header costs more than that.
_MAX_HEADER_BYTES = 512
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_PROPAGATOR = TraceContextTextMapPropagator()


# The provider of the pipeline's spans: the one `configure_tracing` installed (tests give one of their own, with
# the SDK's in-memory exporter), else the process's global one, which is a no-op unless something set it.
_provider: trace.TracerProvider | None = None


def use_provider(provider: trace.TracerProvider | None) -> None:
    """Record the pipeline's spans with `provider` from now on (None: the process's global provider again)."""
    global _provider  # noqa: PLW0603 - one provider per process, as OpenTelemetry's own global
    _provider = provider


def installed_provider() -> trace.TracerProvider | None:
    """The provider `configure_tracing` (or a test) installed; None when nothing did and spans are no-ops."""
    return _provider


def provider() -> trace.TracerProvider:
    """The provider the pipeline's spans go to."""
    return _provider or trace.get_tracer_provider()


def configure_tracing(settings: PipelineSettings, service: str) -> None:
    """Install the SDK's tracer provider for this process, as TRACING_EXPORTER says; with `none`, nothing."""
    if settings.tracing_exporter == "none":
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    exporter: SpanExporter
    if settings.tracing_exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Endpoint, headers, timeout and compression from the standard OTEL_EXPORTER_OTLP_* variables.
        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    sdk_provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        # A trace is sampled once, where it starts; every later hop follows that decision.
        sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_ratio)),
    )
    # Batched on a thread of its own: a collector that is slow or away never delays an image, and the
    # provider flushes what is left when the process exits.
    sdk_provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(sdk_provider)  # also for libraries that trace on their own
    use_provider(sdk_provider)
    logger.info(
        "tracing: the spans of %s exported (%s), sampled at %.0f%%",
        service,
        settings.tracing_exporter,
        settings.tracing_sample_ratio * 100,
    )


def is_traced(context: Context) -> bool:
    """Whether spans under `context` are worth making: a provider records them, or the context carries a trace
    to pass on. Neither, and the hop skips its spans altogether (what tracing costs when off: nothing)."""
    return _provider is not None or trace.get_current_span(context).get_span_context().is_valid


def tracer() -> Tracer:
    """The tracer of the pipeline's spans (the process's provider: no-op unless `configure_tracing` installed one)."""
    return trace.get_tracer(TRACER_NAME, tracer_provider=provider())


def context_from_headers(headers: Iterable[tuple[str, bytes | str | None]] | None) -> Context:
    """The trace context in a record's (or a request's) headers; an empty context when there is none or it
    cannot be read. The first of each header counts; values past the bounds are ignored."""
    carrier: dict[str, str] = {}
    for name, value in headers or ():
        key = name.lower() if isinstance(name, str) else ""
        if key not in TRACE_HEADERS or key in carrier or value is None or len(value) > _MAX_HEADER_BYTES:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        if key == "traceparent" and not _TRACEPARENT.match(text.strip()):
            continue  # malformed: the propagator would drop it too; tracestate then means nothing
        carrier[key] = text
    if "traceparent" not in carrier:
        return Context()
    return _PROPAGATOR.extract(carrier)


def trace_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """The Kafka headers that carry `context` (default: the current one) to the next hop; none when it holds
    no valid span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context)
    return [(name, value.encode("ascii")) for name, value in carrier.items() if name in TRACE_HEADERS]


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent of a span, to keep with a stored result; None for an invalid (untraced) one."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> Context:
    """The context a stored traceparent names (empty for None or a malformed one)."""
    return context_from_headers([("traceparent", traceparent)] if traceparent else None)


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32 hex digits of the trace a traceparent belongs to: what a tracing UI searches by."""
    found = trace.get_current_span(context_of(traceparent)).get_span_context()
    return f"{found.trace_id:032x}" if found.is_valid else None


def record_span(
    name: str,
    start_s: float,
    end_s: float,
    parent: Context | None = None,
    *,
    attributes: Mapping[str, str | int | float] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Span:
    """A span of something that happened between two wall-clock times (seconds since the epoch), e.g. the time
    an image waited in the topic, or its share of a batch's model call; ended, its context can still parent
    others (`trace.set_span_in_context`)."""
    span = tracer().start_span(
        name, context=parent, kind=kind, start_time=int(start_s * 1e9), attributes=attributes
    )
    span.end(end_time=int(max(start_s, end_s) * 1e9))  # clocks of two hosts may disagree: never negative
    return span
