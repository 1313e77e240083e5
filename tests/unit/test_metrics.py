"""Internal metrics: recording in a process, the batch wire format, aggregation, Prometheus."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bus import metrics as metrics_module
from bus.metrics import MalformedBatch, Metrics, decode_batch, encode_batch
from domain.metrics_store import TRUNCATION_MARKER, MetricsStore

WAIT = 5.0  # generous upper bound for anything asynchronous


class Published:
    """A publish callable that records decoded batches and lets tests wait for them."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self._arrived = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self._arrived:
            self.batches.append(decode_batch(data))
            self._arrived.notify_all()

    @property
    def points(self) -> list[list[Any]]:
        return [point for batch in self.batches for point in batch["points"]]

    def named(self, name: str) -> list[list[Any]]:
        return [point for point in self.points if point[1] == name]

    def wait_for(self, name: str) -> list[list[Any]]:
        with self._arrived:
            self._arrived.wait_for(lambda: self.named(name), timeout=WAIT)
        return self.named(name)


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def recorder(published: Published) -> Iterator[Metrics]:
    instance = Metrics(published, process="tests", flush_interval=0.05)
    yield instance
    instance.close()


def test_points_are_published_in_the_background(recorder: Metrics, published: Published) -> None:
    """A recorded counter reaches publish without any explicit flush."""
    recorder.incr("jobs.done", 2, tags={"queue": "fast"})

    [point] = published.wait_for("jobs.done")
    assert point[0] == "counter"
    assert point[2] == 2.0
    assert point[3] == {"queue": "fast"}
    assert published.batches[0]["process"] == "tests"


def test_timer_tags_success(recorder: Metrics, published: Published) -> None:
    """A timed block that completes is recorded in seconds with result=success."""
    with recorder.timer("work", tags={"kind": "a"}):
        pass
    recorder.flush()

    [point] = published.named("work")
    assert point[0] == "timer"
    assert point[3] == {"kind": "a", "result": "success"}
    assert 0 <= point[2] < WAIT


def test_timer_tags_failure_and_reraises(recorder: Metrics, published: Published) -> None:
    """A timed block that raises is recorded with result=failure and the error propagates."""
    with pytest.raises(KeyError), recorder.timer("work"):
        raise KeyError("boom")
    recorder.flush()

    [point] = published.named("work")
    assert point[3] == {"result": "failure"}


def test_high_cardinality_tags_are_dropped(recorder: Metrics, published: Published) -> None:
    """Tags named *_id, project, event or group never leave the process."""
    recorder.incr(
        "events.seen",
        tags={"org_id": 3, "project": "p", "event": "e", "group": "g", "platform": "python"},
    )
    recorder.flush()

    [point] = published.named("events.seen")
    assert point[3] == {"platform": "python"}


def test_global_tags_apply_to_every_point(published: Published) -> None:
    """Global tags are merged into each point and a point's own tag wins."""
    instance = Metrics(published, process="gw", global_tags={"host": "a", "region": "eu"})
    try:
        instance.gauge("queue.depth", 4, tags={"region": "us"})
        instance.distribution("payload.bytes", 512)
        instance.flush()
    finally:
        instance.close()

    assert published.named("queue.depth")[0][3] == {"host": "a", "region": "us"}
    assert published.named("payload.bytes")[0][3] == {"host": "a", "region": "eu"}


def test_batch_round_trips_and_rejects_garbage() -> None:
    """encode_batch output decodes to the same batch; other bytes raise MalformedBatch."""
    points = [["counter", "a", 1.0, {"t": "v"}, 1700000000.0]]
    assert decode_batch(encode_batch("p", points)) == {"process": "p", "points": points}

    with pytest.raises(MalformedBatch):
        decode_batch(b"\xc1 not msgpack")
    with pytest.raises(MalformedBatch):
        decode_batch(encode_batch("p", [["bogus", "a", 1.0, {}, 0.0]]))


