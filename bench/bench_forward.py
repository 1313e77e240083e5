"""Benchmark of the forwarder: how fast a backlog of envelopes drains to a downstream Sentry.

    python -m bench.bench_forward [--envelopes N] [--size BYTES]

Starts nats-server and redis-server, the command handlers in this process and a downstream
Sentry (a bare aiohttp server answering 200) as its own process. For each run a fresh
project with `relayctl:forward_dsn` gets N envelopes appended to RC_INGEST first (as the
gateway appends them), then the forwarders start and the time until the receiver has seen
every event id is measured: one forwarder, then two (each in its own process, `relayctl
worker forwarder`), then one running the forwarding consumer only
(`RELAYCTL_FORWARD_CONSUMERS=forwarder`). Beside them, a floor measured in the same run: a bare loop pulling the
same envelopes from a JetStream pull consumer, POSTing them with the same concurrency and
acking - what any durable forwarder must do at least. A forwarder process also runs its two
other consumers on the same envelopes (error events normalized, scrubbed and stored; outcome
counts in Redis), so its figure includes that work. Rates are from the first envelope
received to the last (process start-up excluded).
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
from pathlib import Path
from typing import Any

import aiohttp
import nats
from aiohttp import web
from nats.js import api

from actors.worker import Worker
from bench._servers import servers
from bus.client import request
from bus.embedded import free_port, port_open
from bus.ingest_store import IngestSettings, IngestStore
from messages.subjects import INGEST_STREAM, ingest_subject

RELAYCTL = str(Path(sys.executable).parent / "relayctl")


def receiver(port: int) -> None:
    """The downstream Sentry: counts event ids; GET /count answers how many distinct arrived."""
    seen: set[str] = set()
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def envelope(request: web.Request) -> web.Response:
        body = await request.read()
        seen.add(json.loads(body.split(b"\n", 1)[0]).get("event_id", ""))
        return web.json_response({})

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"count": len(seen)})

    app.router.add_post("/api/{project_id}/envelope/", envelope)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def envelope(event_id: str, size: int) -> bytes:
    event = json.dumps({"event_id": event_id, "level": "error", "message": "x" * max(0, size - 200)}).encode()
    return (json.dumps({"event_id": event_id}).encode() + b"\n"
            + json.dumps({"type": "event", "length": len(event)}).encode() + b"\n" + event + b"\n")


async def fill(nats_url: str, project_id: int, count: int, size: int) -> None:
    nc = await nats.connect(nats_url)
    store = IngestStore(nc, IngestSettings())
    await store.ensure()
    sem = asyncio.Semaphore(64)

    async def one() -> None:
        async with sem:
            event_id = uuid.uuid4().hex
            await store.append_envelope(project_id, envelope(event_id, size), {
                "Nats-Msg-Id": f"{project_id}:{event_id}", "Rc-Project-Id": str(project_id),
                "Rc-Event-Id": event_id})

    await asyncio.gather(*(one() for _ in range(count)))
    await nc.close()


async def received(port: int) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/count") as response:
        return int((await response.json())["count"])


async def drain_time(port: int, before: int, total: int, timeout: float = 300.0) -> float:
    """Seconds from the first new envelope arriving to the last (process start-up excluded)."""
    deadline = time.perf_counter() + timeout
    while await received(port) <= before:
        if time.perf_counter() > deadline:
            raise TimeoutError("nothing arrived")
        await asyncio.sleep(0.005)
    started = time.perf_counter()
    while await received(port) < total:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {await received(port)} of {total} arrived")
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


async def floor(nats_url: str, project_id: int, port: int, concurrency: int) -> None:
    """Pull, POST, ack: the least a durable forwarder does per envelope."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(ingest_subject(project_id), durable=f"floor{project_id}", stream=INGEST_STREAM,
                                  config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT))
    url = f"http://127.0.0.1:{port}/api/1/envelope/"
    async with aiohttp.ClientSession() as session:
        async def send(msg: Any) -> None:
            async with session.post(url, data=msg.data, headers={"X-Sentry-Auth": "Sentry sentry_key=k"}) as r:
                await r.read()
            await msg.ack()

        while True:
            try:
                msgs = await sub.fetch(concurrency, timeout=0.5)
            except Exception:
                break
            await asyncio.gather(*(send(m) for m in msgs))
    await nc.close()


async def project(nats_url: str, port: int, name: str, forward: bool) -> int:
    nc = await nats.connect(nats_url)
    org = "bench-" + uuid.uuid4().hex[:8]
    await request(nc, "org.create", {"slug": org}, timeout=10)
    created = await request(nc, "project.create", {"org": org, "project": name}, timeout=10)
    if forward:
        await request(nc, "project.option_set", {"org": org, "project": name, "key": "relayctl:forward_dsn",
                                                 "value": f"http://{'f' * 32}@127.0.0.1:{port}/1"}, timeout=10)
    await nc.close()
    return int(created["id"])


def start_forwarders(nats_url: str, redis_url: str, count: int, data_dir: Path,
                     only: str | None = None) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "RELAYCTL_SENTRY": "0", "RELAYCTL_REDIS_URL": redis_url}
    if only:
        env["RELAYCTL_FORWARD_CONSUMERS"] = only
    return [subprocess.Popen([RELAYCTL, "--data-dir", str(data_dir), "--nats-url", nats_url, "worker", "forwarder"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envelopes", type=int, default=3000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver(args.receiver)
        return
    port = free_port()
    recv = subprocess.Popen([sys.executable, "-m", "bench.bench_forward", "--receiver", str(port)])
    try:
        while not port_open("127.0.0.1", port):
            time.sleep(0.05)
        with servers() as (nats_server, redis_server):
            worker = Worker(["commands"], nats_server.url, redis_server.url, instrument=False).start()
            data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-forward-{uuid.uuid4().hex[:6]}"
            data_dir.mkdir()
            try:
                total = 0
                rows = []
                for label, instances, only in (("floor (pull, POST, ack)", 0, None), ("1 forwarder", 1, None),
                                               ("2 forwarders", 2, None),
                                               ("1 forwarder, forwarding only", 1, "forwarder")):
                    pid = asyncio.run(project(nats_server.url, port, "p" + uuid.uuid4().hex[:6], instances > 0))
                    asyncio.run(fill(nats_server.url, pid, args.envelopes, args.size))
                    before, total = total, total + args.envelopes
                    procs = start_forwarders(nats_server.url, redis_server.url, instances, data_dir, only)
                    try:
                        if instances == 0:
                            async def run_floor() -> float:
                                task = asyncio.create_task(floor(nats_server.url, pid, port, 32))
                                seconds = await drain_time(port, before, total)
                                await task
                                return seconds

                            seconds = asyncio.run(run_floor())
                        else:
                            seconds = asyncio.run(drain_time(port, before, total))
                    finally:
                        for proc in procs:
                            proc.terminate()
                            proc.wait(10)
                    rows.append((label, args.envelopes / seconds))
                    print(f"{label:30} {args.envelopes} x {args.size} B envelopes: {seconds:.2f} s, "
                          f"{args.envelopes / seconds:.0f}/s", flush=True)
                print(f"1 forwarder / floor: {rows[1][1] / rows[0][1]:.2f}; 2 forwarders / floor: "
                      f"{rows[2][1] / rows[0][1]:.2f}; forwarding only / floor: {rows[3][1] / rows[0][1]:.2f}")
            finally:
                worker.stop()
    finally:
        recv.terminate()
        recv.wait(10)


if __name__ == "__main__":
    main()
