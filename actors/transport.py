"""The transport actor: forwards the system's own error reports to up to two DSNs.

Every process's sentry-sdk publishes envelopes on `rc.transport.envelope` (so may any
other service). Instances share that subject in a queue group, so each envelope is
forwarded once, by a `TransportMultiplexer`: upstream first, then relay, with the
filtering and counting that BEHAVIOUR.md describes.

Configuration (environment, or a `TransportConfig` passed in by tests):
`RELAYCTL_DSN_UPSTREAM`, `RELAYCTL_DSN_RELAY`, `RELAYCTL_UPSTREAM_METRICS` (1 to keep
statsd items upstream), `RELAYCTL_INTERNAL_PROJECT_ID` (events raised while processing
this project never go to relay).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.base import ServiceActor
from actors.transport_mux import TransportMultiplexer
from bus import metrics
from bus.runtime import BusRuntime
from bus.seams import Bus
from bus.settings import Settings
from messages.subjects import TRANSPORT_ENVELOPE


@dataclass
class TransportConfig:
    upstream: str | None = None
    relay: str | None = None
    upstream_metrics_enabled: bool = False
    internal_project_id: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TransportConfig:
        return cls(upstream=settings.value("RELAYCTL_DSN_UPSTREAM") or None,
                   relay=settings.value("RELAYCTL_DSN_RELAY") or None,
                   upstream_metrics_enabled=bool(settings.value("RELAYCTL_UPSTREAM_METRICS")),
                   internal_project_id=settings.value("RELAYCTL_INTERNAL_PROJECT_ID"))

    @classmethod
    def from_env(cls) -> TransportConfig:
        """`from_settings` of this process's environment."""
        return cls.from_settings(Settings.load())


class EnvelopeArrived:
    def __init__(self, data: bytes) -> None:
        self.data = data


class TransportActor(ServiceActor):
    name = "transport"

    def __init__(self, runtime: BusRuntime, bus: Bus, config: TransportConfig | None = None) -> None:
        super().__init__()
        self.runtime = runtime
        self.bus = bus
        self.config = config or TransportConfig.from_env()
        self.mux: TransportMultiplexer | None = None

    def on_start(self) -> None:
        self.mux = TransportMultiplexer(
            upstream=self.config.upstream, relay=self.config.relay, metrics=metrics.metrics,
            upstream_metrics_enabled=self.config.upstream_metrics_enabled,
            internal_project_id=self.config.internal_project_id)
        self.listen(TRANSPORT_ENVELOPE, lambda msg: EnvelopeArrived(msg.data), queue="rc-transport")

    def on_stop(self) -> None:
        super().on_stop()
        if self.mux is not None:
            self.mux.close(timeout=5)

    def on_other(self, message: Any) -> Any:
        if isinstance(message, EnvelopeArrived):
            assert self.mux is not None
            self.mux.submit(message.data)
            return None
        return super().on_other(message)

    def handle_transport_flush(self, call: Any) -> dict[str, Any]:
        assert self.mux is not None
        return {"flushed": self.mux.flush(timeout=max(0.1, min(5.0, call.request.remaining() - 0.2))),
                "dropped": self.mux.dropped}