def test_full_queue_drops_and_counts(published: Published) -> None:
    """Points beyond the queue bound are dropped, and the drop count is published later."""
    instance = Metrics(published, process="tests", max_queue=10, flush_interval=60)
    try:
        for _ in range(25):
            instance.incr("burst")
        assert instance.dropped_points == 15
        instance.flush()
    finally:
        instance.close()

    assert len(published.named("burst")) == 10
    [drop] = published.named("internal.metrics.dropped_points")
    assert drop[2] == 15.0
    assert drop[3] == {"reason": "queue_full"}


def test_raising_publish_never_fails_the_caller() -> None:
    """A publish that raises loses its batch but neither the caller nor the flusher dies."""
    calls: list[bytes] = []
    healthy = threading.Event()

    def flaky_publish(data: bytes) -> None:
        calls.append(data)
        if not healthy.is_set():
            raise ConnectionError("nats is gone")

    # No background flushes: the test decides when each publish happens.
    instance = Metrics(flaky_publish, process="tests", flush_interval=60)
    try:
        instance.incr("before")
        instance.flush()
        assert instance.dropped_points == 1

        healthy.set()
        instance.incr("after")
        instance.flush()
    finally:
        instance.close()

    names = {point[1] for point in decode_batch(calls[-1])["points"]}
    assert "after" in names
    assert "internal.metrics.dropped_points" in names


def test_hanging_publish_never_blocks_the_caller() -> None:
    """A publish that never returns costs dropped points, not a blocked caller or close."""
    release = threading.Event()
    started = threading.Event()

    def stuck_publish(data: bytes) -> None:
        started.set()
        release.wait()

    instance = Metrics(
        stuck_publish, process="tests", max_queue=20, flush_interval=0.05, publish_timeout=0.1
    )
    try:
        instance.incr("first")
        assert started.wait(WAIT)

        def record_many() -> None:
            for _ in range(500):
                instance.incr("more")

        recorded = threading.Thread(target=record_many)
        recorded.start()
        recorded.join(WAIT)
        assert not recorded.is_alive()

        closing = threading.Thread(target=instance.close)
        closing.start()
        closing.join(WAIT)
        assert not closing.is_alive()
        assert instance.dropped_points > 0
    finally:
        release.set()


def test_module_helpers_are_noops_until_configured(published: Published) -> None:
    """The module-level helpers do nothing before configure and publish after it."""
    metrics_module.close()
    metrics_module.incr("ignored")
    with metrics_module.timer("ignored.timer"):
        pass

    configured = metrics_module.configure(published, process="cli")
    try:
        metrics_module.metrics.incr("counted")
        with pytest.raises(RuntimeError), metrics_module.timer("timed"):
            raise RuntimeError
        configured.flush()
    finally:
        metrics_module.close()

    # configure() also reports the build and the watched counters at 0 (issue 16 item 14).
    assert {point[1] for point in published.points} == {"counted", "timed", "build.info", "nats.reconnects",
                                                        "internal.metrics.dropped_points"}
    assert [p[2] for p in published.named("nats.reconnects")] == [0.0]
    assert published.named("timed")[0][3] == {"result": "failure"}


def _batch(process: str, *points: list[Any]) -> dict[str, Any]:
    return {"process": process, "points": list(points)}


