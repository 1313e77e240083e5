"""Projection snapshots: the folded state at a stream sequence, so a start need not
replay the whole stream.

Snapshots live in the JetStream object store `rc_snapshots` (an object store rather than
a KV bucket because a large installation's state exceeds one NATS message), one object
per projection name, as a zstd-compressed msgpack map that carries the sequence it covers.
A snapshot is only an optimisation: any failure to read or write one is logged and the
projection replays from the start instead.
"""

from __future__ import annotations

from typing import Any

import structlog
import zstandard
from nats.aio.client import Client as NATS
from nats.js import api

from messages.envelope import pack, unpack
from messages.subjects import SNAPSHOT_BUCKET

log = structlog.get_logger(__name__)


class SnapshotStore:
    def __init__(self, nc: NATS, bucket: str = SNAPSHOT_BUCKET, replicas: int = 1) -> None:
        self.js = nc.jetstream()
        self.bucket = bucket
        self.replicas = replicas
        self._store: Any = None

    async def _objects(self) -> Any:
        if self._store is None:
            try:
                self._store = await self.js.object_store(self.bucket)
            except Exception:
                self._store = await self.js.create_object_store(
                    self.bucket, config=api.ObjectStoreConfig(storage=api.StorageType.FILE, replicas=self.replicas))
        return self._store

    async def save(self, name: str, snapshot: dict[str, Any]) -> bool:
        try:
            data = zstandard.ZstdCompressor(level=3).compress(pack(snapshot))
            await (await self._objects()).put(name, data)
            return True
        except Exception as exc:
            log.warning("snapshot.save_failed", name=name, error=str(exc))
            return False

    async def load(self, name: str) -> dict[str, Any] | None:
        try:
            result = await (await self._objects()).get(name)
        except Exception:
            return None  # none yet (or unreadable): replay from the start
        try:
            value = unpack(zstandard.ZstdDecompressor().decompress(result.data))
            return value if isinstance(value, dict) else None
        except Exception as exc:
            log.warning("snapshot.unreadable", name=name, error=str(exc))
            return None
