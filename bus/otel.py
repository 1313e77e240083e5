"""Optional OpenTelemetry export of the spans that messages/tracing.py names.

Off unless the `otel` extra is installed (`pip install 'relayctl[otel]'`: the OpenTelemetry
SDK and its OTLP/HTTP exporter) and the standard variable `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) says where to send them; `OTEL_TRACES_EXPORTER=console`
prints them instead. Then the gateway exports one span per HTTP request and every actor one
per request it serves, with exactly the trace and span ids the logs carry, so a trace id
from a log line opens the same trace in the tracing backend. Spans are exported in batches
off the request path; without the extra every call here costs nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from bus.settings import Settings

_tracer: Any = None
# (trace id, span id) the next span started must have: the ids messages/tracing.py chose.
_next_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("relayctl_otel_ids",
                                                                                    default=None)


def enabled() -> bool:
    return _tracer is not None


def configure(service: str, settings: Settings | None = None) -> bool:
    """Export this process's spans when its settings ask for it and the extra is there."""
    settings = settings or Settings.load()
    exporter_kind = settings.value("OTEL_TRACES_EXPORTER") or ""
    wanted = exporter_kind == "console" or bool(settings.value("OTEL_EXPORTER_OTLP_ENDPOINT")
                                                or settings.value("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if not wanted or exporter_kind == "none":
        return False
    try:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        return False
    if exporter_kind == "console":
        exporter: Any = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            return False
        exporter = OTLPSpanExporter()
    install(_provider(service, BatchSpanProcessor(exporter)))
    return True


def _provider(service: str, processor: Any) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

    class GivenIds(IdGenerator):
        """The ids of messages/tracing.py when a span is started through `span`, else random."""

        random = RandomIdGenerator()

        def generate_span_id(self) -> int:
            given = _next_ids.get()
            return given[1] if given else self.random.generate_span_id()

        def generate_trace_id(self) -> int:
            given = _next_ids.get()
            return given[0] if given else self.random.generate_trace_id()

    provider = TracerProvider(resource=Resource.create({"service.name": service}), id_generator=GivenIds())
    provider.add_span_processor(processor)
    return provider


def install(provider: Any) -> None:
    """Export through `provider` (a TracerProvider; tests give one with an in-memory exporter)."""
    global _tracer
    _tracer = provider.get_tracer("relayctl")


def reset() -> None:
    global _tracer
    _tracer = None


@contextmanager
def span(name: str, trace_id: str, span_id: str, parent_span_id: str | None = None,
         attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A span with these ids (hex, as messages/tracing.py makes them), child of the remote
    span `parent_span_id` of the same trace; does nothing when export is off."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    context = None
    if parent_span_id:
        parent = SpanContext(int(trace_id, 16), int(parent_span_id, 16), is_remote=True,
                             trace_flags=TraceFlags(TraceFlags.SAMPLED))
        context = trace.set_span_in_context(NonRecordingSpan(parent))
    token = _next_ids.set((int(trace_id, 16), int(span_id, 16)))
    try:
        started = _tracer.start_span(name, context=context, attributes=dict(attributes or {}))
    finally:
        _next_ids.reset(token)
    try:
        yield started
    finally:
        started.end()
