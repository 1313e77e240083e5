"""Benchmark of the event-sourced core: append rate, replay rate, request/reply.

    python -m bench.bench_core [--events N] [--requests N]

Prints, measured in one run on the same servers:
- event append rate (commits/s) through JetStreamEventStore with optimistic concurrency,
  beside a raw JetStream publish of the same bytes without headers (the floor);
- replay rate (commits/s) of a projection folding the whole stream;
- round trip of a relayctl request/reply through an actor micro service, beside a raw
  nats-py request to a bare echo subscriber.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import nats

from bench._servers import percentile, servers
from bus.client import request
from bus.eventstore import JetStreamEventStore
from domain.state import DomainState
from messages.events import DomainEvent, encode_commit


def make_commit(i: int) -> list[DomainEvent]:
    return [DomainEvent(type="OrgOptionSet", aggregate_id="bench", payload={"key": "sentry:origins", "value": [f"h{i}"]})]


async def bench_append_and_replay(url: str, n: int) -> None:
    nc = await nats.connect(url)
    store = JetStreamEventStore(nc)
    await store.ensure()
    await store.append([DomainEvent(type="OrgCreated", aggregate_id="bench", payload={"name": "bench"})], 0)
    expected = await store.last_sequence()
    started = time.perf_counter()
    for i in range(n):
        expected = await store.append(make_commit(i), expected)
    append_rate = n / (time.perf_counter() - started)

    js = nc.jetstream()
    await js.add_stream(name="FLOOR", subjects=["floor.>"])
    data = encode_commit(make_commit(0))
    started = time.perf_counter()
    for _ in range(n):
        await js.publish("floor.x", data)
    floor_rate = n / (time.perf_counter() - started)

    state = DomainState()
    last = await store.last_sequence()
    done = asyncio.get_running_loop().create_future()

    def fold(seq: int, events: list[DomainEvent]) -> None:
        state.apply(seq, events)
        if seq >= last and not done.done():
            done.set_result(None)

    started = time.perf_counter()
    sub = await store.follow(fold, 1)
    await done
    replay_rate = last / (time.perf_counter() - started)
    await sub.unsubscribe()
    await nc.close()
    print(f"event append        {append_rate:10.0f} commits/s   (raw JetStream publish floor: {floor_rate:.0f}/s,"
          f" ratio {append_rate / floor_rate:.2f})")
    print(f"replay (fold)       {replay_rate:10.0f} commits/s   ({last} commits)")


async def bench_round_trip(url: str, n: int) -> None:
    nc = await nats.connect(url)

    async def echo(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("bench.echo", cb=echo)
    raw: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        await nc.request("bench.echo", b"x" * 64, timeout=5)
        raw.append(time.perf_counter() - t)
    ours: list[float] = []
    payload = {"public_keys": ["0" * 32]}
    for _ in range(n):
        t = time.perf_counter()
        await request(nc, "keys.lookup", payload, timeout=5)
        ours.append(time.perf_counter() - t)
    await nc.close()
    for name, values in (("raw nats-py request", raw), ("relayctl keys.lookup", ours)):
        print(f"{name:<22} p50 {percentile(values, 50) * 1e6:8.0f} us   p99 {percentile(values, 99) * 1e6:8.0f} us")
    print(f"round trip overhead  p50 ratio {percentile(ours, 50) / percentile(raw, 50):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    from actors.worker import Worker

    with servers() as (nats_server, redis_server):
        asyncio.run(bench_append_and_replay(nats_server.url, args.events))
        worker = Worker(["keys"], nats_server.url, redis_server.url, instrument=False).start()
        try:
            asyncio.run(bench_round_trip(nats_server.url, args.requests))
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
