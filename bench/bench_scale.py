"""Scale on one machine: import N projects, materialize every config, restart, replay.

    python -m bench.bench_scale [--projects 100000] [--per-org 1000]

Runs nats-server, redis-server, one worker process per actor (commands, keys, orgs,
configs) and a gateway process, as `relayctl up` does. Prints:
- import time and events/s appended (one commit per org, as `relayctl import` sends);
- time until every key is served by the gateway without `pending`;
- build cost per config (the config actor's own timing) beside a floor of json.dumps of
  the same document (the least any builder must do);
- replay rate when the configs worker restarts, and that the gateway kept serving
  cached configs from Redis while it replayed;
- peak RSS (VmHWM) of every process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import nats

from bench._servers import servers
from bus.client import request
from bus.embedded import free_port, port_open
from domain.model import Org, Project, ProjectKey
from domain.project_config import build_project_config
from tests.system import RelayClient

ACTORS = ("commands", "keys", "orgs", "configs")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


async def wait_service(nc: nats.NATS, name: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await nc.request(f"$SRV.PING.{name}", b"", timeout=0.5)
            return
        except Exception:
            await asyncio.sleep(0.05)
    raise TimeoutError(name)


def org_spec(slug: str, count: int, offset: int) -> dict[str, object]:
    projects = []
    for i in range(count):
        options: dict[str, object] = {}
        if (offset + i) % 3 == 0:
            options["sentry:origins"] = [f"app{i}.example.com"]
        if (offset + i) % 5 == 0:
            options["sentry:scrub_ip_address"] = True
        if (offset + i) % 7 == 0:
            options["sentry:sensitive_fields"] = ["card_number"]
        projects.append({"slug": f"p{i}", "options": options, "keys": [{"publicKey": uuid.uuid4().hex}]})
    return {"slug": slug, "options": {"sentry:safe_fields": ["id"]}, "projects": projects}


async def served_all(url: str, relay: RelayClient, keys: list[str]) -> bool:
    async with aiohttp.ClientSession() as session:
        for i in range(0, len(keys), 500):
            batch = keys[i:i + 500]
            body = json.dumps({"publicKeys": batch}).encode()
            headers = {"Content-Type": "application/json", "X-Sentry-Relay-Id": relay.relay_id,
                       "X-Sentry-Relay-Signature": relay.secret_key.sign(body)}
            async with session.post(url + "/api/0/relays/projectconfigs/?version=3", data=body, headers=headers) as r:
                data = await r.json()
                if r.status != 200 or data["pending"] or len(data["configs"]) != len(batch):
                    return False
    return True


def build_floor(n: int = 2000) -> tuple[float, float]:
    org = Org(id=1, slug="o", name="o", options={"sentry:safe_fields": ["id"]})
    project = Project(id=1, org_id=1, slug="p", name="p", options={"sentry:origins": ["a.example.com"]})
    key = ProjectKey(public_key=uuid.uuid4().hex, numeric_id=1, project_id=1)
    started = time.perf_counter()
    for _ in range(n):
        doc = build_project_config(org, project, key)
    build = (time.perf_counter() - started) / n
    started = time.perf_counter()
    for _ in range(n):
        json.dumps(doc)
    return build, (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=100_000)
    parser.add_argument("--per-org", type=int, default=1000)
    args = parser.parse_args()
    build, dumps = build_floor()
    print(f"build cost per config   {build * 1e6:8.0f} us   (floor: json.dumps of the document {dumps * 1e6:.0f} us)")
    with servers() as (nats_server, redis_server):
        urls = ["--nats-url", nats_server.url, "--redis-url", redis_server.url]
        procs = {name: spawn(["worker", name, *urls]) for name in ACTORS}
        gw_port = free_port()
        procs["gateway"] = spawn(["gateway", "--bind", f"127.0.0.1:{gw_port}", *urls])
        gw_url = f"http://127.0.0.1:{gw_port}"
        try:
            async def run() -> None:
                nc = await nats.connect(nats_server.url)
                for name in ACTORS:
                    await wait_service(nc, name, 60)
                while not port_open("127.0.0.1", gw_port):
                    await asyncio.sleep(0.05)
                relay = RelayClient(gw_url)
                await request(nc, "relay.allow", {"public_key": relay.public_key_str, "internal": True})
                await asyncio.get_running_loop().run_in_executor(None, relay.register)
                orgs = [org_spec(f"org{n}", args.per_org, n * args.per_org)
                        for n in range(max(1, args.projects // args.per_org))]
                keys = [p["keys"][0]["publicKey"] for o in orgs for p in o["projects"]]  # type: ignore[index]
                events = 0
                started = time.perf_counter()
                for spec in orgs:
                    events += (await request(nc, "import.org", {"org": spec}, timeout=120))["events"]
                imported = time.perf_counter() - started
                print(f"import                  {imported:8.1f} s    {len(keys)} projects, {events} events,"
                      f" {events / imported:.0f} events/s")
                while not await served_all(gw_url, relay, keys):
                    await asyncio.sleep(0.5)
                print(f"every key served        {time.perf_counter() - started:8.1f} s    after the import began")
                last = (await nc.jetstream().stream_info("RC_EVENTS")).state.last_seq
                procs["configs"].terminate()
                procs["configs"].wait()
                restarted = time.perf_counter()
                procs["configs"] = spawn(["worker", "configs", *urls])
                sample = keys[:500]
                cached_during_replay = await served_all(gw_url, relay, sample)
                await wait_service(nc, "configs")
                replay = time.perf_counter() - restarted
                print(f"configs restart replay  {replay:8.1f} s    {last / replay:.0f} commits/s, {events / replay:.0f} events/s"
                      f" (includes process start)")
                print(f"served from cache while replaying: {cached_during_replay}")
                await nc.close()

            asyncio.run(run())
            for name, proc in procs.items():
                print(f"peak RSS {name:<9} {peak_rss_mb(proc.pid):8.0f} MB")
        finally:
            for proc in procs.values():
                proc.terminate()


if __name__ == "__main__":
    main()
