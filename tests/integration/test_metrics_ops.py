"""What an operator's Prometheus sees (issue 16 item 14), from the real `relayctl gateway`
process: HELP texts, one `process` label, per-DSN names as a label, `relayctl_build_info`,
the watched counters at 0 from the start, and `/metrics` without NATS."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus.embedded import ServerProcess
from bus.metric_catalogue import HELP
from tests.conftest import gateway_redis_url
from tests.integration.test_gateway_ops import GatewayProcess
from tests.system import GatewayThread, SystemUnderTest, http_request
from tests.waiting import eventually


def families(url: str) -> dict[str, object]:
    status, headers, body = http_request(url + "/metrics")
    assert status == 200, body
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


@pytest.fixture
def gateway(tmp_path: Path, system: SystemUnderTest, nats_server: ServerProcess,
            redis_server: ServerProcess) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path, nats_server.url, gateway_redis_url(redis_server))
    yield process
    process.stop()


def test_a_fresh_gateway_shows_build_info_and_watched_counters_at_zero(gateway: GatewayProcess) -> None:
    """Before any relay asked anything: relayctl_build_info, relay.cache hit/miss and
    nats.reconnects at 0, every family with its catalogue HELP, no tag_process label."""
    deadline = time.monotonic() + 15
    while True:
        found = families(gateway.url)
        info = found.get("relayctl_build_info")
        if info is not None and any(s.labels.get("process") == "gateway" for s in info.samples):  # type: ignore[attr-defined]
            break
        assert time.monotonic() < deadline, sorted(found)
        time.sleep(0.2)
    [sample] = [s for s in info.samples if s.labels["process"] == "gateway"]  # type: ignore[attr-defined]
    assert sample.value == 1 and sample.labels["version"] and sample.labels["python"]
    cache = {s.labels["result"]: s.value for s in found["relayctl_relay_cache"].samples  # type: ignore[attr-defined]
             if s.labels["process"] == "gateway"}
    assert cache == {"hit": 0.0, "miss": 0.0}
    reconnects = [s for s in found["relayctl_nats_reconnects"].samples  # type: ignore[attr-defined]
                  if s.labels["process"] == "gateway"]
    assert [s.value for s in reconnects] == [0.0]
    assert found["relayctl_relay_cache"].documentation == HELP["relay.cache"]  # type: ignore[attr-defined]
    assert found["relayctl_build_info"].documentation == HELP["build.info"]  # type: ignore[attr-defined]
    for family in found.values():
        for s in family.samples:  # type: ignore[attr-defined]
            assert "tag_process" not in s.labels, s
    # A worker declares actor.restarts per actor (the in-process test worker).
    assert "relayctl_actor_restarts" in found


def test_metrics_answers_with_the_gateways_own_series_without_nats(
        fresh_servers: tuple[ServerProcess, ServerProcess]) -> None:
    """NATS down: `/metrics` still answers 200, with this gateway's own series and a note."""
    nats, redis = fresh_servers
    sut = SystemUnderTest(nats.url, redis.url, actors=["metrics"]).start(with_gateway=False)
    gateway = GatewayThread(nats.url, gateway_redis_url(redis)).start()
    try:
        for _ in range(3):
            assert http_request(gateway.url + "/_health/")[0] == 200
        status, headers, _ = http_request(gateway.url + "/metrics")
        assert status == 200 and "x-relayctl-metrics" not in headers  # the aggregate
        sut.stop()
        nats.stop()

        def own_series() -> dict[str, object] | None:
            status, headers, body = http_request(gateway.url + "/metrics")
            assert status == 200 and headers["x-relayctl-metrics"] == "gateway-only", (status, body[:300])
            assert body.startswith(b"# relayctl: the metrics actor did not answer")
            own = {f.name: f for f in text_string_to_metric_families(body.decode())}
            requests = own.get("relayctl_gateway_requests_seconds")
            # The request timings are recorded once a second, then flushed (every 0.5 s).
            routes = {s.labels["route"] for s in requests.samples} if requests else set()  # type: ignore[attr-defined]
            return own if {"/_health/", "/metrics"} <= routes else None

        own = eventually(own_series, "the gateway's own request timings", timeout=10)
        samples = own["relayctl_gateway_requests_seconds"].samples  # type: ignore[attr-defined]
        assert {s.labels["process"] for s in samples} == {"gateway"}
    finally:
        gateway.stop()
        sut.stop()


def test_the_metrics_actor_forgets_a_process_that_went_silent(
        fresh_servers: tuple[ServerProcess, ServerProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that stops sending (not even build.info) leaves the exposition after
    RELAYCTL_METRICS_TTL seconds; one that keeps sending stays."""
    from bus.client import request as bus_request
    from bus.metrics import encode_batch
    from bus.runtime import BusRuntime
    from messages.subjects import METRICS_RECORD

    nats, redis = fresh_servers
    monkeypatch.setenv("RELAYCTL_METRICS_TTL", "1")
    sut = SystemUnderTest(nats.url, redis.url, actors=["metrics"]).start(with_gateway=False)
    runtime = BusRuntime(nats.url, name="test-publisher").start()
    try:
        assert runtime.nc is not None
        nc = runtime.nc

        def send(process: str) -> None:
            point = ["gauge", "build.info", 1.0, {"version": "x", "python": "y"}, time.time()]
            runtime.call(nc.publish(METRICS_RECORD, encode_batch(process, [point])))
            runtime.call(nc.flush())

        def processes() -> set[str]:
            snapshot = runtime.call(bus_request(nc, "metrics.snapshot", {"format": "json"}, timeout=5))
            return set(snapshot["processes"])

        send("ghost")
        send("alive")
        deadline = time.monotonic() + 5
        while not {"ghost", "alive"} <= processes():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for _ in range(6):  # 1.5 s: past the ttl for the ghost, never for the one that sends
            send("alive")
            time.sleep(0.25)
        left = processes()
        assert "ghost" not in left and "alive" in left, left
    finally:
        runtime.close()
        sut.stop()
