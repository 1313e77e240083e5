"""Benchmark of the relay hot path and of change propagation.

    python -m bench.bench_relay [--seconds 3] [--turns 2] [--projects 2000] [--rounds 40] [--baseline DIR]

Starts nats-server, redis-server, the actors (two worker processes), the gateway and the three
floor servers (bench/floor_server.py: `decompress`, `minimal`, and `packed` - the minimal one
reading with the gateway's own MGET) as separate processes on the same Redis values; imports `--projects` projects; then `wrk -t2 -c8 --latency` sends
v3 requests of 100 and of 500 cached keys to each server in turn, rotating 64 pre-signed
bodies (each its own random draw of keys, signed with sentry_relay as a Relay signs).
Prints keys/s, p50 and p99 for the gateway beside the floors, and the gateway's
throughput as a fraction of each. Then measures propagation while wrk keeps the gateway's
hot path loaded: the time from a change being acknowledged (key disable/enable, project
option, org option) to a polling relay being served the new config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import nats
import structlog

from bench import _wrk
from bench._servers import import_keys, percentile, servers, wait_instances
from bus.client import request
from bus.embedded import free_port, port_open
from tests.system import RelayClient

FLOOR_KINDS = ("decompress", "minimal", "packed")


def spawn(args: list[str], port: int, env: dict[str, str] | None = None,
          cwd: str | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {}), **({"PYTHONPATH": cwd} if cwd else {})}, cwd=cwd)
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
                      rounds: int, settle: float = 0.0) -> list[float]:
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
            if i and settle:
                # The previous change's own aftermath (an org option rebuilds 2000 configs,
                # and the gateway checks and unpacks each new value once) is not this one's.
                await asyncio.sleep(settle)
            check: Callable[[Any], bool]
            if kind == 0:
                await request(nc, "key.disable", {"public_key": key})
                check = lambda doc: doc == {"disabled": True}  # noqa: E731
            elif kind == 1:
                await request(nc, "key.enable", {"public_key": key})
                check = lambda doc: doc.get("disabled") is False  # noqa: E731
            elif kind == 3:
                # An org option: every project of the org is rebuilt.
                field = f"field{i}"
                await request(nc, "org.option_set", {"org": org, "key": "sentry:safe_fields", "value": [field]})
                check = lambda doc, f=field: f in doc.get("config", {}).get(  # type: ignore[misc] # noqa: E731
                    "datascrubbingSettings", {}).get("excludeFields", [])
            else:
                origin = f"h{i}.example.com"
                await request(nc, "project.option_set", {"org": org, "project": project, "key": "sentry:origins",
                                                         "value": [origin]})
                check = lambda doc, o=origin: o in doc.get(  # type: ignore[misc] # noqa: E731
                    "config", {}).get("allowedDomains", [])
            acked = time.perf_counter()
            while not check(await served()):
                await asyncio.sleep(0.002)
            times.append(time.perf_counter() - acked)
            kinds.append(("key disable", "key enable", "project option", "org option (all configs)")[kind])
    await nc.close()
    for name in dict.fromkeys(kinds):
        mine = [t for t, k in zip(times, kinds) if k == name]
        print(f"  {name:<26} n={len(mine):<3} p50 {percentile(mine, 50)*1e3:6.1f} ms  p99 {percentile(mine, 99)*1e3:6.1f} ms")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration of one turn (3: the whole run in about a minute)")
    parser.add_argument("--projects", type=int, default=2000)
    parser.add_argument("--turns", type=int, default=2, help="runs of --seconds per server, in turns; medians")
    parser.add_argument("--rounds", type=int, default=40, help="changes in the propagation part")
    parser.add_argument("--batches", default="100,500")
    parser.add_argument("--settle", type=float, default=0.25,
                        help="seconds between one change being served and the next change (0: back to back)")
    parser.add_argument("--access-log-sample", metavar="RATE", help="the gateway's RELAYCTL_ACCESS_LOG_SAMPLE "
                        "(default: its own default, every request logged)")
    parser.add_argument("--baseline", metavar="DIR", help="also measure the gateway of this source tree (e.g. "
                        "`git archive <commit> | tar -x -C DIR`) on the same Redis, in the same run")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the gateway under the 100-key load: collapsed "
                        "stacks to FILE (needs py-spy, `pip install py-spy`)")
    parser.add_argument("--profile-server", metavar="NAME", default="gateway",
                        help="the server --profile samples: gateway (default), packed, minimal or decompress")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    # The actors run in this process: their info lines (an import logs every event) are not the figures.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with servers() as (nats_server, redis_server):
        # The actors in two processes of their own, as `up` runs them (one per actor there):
        # the config builder does not share this process's GIL with the polling client.
        urls_args = ["--nats-url", nats_server.url, "--redis-url", redis_server.url]
        workers = [subprocess.Popen([sys.executable, "-m", "cli", "worker", *names, *urls_args],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                   for names in (["commands", "keys", "orgs"], ["configs"])]
        for actor in ("commands", "keys", "orgs", "configs"):
            asyncio.run(wait_instances(nats_server.url, actor, 1))
        gw_port, floor_port, minimal_port, packed_port = free_port(), free_port(), free_port(), free_port()
        gateway = spawn(["cli", "gateway", "--bind", f"127.0.0.1:{gw_port}", "--nats-url", nats_server.url,
                         "--redis-url", redis_server.url], gw_port,
                        {"RELAYCTL_ACCESS_LOG_SAMPLE": args.access_log_sample} if args.access_log_sample else None)
        gateway_env = {"RELAYCTL_ACCESS_LOG_SAMPLE": args.access_log_sample} if args.access_log_sample else None
        base_port = free_port()
        baseline = (spawn(["cli", "gateway", "--bind", f"127.0.0.1:{base_port}", "--nats-url", nats_server.url,
                           "--redis-url", redis_server.url], base_port, gateway_env, cwd=args.baseline)
                    if args.baseline else None)
        floors = [spawn(["bench.floor_server", "--port", str(port), "--redis-url", redis_server.url, "--kind", kind],
                        port) for port, kind in zip((floor_port, minimal_port, packed_port), FLOOR_KINDS, strict=True)]
        try:
            org = "bench-" + uuid.uuid4().hex[:6]
            gw_url = f"http://127.0.0.1:{gw_port}"
            relay = RelayClient(gw_url)
            keys = asyncio.run(import_keys(nats_server.url, org, args.projects, relay.public_key_str))
            relay.register()
            for i in range(0, len(keys), 500):
                relay.poll(keys[i:i + 500], served_all(len(keys[i:i + 500])), timeout=60)
            urls = {"gateway": gw_url, **({"gateway before": f"http://127.0.0.1:{base_port}"} if baseline else {}),
                    "minimal floor": f"http://127.0.0.1:{minimal_port}",
                    "packed floor": f"http://127.0.0.1:{packed_port}",
                    "decompress floor": f"http://127.0.0.1:{floor_port}"}
            sample = (f"access log sample {args.access_log_sample}" if args.access_log_sample else
                      "access log default (every request up to RELAYCTL_ACCESS_LOG_FULL_RATE a second, then sampled)")
            print(f"v3 hot path: {args.projects} projects, wrk -t2 -c8, {args.turns} turns of {args.seconds}s per server"
                  f" (medians), 64 pre-signed bodies, {sample};"
                  f" load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
            for batch in batches:
                bodies = _wrk.signed_bodies(relay, keys, batch)
                lua = _wrk.script(relay.relay_id, bodies)
                runs: dict[str, list[_wrk.WrkResult]] = {name: [] for name in urls}
                for url in urls.values():
                    asyncio.run(warm(url, relay, bodies, batch))
                # In turns (gateway, floors, gateway, ...): a change of the machine's load
                # falls on every server alike; each figure is the median of its turns.
                for turn in range(args.turns):
                    for name, url in urls.items():
                        spy = None
                        if args.profile and name.split()[0] == args.profile_server and batch == batches[0] and turn == 0:
                            profiled = gateway if name == "gateway" else floors[FLOOR_KINDS.index(name.split()[0])]
                            spy = subprocess.Popen(["py-spy", "record", "-p", str(profiled.pid), "-r", "250", "-f",
                                                    "raw", "-o", args.profile, "-d", str(args.seconds)],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        res = _wrk.run(url + _wrk.PATH, lua, args.seconds)
                        if spy is not None:
                            spy.wait()
                        if res.errors:  # run again, printing what they were
                            _wrk.run(url + _wrk.PATH, _wrk.script(relay.relay_id, bodies, debug=True), 1)
                            raise RuntimeError(f"{name}: {res.errors} errors under load")
                        runs[name].append(res)
                results = {name: _wrk.median(found) for name, found in runs.items()}
                gw = results["gateway"]
                for name, res in results.items():
                    ratio = ("" if name == "gateway" else f" | gateway/this {gw.requests_per_s / res.requests_per_s:.2f}"
                             + (f", before/this {results['gateway before'].requests_per_s / res.requests_per_s:.2f}"
                                if baseline and "floor" in name else ""))
                    print(f"  {batch:>3} keys  {name:<16} {res.keys_per_s(batch):9.0f} keys/s"
                          f"  p50 {res.p50 * 1e3:6.2f} ms  p99 {res.p99 * 1e3:6.2f} ms{ratio}"
                          + (f" ({res.socket_errors} socket errors)" if res.socket_errors else ""))
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            if not args.rounds:
                return
            bodies = _wrk.signed_bodies(relay, keys, 100)
            proc, lua_file = _wrk.start(gw_url + _wrk.PATH, _wrk.script(relay.relay_id, bodies), 600)
            try:
                print("propagation by kind of change, while wrk -t2 -c8 polls the gateway (100 keys/request),"
                      f" {args.settle:g} s between one change served and the next")
                times = asyncio.run(propagation(gw_url, nats_server.url, relay, org, "p0", keys[0], args.rounds,
                                                args.settle))
            finally:
                proc.send_signal(signal.SIGINT)  # wrk prints its figures on SIGINT
                out = proc.communicate()[0]
                os.unlink(lua_file)
            rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
            print(f"propagation, change acknowledged -> served ({len(times)} changes), hot path meanwhile"
                  f" {float(rate.group(1)) * 100 if rate else float('nan'):.0f} keys/s")
            print(f"  p50 {percentile(times, 50)*1e3:6.1f} ms   p99 {percentile(times, 99)*1e3:6.1f} ms"
                  f"   max {max(times)*1e3:6.1f} ms")
        finally:
            gateway.terminate()
            if baseline is not None:
                baseline.terminate()
            for floor in floors:
                floor.terminate()
            for worker in workers:
                worker.terminate()


def served_all(count: int) -> Callable[[Any], bool]:
    return lambda r: not r["pending"] and len(r["configs"]) == count


async def warm(url: str, relay: RelayClient, bodies: list[tuple[bytes, str]], batch: int) -> None:
    """Send every body once and check the answer is whole (the floors too)."""
    async with aiohttp.ClientSession() as session:
        for body, signature in bodies:
            headers = {"Content-Type": "application/json", "X-Sentry-Relay-Id": relay.relay_id,
                       "X-Sentry-Relay-Signature": signature}
            async with session.post(url + _wrk.PATH, data=body, headers=headers) as resp:
                data = await resp.json()
                assert resp.status == 200 and len(data["configs"]) == batch and not data["pending"], \
                    (url, resp.status, str(data)[:200])


if __name__ == "__main__":
    main()
