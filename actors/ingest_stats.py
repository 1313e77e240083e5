"""Per-project outcome counts for `relayctl project stats` (last hour and last 24 hours),
and the index of the error events the forwarder stored (`relayctl event list/show`).

Counts are kept in Redis, shared by every forwarder instance: one hash per project and
minute, `ingest:stats:<project id>:<minute>` (minute = Unix time // 60), field
`<outcome>|<category>`, value the quantity, expiring after 25 hours. A summary reads the
last 1440 minutes in one pipeline. Counting happens after the stream delivered a message and
before it is acked, so a redelivery (a forwarder killed between the two) can count an
envelope twice: the counts are "at least", like Sentry's own outcome counts.

The index: a sorted set per project, `ingest:events:<project id>` (member the event id,
score the time received; entries older than the events' 30 days are trimmed on each add),
and `ingest:event:<event id>` -> project id (so `event show` needs no project). The events
themselves stay in the `rc_error_events` bucket; a listing reads only the newest entries.
(A KV watch could list the bucket, but a role that may both write a store and create its
consumers could have anything delivered anywhere: NATS roles never get both.)

`InMemoryIngestStats` has the same contract, for a system without Redis (one instance) and
unit tests.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Protocol

from domain.ingest import Outcome

__all__ = ["PREFIX", "STATS_PREFIX", "InMemoryIngestStats", "IngestStats", "RedisIngestStats", "summarize"]

PREFIX = "ingest:"
STATS_PREFIX = PREFIX + "stats:"
EVENTS_PREFIX = PREFIX + "events:"
EVENT_PREFIX = PREFIX + "event:"
EVENT_TTL = 30 * 24 * 3600
MINUTES = 24 * 60
TTL = 25 * 3600
WINDOWS = {"lastHour": 60, "last24h": MINUTES}


class IngestStats(Protocol):
    async def add(self, outcomes: Iterable[Outcome], at: float) -> None: ...
    async def minutes(self, project_id: int, now: float) -> list[tuple[int, dict[str, int]]]: ...
    async def index_event(self, project_id: int, event_id: str, received: float) -> None: ...
    async def recent_events(self, project_id: int, limit: int) -> list[str]: ...
    async def event_project(self, event_id: str) -> int | None: ...
    async def close(self) -> None: ...


def _key(project_id: int, minute: int) -> str:
    return f"{STATS_PREFIX}{project_id}:{minute}"


def _grouped(outcomes: Iterable[Outcome], at: float) -> dict[tuple[int, int], dict[str, int]]:
    minute = int(at // 60)
    grouped: dict[tuple[int, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for outcome in outcomes:
        if outcome.project_id is not None and outcome.quantity > 0:
            grouped[(outcome.project_id, minute)][f"{outcome.outcome}|{outcome.category}"] += outcome.quantity
    return grouped


def summarize(minutes: list[tuple[int, dict[str, int]]], now: float) -> dict[str, Any]:
    """`{"lastHour": {...}, "last24h": {...}}`, each `{"accepted": n, "filtered": n,
    "rate_limited": n, "invalid": n, ..., "byCategory": {category: {outcome: n}}}`."""
    current = int(now // 60)
    result: dict[str, Any] = {}
    for name, span in WINDOWS.items():
        totals: dict[str, int] = {"accepted": 0, "filtered": 0, "rate_limited": 0, "invalid": 0}
        by_category: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for minute, fields in minutes:
            if current - minute >= span:
                continue
            for field, count in fields.items():
                outcome, _, category = field.partition("|")
                totals[outcome] = totals.get(outcome, 0) + count
                by_category[category][outcome] += count
        result[name] = {**totals, "byCategory": {c: dict(v) for c, v in sorted(by_category.items())}}
    return result


class RedisIngestStats:
    def __init__(self, url: str, *, cluster: bool = False) -> None:
        from bus import redis_clients

        self.redis = redis_clients.async_client(url, cluster=cluster)

    async def add(self, outcomes: Iterable[Outcome], at: float) -> None:
        grouped = _grouped(outcomes, at)
        if not grouped:
            return
        pipe = self.redis.pipeline(transaction=False)
        for (project_id, minute), fields in grouped.items():
            key = _key(project_id, minute)
            for field, count in fields.items():
                pipe.hincrby(key, field, count)
            pipe.expire(key, TTL)
        await pipe.execute()

    async def minutes(self, project_id: int, now: float) -> list[tuple[int, dict[str, int]]]:
        current = int(now // 60)
        wanted = [current - offset for offset in range(MINUTES)]
        pipe = self.redis.pipeline(transaction=False)
        for minute in wanted:
            pipe.hgetall(_key(project_id, minute))
        answers = await pipe.execute()
        return [(minute, {k.decode(): int(v) for k, v in fields.items()})
                for minute, fields in zip(wanted, answers, strict=True) if fields]

    async def index_event(self, project_id: int, event_id: str, received: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        key = f"{EVENTS_PREFIX}{project_id}"
        pipe.zadd(key, {event_id: received})
        pipe.zremrangebyscore(key, "-inf", received - EVENT_TTL)
        pipe.expire(key, EVENT_TTL)
        pipe.set(f"{EVENT_PREFIX}{event_id}", str(project_id), ex=EVENT_TTL)
        await pipe.execute()

    async def recent_events(self, project_id: int, limit: int) -> list[str]:
        members = await self.redis.zrevrange(f"{EVENTS_PREFIX}{project_id}", 0, max(0, limit - 1))
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]

    async def event_project(self, event_id: str) -> int | None:
        value = await self.redis.get(f"{EVENT_PREFIX}{event_id}")
        return int(value) if value is not None else None

    async def close(self) -> None:
        await self.redis.aclose()


class InMemoryIngestStats:
    def __init__(self) -> None:
        self.counts: dict[tuple[int, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.events: dict[int, dict[str, float]] = {}
        self.event_projects: dict[str, int] = {}

    async def add(self, outcomes: Iterable[Outcome], at: float) -> None:
        for key, fields in _grouped(outcomes, at).items():
            for field, count in fields.items():
                self.counts[key][field] += count
        oldest = int(time.time() // 60) - MINUTES
        for key in [k for k in self.counts if k[1] < oldest]:
            del self.counts[key]

    async def minutes(self, project_id: int, now: float) -> list[tuple[int, dict[str, int]]]:
        return [(minute, dict(fields)) for (pid, minute), fields in self.counts.items() if pid == project_id]

    async def index_event(self, project_id: int, event_id: str, received: float) -> None:
        self.events.setdefault(project_id, {})[event_id] = received
        self.event_projects[event_id] = project_id

    async def recent_events(self, project_id: int, limit: int) -> list[str]:
        entries = self.events.get(project_id, {})
        return sorted(entries, key=lambda e: entries[e], reverse=True)[:limit]

    async def event_project(self, event_id: str) -> int | None:
        return self.event_projects.get(event_id)

    async def close(self) -> None:
        return None
