"""Shared set-up for benchmarks: throwaway nats-server and redis-server in a temp dir."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bus.embedded import ServerProcess, start_nats, start_redis


@contextlib.contextmanager
def servers() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with tempfile.TemporaryDirectory(prefix="relayctl-bench-") as tmp:
        nats = start_nats(Path(tmp) / "nats")
        redis = start_redis(Path(tmp) / "redis")
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
