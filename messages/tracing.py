"""W3C Trace Context (https://www.w3.org/TR/trace-context/) across the system.

A request that enters the gateway carries a trace: the caller's `traceparent` header when it
sent a valid one, else a new trace. The gateway binds it to the request's log context; every
NATS request made while serving it carries a child `traceparent` in its envelope (field
`tp`, messages/envelope.py), and the actor serving that request binds it to its own log
lines. So one `trace_id` finds every log line of one relay request, in the gateway and in
each actor it reached - and, with the `otel` extra, the spans of a tracing backend.

    traceparent = "00-" trace_id (32 hex) "-" span_id (16 hex) "-" flags (2 hex)

The log context (structlog contextvars) carries `trace_id` and `span_id` (and
`parent_span_id`); `outgoing()` makes the next hop's header from them: the span being
served is the parent of the span that serves the request it makes.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

import structlog

from messages.ids import random_hex

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
HEADER = "traceparent"


class TraceParent(NamedTuple):
    trace_id: str
    span_id: str
    flags: str = "01"

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def parse(value: str | None) -> TraceParent | None:
    """A valid traceparent, else None (an invalid one is ignored, as the spec says: the
    receiver starts a new trace). Version ff and all-zero ids are invalid."""
    if not value or len(value) > 128:
        return None
    match = _TRACEPARENT.match(value.strip().lower()[:55])
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id, flags)


def new_span_id() -> str:
    return random_hex(64)


def start(incoming: str | None) -> TraceParent:
    """This hop's span: a child of `incoming` when valid, else the root of a new trace."""
    return child(parse(incoming))


def child(parent: TraceParent | None) -> TraceParent:
    """A new span under `parent` (parsed), or the root of a new trace without one."""
    if parent is None:
        return TraceParent(random_hex(128), new_span_id())
    return TraceParent(parent.trace_id, new_span_id(), parent.flags)


def serving(request_id: str, traceparent: str) -> dict[str, str]:
    """The log fields of the span of serving one request: a child of the caller's span (a
    new trace when it sent none), its ids derived from the request, so every part of one
    request's handling - however often an actor comes back to it - logs the same span."""
    parent = parse(traceparent)
    digest = hashlib.sha256(f"{request_id}/{traceparent}".encode()).hexdigest()
    span = TraceParent(parent.trace_id if parent else digest[16:48], digest[:16], parent.flags if parent else "01")
    return fields(span, parent)


def fields(span: TraceParent, parent: TraceParent | None = None) -> dict[str, str]:
    """The log fields of `span` (to bind with structlog.contextvars)."""
    out = {"trace_id": span.trace_id, "span_id": span.span_id}
    if parent is not None:
        out["parent_span_id"] = parent.span_id
    return out


def current() -> str | None:
    """The traceparent of the span being served in this context, if any."""
    bound = structlog.contextvars.get_contextvars()
    trace_id, span_id = bound.get("trace_id"), bound.get("span_id")
    if isinstance(trace_id, str) and isinstance(span_id, str):
        return TraceParent(trace_id, span_id).header()
    return None


def outgoing() -> str:
    """The `traceparent` for a request made now: the span being served (the request's
    server makes its span a child of it, so the trace stays one tree), or the root of a new
    trace when nothing is being traced."""
    return current() or start(None).header()