def test_store_aggregates_per_series_and_process() -> None:
    """Counters sum, timers and distributions keep count/sum/min/max, gauges keep the latest."""
    store = MetricsStore()
    store.apply_batch(
        _batch(
            "gateway",
            ["counter", "req", 1.0, {"status": "200"}, 10.0],
            ["counter", "req", 2.0, {"status": "200"}, 11.0],
            ["timer", "handle", 0.2, {"result": "success"}, 10.0],
            ["timer", "handle", 0.4, {"result": "success"}, 11.0],
            ["gauge", "conns", 7.0, {}, 12.0],
            ["gauge", "conns", 3.0, {}, 11.0],
            ["distribution", "size", 100.0, {}, 10.0],
        )
    )
    store.apply_batch(_batch("worker", ["counter", "req", 4.0, {"status": "200"}, 10.0]))

    snapshot = store.snapshot()
    assert snapshot["counters"] == {"req{status=200}": 7.0}
    assert snapshot["processes"]["gateway"]["counters"] == {"req{status=200}": 3.0}
    assert snapshot["processes"]["worker"]["counters"] == {"req{status=200}": 4.0}
    timer = snapshot["timers"]["handle{result=success}"]
    assert timer["count"] == 2
    assert timer["sum"] == pytest.approx(0.6)
    assert (timer["min"], timer["max"]) == (0.2, 0.4)
    assert snapshot["gauges"] == {"conns": 7.0}
    assert snapshot["distributions"]["size"]["count"] == 1
    json.dumps(snapshot)  # JSON-friendly as documented


def test_store_bounds_series_and_rejects_bad_points() -> None:
    """Series beyond max_series and malformed points are counted, not stored."""
    store = MetricsStore(max_series=2)
    store.apply_batch(
        _batch(
            "p",
            ["counter", "a", 1.0, {}, 0.0],
            ["counter", "b", 1.0, {}, 0.0],
            ["counter", "c", 1.0, {}, 0.0],
            ["counter", "a", 1.0, {}, 0.0],
            ["nonsense"],
            ["histogram", "d", 1.0, {}, 0.0],
        )
    )

    assert store.snapshot()["counters"] == {"a": 2.0, "b": 1.0}
    assert store.rejected_points == 3


def test_prometheus_text_parses() -> None:
    """The exposition parses with prometheus_client and carries sanitized names and labels."""
    store = MetricsStore()
    store.apply_batch(
        _batch(
            "gateway",
            ["counter", "internal.captured.events", 3.0, {"dsn-kind": "s4s"}, 1.0],
            ["timer", "config.build", 0.03, {"result": "success"}, 1.0],
            ["timer", "config.build", 42.0, {"result": "success"}, 1.0],
            ["gauge", "queue.depth", 5.0, {"le": "x", "process": "spoofed"}, 1.0],
            ["distribution", "envelope.bytes", 900.0, {}, 1.0],
            # Collides with the counter above once sanitized: must not break the output.
            ["gauge", "internal_captured_events", 1.0, {}, 1.0],
        )
    )

    families = {f.name: f for f in text_string_to_metric_families(store.prometheus_text().decode())}

    counter = families["relayctl_internal_captured_events"]
    assert counter.type == "counter"
    [sample] = counter.samples
    assert sample.name == "relayctl_internal_captured_events_total"
    assert sample.labels == {"dsn_kind": "s4s", "process": "gateway"}
    assert sample.value == 3.0

    histogram = families["relayctl_config_build_seconds"]
    assert histogram.type == "histogram"
    values = {(s.name, s.labels.get("le")): s.value for s in histogram.samples}
    assert values[("relayctl_config_build_seconds_count", None)] == 2
    assert values[("relayctl_config_build_seconds_bucket", "0.05")] == 1
    assert values[("relayctl_config_build_seconds_bucket", "+Inf")] == 2

    [gauge] = families["relayctl_queue_depth"].samples
    # A tag named "process" never makes a second label: the batch's process is the one.
    assert gauge.labels == {"tag_le": "x", "process": "gateway"}
    assert families["relayctl_envelope_bytes"].type == "summary"


def test_recorded_points_flow_into_the_store(published: Published) -> None:
    """What a process records is what the store aggregates, via the wire format."""
    instance = Metrics(published, process="relay-proxy")
    try:
        instance.incr("forwarded", tags={"project_id": 9, "outcome": "ok"})
        instance.incr("forwarded", tags={"outcome": "ok"})
        instance.flush()
    finally:
        instance.close()

    store = MetricsStore()
    for batch in published.batches:
        store.apply_batch(batch)
    assert store.snapshot()["processes"]["relay-proxy"]["counters"] == {
        "forwarded{outcome=ok}": 2.0
    }


