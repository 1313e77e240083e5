"""The seam between the materializing actors and the cache they write: `ConfigCache`.

The config builder and the org access actor write sealed entries (bus/config_cache.py)
to a cache the gateways read. They need three things of it: write a batch (some keys set,
maybe with a time to live, some deleted) so that a reader sees all of it or none of it,
and say which server instance holds the data (a restarted Redis is empty: the actor
writes everything again, actors/redis_watch.py). `RedisConfigCache` is the real one;
`InMemoryConfigCache` is for unit tests of those actors (it can fail, and restart).
A cache that cannot be reached raises `CacheUnavailable`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Protocol

import redis

from bus import redis_clients
from messages.errors import Unavailable


class CacheUnavailable(Unavailable):
    """The cache did not take the write or answer the question."""


class ConfigCache(Protocol):
    def write(self, values: Mapping[str, bytes], *, delete: Iterable[str] = (), ttl: int | None = None) -> None:
        """Set `values` (each for `ttl` seconds if given) and delete `delete`, all at once."""

    def server_id(self) -> str:
        """Names the running server: it changes when the cache restarts (and forgot all)."""

    def get(self, name: str) -> bytes | None:
        """The value stored under `name` (None: none)."""


class RedisConfigCache:
    """A Redis server, or a Redis Cluster (`cluster`: `url` names start nodes); bounded
    socket waits, so a Redis that hangs stalls an actor briefly."""

    def __init__(self, url: str, *, cluster: bool = False) -> None:
        self.url = url
        self.cluster = cluster
        self._client: redis.Redis | redis.RedisCluster | None = None

    @property
    def client(self) -> redis.Redis | redis.RedisCluster:
        # A cluster client asks for the slot map when made: made on first use, so a
        # cluster that is down at start is a CacheUnavailable like any other outage.
        if self._client is None:
            try:
                self._client = redis_clients.sync_client(self.url, cluster=self.cluster)
            except redis.RedisError as exc:
                raise CacheUnavailable(f"redis cluster does not answer: {exc}") from None
        return self._client

    def write(self, values: Mapping[str, bytes], *, delete: Iterable[str] = (), ttl: int | None = None) -> None:
        # One transaction on one server: a relay sees the whole batch or none of it (compute,
        # then swap); on a cluster, one swap per node (bus/redis_clients.py write_batch).
        try:
            redis_clients.write_batch(self.client, values, delete, ttl)
        except redis.RedisError as exc:
            raise CacheUnavailable(f"redis write failed: {exc}") from None

    def server_id(self) -> str:
        try:
            return redis_clients.server_id(self.client)
        except redis.RedisError as exc:
            raise CacheUnavailable(f"redis does not answer: {exc}") from None

    def get(self, name: str) -> bytes | None:
        try:
            value = self.client.get(name)
        except redis.RedisError as exc:
            raise CacheUnavailable(f"redis does not answer: {exc}") from None
        return bytes(value) if value is not None else None  # type: ignore[arg-type]


class InMemoryConfigCache:
    """A cache in a dict. `down` makes every call fail; `restart()` forgets everything and
    changes the server id, like a Redis that restarted empty."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.expires: dict[str, float] = {}
        self.down = False
        self._id = secrets.token_hex(8)

    def _check(self) -> None:
        if self.down:
            raise CacheUnavailable("the in-memory cache is down")

    def write(self, values: Mapping[str, bytes], *, delete: Iterable[str] = (), ttl: int | None = None) -> None:
        self._check()
        for name, value in values.items():
            self.values[name] = bytes(value)
            if ttl is not None:
                self.expires[name] = time.monotonic() + ttl
            else:
                self.expires.pop(name, None)
        for name in delete:
            self.values.pop(name, None)
            self.expires.pop(name, None)

    def server_id(self) -> str:
        self._check()
        return self._id

    def get(self, name: str) -> bytes | None:
        self._check()
        if name in self.expires and self.expires[name] <= time.monotonic():
            return None
        return self.values.get(name)

    def restart(self) -> None:
        self.values.clear()
        self.expires.clear()
        self._id = secrets.token_hex(8)
