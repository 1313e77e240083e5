"""Benchmark of the relay hot path and of change propagation.

    python -m bench.bench_relay [--requests N] [--concurrency C]

Starts nats-server, redis-server, every actor (in this process), the gateway and the
floor server (bench/floor_server.py) as separate processes; imports 500 projects; then
8 concurrent relays send v3 requests of 100 and of 500 cached keys to each server in
turn. Prints keys/s and p50/p99 latency for the gateway beside the floor, and the
gateway's throughput as a fraction of the floor's. Then measures propagation: the time
from a change being acknowledged (key disable/enable, project option) to a polling relay
being served the new config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
import nats

from actors.worker import Worker
from bench._servers import percentile, servers
from bus.client import request
from bus.embedded import free_port, port_open
from tests.system import RelayClient


def spawn(args: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{args[0]} did not start")
        time.sleep(0.05)
    return proc


async def load(url: str, relay: RelayClient, keys: list[str], requests: int, concurrency: int) -> tuple[float, list[float]]:
    body = json.dumps({"publicKeys": keys, "fullConfig": True}).encode()
    headers = {"Content-Type": "application/json", "X-Sentry-Relay-Id": relay.relay_id,
               "X-Sentry-Relay-Signature": relay.secret_key.sign(body)}
    latencies: list[float] = []
    remaining = requests

    async with aiohttp.ClientSession() as session:
        async def one_relay() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.post(url + "/api/0/relays/projectconfigs/?version=3", data=body,
                                        headers=headers) as resp:
                    data = await resp.read()
                    assert resp.status == 200, data[:200]
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one_relay() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return requests * len(keys) / elapsed, latencies


async def propagation(url: str, nats_url: str, relay: RelayClient, org: str, project: str, key: str,
                      rounds: int) -> list[float]:
    nc = await nats.connect(nats_url)
    times: list[float] = []
    kinds: list[str] = []
    async with aiohttp.ClientSession() as session:
        async def served() -> Any:
            body = json.dumps({"publicKeys": [key]}).encode()
            headers = {"Content-Type": "application/json", "X-Sentry-Relay-Id": relay.relay_id,
                       "X-Sentry-Relay-Signature": relay.secret_key.sign(body)}
            async with session.post(url + "/api/0/relays/projectconfigs/?version=3", data=body, headers=headers) as r:
                return (await r.json())["configs"][key]  # type: ignore[no-any-return]

        for i in range(rounds):
            kind = i % 4
            if kind == 0:
                await request(nc, "key.disable", {"public_key": key})
                check = lambda doc: doc == {"disabled": True}  # noqa: E731
            elif kind == 1:
                await request(nc, "key.enable", {"public_key": key})
                check = lambda doc: doc.get("disabled") is False  # noqa: E731
            elif kind == 3:
                # An org option: every project of the org (500 configs) is rebuilt.
                field = f"field{i}"
                await request(nc, "org.option_set", {"org": org, "key": "sentry:safe_fields", "value": [field]})
                check = lambda doc, f=field: f in doc.get("config", {}).get(  # noqa: E731
                    "datascrubbingSettings", {}).get("excludeFields", [])
            else:
                origin = f"h{i}.example.com"
                await request(nc, "project.option_set", {"org": org, "project": project, "key": "sentry:origins",
                                                         "value": [origin]})
                check = lambda doc, o=origin: o in doc.get("config", {}).get("allowedDomains", [])  # noqa: E731
            acked = time.perf_counter()
            while not check(await served()):
                await asyncio.sleep(0.002)
            times.append(time.perf_counter() - acked)
            kinds.append(("key disable", "key enable", "project option", "org option (500 configs)")[kind])
    await nc.close()
    for name in dict.fromkeys(kinds):
        mine = [t for t, k in zip(times, kinds) if k == name]
        print(f"  {name:<26} n={len(mine):<3} p50 {percentile(mine, 50)*1e3:6.1f} ms  p99 {percentile(mine, 99)*1e3:6.1f} ms")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=120)
    args = parser.parse_args()
    with servers() as (nats_server, redis_server):
        worker = Worker(["commands", "keys", "orgs", "configs"], nats_server.url, redis_server.url,
                        instrument=False).start()
        gw_port, floor_port = free_port(), free_port()
        gateway = spawn(["cli", "gateway", "--bind", f"127.0.0.1:{gw_port}", "--nats-url", nats_server.url,
                         "--redis-url", redis_server.url], gw_port)
        floor = spawn(["bench.floor_server", "--port", str(floor_port), "--redis-url", redis_server.url], floor_port)
        try:
            org = "bench-" + uuid.uuid4().hex[:6]
            projects = [{"slug": f"p{i}"} for i in range(500)]

            async def setup() -> None:
                nc = await nats.connect(nats_server.url)
                await request(nc, "import.org", {"org": {"slug": org, "projects": projects}}, timeout=60)
                await nc.close()
            asyncio.run(setup())
            gw_url, floor_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{floor_port}"
            relay = RelayClient(gw_url)

            async def keys_and_allow() -> list[str]:
                nc = await nats.connect(nats_server.url)
                await request(nc, "relay.allow", {"public_key": relay.public_key_str, "internal": True})
                found = await request(nc, "key.list", {"org": org, "project": "p0"})
                keys = [found["keys"][0]["publicKey"]]
                for i in range(1, 500):
                    keys.append((await request(nc, "key.list", {"org": org, "project": f"p{i}"}))["keys"][0]["publicKey"])
                await nc.close()
                return keys
            keys = asyncio.run(keys_and_allow())
            relay.register()
            relay.poll(keys, lambda r: not r["pending"] and len(r["configs"]) == len(keys), timeout=60)
            print(f"v3 hot path, {args.concurrency} concurrent relays, cached configs")
            for batch in (100, 500):
                n = max(10, args.requests * 100 // batch)
                asyncio.run(load(gw_url, relay, keys[:batch], 20, args.concurrency))  # warm-up
                ours, our_lat = asyncio.run(load(gw_url, relay, keys[:batch], n, args.concurrency))
                floor_rate, floor_lat = asyncio.run(load(floor_url, relay, keys[:batch], n, args.concurrency))
                print(f"  {batch:>3} keys/request  gateway {ours:9.0f} keys/s  p50 {percentile(our_lat, 50)*1e3:6.1f} ms"
                      f"  p99 {percentile(our_lat, 99)*1e3:6.1f} ms | floor {floor_rate:9.0f} keys/s"
                      f"  p50 {percentile(floor_lat, 50)*1e3:6.1f} ms  p99 {percentile(floor_lat, 99)*1e3:6.1f} ms"
                      f" | ratio {ours / floor_rate:.2f}")
            print("propagation by kind of change")
            times = asyncio.run(propagation(gw_url, nats_server.url, relay, org, "p0", keys[0], args.rounds))
            print(f"propagation, change acknowledged -> served ({len(times)} changes: key disable/enable,"
                  " project option, org option over 500 projects)")
            print(f"  p50 {percentile(times, 50)*1e3:6.1f} ms   p99 {percentile(times, 99)*1e3:6.1f} ms"
                  f"   max {max(times)*1e3:6.1f} ms")
        finally:
            gateway.terminate()
            floor.terminate()
            worker.stop()


if __name__ == "__main__":
    main()
