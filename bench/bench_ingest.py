"""Benchmark of envelope ingest: time to a durable 200.

    python -m bench.bench_ingest [--seconds S] [--concurrency C]

Starts nats-server, redis-server, the actors a key lookup needs (in this process), the
gateway and a floor server as separate processes. The floor is a bare aiohttp handler
that publishes the request body to a JetStream stream (file storage, a Nats-Msg-Id per
message, like RC_INGEST) and answers once the ack is back: what any durable upstream
must do at least. 8 concurrent senders post 2 KB and 200 KB envelopes (each with its own
event id) to each server in turn for a few seconds; prints envelopes/s and p50/p99 time
to 200 for both, and the gateway's throughput as a fraction of the floor's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
import nats
from aiohttp import web
from nats.js import api

from actors.worker import Worker
from bench._servers import percentile, servers
from bus.client import request
from bus.embedded import free_port, port_open

FLOOR_STREAM = "BENCH_FLOOR"


def floor_app(nats_url: str) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)

    async def startup(app: web.Application) -> None:
        app["nc"] = await nats.connect(nats_url)
        app["js"] = app["nc"].jetstream()
        try:
            await app["js"].add_stream(api.StreamConfig(name=FLOOR_STREAM, subjects=["bench.floor.>"],
                                                        storage=api.StorageType.FILE, duplicate_window=600))
        except Exception:
            pass

    async def envelope(request: web.Request) -> web.Response:
        body = await request.read()
        await request.app["js"].publish(f"bench.floor.{request.match_info['project_id']}", body,
                                        headers={"Nats-Msg-Id": uuid.uuid4().hex})
        return web.json_response({"id": None})

    app.on_startup.append(startup)
    app.router.add_post("/api/{project_id}/envelope/", envelope)
    return app


def spawn(args: list[str], port: int) -> subprocess.Popen[bytes]:
    # BENCH_PROFILE=<file>: run the gateway under cProfile, written when it stops
    profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if (
        os.environ.get("BENCH_PROFILE") and args[0] == "cli") else []
    proc = subprocess.Popen([sys.executable, *profile, "-m", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{args[0]} did not start")
        time.sleep(0.05)
    return proc


def make_envelopes(size: int, count: int) -> list[bytes]:
    """`count` envelopes of about `size` bytes: an error event, plus an attachment for the rest."""
    event = json.dumps({"message": "bench", "level": "error", "platform": "python",
                        "extra": {"pad": "x" * min(size, 1500)}}).encode()
    rest = max(0, size - len(event) - 200)
    attachment = os.urandom(rest // 2).hex().encode() if rest else b""
    items = b'{"type":"event","length":%d}\n' % len(event) + event + b"\n"
    if attachment:
        items += b'{"type":"attachment","length":%d,"filename":"a.txt"}\n' % len(attachment) + attachment + b"\n"
    return [b'{"event_id":"%s"}\n' % uuid.uuid4().hex.encode() + items for _ in range(count)]


async def load(url: str, headers: dict[str, str], envelopes: list[bytes], seconds: float,
               concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = iter(envelopes)
    deadline = time.perf_counter() + seconds

    async with aiohttp.ClientSession() as session:
        async def sender() -> None:
            for body in queue:
                if time.perf_counter() > deadline:
                    return
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    data = await resp.read()
                    assert resp.status == 200, (resp.status, data[:200])
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0, help="per size and server")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--serve-floor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nats-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        web.run_app(floor_app(args.nats_url), host="127.0.0.1", port=args.serve_floor, print=None,
                    access_log=None)
        return
    with servers() as (nats_server, redis_server):
        worker = Worker(["commands", "keys", "orgs", "configs"], nats_server.url, redis_server.url,
                        instrument=False).start()
        gw_port, floor_port = free_port(), free_port()
        gateway = spawn(["cli", "gateway", "--bind", f"127.0.0.1:{gw_port}", "--nats-url", nats_server.url,
                         "--redis-url", redis_server.url], gw_port)
        floor = spawn(["bench.bench_ingest", "--serve-floor", str(floor_port), "--nats-url", nats_server.url],
                      floor_port)
        try:
            public_key = uuid.uuid4().hex

            async def setup() -> Any:
                nc = await nats.connect(nats_server.url)
                await request(nc, "import.org", {"org": {"slug": "bench", "projects": [
                    {"slug": "p", "keys": [{"publicKey": public_key}]}]}}, timeout=60)
                found = await request(nc, "keys.lookup", {"public_keys": [public_key]})
                await nc.close()
                return found[public_key]["projectId"]

            project_id = asyncio.run(setup())
            headers = {"Content-Type": "application/x-sentry-envelope",
                       "X-Sentry-Auth": f"Sentry sentry_key={public_key}, sentry_version=7, sentry_client=bench/1"}
            gw_url = f"http://127.0.0.1:{gw_port}/api/{project_id}/envelope/"
            floor_url = f"http://127.0.0.1:{floor_port}/api/{project_id}/envelope/"
            asyncio.run(load(gw_url, headers, make_envelopes(2048, 50), 1.0, 2))  # warm: config cached
            print(f"ingest: {args.concurrency} concurrent senders, {args.seconds:.0f} s per size and server")
            for label, size in (("2 KB", 2048), ("200 KB", 200 * 1024)):
                count = 40000 if size < 10000 else 4000
                ours, our_lat = asyncio.run(load(gw_url, headers, make_envelopes(size, count), args.seconds,
                                                 args.concurrency))
                base, base_lat = asyncio.run(load(floor_url, headers, make_envelopes(size, count), args.seconds,
                                                  args.concurrency))
                print(f"  {label:>6}  gateway {ours:7.0f} env/s  p50 {percentile(our_lat, 50) * 1e3:6.2f} ms"
                      f"  p99 {percentile(our_lat, 99) * 1e3:6.2f} ms | floor {base:7.0f} env/s"
                      f"  p50 {percentile(base_lat, 50) * 1e3:6.2f} ms  p99 {percentile(base_lat, 99) * 1e3:6.2f} ms"
                      f" | ratio {ours / base:.2f}")
        finally:
            gateway.terminate()
            floor.terminate()
            gateway.wait(10)
            floor.wait(10)
            worker.stop()


if __name__ == "__main__":
    main()
