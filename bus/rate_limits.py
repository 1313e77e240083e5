"""Rate limits for envelopes SDKs send straight to the gateway, counted in Redis.

The quotas are the ones the config builder puts in a project's config (`config.quotas`,
Relay's schema: key-level `scope: "key"` with the numeric key id, project and org level),
so an SDK talking to relayctl is limited exactly as a Relay with the same config limits
it; envelopes forwarded by a relay were limited there and are not counted again.

Counters are fixed windows shared by every gateway: `ratelimit:<scope>:<scope id>:<quota
id>:<window>:<slot>` (slot = now // window), INCR then EXPIRE in one round trip, so a
counter disappears with its window. Over the limit the envelope is refused with 429,
`Retry-After` (seconds to the end of the window) and `X-Sentry-Rate-Limits` as Sentry
writes it (`<retry after>:<categories>:<scope>:<reason code>`). When Redis cannot be
reached the envelope is let through: a rate limit protects the upstream, losing data to
an outage of the counter store would be worse.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import structlog

from bus import metrics

log = structlog.get_logger(__name__)

RATE_LIMIT_PREFIX = "ratelimit:"

# Envelope item types and the data categories Relay counts them in (the ones a quota names).
ITEM_CATEGORIES: dict[str, tuple[str, ...]] = {
    "event": ("error", "default"),
    "security": ("security",),
    "transaction": ("transaction",),
    "attachment": ("attachment",),
    "session": ("session",),
    "sessions": ("session",),
    "profile": ("profile",),
    "replay_event": ("replay",),
    "replay_recording": ("replay",),
    "replay_video": ("replay",),
    "check_in": ("monitor",),
    "span": ("span",),
    "user_report": ("user_report_v2",),
    "feedback": ("user_report_v2",),
}


@dataclass(frozen=True)
class Quota:
    id: str
    scope: str
    scope_id: str
    limit: int
    window: int
    categories: tuple[str, ...]
    reason_code: str

    def applies(self, categories: set[str]) -> bool:
        return bool(categories) and (not self.categories or bool(categories & set(self.categories)))


@dataclass(frozen=True)
class Limited:
    retry_after: int
    quota: Quota

    @property
    def header(self) -> str:
        """`X-Sentry-Rate-Limits`: retry after, categories (empty: all), scope, reason code."""
        return f"{self.retry_after}:{';'.join(self.quota.categories)}:{self.quota.scope}:{self.quota.reason_code}"


def quotas_of(config: dict[str, Any]) -> tuple[Quota, ...]:
    """The countable quotas of a project config's `config` (a limit and a window each)."""
    out = []
    for raw in config.get("quotas") or ():
        if not isinstance(raw, dict):
            continue
        limit, window = raw.get("limit"), raw.get("window")
        if not (isinstance(limit, int) and isinstance(window, int)) or limit < 0 or window <= 0:
            continue  # no limit (None) or no window: nothing to count
        categories = tuple(c for c in raw.get("categories") or () if isinstance(c, str))
        out.append(Quota(str(raw.get("id") or ""), str(raw.get("scope") or "organization"),
                         str(raw.get("scopeId") or ""), limit, window, categories,
                         str(raw.get("reasonCode") or "")))
    return tuple(out)


def envelope_categories(item_types: list[str]) -> set[str]:
    return {c for t in item_types for c in ITEM_CATEGORIES.get(t, ())}


class RateLimiter:
    """Checks and counts one envelope against the quotas that apply to it."""

    def __init__(self, redis: Any, clock: Any = time.time) -> None:
        self.redis = redis
        self.clock = clock

    async def check(self, quotas: tuple[Quota, ...], categories: set[str]) -> Limited | None:
        applying = [q for q in quotas if q.applies(categories)]
        if not applying or self.redis is None:
            return None
        now = self.clock()
        names = []
        for quota in applying:
            slot = int(now // quota.window)
            names.append(f"{RATE_LIMIT_PREFIX}{quota.scope}:{quota.scope_id}:{quota.id}:{quota.window}:{slot}")
        try:
            pipe = self.redis.pipeline(transaction=False)
            for name, quota in zip(names, applying):
                pipe.incr(name)
                pipe.expire(name, quota.window + 1)
            results = await pipe.execute()
        except Exception as exc:
            log.warning("ingest.rate_limit_unavailable", error=str(exc))
            metrics.incr("ingest.rate_limit_unavailable")
            return None
        worst: Limited | None = None
        for i, quota in enumerate(applying):
            if int(results[2 * i]) > quota.limit:
                end = (int(now // quota.window) + 1) * quota.window
                limited = Limited(max(1, math.ceil(end - now)), quota)
                if worst is None or limited.retry_after > worst.retry_after:
                    worst = limited
        return worst
