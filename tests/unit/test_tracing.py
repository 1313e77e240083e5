"""W3C trace context (issue 16 item 17): parsing, child spans, the envelope field."""

from __future__ import annotations

import structlog

from messages import tracing
from messages.envelope import Request, decode_request

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_parsed_and_an_invalid_one_ignored() -> None:
    assert tracing.parse(VALID) == tracing.TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert tracing.parse(VALID.upper()) is not None
    for bad in (None, "", "garbage", "ff" + VALID[2:], VALID.replace("4bf92f3577b34da6a3ce929d0e0e4736", "0" * 32),
                VALID.replace("00f067aa0ba902b7", "0" * 16), "00-xyz-00f067aa0ba902b7-01", "x" * 500):
        assert tracing.parse(bad) is None, bad


def test_a_span_continues_the_callers_trace_or_starts_one() -> None:
    child = tracing.start(VALID)
    assert child.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and child.span_id != "00f067aa0ba902b7"
    assert tracing.parse(child.header()) == child
    fresh = tracing.start("not a traceparent")
    assert len(fresh.trace_id) == 32 and fresh.trace_id != child.trace_id


def test_outgoing_requests_carry_the_span_being_served() -> None:
    span = tracing.start(VALID)
    with structlog.contextvars.bound_contextvars(**tracing.fields(span, tracing.parse(VALID))):
        assert tracing.current() == span.header()
        # The request's parent is the span being served: the trace stays one tree.
        assert tracing.outgoing() == span.header()
    assert tracing.current() is None


def test_the_envelope_carries_the_traceparent() -> None:
    request = Request(type="relay.list", payload={}, traceparent=VALID)
    assert decode_request(request.encode()).traceparent == VALID
    assert decode_request(Request(type="relay.list", payload={}).encode()).traceparent == ""
