"""How costs grow: request time with batch size, materialization time with projects.

    python -m bench.bench_growth [--max-projects 100000]

1. v3 request latency for batches of 1, 10, 100 and 500 cached keys through the real
   gateway process (one relay, sequential requests), with the per-key cost beside it.
2. Materialization time - build every config of N projects and write it to Redis, the
   config builder's own code path - for 1k, 10k and 100k projects, with the per-project
   cost beside it. Linear growth shows as a flat per-item cost.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import types
import uuid

from actors.configs import ConfigActor
from actors.worker import Worker
from bench._servers import import_keys, percentile, servers
from bench.bench_relay import load, spawn
from bus.cache import RedisConfigCache
from bus.embedded import free_port
from bus.seams import InMemoryBus
from domain.state import DomainState
from messages.events import DomainEvent
from tests.system import RelayClient


def synthetic_state(projects: int, per_org: int = 1000) -> DomainState:
    state = DomainState()
    seq = 0
    for o in range(max(1, projects // per_org)):
        slug = f"org{o}"
        events = [DomainEvent("OrgCreated", slug, {"name": slug}),
                  DomainEvent("OrgOptionSet", slug, {"key": "sentry:safe_fields", "value": ["id"]})]
        for p in range(per_org):
            events.append(DomainEvent("ProjectCreated", slug, {"project": f"p{p}", "name": None, "template": None}))
            if p % 3 == 0:
                events.append(DomainEvent("ProjectOptionSet", slug, {"project": f"p{p}", "key": "sentry:origins",
                                                                     "value": [f"a{p}.example.com"]}))
            events.append(DomainEvent("KeyCreated", slug, {"project": f"p{p}", "public_key": uuid.uuid4().hex,
                                                           "rate_limit": None}))
        seq += 1
        state.apply(seq, events)
    return state


def materialization(redis_url: str, sizes: list[int]) -> None:
    print("materialization (build + write to Redis), config builder code path")
    for n in sizes:
        builder = ConfigActor(types.SimpleNamespace(), InMemoryBus(), RedisConfigCache(redis_url))  # type: ignore[arg-type]
        builder.state = synthetic_state(n)
        keys = list(builder.state.keys)
        started = time.perf_counter()
        builder.materialize(keys, keep=False)
        elapsed = time.perf_counter() - started
        print(f"  {n:>7} projects  {elapsed:8.2f} s   {elapsed / n * 1e6:7.1f} us/project")


def request_growth(nats_url: str, redis_url: str) -> None:
    worker = Worker(["commands", "keys", "orgs", "configs"], nats_url, redis_url, instrument=False).start()
    port = free_port()
    gateway = spawn(["cli", "gateway", "--bind", f"127.0.0.1:{port}", "--nats-url", nats_url,
                     "--redis-url", redis_url], port)
    try:
        url = f"http://127.0.0.1:{port}"
        relay = RelayClient(url)

        keys = asyncio.run(import_keys(nats_url, "growth", 500, relay.public_key_str))
        relay.register()
        relay.poll(keys, lambda r: not r["pending"] and len(r["configs"]) == len(keys), timeout=60)
        print("v3 request latency by batch size (one relay, sequential)")
        for batch in (1, 10, 100, 500):
            asyncio.run(load(url, relay, keys[:batch], 10, 1))
            _, latencies = asyncio.run(load(url, relay, keys[:batch], max(20, 4000 // batch), 1))
            p50 = percentile(latencies, 50)
            print(f"  {batch:>3} keys  p50 {p50 * 1e3:7.2f} ms  p99 {percentile(latencies, 99) * 1e3:7.2f} ms"
                  f"   {p50 / batch * 1e6:7.1f} us/key")
    finally:
        gateway.terminate()
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-projects", type=int, default=100_000)
    args = parser.parse_args()
    with servers() as (nats_server, redis_server):
        request_growth(nats_server.url, redis_server.url)
        materialization(redis_server.url, [n for n in (1_000, 10_000, 100_000) if n <= args.max_projects])


if __name__ == "__main__":
    main()
