"""The metrics actor: aggregates every process's metric points and serves them.

Each instance subscribes to `rc.metrics.record` without a queue group, so every instance
sees every batch and holds the whole picture; a query (`rc.metrics.query`) can go to any
of them. Points are folded by `MetricsStore`; answers are a JSON snapshot or Prometheus
text (for the gateway's `/metrics`), each cut to fit one NATS message (the connection's
`max_payload`): an answer that did not fit would never arrive at all.

A process not heard from for `RELAYCTL_METRICS_TTL` seconds (default 120; every process
sends at least its `build.info` every 15 s, bus/metrics.py) is forgotten with its series:
the exposition shows the processes that run. HELP texts come from bus/metric_catalogue.py.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from actors.base import ServiceActor
from bus import metrics
from bus.metric_catalogue import HELP
from bus.metrics import MalformedBatch, decode_batch
from bus.runtime import BusRuntime
from bus.seams import Bus
from bus.service import Call
from bus.settings import Settings
from domain.metrics_store import MetricsStore
from messages.errors import BadRequest
from messages.subjects import METRICS_RECORD

log = structlog.get_logger(__name__)
# The reply envelope ({"ok": true, "result": ...}) and the micro headers, with room to spare.
REPLY_OVERHEAD = 4096


def metrics_ttl(ttl: float | None = None) -> float:
    """How long a silent process keeps its series (`RELAYCTL_METRICS_TTL`, seconds)."""
    if ttl is None:
        ttl = Settings.load().value("RELAYCTL_METRICS_TTL")
    return max(1.0, float(ttl))


class MetricsBatch:
    def __init__(self, data: bytes) -> None:
        self.data = data


class MetricsActor(ServiceActor):
    name = "metrics"

    def __init__(self, runtime: BusRuntime, bus: Bus, ttl: float | None = None) -> None:
        super().__init__()
        self.runtime = runtime
        self.bus = bus
        self.store = MetricsStore(help=HELP)
        self.ttl = metrics_ttl(ttl)

    def on_start(self) -> None:
        self.listen(METRICS_RECORD, lambda msg: MetricsBatch(msg.data))

    def on_other(self, message: Any) -> Any:
        if isinstance(message, MetricsBatch):
            try:
                self.store.apply_batch(decode_batch(message.data), now=time.time())
            except MalformedBatch as exc:
                metrics.incr("metrics.malformed_batches")
                log.warning("metrics.malformed_batch", error=str(exc))
            return None
        return super().on_other(message)

    def reply_budget(self) -> int:
        """How many bytes an answer may have: one NATS message, less the reply envelope."""
        return max(self.bus.max_payload - REPLY_OVERHEAD, REPLY_OVERHEAD)

    def handle_metrics_snapshot(self, call: Call) -> Any:
        fmt = call.payload["format"]
        gone = self.store.expire(time.time(), self.ttl)
        if gone:
            log.info("metrics.processes_expired", processes=gone, ttl=self.ttl)
        if fmt == "prometheus":
            return self.store.prometheus_text(max_bytes=self.reply_budget())
        if fmt == "json":
            return self.store.snapshot(max_bytes=self.reply_budget())
        raise BadRequest(f"unknown format {fmt!r}; use json or prometheus")
