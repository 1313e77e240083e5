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

    python -m bench.bench_scale --projections [--projects 100000]

folds the stream such an import stores into each actor's projection (domain/projections.py),
each in a process of its own without servers, and prints what each holds: the deep size of
its state and the growth of the process's RSS. Takes about half a minute at 100k projects.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats

from bench._servers import servers
from bus.client import request
from bus.embedded import free_port, port_open
from domain.decider import Decider
from domain.decisions import IdDraw, IdPool
from domain.model import Org, Project, ProjectKey
from domain.project_config import build_project_config
from domain.projections import Projection
from domain.state import DomainState
from messages.events import DomainEvent
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


# -- what each actor's projection holds ----------------------------------------------------------

def import_commits(spec: dict[str, Any], org_id: int, first_project: int, first_key: int) -> list[list[DomainEvent]]:
    """The commits `import.org` of `spec` stores into an empty system, as the command handler
    makes them (see `check_import_commits`): its id blocks, the key claims, the org commit."""
    slug = str(spec["slug"])
    projects: list[dict[str, Any]] = spec["projects"]
    n = len(projects)
    org: list[DomainEvent] = [DomainEvent("OrgCreated", slug, {"name": slug, "id": org_id})]
    org += [DomainEvent("OrgOptionSet", slug, {"key": k, "value": v}) for k, v in spec["options"].items()]
    keys = []
    for i, project in enumerate(projects):
        org.append(DomainEvent("ProjectCreated", slug, {"project": project["slug"], "name": project["slug"],
                                                        "template": None, "id": first_project + i}))
        org += [DomainEvent("ProjectOptionSet", slug, {"project": project["slug"], "key": k, "value": v})
                for k, v in project["options"].items()]
        public_key = project["keys"][0]["publicKey"]
        keys.append(public_key)
        org.append(DomainEvent("KeyCreated", slug, {"project": project["slug"], "public_key": public_key,
                                                    "status": "active", "rate_limit": None,
                                                    "numeric_id": first_key + i}))
    return [[DomainEvent("IdsClaimed", "org", {"first": org_id, "count": 1, "owner": "bench"})],
            [DomainEvent("IdsClaimed", "project", {"first": first_project, "count": n, "owner": "bench"})],
            [DomainEvent("IdsClaimed", "key", {"first": first_key, "count": n, "owner": "bench"})],
            [DomainEvent("KeysClaimed", "keys", {"org": slug, "org_version": 0, "public_keys": keys})],
            org]


def check_import_commits() -> None:
    """The synthetic org commit is the one the Decider makes for the same file."""
    spec = org_spec("check", 20, 0)
    pool = IdPool()
    for kind in ("org", "project", "key"):
        pool.add(kind, 1, 100)
    decided = Decider(DomainState(), "bench", IdDraw(pool)).decide("import.org", {"org": spec})
    made = import_commits(spec, 1, 1, 1)[-1]
    assert [(e.type, e.payload) for e in decided.events] == [(e.type, e.payload) for e in made], "stream drifted"


def stream(projects: int, per_org: int) -> Iterator[list[DomainEvent]]:
    for n in range(max(1, projects // per_org)):
        yield from import_commits(org_spec(f"org{n}", per_org, n * per_org), n + 1, n * per_org + 1, n * per_org + 1)


def deep_size(root: object) -> int:
    """Bytes of every object reachable from `root` (each counted once)."""
    seen: set[int] = set()
    todo = [root]
    total = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        todo.extend(gc.get_referents(obj))
    return total


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def actor_projections() -> dict[str, Projection]:
    from actors.commands import CommandActor
    from actors.configs import ConfigActor
    from actors.lookup import KeyLookupActor, OrgAccessActor

    return {cls.name: cls.projection for cls in (CommandActor, KeyLookupActor, OrgAccessActor, ConfigActor)}


def fold_one(actor: str, projects: int, per_org: int) -> None:
    """(In a process of its own.) Fold the import stream into `actor`'s projection; print JSON."""
    projection = actor_projections()[actor]
    gc.collect()
    before = rss_mb()
    state = DomainState(projection)
    started = time.perf_counter()
    events = 0
    for sequence, commit in enumerate(stream(projects, per_org), 1):
        state.apply(sequence, commit)
        events += len(commit)
    folded = time.perf_counter() - started
    gc.collect()
    print(json.dumps({"actor": actor, "projection": projection.name, "parts": sorted(projection.parts),
                      "rss_mb": rss_mb() - before, "state_mb": deep_size(state) / 2**20,
                      "events": events, "fold_s": folded}))


def projection_memory(projects: int, per_org: int) -> None:
    check_import_commits()
    print(f"what each actor's projection holds at {projects} projects ({per_org} per org, the import's stream)")
    for actor in actor_projections():
        out = subprocess.run([sys.executable, "-m", "bench.bench_scale", "--fold-one", actor,
                              "--projects", str(projects), "--per-org", str(per_org)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out)
        print(f"  {r['actor']:<9} state {r['state_mb']:7.1f} MB   RSS +{r['rss_mb']:6.1f} MB   "
              f"fold {r['events'] / r['fold_s']:8.0f} events/s   parts: {', '.join(r['parts'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=100_000)
    parser.add_argument("--per-org", type=int, default=1000)
    parser.add_argument("--projections", action="store_true", help="only what each actor's projection holds")
    parser.add_argument("--fold-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fold_one:
        fold_one(args.fold_one, args.projects, args.per_org)
        return
    if args.projections:
        projection_memory(args.projects, args.per_org)
        return
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
