"""In-process internal metrics: counters, timers, gauges and distributions.

Every relayctl process records its own operational metrics through a `Metrics`
instance. Recording never blocks and never raises: a point goes into a bounded
in-process queue (when the queue is full the point is dropped and the drop is
counted), and a background flusher thread sends the queued points in batches
through an injected `publish(bytes)` callable (later wired to a NATS publish to the
metrics actor, which aggregates them with `domain.metrics_store.MetricsStore`).

Batch wire format (msgpack, produced by `encode_batch`, read by `decode_batch`)::

    {
        "process": "gateway",                  # str: who recorded the points
        "points": [
            [kind, name, value, tags, ts],     # one list per point
            ...
        ],
    }

    kind   str    one of "counter", "timer", "gauge", "distribution", "timer_summary"
    name   str    dotted metric name, e.g. "relay.cache" (bus/metric_catalogue.py lists them)
    value  float  counter increment, timer seconds, gauge value, or sample; for
                  "timer_summary" a list: many timings of the series folded where they were
                  measured (the gateway's per-request timer), [count, sum, min, max,
                  *bucket counts] (domain/metrics_store.py TimerStats.summary)
    tags   dict   str -> str, global tags merged in, cardinality tags removed
    ts     float  Unix time (seconds) the point was recorded

Tags that would explode cardinality are dropped before queuing: any tag whose
name ends in ``_id``, and the tags ``project``, ``event`` and ``group``; tag names and
values are cut to ``MAX_TAG_VALUE`` characters. Callers must still never tag raw request
input (the aggregating store caps series per name, see ``domain.metrics_store``).

Drops are themselves reported: the next batch after points were lost carries a
counter ``internal.metrics.dropped_points`` tagged ``reason=queue_full`` or
``reason=publish_failed``.

The batch names its process; a tag ``process`` is never added to the points (the
exposition's ``process`` label comes from the batch). Every `heartbeat` seconds, and at the
start, a process records the gauge ``build.info`` (1, tagged with the relayctl and Python
versions) and adds 0 to each declared counter (`declare`): the metrics actor forgets a
process it has not heard from for a while (``actors/metrics.py``), so a quiet process keeps
its series alive, and counters worth alerting on exist at 0 before they first move. A
`tap` sees every batch before it is published (the gateway keeps its own series with it,
to serve `/metrics` when NATS is down).

The module also holds a process-wide default instance. Until `configure` is
called, the module-level helpers (`incr`, `timer`, ... or `metrics.incr`, ...) are
no-ops, so library code can record metrics unconditionally.
"""

from __future__ import annotations

import asyncio
import platform
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import msgpack
import structlog

from bus.metric_catalogue import WATCHED_COUNTERS
from messages.metrics import COUNTER, DISTRIBUTION, GAUGE, KINDS, TIMER, TIMER_SUMMARY

__all__ = [
    "COUNTER",
    "DISTRIBUTION",
    "FlushedEvery",
    "GAUGE",
    "KINDS",
    "TIMER",
    "MalformedBatch",
    "Metrics",
    "Point",
    "Tags",
    "close",
    "configure",
    "declare",
    "decode_batch",
    "distribution",
    "encode_batch",
    "gauge",
    "incr",
    "metrics",
    "sanitize_tags",
    "timer",
    "timer_summary",
    "timing",
]

log = structlog.get_logger(__name__)


# Tag names carrying per-entity values: one series per project/event would make the
# aggregated store (and Prometheus) grow without bound.
_HIGH_CARDINALITY_TAGS: Final = frozenset({"project", "event", "group"})

DROPPED_POINTS_METRIC: Final = "internal.metrics.dropped_points"
# Tag values are meant to be a handful of known words; nothing needs more than this.
MAX_TAG_VALUE: Final = 200

Tags = Mapping[str, Any]
# [kind, name, value, tags, ts]
Point = list[Any]
Publish = Callable[[bytes], None]
Tap = Callable[[str, list[Point]], None]
BUILD_INFO_METRIC: Final = "build.info"
HEARTBEAT: Final = 15.0  # seconds between two build.info points of one process