def test_store_folds_series_past_the_per_name_cap_into_overflow() -> None:
    """One tag value per point (a tag taken from request input) cannot grow a metric past
    `max_series_per_name`: the rest land in `name{overflow=true}`, totals stay right."""
    store = MetricsStore(max_series_per_name=10)
    store.apply_batch(_batch("gateway", *(["counter", "req", 1.0, {"v": f"junk-{i}"}, 0.0] for i in range(1000))))
    store.apply_batch(_batch("gateway", ["counter", "other", 1.0, {"v": "a"}, 0.0]))

    counters = store.snapshot()["counters"]
    req = {k: v for k, v in counters.items() if k.startswith("req")}
    assert len(req) == 11
    assert req["req{overflow=true}"] == 990.0
    assert sum(req.values()) == 1000.0
    assert counters["other{v=a}"] == 1.0  # other names keep their own series
    assert store.overflow_points == 990


def test_store_bounds_processes_and_text_lengths() -> None:
    """Made-up process names and huge names or tags cannot grow the store without bound."""
    store = MetricsStore(max_processes=3)
    for i in range(10):
        store.apply_batch(_batch(f"p{i}", ["counter", "n" * 10_000, 1.0, {"t" * 5000: "v" * 5000}, 0.0]))

    snapshot = store.snapshot()
    assert sorted(snapshot["processes"]) == ["p0", "p1", "p2"]
    assert store.rejected_points == 7
    [key] = snapshot["counters"]
    assert len(key) < 700


def test_outputs_fit_their_byte_budget_and_say_when_cut() -> None:
    """However many series exist, the Prometheus text and the JSON snapshot stay within
    `max_bytes`, stay parseable, and say that (and how much) was left out."""
    store = MetricsStore()
    store.apply_batch(_batch("p", *(["timer", f"t{i}", 0.1, {"k": "v" * 100}, 0.0] for i in range(5000))))

    whole = store.prometheus_text()
    assert TRUNCATION_MARKER not in whole
    text = store.prometheus_text(max_bytes=100_000)
    assert len(text) <= 100_000 < len(whole)
    assert text.rstrip().splitlines()[-1].startswith(TRUNCATION_MARKER)
    families = list(text_string_to_metric_families(text.decode()))
    assert 10 < len(families) < 5000

    assert store.snapshot()["truncated"] is False
    snapshot = store.snapshot(max_bytes=100_000)
    assert len(json.dumps(snapshot)) <= 100_000
    assert snapshot["truncated"] is True and snapshot["left_out"] > 0
    assert len(snapshot["timers"]) + snapshot["left_out"] == 10_000  # the totals and the one process


# -- issue 16 item 14: what operators expect of the exposition --------------------------------

def test_help_texts_come_from_the_catalogue() -> None:
    """HELP lines say what a metric means (bus/metric_catalogue.py); unknown names get a
    generic one."""
    from bus.metric_catalogue import HELP

    store = MetricsStore(help=HELP)
    store.apply_batch(_batch("gateway", ["counter", "relay.cache", 2.0, {"result": "hit"}, 1.0],
                             ["counter", "made.up", 1.0, {}, 1.0]))
    families = {f.name: f for f in text_string_to_metric_families(store.prometheus_text().decode())}
    assert families["relayctl_relay_cache"].documentation == HELP["relay.cache"]
    assert families["relayctl_made_up"].documentation == "Counter made.up"


