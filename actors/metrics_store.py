"""Aggregation of internal metrics batches, and their Prometheus exposition.

The metrics actor decodes the batches every process publishes (see `bus.metrics`
for the wire schema) and folds them into a `MetricsStore`. The store is pure state:
no I/O, no threads, no clock (timestamps come from the points).

Aggregation per kind, for every series (name, tags) and every process:

- counter:      sum of increments
- timer:        count, sum, min, max and cumulative Prometheus buckets (seconds)
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

`prometheus_text()` exposes every series per process (label ``process``; a tag of
that name is renamed ``tag_process``), names prefixed ``relayctl_`` with every
character Prometheus does not allow (dots, dashes) turned into ``_``: counters as
``<name>_total``, timers as histograms ``<name>_seconds``, distributions as
summaries, gauges as gauges.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from bus.metrics import COUNTER, DISTRIBUTION, GAUGE, TIMER

__all__ = ["TIMER_BUCKETS", "MetricsStore", "prometheus_name", "series_key"]

# Prometheus client defaults, extended to 30 s for slow upstream calls.
TIMER_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PREFIX: Final = "relayctl_"

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_RESERVED_LABELS = frozenset({"le", "quantile", "process"})

TagItems = tuple[tuple[str, str], ...]
SeriesId = tuple[str, TagItems]


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


@dataclass
class _Stats:
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


@dataclass
class _Gauge:
    value: float
    ts: float


@dataclass
class _Aggregate:
    """All series of one scope (a single process, or the total)."""

    counters: dict[SeriesId, float] = field(default_factory=dict)
    timers: dict[SeriesId, _Stats] = field(default_factory=dict)
    gauges: dict[SeriesId, _Gauge] = field(default_factory=dict)
    distributions: dict[SeriesId, _Stats] = field(default_factory=dict)

    def has(self, kind: str, series: SeriesId) -> bool:
        return series in self._table(kind)

    def add(self, kind: str, series: SeriesId, value: float, ts: float) -> None:
        if kind == COUNTER:
            self.counters[series] = self.counters.get(series, 0.0) + value
        elif kind == GAUGE:
            current = self.gauges.get(series)
            if current is None or ts >= current.ts:
                self.gauges[series] = _Gauge(value, ts)
        elif kind == TIMER:
            self.timers.setdefault(series, _Stats()).add(value)
        elif kind == DISTRIBUTION:
            self.distributions.setdefault(series, _Stats()).add(value)

    def _table(self, kind: str) -> Mapping[SeriesId, object]:
        tables: dict[str, Mapping[SeriesId, object]] = {
            COUNTER: self.counters,
            GAUGE: self.gauges,
            TIMER: self.timers,
            DISTRIBUTION: self.distributions,
        }
        return tables[kind]

    def as_json(self) -> dict[str, dict[str, Any]]:
        return {
            "counters": {series_key(*s): v for s, v in sorted(self.counters.items())},
            "timers": {series_key(*s): v.as_json() for s, v in sorted(self.timers.items())},
            "gauges": {series_key(*s): g.value for s, g in sorted(self.gauges.items())},
            "distributions": {
                series_key(*s): v.as_json() for s, v in sorted(self.distributions.items())
            },
        }


class MetricsStore:
    """Aggregated internal metrics of every process.

    `max_series` bounds memory per process: points that would create a new series
    beyond it are ignored and counted in `rejected_points`, as are malformed points.
    """

    def __init__(self, *, max_series: int = 10_000) -> None:
        self._max_series = max_series
        self._total = _Aggregate()
        self._by_process: dict[str, _Aggregate] = {}
        self._series_count: dict[str, int] = {}
        self.rejected_points = 0

    def apply_batch(self, batch: Mapping[str, Any]) -> None:
        """Fold one decoded batch (``{"process": str, "points": [...]}``) in."""
        process = str(batch.get("process", "unknown"))
        aggregate = self._by_process.setdefault(process, _Aggregate())
        for point in batch.get("points", ()):
            try:
                kind, name, value, tags, ts = point
                series: SeriesId = (
                    str(name),
                    tuple(sorted((str(k), str(v)) for k, v in dict(tags).items())),
                )
                value, ts = float(value), float(ts)
            except (TypeError, ValueError):
                self.rejected_points += 1
                continue
            if kind not in (COUNTER, GAUGE, TIMER, DISTRIBUTION):
                self.rejected_points += 1
                continue
            if not aggregate.has(kind, series):
                if self._series_count.get(process, 0) >= self._max_series:
                    self.rejected_points += 1
                    continue
                self._series_count[process] = self._series_count.get(process, 0) + 1
            aggregate.add(kind, series, value, ts)
            self._total.add(kind, series, value, ts)

    def snapshot(self) -> dict[str, Any]:
        """Return the aggregated state as JSON-friendly maps (see module docstring)."""
        snapshot: dict[str, Any] = self._total.as_json()
        snapshot["processes"] = {
            process: aggregate.as_json() for process, aggregate in sorted(self._by_process.items())
        }
        finite: dict[str, Any] = _finite(snapshot)
        return finite

    def prometheus_text(self) -> bytes:
        """Return every series in the Prometheus text exposition format."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_StoreCollector(self._by_process))
        return generate_latest(registry)


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

    def __init__(self, by_process: Mapping[str, _Aggregate]) -> None:
        self._by_process = by_process

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
                metric = family(prometheus_name(name), "counter", f"Counter {name}")
                if metric is not None:
                    metric.add_sample(metric.name + "_total", _labels(tags, process), total)
            for (name, tags), gauge in sorted(aggregate.gauges.items()):
                metric = family(prometheus_name(name), "gauge", f"Gauge {name}")
                if metric is not None:
                    metric.add_sample(metric.name, _labels(tags, process), gauge.value)
            for (name, tags), stats in sorted(aggregate.timers.items()):
                metric = family(prometheus_name(name) + "_seconds", "histogram", f"Timer {name}")
                if metric is not None:
                    _add_histogram(metric, _labels(tags, process), stats)
            for (name, tags), stats in sorted(aggregate.distributions.items()):
                metric = family(prometheus_name(name), "summary", f"Distribution {name}")
                if metric is not None:
                    labels = _labels(tags, process)
                    metric.add_sample(metric.name + "_count", labels, stats.count)
                    metric.add_sample(metric.name + "_sum", labels, stats.sum)
        yield from families.values()


def _labels(tags: Iterable[tuple[str, str]], process: str) -> dict[str, str]:
    # A tag named "process" is exposed as "tag_process": the batch's process wins.
    return {**{_label_name(k): v for k, v in tags}, "process": process}


def _add_histogram(metric: Metric, labels: dict[str, str], stats: _Stats) -> None:
    cumulative = 0
    for bound, count in zip((*TIMER_BUCKETS, math.inf), stats.buckets, strict=True):
        cumulative += count
        le = "+Inf" if bound == math.inf else repr(bound)
        metric.add_sample(metric.name + "_bucket", {**labels, "le": le}, cumulative)
    metric.add_sample(metric.name + "_count", labels, stats.count)
    metric.add_sample(metric.name + "_sum", labels, stats.sum)
