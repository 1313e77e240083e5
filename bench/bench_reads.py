"""Benchmark of reads on the read side: what a CAUGHT_UP read costs, with and without `after`.

    python -m bench.bench_reads [--requests N]

Prints, measured in one run on the same servers and actors (a worker running the command
handlers and the key lookup actor):
- a LATEST read (`keys.lookup`): answered from the projection as it is;
- a CAUGHT_UP read without `after` (`key.list` on the command actor, `user.authenticate` on
  the key lookup actor): the actor asks JetStream for the stream's last sequence first
  (one STREAM.INFO round trip per read when reads come one at a time, as every caught-up
  read did before the `after` token);
- the same reads with `after` (the `sequence` of the caller's last write's reply): no
  round trip to JetStream at all;
- the CAUGHT_UP read without `after` from 16 concurrent callers: the actor asks once for
  every read that arrived while an earlier question was out.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import nats

from actors.worker import Worker
from bench._servers import percentile, servers
from bus.client import request, request_sequence


async def _timed(n: int, send: object) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await send()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return times


def _line(label: str, times: list[float]) -> None:
    print(f"  {label:<64} p50 {percentile(times, 50) * 1e6:7.0f} us   p99 {percentile(times, 99) * 1e6:7.0f} us")


async def run(nats_url: str, n: int) -> None:
    nc = await nats.connect(nats_url)
    try:
        await request(nc, "org.create", {"slug": "bench"})
        await request(nc, "project.create", {"org": "bench", "project": "web"})
        await request(nc, "user.create", {"username": "bench"})
        token = (await request(nc, "user.token_create", {"username": "bench"}))["token"]
        keys = await request(nc, "key.list", {"org": "bench", "project": "web"})
        public_key = keys["keys"][0]["publicKey"]
        _, sequence = await request_sequence(nc, "project.option_set", {
            "org": "bench", "project": "web", "key": "sentry:origins", "value": ["example.com"]})
        listing = {"org": "bench", "project": "web"}
        for _ in range(50):  # warm up every path
            await request(nc, "key.list", listing)
            await request(nc, "key.list", listing, after=sequence)
            await request(nc, "keys.lookup", {"public_keys": [public_key]})
            await request(nc, "user.authenticate", {"token": token})
        print(f"reads over NATS, {n} each, one at a time (write sequence {sequence})")
        _line("LATEST keys.lookup", await _timed(n, lambda: request(nc, "keys.lookup", {"public_keys": [public_key]})))
        _line("CAUGHT_UP key.list, no after (a STREAM.INFO per read)",
              await _timed(n, lambda: request(nc, "key.list", listing)))
        _line("CAUGHT_UP key.list, after=<write sequence>",
              await _timed(n, lambda: request(nc, "key.list", listing, after=sequence)))
        _line("CAUGHT_UP user.authenticate (read side), no after",
              await _timed(n, lambda: request(nc, "user.authenticate", {"token": token})))
        _line("CAUGHT_UP user.authenticate (read side), after=<write sequence>",
              await _timed(n, lambda: request(nc, "user.authenticate", {"token": token}, after=sequence)))

        async def one() -> float:
            started = time.perf_counter()
            await request(nc, "key.list", listing)
            return time.perf_counter() - started

        concurrent: list[float] = []
        for _ in range(max(1, n // 16)):
            concurrent.extend(await asyncio.gather(*(one() for _ in range(16))))
        _line("CAUGHT_UP key.list, no after, 16 concurrent callers", concurrent)
    finally:
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with servers() as (nats_server, _redis):
        worker = Worker(["commands", "keys"], nats_server.url, instrument=False).start()
        try:
            asyncio.run(run(nats_server.url, args.requests))
        finally:
            worker.stop()


if __name__ == "__main__":
    main()
