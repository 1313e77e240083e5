"""Benchmark of AI fix suggestions through the gateway, against the OpenAI stub.

    python -m bench.bench_ai [--fresh N] [--cached N] [--concurrency C] [--chunk-delay S]

Starts nats-server, redis-server, the commands and AI actors (in this process), the
gateway and tests/openai_stub.py; stores events of distinct groups, then:

- fresh streamed answers (each a model call): time to the first chunk and to the end,
  beside the stub's own pacing (`chunks x chunk delay`), which is the floor;
- cached answers (one group, many requests, C at a time): requests/s and p50/p99.

The figures show what the system adds around a model, not the speed of any model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from typing import Any

import aiohttp

from actors.ai import AIConfig
from bench._servers import percentile, servers
from domain.ai_prompt import describe_event_for_ai
from gateway.keys import AI_LIMITER
from tests.ai_helpers import error_event, start_ai_worker
from tests.openai_stub import OpenAIStub
from tests.system import SystemUnderTest

REPLY = " ".join(f"word{index}" for index in range(40))


async def fresh(url: str, token: str, paths: list[str]) -> tuple[list[float], list[float]]:
    first_chunk, total = [], []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for path in paths:
            started = time.perf_counter()
            async with session.get(url + path + "?stream=yes") as resp:
                assert resp.status == 200, await resp.text()
                await resp.content.readline()
                first_chunk.append(time.perf_counter() - started)
                await resp.read()
            total.append(time.perf_counter() - started)
    return first_chunk, total


async def cached(url: str, token: str, path: str, requests: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    remaining = requests
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                async with session.get(url + path) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def deep_event(frames: int = 200) -> dict[str, Any]:
    event = error_event()
    stack = event["exception"]["values"][0]["stacktrace"]
    stack["frames"] = [
        {"function": f"f{i}", "module": f"pkg.mod{i % 7}", "filename": f"pkg/mod{i % 7}.py", "lineno": i,
         "in_app": i % 3 == 0, "context_line": f"    value = compute_{i}(value)",
         "pre_context": [f"def f{i}(value):"] * 5, "post_context": ["    return value"] * 5}
        for i in range(frames)]
    return event


def prompt_building(rounds: int = 2000) -> None:
    """describe_event_for_ai on a 200-frame event, beside json.dumps of the same event."""
    event = deep_event()
    started = time.perf_counter()
    for _ in range(rounds):
        describe_event_for_ai(event, "gpt-3.5-turbo")
    build = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        json.dumps(event)
    dumps = (time.perf_counter() - started) / rounds
    print(f"prompt building, 200-frame event: {build * 1e6:7.1f} us/event"
          f"  (floor: json.dumps of the event {dumps * 1e6:.1f} us)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh", type=int, default=20)
    parser.add_argument("--cached", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chunk-delay", type=float, default=0.005)
    args = parser.parse_args()
    prompt_building()

    with servers() as (nats, redis), OpenAIStub(REPLY, chunk_delay=args.chunk_delay) as stub:
        system = SystemUnderTest(nats.url, redis.url, actors=["commands"]).start()
        ai = start_ai_worker(nats.url, redis.url, AIConfig(base_url=stub.url, api_key="bench", model="stub"))
        try:
            limiter = system.gateway.app[AI_LIMITER]  # type: ignore[union-attr]
            limiter.rate, limiter.burst = 1e9, 10**9
            created = system.new_project()
            org, project = created["org"], created["slug"]
            system.cli_ok("user", "create", "bench")
            token = system.cli_ok("token", "create", "bench", "--json")["token"]
            paths = []
            for index in range(args.fresh + 1):
                event_id = _store(system, org, project, error_event(f"Error{index}"))
                paths.append(f"/api/0/projects/{org}/{project}/events/{event_id}/ai-fix-suggest/")

            first, total = asyncio.run(fresh(system.url, token, paths[1:]))
            floor = len(stub.reply_chunks()) * args.chunk_delay
            print(f"fresh streamed answers ({args.fresh}, {len(stub.reply_chunks())} chunks, "
                  f"stub floor {floor * 1000:.0f} ms):")
            print(f"  first chunk p50 {percentile(first, 50) * 1000:7.1f} ms  p99 {percentile(first, 99) * 1000:7.1f} ms")
            print(f"  whole answer p50 {percentile(total, 50) * 1000:7.1f} ms  p99 {percentile(total, 99) * 1000:7.1f} ms"
                  f"  (overhead p50 {(percentile(total, 50) - floor) * 1000:.1f} ms)")

            asyncio.run(cached(system.url, token, paths[0], 1, 1))  # fill the cache
            seconds, latencies = asyncio.run(cached(system.url, token, paths[0], args.cached, args.concurrency))
            print(f"cached answers ({args.cached}, concurrency {args.concurrency}):")
            print(f"  {args.cached / seconds:8.0f} req/s  p50 {percentile(latencies, 50) * 1000:6.1f} ms"
                  f"  p99 {percentile(latencies, 99) * 1000:6.1f} ms")
            print(f"model calls: {stub.calls} (expected {args.fresh + 1})")
        finally:
            system.stop()
            ai.stop()


def _store(system: SystemUnderTest, org: str, project: str, event: dict[str, object]) -> str:
    """Store through the CLI, as an operator would."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(event, file)
    return str(system.cli_ok("event", "store", file.name, "--project", f"{org}/{project}", "--json")["eventId"])


if __name__ == "__main__":
    main()
