"""Noticing that the Redis an actor materializes into has lost what it wrote.

The config builder and the org access actor write derived data (`relayconfig:*`,
`relayauth:*`) to Redis, which may die, restart empty or be flushed while the actors keep
running. The event log is the source of truth, so the cure is to write everything again;
`RedisWatch` says when. It counts a failed write, a failed check, or a new server
(`run_id` changed: a restart, even one no write saw) as a loss, and answers True once
Redis is reachable again. `tick()` tells an actor `CheckRedis()` every `interval`
seconds, so a loss is noticed even when no event arrives; an actor whose entries expire
(`rewrite_every`) writes them all again on the same tick.

What these actors write is sealed with a MAC (bus/config_cache.py); `MaterializingActor`
fetches the key of its kind of entry (`mac_bucket`, bus/cache_keys.py) before it writes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pykka
import structlog

from actors.base import ProjectionActor
from bus.cache import CacheUnavailable, ConfigCache
from bus.runtime import BusRuntime
from bus.seams import Bus

log = structlog.get_logger(__name__)
CHECK_INTERVAL = 1.0


@dataclass
class CheckRedis:
    """Tick: see whether Redis lost what this actor wrote, and write it again if so."""


class RedisWatch:
    def __init__(self, cache: ConfigCache, name: str) -> None:
        self.cache = cache
        self.name = name
        self.run_id: str | None = None
        self.lost = False
        self.needs_rebuild()  # the baseline: which server our first writes go to

    def failed(self) -> None:
        """A write failed: what Redis holds may be stale or gone."""
        if not self.lost:
            log.warning("redis.lost", actor=self.name)
        self.lost = True

    def needs_rebuild(self) -> bool:
        """True when Redis is reachable after a loss: the caller writes everything again
        (and calls `failed()` if that write fails too)."""
        try:
            run_id = self.cache.server_id()
        except CacheUnavailable:
            self.failed()
            return False
        if self.run_id is not None and run_id != self.run_id:
            self.failed()  # restarted: empty, or an old copy of the data
        self.run_id = run_id
        if not self.lost:
            return False
        self.lost = False
        log.info("redis.back", actor=self.name)
        return True


def tick(ref: pykka.ActorRef[Any], interval: float = CHECK_INTERVAL) -> threading.Event:
    """Tell `ref` a `CheckRedis` every `interval` seconds until it dies or the event is set."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            try:
                ref.tell(CheckRedis())
            except pykka.ActorDeadError:
                return

    threading.Thread(target=run, name="redis-watch", daemon=True).start()
    return stop


class MaterializingActor(ProjectionActor):
    """A projection that writes derived data to Redis, sealed with the key in `mac_bucket`,
    and writes all of it again when Redis comes back after losing it (`rewrite_all`, once
    `materialized` is set) and every `rewrite_every` seconds if set."""

    mac_bucket = ""
    rewrite_every: float | None = None

    def __init__(self, runtime: BusRuntime, bus: Bus, cache: ConfigCache | None) -> None:
        super().__init__(runtime, bus)
        self.cache = cache  # None: a process that materializes nothing (answers queries only)
        self.watch = RedisWatch(cache, self.name) if cache is not None else None
        self.materialized = False
        self.mac_key = b""  # the key of `mac_bucket`, fetched at start
        self.rewritten_at = 0.0
        self._ticker: threading.Event | None = None

    def rewrite_all(self) -> None:
        raise NotImplementedError

    def on_start(self) -> None:
        if self.cache is not None:
            self.mac_key = self.runtime.call(self.bus.writer_key(self.mac_bucket))
        super().on_start()
        if self.watch is not None:
            self._ticker = tick(self.actor_ref)

    def on_stop(self) -> None:
        if self._ticker is not None:
            self._ticker.set()
        super().on_stop()

    def on_other(self, message: Any) -> Any:
        if isinstance(message, CheckRedis):
            if self.materialized and self.watch is not None and (
                    self.watch.needs_rebuild() or (self.rewrite_every is not None
                                                   and time.monotonic() - self.rewritten_at >= self.rewrite_every)):
                self.rewritten_at = time.monotonic()
                self.rewrite_all()
            return None
        return super().on_other(message)
