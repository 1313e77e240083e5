"""Aggregation of internal metrics batches, and their Prometheus exposition.

The metrics actor decodes the batches every process publishes (see `bus.metrics`
for the wire schema) and folds them into a `MetricsStore`. The store is pure state:
no I/O, no threads, no clock (timestamps come from the points).

Aggregation per kind, for every series (name, tags) and every process:

- counter:      sum of increments
- timer:        count, sum, min, max and cumulative Prometheus buckets (seconds); a
                `timer_summary` point (many timings folded where they were measured) adds
                its count, sum, buckets to the same series
- gauge:        last value by point timestamp
- distribution: count, sum, min, max

`snapshot()` shapes the state for JSON (the gateway and ``relayctl metrics``)::

    {
      "counters":      {"name{tag=v,...}": 3.0, ...},
      "timers":        {"name{tag=v,...}": {"count", "sum", "min", "max"}, ...},
      "gauges":        {"name{tag=v,...}": 1.0, ...},
      "distributions": {"name{tag=v,...}": {"count", "sum", "min", "max"}, ...},
      "processes":     {"<process>": {<the four maps above, that process only>}},
    }

A series key is the metric name, then the tags sorted by name in braces; a series
without tags is the bare name. The top-level maps are the total over all
processes (for gauges: the most recent value reported by any process).

`prometheus_text()` exposes every series per process (label ``process``, from the
batch; a tag of that name is dropped, never exposed twice), names prefixed ``relayctl_``
with every character Prometheus does not allow (dots, dashes) turned into ``_``:
counters as ``<name>_total``, timers as histograms ``<name>_seconds``, distributions as
summaries, gauges as gauges. HELP lines come from the `help` texts the store is given
(bus/metric_catalogue.py), else name the kind.

Processes come and go: `expire(now, ttl)` forgets every series of a process whose last
batch came more than `ttl` seconds before `now` (the times `apply_batch` was given), so a
dead process's series leave the exposition and the totals instead of staying forever.

Bounds, because any process that may publish metrics chooses names, tags and its own
process name, and one stray tag taken from request input would mint a series per request:

- names, tag names and tag values are cut to `MAX_TEXT` characters;
- at most `max_series_per_name` series per metric name and process; points of further
  tag combinations are folded into the overflow series ``name{overflow=true}``
  (counted in `overflow_points`), so totals stay right while the cardinality stays flat;
- at most `max_series` series and `max_processes` processes in all; points beyond those
  are dropped (counted in `rejected_points`);
- both outputs take a `max_bytes` budget (the metrics actor passes what fits in one NATS
  reply): past it whole metric families (Prometheus) or series (JSON) are left out, and
  the output says so - the comment line `TRUNCATION_MARKER ...` in the text, and
  ``"truncated": true`` with ``"left_out": n`` in the snapshot. Both also carry the
  store's own counts (`relayctl_metrics_store_*` / ``"store"``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from messages.metrics import COUNTER, DISTRIBUTION, GAUGE, TIMER, TIMER_SUMMARY

__all__ = ["OVERFLOW_TAGS", "TIMER_BUCKETS", "TimerStats", "TRUNCATION_MARKER", "MetricsStore", "prometheus_name",
           "series_key"]

# Prometheus client defaults, extended to 30 s for slow upstream calls.
TIMER_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PREFIX: Final = "relayctl_"

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_RESERVED_LABELS = frozenset({"le", "quantile", "process"})

TagItems = tuple[tuple[str, str], ...]
SeriesId = tuple[str, TagItems]

MAX_SERIES: Final = 20_000
MAX_SERIES_PER_NAME: Final = 200
MAX_PROCESSES: Final = 64
MAX_TEXT: Final = 200
OVERFLOW_TAGS: Final[TagItems] = (("overflow", "true"),)
TRUNCATION_MARKER: Final = b"# relayctl: exposition truncated"


def prometheus_name(name: str) -> str:
    """Return the exposed Prometheus metric name for a dotted metric name."""
    return PREFIX + _INVALID_NAME_CHARS.sub("_", name)


def _label_name(tag: str) -> str:
    label = _INVALID_LABEL_CHARS.sub("_", tag)
    # Names starting with a digit are invalid, "__" is reserved by Prometheus, and
    # "le"/"quantile"/"process" are labels the exposition itself sets.
    if not label or label[0].isdigit() or label.startswith("__") or label in _RESERVED_LABELS:
        label = "tag_" + label
    return label


def series_key(name: str, tags: TagItems) -> str:
    """Return the snapshot key ``name{a=1,b=2}`` of a series."""
    if not tags:
        return name
    return name + "{" + ",".join(f"{k}={v}" for k, v in tags) + "}"


def _clip(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT]


@dataclass
class TimerStats:
    """count/sum/min/max, plus bucket counts when used for timers."""

    count: int = 0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    # Non-cumulative count per bucket of TIMER_BUCKETS, last slot is +Inf.
    buckets: list[int] = field(default_factory=lambda: [0] * (len(TIMER_BUCKETS) + 1))

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        for i, bound in enumerate(TIMER_BUCKETS):
            if value <= bound:
                self.buckets[i] += 1
                return
        self.buckets[-1] += 1

    def as_json(self) -> dict[str, float]:
        return {"count": self.count, "sum": self.sum, "min": self.min, "max": self.max}

    def summary(self) -> list[float]:
        """The value of a `timer_summary` point (messages/metrics.py) carrying these timings."""
        return [self.count, self.sum, self.min, self.max, *self.buckets]

    @classmethod
    def from_summary(cls, value: Any) -> TimerStats:
        """The timings a `timer_summary` point carries; ValueError when it is not one
        (wrong length, a count that is not its buckets' sum, a negative count, NaN)."""
        if not isinstance(value, (list, tuple)) or len(value) != 4 + len(TIMER_BUCKETS) + 1:
            raise ValueError("a timer summary is [count, sum, min, max, *buckets]")
        count, total, low, high = (float(v) for v in value[:4])
        buckets = [int(b) for b in value[4:]]
        if (any(b < 0 for b in buckets) or count != sum(buckets) or count < 1
                or not all(math.isfinite(v) for v in (total, low, high)) or low > high):
            raise ValueError("an inconsistent timer summary")
        return cls(int(count), total, low, high, buckets)

    def merged(self, other: TimerStats) -> TimerStats:
        return TimerStats(self.count + other.count, self.sum + other.sum, min(self.min, other.min),
                      max(self.max, other.max), [a + b for a, b in zip(self.buckets, other.buckets, strict=True)])


@dataclass
class _Gauge:
    value: float
    ts: float


@dataclass
class _Aggregate:
    """All series of one scope (a single process, or the total)."""

    counters: dict[SeriesId, float] = field(default_factory=dict)
    timers: dict[SeriesId, TimerStats] = field(default_factory=dict)
    gauges: dict[SeriesId, _Gauge] = field(default_factory=dict)
    distributions: dict[SeriesId, TimerStats] = field(default_factory=dict)

    def has(self, kind: str, series: SeriesId) -> bool:
        return series in self._table(kind)

    def size(self) -> int:
        return len(self.counters) + len(self.timers) + len(self.gauges) + len(self.distributions)

    def merge(self, other: _Aggregate) -> None:
        """Add `other`'s series to these (counters and stats add up, the newer gauge wins)."""
        for series, value in other.counters.items():
            self.counters[series] = self.counters.get(series, 0.0) + value
        for series, gauge in other.gauges.items():
            current = self.gauges.get(series)
            if current is None or gauge.ts >= current.ts:
                self.gauges[series] = gauge
        for mine, theirs in ((self.timers, other.timers), (self.distributions, other.distributions)):
            for series, stats in theirs.items():
                mine[series] = mine[series].merged(stats) if series in mine else stats

    def add(self, kind: str, series: SeriesId, value: Any, ts: float) -> None:
        """One point's value: a float, or the TimerStats of a `timer_summary`."""
        if kind == TIMER_SUMMARY:
            held = self.timers.get(series)
            self.timers[series] = held.merged(value) if held is not None else value
        elif kind == COUNTER:
            self.counters[series] = self.counters.get(series, 0.0) + value
        elif kind == GAUGE:
            current = self.gauges.get(series)
            if current is None or ts >= current.ts:
                self.gauges[series] = _Gauge(value, ts)
        elif kind == TIMER:
            self.timers.setdefault(series, TimerStats()).add(value)
        elif kind == DISTRIBUTION:
            self.distributions.setdefault(series, TimerStats()).add(value)

    def _table(self, kind: str) -> Mapping[SeriesId, object]:
        tables: dict[str, Mapping[SeriesId, object]] = {
            COUNTER: self.counters,
            GAUGE: self.gauges,
            TIMER: self.timers,
            DISTRIBUTION: self.distributions,
        }
        return tables[kind]

    def json_entries(self) -> Iterator[tuple[str, str, Any]]:
        """(map, series key, JSON value) of every series, in snapshot order."""
        for s, v in sorted(self.counters.items()):
            yield "counters", series_key(*s), v
        for s, g in sorted(self.gauges.items()):
            yield "gauges", series_key(*s), g.value
        for s, stats in sorted(self.timers.items()):
            yield "timers", series_key(*s), stats.as_json()
        for s, stats in sorted(self.distributions.items()):
            yield "distributions", series_key(*s), stats.as_json()


_MAPS: Final = ("counters", "timers", "gauges", "distributions")


class MetricsStore:
    """Aggregated internal metrics of every process, bounded as the module docstring says."""

    def __init__(self, *, max_series: int = MAX_SERIES, max_series_per_name: int = MAX_SERIES_PER_NAME,
                 max_processes: int = MAX_PROCESSES, help: Mapping[str, str] | None = None) -> None:
        self._max_series = max_series
        self._max_series_per_name = max_series_per_name
        self._max_processes = max_processes
        self._help = dict(help or {})
        self._by_process: dict[str, _Aggregate] = {}
        self._last_seen: dict[str, float] = {}
        self._series = 0
        self._per_name: dict[tuple[str, str], int] = {}
        self.rejected_points = 0
        self.overflow_points = 0
        self.expired_processes = 0

    def apply_batch(self, batch: Mapping[str, Any], now: float | None = None) -> None:
        """Fold one decoded batch (``{"process": str, "points": [...]}``) in, received at
        `now` (what `expire` compares; default: the newest point's own time)."""
        process = _clip(batch.get("process", "unknown"))
        points = batch.get("points", ())
        aggregate = self._by_process.get(process)
        if aggregate is None:
            if len(self._by_process) >= self._max_processes:
                self.rejected_points += len(points) if isinstance(points, list) else 1
                return
            aggregate = self._by_process[process] = _Aggregate()
        if now is None:
            stamps = [p[4] for p in points if isinstance(p, list) and len(p) == 5
                      and isinstance(p[4], (int, float))] if isinstance(points, list) else []
            now = max(stamps, default=self._last_seen.get(process, 0.0))
        self._last_seen[process] = max(float(now), self._last_seen.get(process, float("-inf")))
        for point in points:
            try:
                kind, name, value, tags, ts = point
                series: SeriesId = (
                    _clip(name),
                    # The batch names the process; a tag of that name would only repeat it.
                    tuple(sorted((_clip(k), _clip(v)) for k, v in dict(tags).items() if k != "process")),
                )
                value = TimerStats.from_summary(value) if kind == TIMER_SUMMARY else float(value)
                ts = float(ts)
            except (TypeError, ValueError):
                self.rejected_points += 1
                continue
            if kind not in (COUNTER, GAUGE, TIMER, DISTRIBUTION, TIMER_SUMMARY):
                self.rejected_points += 1
                continue
            admitted = self._admit(process, aggregate, TIMER if kind == TIMER_SUMMARY else kind, series)
            if admitted is None:
                self.rejected_points += 1
                continue
            aggregate.add(kind, admitted, value, ts)

    def expire(self, now: float, ttl: float) -> list[str]:
        """Forget the processes not heard from for `ttl` seconds before `now` (their series
        and their share of the totals); returns their names."""
        gone = [p for p, seen in self._last_seen.items() if now - seen > ttl and p in self._by_process]
        for process in gone:
            aggregate = self._by_process.pop(process)
            del self._last_seen[process]
            self._series -= aggregate.size()
            for key in [k for k in self._per_name if k[0] == process]:
                del self._per_name[key]
        self.expired_processes += len(gone)
        return gone

    def processes(self) -> dict[str, float]:
        """Every process the store holds series of, with when it was last heard from."""
        return {p: self._last_seen.get(p, 0.0) for p in self._by_process}

    def _totals(self) -> _Aggregate:
        total = _Aggregate()
        for aggregate in self._by_process.values():
            total.merge(aggregate)
        return total

    def _admit(self, process: str, aggregate: _Aggregate, kind: str, series: SeriesId) -> SeriesId | None:
        """The series a point is folded into: its own, the overflow series, or None (dropped)."""
        if aggregate.has(kind, series):
            return series
        name = series[0]
        overflow = self._per_name.get((process, name), 0) >= self._max_series_per_name
        if overflow:
            self.overflow_points += 1
            series = (name, OVERFLOW_TAGS)
            if aggregate.has(kind, series):
                return series
        if self._series >= self._max_series:
            return None
        self._series += 1
        if not overflow:
            self._per_name[(process, name)] = self._per_name.get((process, name), 0) + 1
        return series

    def snapshot(self, max_bytes: int | None = None) -> dict[str, Any]:
        """Return the aggregated state as JSON-friendly maps (see module docstring).

        With `max_bytes`, series are added (totals first, then per process) only while the
        JSON stays within it; the ones left out are counted in ``left_out``."""
        budget = _Budget(max_bytes)
        snapshot: dict[str, Any] = {m: {} for m in _MAPS}
        for table, key, value in self._totals().json_entries():
            budget.put(snapshot[table], key, value)
        processes: dict[str, Any] = {}
        for process, aggregate in sorted(self._by_process.items()):
            maps: dict[str, Any] = {m: {} for m in _MAPS}
            if budget.room(len(process) + 80):
                processes[process] = maps
            for table, key, value in aggregate.json_entries():
                if process in processes:
                    budget.put(maps[table], key, value)
                else:
                    budget.left_out += 1
        snapshot["processes"] = processes
        snapshot["truncated"] = budget.left_out > 0
        snapshot["left_out"] = budget.left_out
        snapshot["store"] = {"series": self._series, "rejected_points": self.rejected_points,
                             "overflow_points": self.overflow_points}
        finite: dict[str, Any] = _finite(snapshot)
        return finite

    def prometheus_text(self, max_bytes: int | None = None) -> bytes:
        """Return every series in the Prometheus text exposition format.

        With `max_bytes`, whole metric families are added only while the text stays within
        it; then a `TRUNCATION_MARKER` comment says how many were left out."""
        # The store's own counts first: they explain a truncated or overflowing exposition.
        parts = [_store_family("rejected_points", "Points dropped: malformed, or past a series cap",
                               self.rejected_points),
                 _store_family("overflow_points", "Points folded into an overflow series",
                               self.overflow_points)]
        budget = (max_bytes - 2 * len(TRUNCATION_MARKER) - 200) if max_bytes is not None else None
        size = sum(len(part) for part in parts)
        left_out = 0
        for metric in _StoreCollector(self._by_process, self._help).collect():
            if left_out:
                left_out += 1
                continue
            text = _render(metric)
            if budget is not None and size + len(text) > budget:
                left_out = 1
                continue
            parts.append(text)
            size += len(text)
        if left_out:
            parts.append(TRUNCATION_MARKER + f": {left_out} metric families left out to stay within "
                         f"{max_bytes} bytes (the NATS message limit)\n".encode())
        return b"".join(parts)


class _Budget:
    """Counts the JSON size of what a snapshot holds so far."""

    def __init__(self, max_bytes: int | None) -> None:
        # Room for the fixed keys and the store's counts.
        self.left = None if max_bytes is None else max_bytes - 512
        self.left_out = 0

    def room(self, size: int) -> bool:
        if self.left is None:
            return True
        if size > self.left:
            return False
        self.left -= size
        return True

    def put(self, table: dict[str, Any], key: str, value: Any) -> None:
        if self.room(len(json.dumps(key)) + len(json.dumps(value)) + 4):  # and ": ", ", "
            table[key] = value
        else:
            self.left_out += 1


class _OneFamily(Collector):
    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self._metric


def _render(metric: Metric) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OneFamily(metric))
    return generate_latest(registry)