def test_every_recorded_metric_name_is_in_the_catalogue() -> None:
    """A scan of the code: every literal name passed to incr/timing/gauge/distribution/timer
    has a catalogue entry of the same kind, and no f-string names (one series per value)."""
    import re
    from pathlib import Path

    from bus.metric_catalogue import METRICS

    root = Path(__file__).resolve().parents[2]
    kinds = {"incr": "counter", "timing": "timer", "timer": "timer", "gauge": "gauge", "distribution": "distribution"}
    call = re.compile(r"\.(incr|timing|timer|gauge|distribution)\(\s*(f?)\"([^\"]+)\"")
    found: dict[str, str] = {}
    dynamic = []
    for package in ("actors", "bus", "gateway", "cli", "domain"):
        for path in (root / package).rglob("*.py"):
            for method, is_f, name in call.findall(path.read_text()):
                if is_f:
                    dynamic.append(f"{path.name}: {name}")
                found[name] = kinds[method]
    assert dynamic == []
    missing = {name: kind for name, kind in found.items() if name not in METRICS}
    assert missing == {}
    assert {name: kind for name, kind in found.items() if METRICS[name].kind != kind} == {}


def test_series_of_a_silent_process_expire() -> None:
    """`expire` forgets a process not heard from within the ttl: its series leave the
    exposition and the totals, and free their place under the series cap."""
    store = MetricsStore(max_series=3)
    store.apply_batch(_batch("worker:old", ["counter", "events.folded", 5.0, {}, 1.0],
                             ["counter", "actor.restarts", 1.0, {}, 1.0]), now=100.0)
    store.apply_batch(_batch("worker:new", ["counter", "events.folded", 2.0, {}, 1.0]), now=200.0)
    assert store.snapshot()["counters"]["events.folded"] == 7.0
    assert store.expire(now=250.0, ttl=100.0) == ["worker:old"]
    snapshot = store.snapshot()
    assert snapshot["counters"] == {"events.folded": 2.0} and set(snapshot["processes"]) == {"worker:new"}
    assert "worker:old" not in store.prometheus_text().decode()
    store.apply_batch(_batch("worker:new", ["counter", "a", 1.0, {}, 1.0], ["counter", "b", 1.0, {}, 1.0]),
                      now=260.0)
    assert store.snapshot()["counters"] == {"events.folded": 2.0, "a": 1.0, "b": 1.0}
    assert store.expire(now=300.0, ttl=100.0) == []


def test_build_info_and_declared_counters_are_reported_with_every_heartbeat(published: Published) -> None:
    """A process sends `build.info` (1, with its versions) at its start and every heartbeat,
    and its declared counters at 0 each time: quiet processes stay alive, watched counters
    exist before their first increment."""
    instance = Metrics(published, process="gw", flush_interval=0.02, heartbeat=0.05)
    try:
        instance.declare([("relay.cache", {"result": "hit"})])
        deadline = time.monotonic() + WAIT
        while len(published.named("build.info")) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        instance.close()
    infos = published.named("build.info")
    assert len(infos) >= 3 and all(p[2] == 1.0 for p in infos)
    assert set(infos[0][3]) == {"version", "python"}
    zeros = published.named("relay.cache")
    assert len(zeros) >= 2 and all(p[2] == 0.0 and p[3] == {"result": "hit"} for p in zeros)


def test_a_process_tag_is_never_added(published: Published) -> None:
    instance = Metrics(published, process="worker:configs", global_tags={"process": "worker", "host": "a"})
    try:
        instance.incr("x")
        instance.flush()
    finally:
        instance.close()
    assert published.named("x")[0][3] == {"host": "a"}


def test_a_tap_sees_every_batch_even_when_publishing_fails() -> None:
    seen: list[tuple[str, list[Any]]] = []

    def broken(data: bytes) -> None:
        raise ConnectionError("nats is down")

    instance = Metrics(broken, process="gateway", flush_interval=60)
    instance.add_tap(lambda process, points: seen.append((process, points)))
    try:
        instance.incr("relay.cache", tags={"result": "miss"})
        instance.flush()
    finally:
        instance.close()
    # Then the next batches carry the drop counts of the failed publishes.
    assert [(p, [pt[1] for pt in pts]) for p, pts in seen][0] == ("gateway", ["relay.cache"])