def build_tags() -> dict[str, str]:
    """The tags of ``build.info``: this package's version and the Python version."""
    try:
        from importlib.metadata import version

        relayctl = version("relayctl")
    except ImportError:  # PackageNotFoundError: run from a tree that is not installed
        relayctl = "unknown"
    return {"version": relayctl, "python": platform.python_version()}


class MalformedBatch(ValueError):
    """A metrics batch did not match the documented schema."""


def sanitize_tags(tags: Tags | None) -> dict[str, str]:
    """Return the tags as str -> str without the high-cardinality ones, each value cut to
    `MAX_TAG_VALUE` characters (a long value would make batches exceed the NATS limit)."""
    if not tags:
        return {}
    return {
        str(key)[:MAX_TAG_VALUE]: str(value)[:MAX_TAG_VALUE]
        for key, value in tags.items()
        if value is not None
        and not str(key).endswith("_id")
        and str(key) not in _HIGH_CARDINALITY_TAGS
    }


def encode_batch(process: str, points: list[Point]) -> bytes:
    """Serialize a batch of points to the msgpack wire format."""
    data: bytes = msgpack.packb({"process": process, "points": points}, use_bin_type=True)
    return data


def decode_batch(data: bytes) -> dict[str, Any]:
    """Parse and validate a batch produced by `encode_batch`.

    Raises `MalformedBatch` if the bytes are not a batch.
    """
    try:
        batch = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise MalformedBatch(f"not msgpack: {exc}") from exc
    if not isinstance(batch, dict):
        raise MalformedBatch("batch is not a map")
    process = batch.get("process")
    points = batch.get("points")
    if not isinstance(process, str) or not isinstance(points, list):
        raise MalformedBatch("batch needs a str 'process' and a list 'points'")
    for point in points:
        if (
            not isinstance(point, list)
            or len(point) != 5
            or point[0] not in KINDS
            or not isinstance(point[1], str)
            or not (isinstance(point[2], (int, float)) if point[0] != TIMER_SUMMARY
                    else isinstance(point[2], list) and all(isinstance(v, (int, float)) for v in point[2]))
            or not isinstance(point[3], dict)
            or not isinstance(point[4], (int, float))
        ):
            raise MalformedBatch(f"bad point: {point!r}")
    return {"process": process, "points": points}


