"""Internal metrics, the multiplexing transport and correlated logs, through the running
system: real NATS, the metrics and transport actors, the gateway, real sentry-sdk."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from bus import metrics
from bus.embedded import ServerProcess
from tests.envelope_receiver import EnvelopeReceiver
from tests.system import SystemUnderTest, http_request


@pytest.fixture(scope="module")
def receivers() -> Iterator[tuple[EnvelopeReceiver, EnvelopeReceiver]]:
    with EnvelopeReceiver() as upstream, EnvelopeReceiver() as relay:
        yield upstream, relay


@pytest.fixture(scope="module")
def observed(nats_server: ServerProcess, redis_server: ServerProcess,
             receivers: tuple[EnvelopeReceiver, EnvelopeReceiver]) -> Iterator[SystemUnderTest]:
    upstream, relay = receivers
    saved = {k: os.environ.get(k) for k in ("RELAYCTL_DSN_UPSTREAM", "RELAYCTL_DSN_RELAY")}
    os.environ["RELAYCTL_DSN_UPSTREAM"] = upstream.dsn(1)
    os.environ["RELAYCTL_DSN_RELAY"] = relay.dsn(2)
    sut = SystemUnderTest(nats_server.url, redis_server.url).start()
    try:
        yield sut
    finally:
        sut.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def prometheus_samples(url: str) -> dict[str, float]:
    status, headers, body = http_request(url + "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = sample.name + json.dumps(dict(sorted(sample.labels.items())))
            samples[key] = samples.get(key, 0) + sample.value
    return samples


def relay_request_count(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items()
               if k.startswith("relayctl_gateway_requests_seconds_count") and "projectconfigs" in k
               and '"version": "3"' in k)


def test_metrics_endpoint_counts_relay_requests(observed: SystemUnderTest) -> None:
    """/metrics is Prometheus text and counts the v3 relay requests this test makes."""
    project = observed.new_project()
    relay = observed.registered_relay()
    before = relay_request_count(prometheus_samples(observed.url))
    for _ in range(5):
        assert relay.configs([project["publicKey"]])[0] == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = relay_request_count(prometheus_samples(observed.url))
        if after - before >= 5:
            break
        time.sleep(0.2)
    assert after - before >= 5


def test_metrics_count_keys_by_outcome(observed: SystemUnderTest) -> None:
    """Keys requested, served and unchanged, and cache hits, are counted per relay request."""
    project = observed.new_project()
    relay = observed.registered_relay()
    status, first = relay.configs([project["publicKey"]])
    assert status == 200
    relay.configs([project["publicKey"]], revisions=[first["configs"][project["publicKey"]]["rev"]])

    def outcome(samples: dict[str, float], name: str, **labels: str) -> float:
        return sum(v for k, v in samples.items() if k.startswith(name + "{")
                   and all(f'"{lk}": "{lv}"' in k for lk, lv in labels.items()))

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        samples = prometheus_samples(observed.url)
        if outcome(samples, "relayctl_relay_keys_total", outcome="unchanged") >= 1:
            break
        time.sleep(0.2)
    assert outcome(samples, "relayctl_relay_keys_total", outcome="requested") >= 2
    assert outcome(samples, "relayctl_relay_keys_total", outcome="served") >= 1
    assert outcome(samples, "relayctl_relay_keys_total", outcome="unchanged") >= 1
    assert outcome(samples, "relayctl_relay_cache_total", result="hit") >= 2


def test_metrics_cli_json_shape(observed: SystemUnderTest) -> None:
    """`relayctl metrics --json` prints counters, timers and gauges aggregated over processes."""
    metrics.incr("test.cli_visible", tags={"kind": "probe"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        snap = observed.cli_ok("metrics", "--json")
        if any(k.startswith("test.cli_visible") for k in snap["counters"]):
            break
        time.sleep(0.2)
    assert {"counters", "timers", "gauges"} <= set(snap)
    assert any(k.startswith("test.cli_visible") for k in snap["counters"])


def test_test_event_reaches_both_dsns(observed: SystemUnderTest,
                                      receivers: tuple[EnvelopeReceiver, EnvelopeReceiver]) -> None:
    """`relayctl transport send-test-event` is forwarded through NATS to upstream and relay."""
    upstream, relay = receivers
    result = observed.cli_ok("transport", "send-test-event", "--message", "hello from the test", "--json")
    event_id = result["eventId"]
    assert upstream.wait_for(1, timeout=10)
    assert relay.wait_for(1, timeout=10)

    def has_event(receiver: EnvelopeReceiver) -> bool:
        return any(event_id.replace("-", "") in json.dumps(str(e.body)) or event_id in str(e.body)
                   for e in receiver.envelopes)
    assert has_event(upstream) and has_event(relay)


def test_actor_log_carries_gateway_correlation_id(observed: SystemUnderTest) -> None:
    """A log line the config actor writes while serving a relay's cache miss carries that request's id."""
    import redis

    project = observed.new_project()
    relay = observed.registered_relay()
    redis.Redis.from_url(observed.redis_url).delete("relayconfig:" + project["publicKey"])
    body = json.dumps({"publicKeys": [project["publicKey"]]}).encode()
    headers = {"Content-Type": "application/json", "X-Sentry-Relay-Id": relay.relay_id,
               "X-Sentry-Relay-Signature": relay.secret_key.sign(body), "X-Request-Id": "trace-me-0123456789"}
    capture = structlog.testing.LogCapture()
    saved = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture],
                        wrapper_class=structlog.make_filtering_bound_logger(0))
    try:
        status, _, _ = http_request(observed.url + "/api/0/relays/projectconfigs/?version=3", "POST", body, headers)
    finally:
        structlog.configure(**saved)
    assert status == 200
    built = [e for e in capture.entries if e.get("event") == "configs.build_on_demand"]
    assert built and all(e.get("correlation_id") == "trace-me-0123456789" for e in built)