def test_docs_list_every_metric() -> None:
    from pathlib import Path

    from bus.metric_catalogue import METRICS

    text = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    assert [name for name in METRICS if f"| `{name}` |" not in text] == []


def test_a_timer_summary_folds_like_its_timings(recorder: Metrics, published: Published) -> None:
    """Timings folded where they were measured (the gateway's request timer) and sent as one
    `timer_summary` point give the store the same series as one timer point per timing."""
    from domain.metrics_store import TimerStats

    timings = [0.001, 0.004, 0.02, 0.3, 7.0, 45.0]
    folded = TimerStats()
    for seconds in timings:
        folded.add(seconds)
        recorder.timing("one.by.one", seconds, {"route": "/r/"})
    recorder.timer_summary("folded", folded.summary(), {"route": "/r/"})
    recorder.flush()
    points = published.named("one.by.one") + published.named("folded")
    each, summed = MetricsStore(), MetricsStore()
    each.apply_batch({"process": "p", "points": published.named("one.by.one")})
    summed.apply_batch({"process": "p", "points": [[*p[:1], "one.by.one", *p[2:]] for p in published.named("folded")]})
    assert len(points) == len(timings) + 1
    assert summed.snapshot() == each.snapshot()
    assert summed.prometheus_text() == each.prometheus_text()
    assert summed.snapshot()["timers"]["one.by.one{route=/r/}"]["count"] == len(timings)


@pytest.mark.parametrize("value", [[1, 0.1], [2, 0.3, 0.1, 0.2] + [1] + [0] * 12, [1, float("nan"), 0.1, 0.1] + [1] + [0] * 12,
                                   [1, 0.1, 0.2, 0.1] + [1] + [0] * 12, [0, 0, 0, 0] + [0] * 13, "many", 3.0,
                                   [-1, 0.1, 0.1, 0.1] + [-1] + [0] * 12])
def test_a_malformed_timer_summary_is_rejected(value: Any) -> None:
    store = MetricsStore()
    store.apply_batch({"process": "p", "points": [["timer_summary", "t", value, {}, 1.0]]})
    assert store.rejected_points == 1
    assert store.snapshot()["timers"] == {}


def test_the_wire_takes_a_timer_summary_only_as_a_list_of_numbers() -> None:
    good = [["timer_summary", "t", [1, 0.1, 0.1, 0.1] + [0, 0, 0, 0, 0, 0, 1] + [0] * 6, {}, 1.0]]
    assert decode_batch(encode_batch("p", good))["points"] == good
    for value in (0.5, ["a"], {"count": 1}):
        with pytest.raises(MalformedBatch):
            decode_batch(encode_batch("p", [["timer_summary", "t", value, {}, 1.0]]))


def test_the_gateway_records_its_request_timings_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """gateway/app.py RequestTimers: many requests, one timer_summary point per series."""
    import asyncio

    from gateway.app import RequestTimers

    sent: list[tuple[str, list[float], dict[str, str]]] = []
    monkeypatch.setattr(metrics_module, "timer_summary", lambda name, summary, tags: sent.append((name, summary, tags)))

    async def main() -> None:
        timers = RequestTimers(every=0.05)
        for seconds in (0.001, 0.002, 0.003):
            timers.add(seconds, ("/api/0/relays/projectconfigs/", "200", "3"))
        timers.add(0.5, ("/_health/", "503"))
        assert sent == []  # nothing per request
        await asyncio.sleep(0.2)

    asyncio.run(main())
    by_route = {tags["route"]: (name, summary, tags) for name, summary, tags in sent}
    assert len(sent) == 2 and {name for name, _, _ in sent} == {"gateway.requests"}
    name, summary, tags = by_route["/api/0/relays/projectconfigs/"]
    assert tags == {"route": "/api/0/relays/projectconfigs/", "status": "200", "version": "3"}
    assert summary[:4] == [3, pytest.approx(0.006), 0.001, 0.003]
    assert by_route["/_health/"][2] == {"route": "/_health/", "status": "503"}
