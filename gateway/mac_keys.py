"""Checking what Redis holds: the MAC keys of its writers, and the values already checked.

Nothing read from Redis is trusted unchecked: every `relayconfig:*` and `relayauth:*`
value must carry a valid MAC (bus/config_cache.py) under the key of its writer
(bus/cache_keys.py). One gateway holds one `MacKeys` (gateway/keys.py `MAC_KEYS`), which
its relay auth, project config and ingest routes all check with, fetched at start.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from bus.cache_keys import reader_key
from bus.config_cache import verify
from bus.runtime import BUS_ERRORS

log = structlog.get_logger(__name__)


class MacKeys:
    """The MAC keys the gateway checks Redis entries with, fetched from JetStream KV on
    first use. Until a writer has made its key, every entry of its kind reads as a miss
    and the fetch is tried again at most every `retry` seconds; an entry that fails its
    check makes the key be fetched again (at most every `recheck` seconds), in case the
    writers' key was made anew (its bucket lost)."""

    def __init__(self, retry: float = 1.0, recheck: float = 10.0) -> None:
        self.retry = retry
        self.recheck = recheck
        self._keys: dict[str, bytes] = {}
        self._fetched: dict[str, float] = {}

    async def get(self, nc: Any, bucket: str) -> bytes | None:
        key = self._keys.get(bucket)
        if key is not None:
            return key
        last = self._fetched.get(bucket)
        if nc is None or not nc.is_connected or (last is not None and time.monotonic() - last < self.retry):
            return None
        return await self._fetch(nc, bucket)

    async def _fetch(self, nc: Any, bucket: str) -> bytes | None:
        self._fetched[bucket] = time.monotonic()
        try:
            key = await reader_key(nc, bucket)
        except BUS_ERRORS as exc:
            log.warning("gateway.mac_key_unavailable", bucket=bucket, error=str(exc))
            return self._keys.get(bucket)
        if key is not None:
            self._keys[bucket] = key
        return key

    async def prefetch(self, nc: Any, buckets: tuple[str, ...], interval: float = 1.0) -> None:
        """Fetch every bucket's key now, and retry each second until all are known: a gateway
        that has not served a request yet (a sibling sharing the port) must already hold the
        keys when NATS goes away, or it could check no cached entry during the outage."""
        while True:
            for bucket in buckets:
                if bucket not in self._keys and nc is not None and nc.is_connected:
                    await self._fetch(nc, bucket)
            if all(bucket in self._keys for bucket in buckets):
                return
            await asyncio.sleep(interval)

    def known(self, bucket: str) -> bool:
        return bucket in self._keys

    def failed(self, nc: Any, bucket: str) -> None:
        """An entry failed its check: look the key up again, unless that was done just now."""
        last = self._fetched.get(bucket)
        if nc is not None and nc.is_connected and (last is None or time.monotonic() - last >= self.recheck):
            self._fetched[bucket] = time.monotonic()
            asyncio.ensure_future(self._fetch(nc, bucket))


class VerifiedValues:
    """Config values whose MAC checked out, by Redis key name, so that a value read again -
    the usual case: a config changes far less often than relays poll it - costs a byte
    comparison instead of another MAC. Bounded: it starts over when full, and whenever the
    key changes."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._key: bytes | None = None
        self._values: dict[str, bytes] = {}

    def check(self, key: bytes, name: str, value: bytes) -> bool:
        if key != self._key:
            self._key, self._values = key, {}
        if self._values.get(name) == value:
            return True
        if not verify(key, name, value):
            return False
        if len(self._values) >= self.max_entries:
            self._values.clear()
        self._values[name] = value
        return True
