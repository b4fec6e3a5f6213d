"""The trace context read from untrusted headers, and carried on: W3C `traceparent`/`tracestate` only, bounded,
and never an error, whatever a record or a request holds."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pipeline_core import tracing

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def span_context(context: object) -> trace.SpanContext:
    return trace.get_current_span(context).get_span_context()  # type: ignore[arg-type]


def test_a_valid_traceparent_is_continued_and_carried_on() -> None:
    context = tracing.context_from_headers([("schema", b"image/1"), ("traceparent", VALID.encode())])
    found = span_context(context)
    assert found.is_valid and found.is_remote
    assert f"{found.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert dict(tracing.trace_headers(context))["traceparent"] == VALID.encode()
    assert tracing.trace_id_of(VALID) == "0af7651916cd43dd8448eb211c80319c"


def test_the_first_traceparent_counts_and_names_are_case_blind() -> None:
    other = VALID.replace("b7ad6b7169203331", "1111111111111111")
    context = tracing.context_from_headers([("TraceParent", VALID.encode()), ("traceparent", other.encode())])
    assert f"{span_context(context).span_id:016x}" == "b7ad6b7169203331"


def test_malformed_or_oversized_contexts_are_ignored() -> None:
    for bad in (
        VALID.upper(),
        VALID[:-1],
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # the all-zero trace id is invalid
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is forbidden
        VALID + "-" + "x" * 600,
        "",
    ):
        assert not span_context(tracing.context_from_headers([("traceparent", bad.encode())])).is_valid, bad
        assert tracing.trace_headers(tracing.context_from_headers([("traceparent", bad.encode())])) == []
        assert tracing.trace_id_of(bad) is None
    huge_state = ("k=" + "v" * 1000).encode()
    context = tracing.context_from_headers([("traceparent", VALID.encode()), ("tracestate", huge_state)])
    assert span_context(context).is_valid, "an oversized tracestate is dropped, the traceparent kept"
    assert "tracestate" not in dict(tracing.trace_headers(context))


HEADER_NAMES = st.sampled_from(["traceparent", "tracestate", "TRACEPARENT", "meta", "schema", ""]) | st.text(
    max_size=20
)
HEADER_VALUES = (
    st.none()
    | st.binary(max_size=700)
    | st.from_regex(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", fullmatch=True).map(str.encode)
    | st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass"))
)


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8))
def test_any_headers_give_a_context_or_none_never_an_error(headers: list[tuple[str, bytes | None]]) -> None:
    context = tracing.context_from_headers(headers)
    carried = tracing.trace_headers(context)
    assert all(name in tracing.TRACE_HEADERS and len(value) <= 600 for name, value in carried)
    if span_context(context).is_valid:
        assert tracing.trace_id_of(dict(carried)["traceparent"].decode()) is not None


def test_spans_between_past_times_keep_their_times_and_never_run_backwards(
    memory_spans: InMemorySpanExporter,
) -> None:
    now = time.time()
    parent = tracing.context_from_headers([("traceparent", VALID.encode())])
    waited = tracing.record_span("queue wait", now - 2.0, now - 0.5, parent)
    skewed = tracing.record_span("skewed", now, now - 1.0, trace.set_span_in_context(waited))
    by_name = {s.name: s for s in memory_spans.get_finished_spans()}
    waited_ns = by_name["queue wait"].end_time - by_name["queue wait"].start_time  # type: ignore[operator]
    assert abs(waited_ns - 1_500_000_000) < 10_000, "1.5 s, to the precision of a float of epoch seconds"
    assert by_name["skewed"].end_time == by_name["skewed"].start_time
    assert by_name["skewed"].parent.span_id == waited.get_span_context().span_id  # type: ignore[union-attr]
    assert f"{by_name['queue wait'].context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"  # type: ignore[union-attr]
    assert (
        tracing.traceparent_of(skewed)
        == f"00-{VALID.split('-')[1]}-{skewed.get_span_context().span_id:016x}-01"
    )


def test_with_tracing_off_nothing_is_recorded_and_no_context_is_made() -> None:
    span = tracing.record_span("queue wait", time.time() - 1, time.time())
    assert not span.is_recording() and tracing.traceparent_of(span) is None
    assert tracing.trace_headers() == []
