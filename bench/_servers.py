"""Shared set-up for benchmarks: throwaway nats-server and redis-server in a temp dir."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bus.embedded import ServerProcess, start_nats, start_redis


@contextlib.contextmanager
def servers(redis_maxmemory: str | None = None) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """`redis_maxmemory`: Redis's maxmemory (default: `up`'s, 256mb)."""
    with tempfile.TemporaryDirectory(prefix="relayctl-bench-") as tmp:
        nats = start_nats(Path(tmp) / "nats")
        redis = start_redis(Path(tmp) / "redis", maxmemory=redis_maxmemory)
        try:
            yield nats, redis
        finally:
            nats.stop()
            redis.stop()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def import_keys(nats_url: str, org: str, count: int, relay_public_key: str) -> list[str]:
    """One org of `count` projects with a key each, and the relay allowed as internal."""
    import uuid

    import nats

    from bus.client import request

    nc = await nats.connect(nats_url)
    projects = [{"slug": f"p{i}", "keys": [{"publicKey": uuid.uuid4().hex}]} for i in range(count)]
    await request(nc, "import.org", {"org": {"slug": org, "projects": projects}}, timeout=60)
    await request(nc, "relay.allow", {"public_key": relay_public_key, "internal": True})
    await nc.close()
    return [p["keys"][0]["publicKey"] for p in projects]  # type: ignore[index]


async def wait_instances(nats_url: str, name: str, count: int) -> None:
    import nats

    nc = await nats.connect(nats_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        inbox = nc.new_inbox()
        seen: list[bytes] = []

        async def collect(msg: Any) -> None:
            seen.append(msg.data)
        sub = await nc.subscribe(inbox, cb=collect)
        await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
        await asyncio.sleep(0.3)
        await sub.unsubscribe()
        if len([s for s in seen if b'"name"' in s]) >= count:
            break
    await nc.close()
