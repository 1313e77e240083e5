"""A reading client follows a Redis Cluster's topology (bus/redis_clients.follow_topology):
a replica added while gateways run is read from, with no restart - the way an operator
adds read capacity (issue 15's read cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus import redis_clients
from tests.redis_cluster import RedisClusterUnderTest


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterUnderTest]:
    c = RedisClusterUnderTest(tmp_path / "cluster").start()
    yield c
    c.stop()


def evals(cluster: RedisClusterUnderTest, i: int) -> int:
    return int(cluster.node(i).info("commandstats").get("cmdstat_eval", {}).get("calls", 0))


def test_a_replica_added_later_is_read_from(cluster: RedisClusterUnderTest) -> None:
    writer = redis_clients.sync_client(cluster.url("operator"), cluster=True)
    names = [f"relayconfig:k{i}" for i in range(60)]
    redis_clients.write_batch(writer, {n: n.encode() for n in names})

    async def main() -> None:
        reader = redis_clients.async_client(cluster.url("gateway", nodes=1), cluster=True, replicas=True)
        follow = asyncio.ensure_future(redis_clients.follow_topology(reader, every=0.1))
        try:
            assert await redis_clients.get_many(reader, names) == [n.encode() for n in names]
            new = await asyncio.to_thread(cluster.add_replica, 0)
            before = evals(cluster, new)
            for _ in range(100):  # the next rounds of the slot table name the new replica
                assert await redis_clients.get_many(reader, names) == [n.encode() for n in names]
                if evals(cluster, new) > before:
                    break
                await asyncio.sleep(0.05)
            assert evals(cluster, new) > before, "the new replica was never read from"
        finally:
            follow.cancel()
            await reader.aclose()

    asyncio.run(main())
    writer.close()
