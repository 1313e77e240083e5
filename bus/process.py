"""Per-process wiring of the cross-cutting services: metrics and the SDK transport.

Every relayctl process (worker, gateway, CLI when it reports) calls `instrument()` once
its NATS connection is up. Metric points and Sentry envelopes are then published on
`rc.metrics.record` and `rc.transport.envelope` from whatever thread produced them: the
publish is handed to the connection's event loop, so neither path ever blocks a caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bus import metrics
from bus.settings import Settings
from messages.subjects import METRICS_RECORD, TRANSPORT_ENVELOPE


def loop_publisher(nc: Any, loop: asyncio.AbstractEventLoop, subject: str) -> Callable[[bytes], None]:
    """A thread-safe, fire-and-forget publish of bytes on `subject`."""

    def publish(data: bytes) -> None:
        if nc.is_closed:
            return
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(nc.publish(subject, data)))

    return publish


def instrument(nc: Any, loop: asyncio.AbstractEventLoop, process: str, *, sentry: bool = True,
               settings: Settings | None = None) -> None:
    """Metrics always; sentry-sdk unless `sentry` is False or `RELAYCTL_SENTRY` is 0."""
    metrics.configure(loop_publisher(nc, loop, METRICS_RECORD), process=process,
                      global_tags={"process": process.split(":")[0]})
    if sentry and (settings or Settings.load()).value("RELAYCTL_SENTRY"):
        from bus.sentry_transport import init_sentry

        init_sentry(loop_publisher(nc, loop, TRANSPORT_ENVELOPE), process=process)
