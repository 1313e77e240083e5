"""Scale on one machine: import N projects, materialize every config, restart from snapshots.

    python -m bench.bench_scale [--projects 100000] [--per-org 100] [--out run.json] [--baseline other.json]

Runs nats-server, redis-server, one worker process per actor (commands, keys, orgs,
configs) and a gateway process, as `relayctl up` does. Prints, each with the machine's
load average when it was measured (issue 15's figures; its targets are for 1M projects):
- build cost per config (the config builder's own function) beside a floor of json.dumps
  of the same document (the least any builder must do);
- import time and events/s appended (one `import.org` request per org, in turn, as
  `relayctl import` sends a file of orgs);
- time from the import's start until every key is served by the gateway without `pending`;
- Redis used_memory once every config is in it;
- the v3 hot path at that size: wrk -t2 -c8, 100 random keys of all of them per request,
  p50/p99 and keys/s (the median of two turns);
- peak RSS (VmHWM) of every process;
- for each actor process in turn: killed, started again, the time until it serves (its
  micro service is registered only once it has replayed from its snapshot to where the
  stream was), what it restored from (the snapshot's sequence, the commits replayed), and
  the restarted process's peak RSS; the gateway keeps serving cached configs meanwhile.
  `--snapshot-every N` sets the workers' RELAYCTL_SNAPSHOT_EVERY: with N just over the
  import's commits less 10,000, each restart replays as many commits as it ever can with
  the default (the commits of the whole interval).

`--out` writes every figure as JSON; `--baseline` (an earlier run's `--out`) prints its
figures beside this run's, with the targets.

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
import os
import subprocess
import sys
import tempfile
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

ACTORS = ("commands", "keys", "orgs", "configs")


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


# -- the system at scale -------------------------------------------------------------------------

# Issue 15's targets at 1M projects (seconds, MB), by figure (a prefix names every actor's).
TARGETS = {"import_s": 180.0, "served_s": 240.0, "restart_": 30.0, "rss_": 1536.0}


def target(key: str) -> float | None:
    return next((t for prefix, t in TARGETS.items() if key.startswith(prefix)), None)


CHECK_BATCH = 500  # keys per v3 request of the "every key served" scan
CHECK_PARALLEL = 4


def load() -> float:
    return os.getloadavg()[0]


class Report:
    """Every figure as it is measured (printed with the machine's load average), kept for
    `--out` and printed beside a `--baseline` run's."""

    def __init__(self, projects: int, per_org: int) -> None:
        self.data: dict[str, Any] = {"projects": projects, "per_org": per_org, "cores": os.cpu_count(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                     "figures": {}}

    def add(self, key: str, label: str, value: float, unit: str, note: str = "") -> None:
        self.data["figures"][key] = {"label": label, "value": value, "unit": unit, "load": load(), "note": note}
        print(f"{label:<34} {value:10.1f} {unit:<5} load {load():4.1f}   {note}", flush=True)

    def side_by_side(self, baseline: dict[str, Any] | None) -> None:
        mine = self.data["figures"]
        theirs = baseline["figures"] if baseline else {}
        head = f"{self.data['projects']:,} projects"
        base = f"{baseline['projects']:,} projects" if baseline else ""
        print(f"\n{'figure':<34} {head:>22} {base:>22}   target (1M)")
        for key, fig in mine.items():
            other = theirs.get(key)
            goal = target(key)
            cell = f"{fig['value']:.1f} {fig['unit']} (load {fig['load']:.1f})"
            ocell = f"{other['value']:.1f} {other['unit']} (load {other['load']:.1f})" if other else ""
            verdict = "" if goal is None else f"< {goal:.0f} " + ("met" if fig["value"] < goal else "MISSED")
            print(f"{fig['label']:<34} {cell:>22} {ocell:>22}   {verdict}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


SPAWN_ENV: dict[str, str] = {}  # variables set for every process spawned (--snapshot-every)


def spawn(args: list[str], log_file: Path | None = None) -> subprocess.Popen[bytes]:
    err = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
    return subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=subprocess.DEVNULL, stderr=err,
                            env={**os.environ, **SPAWN_ENV})


async def wait_service(nc: nats.NATS, name: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await nc.request(f"$SRV.PING.{name}", b"", timeout=0.5)
            return
        except Exception:
            await asyncio.sleep(0.05)
    raise TimeoutError(name)


def signed(relay: Any, keys: list[str]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"publicKeys": keys}).encode()
    return body, {"Content-Type": "application/json", "X-Sentry-Relay-Id": relay.relay_id,
                  "X-Sentry-Relay-Signature": relay.secret_key.sign(body)}


async def batch_served(session: aiohttp.ClientSession, url: str, relay: Any, batch: list[str]) -> bool:
    body, headers = signed(relay, batch)
    async with session.post(url + "/api/0/relays/projectconfigs/?version=3", data=body, headers=headers) as r:
        data = await r.json()
        return r.status == 200 and not data.get("pending") and len(data["configs"]) == len(batch)


async def served_all(url: str, relay: Any, keys: list[str]) -> bool:
    async with aiohttp.ClientSession() as session:
        for i in range(0, len(keys), CHECK_BATCH):
            if not await batch_served(session, url, relay, keys[i:i + CHECK_BATCH]):
                return False
    return True


async def wait_all_served(url: str, relay: Any, keys: list[str]) -> None:
    """Until every key is served without `pending`. A served key stays served (nothing changes
    it), so each batch is asked until it is served once, `CHECK_PARALLEL` batches at a time;
    asking for a key the cache lacks makes the gateway have it built, as a relay's poll does."""
    batches = [keys[i:i + CHECK_BATCH] for i in range(0, len(keys), CHECK_BATCH)]
    todo = asyncio.Queue[list[str]]()
    for batch in batches:
        todo.put_nowait(batch)

    async def scan(session: aiohttp.ClientSession) -> None:
        while not todo.empty():
            batch = todo.get_nowait()
            while not await batch_served(session, url, relay, batch):
                await asyncio.sleep(0.2)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(scan(session) for _ in range(CHECK_PARALLEL)))


def log_events(path: Path, *names: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") in names:
            out.append(entry)
    return out


def redis_memory(url: str) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    info = client.info("memory")
    return {"used_memory": info["used_memory"], "used_memory_rss": info["used_memory_rss"], "keys": client.dbsize()}


def hot_path(gw_url: str, relay: Any, keys: list[str], seconds: int, turns: int = 2) -> Any:
    """v3 with 100 keys of all of them (64 pre-signed bodies rotated), wrk -t2 -c8, median of turns."""
    from bench import _wrk

    bodies = _wrk.signed_bodies(relay, keys, 100)
    lua = _wrk.script(relay.relay_id, bodies)
    runs = [_wrk.run(gw_url + _wrk.PATH, lua, seconds) for _ in range(turns)]
    result = _wrk.median(runs)
    if result.errors:
        raise RuntimeError(f"hot path: {result.errors} answers were not 200")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projects", type=int, default=100_000)
    parser.add_argument("--per-org", type=int, default=100, help="projects per org (1M projects: 10,000 orgs)")
    parser.add_argument("--projections", action="store_true", help="only what each actor's projection holds")
    parser.add_argument("--seconds", type=int, default=4, help="wrk duration of one hot path turn")
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    parser.add_argument("--baseline", type=Path, help="a run's --out file, printed beside this run's figures")
    parser.add_argument("--logs", type=Path, help="keep every process's log here (default: a temporary directory)")
    parser.add_argument("--snapshot-every", type=int,
                        help="RELAYCTL_SNAPSHOT_EVERY of the workers: commits between two snapshots (default 10000); "
                             "set past the import's commits less 10000 to restart with the longest replay")
    parser.add_argument("--fold-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.snapshot_every is not None:
        SPAWN_ENV["RELAYCTL_SNAPSHOT_EVERY"] = str(args.snapshot_every)
    if args.fold_one:
        fold_one(args.fold_one, args.projects, args.per_org)
        return
    if args.projections:
        projection_memory(args.projects, args.per_org)
        return
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    with tempfile.TemporaryDirectory(prefix="relayctl-scale-logs-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        report = run_system(args.projects, args.per_org, args.seconds, logs)
    if args.out:
        args.out.write_text(json.dumps(report.data, indent=1))
    report.side_by_side(baseline)


def run_system(projects: int, per_org: int, seconds: int, logs: Path) -> Report:
    from tests.system import RelayClient  # only here: the fold runs need no CLI

    report = Report(projects, per_org)
    orgs = max(1, projects // per_org)
    print(f"bench_scale: {orgs * per_org:,} projects in {orgs:,} orgs, {os.cpu_count()} cores,"
          f" load average {load():.1f} at the start", flush=True)
    build, dumps = build_floor()
    report.add("build_us", "build cost per config", build * 1e6, "us", f"floor json.dumps {dumps * 1e6:.0f} us")
    # Room for every config (about 1 KB each) with half again to spare: `up`'s default 256mb
    # evicts past about 250,000 (allkeys-lru), and evicted keys are built again on demand.
    maxmemory = f"{max(256, projects * 3 // 2 // 1024)}mb"
    print(f"Redis maxmemory {maxmemory} (allkeys-lru)", flush=True)
    with servers(redis_maxmemory=maxmemory) as (nats_server, redis_server):
        urls = ["--nats-url", nats_server.url, "--redis-url", redis_server.url]
        procs = {name: spawn(["worker", name, *urls], logs / f"{name}.log") for name in ACTORS}
        gw_port = free_port()
        procs["gateway"] = spawn(["gateway", "--bind", f"127.0.0.1:{gw_port}", *urls], logs / "gateway.log")
        gw_url = f"http://127.0.0.1:{gw_port}"
        peaks: dict[str, float] = {}
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
                keys: list[str] = []
                events = 0
                started = time.perf_counter()
                for n in range(orgs):  # one request per org, as `relayctl import` sends a file of orgs
                    spec = org_spec(f"org{n}", per_org, n * per_org)
                    keys += [p["keys"][0]["publicKey"] for p in spec["projects"]]  # type: ignore[attr-defined,index]
                    events += (await request(nc, "import.org", {"org": spec}, timeout=120))["events"]
                imported = time.perf_counter() - started
                last = (await nc.jetstream().stream_info("RC_EVENTS")).state.last_seq
                report.add("import_s", "import", imported, "s",
                           f"{len(keys)} projects, {events} events, {last} commits, {events / imported:.0f} events/s")
                await wait_all_served(gw_url, relay, keys)
                report.add("served_s", "every key served", time.perf_counter() - started, "s",
                           "after the import began")
                await asyncio.sleep(2)  # the last writes' announcements
                mem = redis_memory(redis_server.url)
                report.add("redis_mb", "Redis used_memory", mem["used_memory"] / 2**20, "MB",
                           f"rss {mem['used_memory_rss'] / 2**20:.0f} MB, {mem['keys']} keys (maxmemory {maxmemory}),"
                           f" {mem['used_memory'] / max(1, mem['keys']):.0f} B per key")
                hot = await asyncio.get_running_loop().run_in_executor(
                    None, hot_path, gw_url, relay, keys, seconds)
                note = f"wrk -t2 -c8, 100 keys/request, {hot.keys_per_s(100):.0f} keys/s"
                report.add("hot_p50_ms", "v3 hot path p50", hot.p50 * 1e3, "ms", note)
                report.add("hot_p99_ms", "v3 hot path p99", hot.p99 * 1e3, "ms", note)
                report.add("hot_kps", "v3 hot path keys/s", hot.keys_per_s(100), "keys/s", note)
                for name, proc in procs.items():
                    peaks[name] = peak_rss_mb(proc.pid)
                    report.add(f"rss_{name}_mb", f"peak RSS {name}", peaks[name], "MB", "import and serving")
                # Restart each actor process in turn: time to serving (its service answers,
                # registered once replay from its snapshot is done), from its snapshot.
                for name in ACTORS:
                    procs[name].terminate()
                    procs[name].wait()
                    log_file = logs / f"{name}.restart.log"
                    restarted = time.perf_counter()
                    procs[name] = spawn(["worker", name, *urls], log_file)
                    cached = await served_all(gw_url, relay, keys[:CHECK_BATCH]) if name == "configs" else None
                    await wait_service(nc, name)
                    took = time.perf_counter() - restarted
                    loaded = log_events(log_file, "snapshot.loaded")
                    started_at = log_events(log_file, "projection.started")
                    replay_to = started_at[0].get("replay_to") if started_at else None
                    snap = loaded[0].get("sequence") if loaded else None
                    extra = log_events(log_file, "configs.materialized_all")
                    note = (f"snapshot at {snap}, stream at {replay_to}: replayed {replay_to - snap} commits"
                            f" (snapshot fetched in {loaded[0].get('load_s')} s, restored in"
                            f" {loaded[0].get('restore_s')} s)"
                            if snap is not None and replay_to is not None else f"no snapshot, replayed {replay_to}")
                    if extra:
                        note += f"; materialized every key in {extra[0].get('seconds')} s"
                    if cached is not None:
                        note += f"; gateway served cached configs meanwhile: {cached}"
                    report.add(f"restart_{name}_s", f"restart to serving {name}", took, "s", note)
                    report.add(f"rss_{name}_restart_mb", f"peak RSS {name} restarted", peak_rss_mb(procs[name].pid),
                               "MB", "snapshot load and replay")
                await nc.close()

            asyncio.run(run())
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait()
    return report


if __name__ == "__main__":
    main()