def _store_family(name: str, doc: str, value: float) -> bytes:
    metric = Metric(PREFIX + "metrics_store_" + name, doc, "counter")
    metric.add_sample(metric.name + "_total", {}, value)
    return _render(metric)


def _finite(value: Any) -> Any:
    # JSON has no infinity; an empty min/max (never happens after one add) or an
    # infinite gauge would otherwise make the snapshot unserializable.
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _StoreCollector(Collector):
    """Turns per-process aggregates into Prometheus metric families."""

    def __init__(self, by_process: Mapping[str, _Aggregate], help: Mapping[str, str]) -> None:
        self._by_process = by_process
        self._help = help

    def doc(self, kind: str, name: str) -> str:
        return self._help.get(name) or f"{kind} {name}"

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}

        def family(name: str, typ: str, doc: str) -> Metric | None:
            # Two metrics can sanitize to one name ("a.b" and "a_b", or a counter and
            # a gauge both named "x"); the first kind wins so the output stays valid.
            existing = families.get(name)
            if existing is None:
                existing = families[name] = Metric(name, doc, typ)
            return existing if existing.type == typ else None

        for process, aggregate in sorted(self._by_process.items()):
            for (name, tags), total in sorted(aggregate.counters.items()):
                metric = family(prometheus_name(name), "counter", self.doc("Counter", name))
                if metric is not None:
                    metric.add_sample(metric.name + "_total", _labels(tags, process), total)
            for (name, tags), gauge in sorted(aggregate.gauges.items()):
                metric = family(prometheus_name(name), "gauge", self.doc("Gauge", name))
                if metric is not None:
                    metric.add_sample(metric.name, _labels(tags, process), gauge.value)
            for (name, tags), stats in sorted(aggregate.timers.items()):
                metric = family(prometheus_name(name) + "_seconds", "histogram", self.doc("Timer", name))
                if metric is not None:
                    _add_histogram(metric, _labels(tags, process), stats)
            for (name, tags), stats in sorted(aggregate.distributions.items()):
                metric = family(prometheus_name(name), "summary", self.doc("Distribution", name))
                if metric is not None:
                    labels = _labels(tags, process)
                    metric.add_sample(metric.name + "_count", labels, stats.count)
                    metric.add_sample(metric.name + "_sum", labels, stats.sum)
        yield from families.values()


def _labels(tags: Iterable[tuple[str, str]], process: str) -> dict[str, str]:
    # The batch's process is the label; a tag of that name was dropped when folded in.
    return {**{_label_name(k): v for k, v in tags if k != "process"}, "process": process}


def _add_histogram(metric: Metric, labels: dict[str, str], stats: TimerStats) -> None:
    cumulative = 0
    for bound, count in zip((*TIMER_BUCKETS, math.inf), stats.buckets, strict=True):
        cumulative += count
        le = "+Inf" if bound == math.inf else repr(bound)
        metric.add_sample(metric.name + "_bucket", {**labels, "le": le}, cumulative)
    metric.add_sample(metric.name + "_count", labels, stats.count)
    metric.add_sample(metric.name + "_sum", labels, stats.sum)