class Metrics:
    """Non-blocking metrics recorder for one process.

    Points are queued (bounded by `max_queue`) and a daemon thread publishes them
    every `flush_interval` seconds, or sooner once `batch_size` points are waiting.
    `publish` runs on a helper thread that the flusher waits on for at most
    `publish_timeout` seconds: a publish that raises loses its batch, and one that
    hangs makes later batches drop (counted) until it returns, so neither a broken
    nor a stuck transport can stop the flusher or pile up threads.
    """

    def __init__(
        self,
        publish: Publish,
        *,
        process: str,
        global_tags: Tags | None = None,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        publish_timeout: float = 2.0,
        heartbeat: float | None = None,
    ) -> None:
        self.process = process
        self._publish = publish
        # The batch says which process it is; a "process" tag too would only repeat it.
        self._global_tags = {k: v for k, v in sanitize_tags(global_tags).items() if k != "process"}
        self._heartbeat = heartbeat
        self._last_beat = -float("inf")
        self._declared: list[tuple[str, dict[str, str]]] = []
        self._taps: list[Tap] = []
        self._build_tags = build_tags()
        self._queue: queue.Queue[Point] = queue.Queue(maxsize=max_queue)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._publish_timeout = publish_timeout

        self._drops_lock = threading.Lock()
        self._dropped_full = 0
        self._dropped_publish = 0
        self.dropped_points = 0  # total ever dropped, for tests and debugging

        # Serializes draining so close()/flush() and the flusher never interleave.
        self._flush_lock = threading.Lock()
        self._stuck_publish: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._flusher = threading.Thread(
            target=self._run_flusher, name=f"metrics-flusher-{process}", daemon=True
        )
        if heartbeat is not None:
            self._beat()
        self._flusher.start()

    def declare(self, counters: Sequence[tuple[str, Tags]]) -> None:
        """Report these counters (name, tags) at 0 now and with every heartbeat, so they
        exist before their first increment."""
        for name, tags in counters:
            entry = (name, sanitize_tags(tags))
            if entry not in self._declared:
                self._declared.append(entry)
                self.incr(name, 0, tags)

    def add_tap(self, tap: Tap) -> None:
        """Call `tap(process, points)` with every batch before it is published (on the
        flusher thread; it must be quick and thread-safe; what it raises is ignored)."""
        self._taps.append(tap)

    def _beat(self) -> None:
        self._last_beat = time.monotonic()
        self.gauge(BUILD_INFO_METRIC, 1, self._build_tags)
        for name, tags in self._declared:
            self.incr(name, 0, tags)

    # -- recording ---------------------------------------------------------------

    def incr(self, name: str, value: float = 1, tags: Tags | None = None) -> None:
        """Add `value` to the counter `name`."""
        self._record(COUNTER, name, value, tags)

    def timing(self, name: str, seconds: float, tags: Tags | None = None) -> None:
        """Record a duration in seconds."""
        self._record(TIMER, name, seconds, tags)

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        """Set the gauge `name` to `value`."""
        self._record(GAUGE, name, value, tags)

    def distribution(self, name: str, value: float, tags: Tags | None = None) -> None:
        """Record one sample of a distribution."""
        self._record(DISTRIBUTION, name, value, tags)

    def timer_summary(self, name: str, summary: Sequence[float], tags: Tags | None = None) -> None:
        """Record many timings of one series at once (a `TimerStats.summary()`)."""
        self._record(TIMER_SUMMARY, name, summary, tags)

    @contextmanager
    def timer(self, name: str, tags: Tags | None = None) -> Iterator[None]:
        """Time the block in seconds, tagged ``result=success`` or ``result=failure``.

        The block's exception, if any, propagates unchanged.
        """
        start = time.perf_counter()
        result = "failure"
        try:
            yield
            result = "success"
        finally:
            self.timing(name, time.perf_counter() - start, {**(tags or {}), "result": result})

    def _record(self, kind: str, name: str, value: Any, tags: Tags | None) -> None:
        # The caller's work matters more than its metrics: nothing here may raise.
        try:
            point: Point = [
                kind,
                name,
                [float(v) for v in value] if kind == TIMER_SUMMARY else float(value),
                {**self._global_tags, **sanitize_tags(tags)},
                time.time(),
            ]
        except Exception:  # the caller's boundary: a point that cannot be recorded never raises there
            log.debug("metrics.unrecordable_point", name=name, exc_info=True)
            return
        if self._closed.is_set():
            return
        try:
            self._queue.put_nowait(point)
        except queue.Full:
            self._count_drop(full=1)
            return
        if self._queue.qsize() >= self._batch_size:
            self._wake.set()

    def _count_drop(self, *, full: int = 0, publish: int = 0) -> None:
        with self._drops_lock:
            self._dropped_full += full
            self._dropped_publish += publish
            self.dropped_points += full + publish

    # -- flushing ----------------------------------------------------------------

    def flush(self) -> None:
        """Publish everything queued so far, on the calling thread."""
        with self._flush_lock:
            # Bounded so busy producers cannot keep one flush (or close) going forever.
            for _ in range(self._queue.maxsize // self._batch_size + 1):
                points = self._drain()
                if points:
                    self._publish_guarded(points)
                if self._queue.empty():
                    return

    def close(self) -> None:
        """Stop recording, publish what is queued and stop the flusher thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        self._flusher.join(timeout=self._publish_timeout * 2 + 1)
        self.flush()

    def _run_flusher(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            try:
                if self._heartbeat is not None and time.monotonic() - self._last_beat >= self._heartbeat:
                    self._beat()
                self.flush()
            except Exception:  # the flusher thread's boundary: it outlives any bug in a single flush
                log.exception("metrics.flush_failed")

    def _drain(self) -> list[Point]:
        points: list[Point] = []
        while len(points) < self._batch_size:
            try:
                points.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._drops_lock:
            drops = {"queue_full": self._dropped_full, "publish_failed": self._dropped_publish}
            self._dropped_full = self._dropped_publish = 0
        now = time.time()
        for reason, count in drops.items():
            if count:
                tags = {**self._global_tags, "reason": reason}
                points.append([COUNTER, DROPPED_POINTS_METRIC, float(count), tags, now])
        return points

    def _publish_guarded(self, points: list[Point]) -> None:
        for tap in self._taps:
            try:
                tap(self.process, points)
            except Exception:  # a tap is another module's callback: its failure is not this batch's
                log.debug("metrics.tap_failed", exc_info=True)
        if self._stuck_publish is not None:
            if self._stuck_publish.is_alive():
                self._count_drop(publish=len(points))
                return
            self._stuck_publish = None
        try:
            data = encode_batch(self.process, points)
        except (TypeError, ValueError, OverflowError):  # msgpack: a value it cannot pack
            log.exception("metrics.encode_failed")
            self._count_drop(publish=len(points))
            return

        failed = threading.Event()

        def call_publish() -> None:
            try:
                self._publish(data)
            except Exception:  # the sender thread's boundary: a failed publish is counted as a drop
                failed.set()
                log.debug("metrics.publish_failed", exc_info=True)

        sender = threading.Thread(target=call_publish, name="metrics-publish", daemon=True)
        sender.start()
        sender.join(self._publish_timeout)
        if sender.is_alive():
            # Leave it running; later batches are dropped until it returns.
            self._stuck_publish = sender
            self._count_drop(publish=len(points))
            log.warning("metrics.publish_hung", seconds=self._publish_timeout)
        elif failed.is_set():
            self._count_drop(publish=len(points))


class FlushedEvery:
    """Points kept in the process and recorded every `every` seconds (and on `flush`): a
    subclass folds what it counts or times and records it in `_record`. The first point
    after a flush schedules the next one on the running asyncio loop, so a quiet process
    records nothing and a busy one once per interval, not once per request."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._scheduled = False

    def _due(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self.every, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        self._record()

    def _record(self) -> None:
        raise NotImplementedError


class _DefaultMetrics:
    """Forwards to the configured process-wide `Metrics`, or does nothing."""

    def __init__(self) -> None:
        self.instance: Metrics | None = None

    def incr(self, name: str, value: float = 1, tags: Tags | None = None) -> None:
        if self.instance is not None:
            self.instance.incr(name, value, tags)

    def timing(self, name: str, seconds: float, tags: Tags | None = None) -> None:
        if self.instance is not None:
            self.instance.timing(name, seconds, tags)

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        if self.instance is not None:
            self.instance.gauge(name, value, tags)

    def distribution(self, name: str, value: float, tags: Tags | None = None) -> None:
        if self.instance is not None:
            self.instance.distribution(name, value, tags)

    def timer_summary(self, name: str, summary: Sequence[float], tags: Tags | None = None) -> None:
        if self.instance is not None:
            self.instance.timer_summary(name, summary, tags)

    @contextmanager
    def timer(self, name: str, tags: Tags | None = None) -> Iterator[None]:
        if self.instance is None:
            yield
            return
        with self.instance.timer(name, tags):
            yield


metrics: Final = _DefaultMetrics()
incr = metrics.incr
timing = metrics.timing
gauge = metrics.gauge
distribution = metrics.distribution
timer = metrics.timer
timer_summary = metrics.timer_summary


def configure(
    publish: Publish,
    *,
    process: str,
    global_tags: Tags | None = None,
    **options: Any,
) -> Metrics:
    """Install the process-wide metrics instance (closing any previous one). Every process
    reports the watched counters it can move (bus/metric_catalogue.py) at 0 from here on."""
    close()
    options.setdefault("heartbeat", HEARTBEAT)
    metrics.instance = Metrics(publish, process=process, global_tags=global_tags, **options)
    metrics.instance.declare(WATCHED_COUNTERS)
    return metrics.instance


def declare(counters: Sequence[tuple[str, Tags]]) -> None:
    """`Metrics.declare` on the process-wide instance (nothing before `configure`)."""
    if metrics.instance is not None:
        metrics.instance.declare(counters)


def close() -> None:
    """Flush and remove the process-wide instance; helpers become no-ops again."""
    instance, metrics.instance = metrics.instance, None
    if instance is not None:
        instance.close()
