"""The metrics actor over the in-memory bus: batches published on rc.metrics.record are
folded, and metrics.snapshot answers them (the subscribe path of the harness)."""

from __future__ import annotations

import time

from actors.metrics import MetricsActor
from bus.metrics import encode_batch
from bus.testing import ActorHarness
from messages.subjects import METRICS_RECORD


def test_published_points_are_served_by_a_snapshot(harness: ActorHarness) -> None:
    harness.start(MetricsActor)
    batch = encode_batch("test-process", [["counter", "test.things", 3, {"kind": "a"}, time.time()]])
    harness.runtime.call(harness.bus.publish(METRICS_RECORD, batch))
    text = harness.ask("metrics.snapshot", {"format": "prometheus"})
    assert b"test_things" in text


def test_a_malformed_batch_is_dropped_and_the_actor_goes_on(harness: ActorHarness) -> None:
    harness.start(MetricsActor)
    harness.runtime.call(harness.bus.publish(METRICS_RECORD, b"\xc1 not msgpack"))
    assert isinstance(harness.ask("metrics.snapshot", {"format": "json"}), dict)
