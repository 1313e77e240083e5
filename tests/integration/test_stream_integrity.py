"""The event stream under damage: undecodable commits, a full disk, lost commits, racing
handlers, oversized commits. What a user notices: every start still finishes, ids never
shift, a key is never under two orgs, and each failure says what it is.

The first tests run the real `relayctl up` (nats and the command handlers as OS
processes) on a data dir whose NATS store is a small tmpfs when this process may mount
one (root), and run in file order. The others run handlers in-process on servers of this
module's own (they append garbage and delete commits: not for the session's servers).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import structlog
from nats.aio.client import Client as NATS

from actors.worker import Worker
from bus.client import request
from bus.embedded import ServerProcess, start_nats, start_redis
from bus.eventstore import JetStreamEventStore
from messages.errors import Conflict
from messages.events import ORG, aggregate_subject
from messages.subjects import EVENT_STREAM
from tests.system import RelayctlProcess

GARBAGE = b"\xc1 this is not msgpack"


def on_loop(url: str, body: Callable[[NATS], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=3)
        try:
            return await body(nc)
        finally:
            await nc.close()
    return asyncio.run(main())


def append_garbage(url: str, subject: str) -> int:
    """Store bytes that are no commit on an event subject, as the operator's connection can."""
    async def body(nc: NATS) -> int:
        return int((await nc.jetstream().publish(subject, GARBAGE, stream=EVENT_STREAM)).seq)
    return on_loop(url, body)  # type: ignore[no-any-return]


# -- `relayctl up` on a damaged stream ------------------------------------------------------------

class UpSystem(RelayctlProcess):
    tmpfs: Path | None = None

    def status(self) -> dict[str, Any]:
        return json.loads(self.run("status", "--json").stdout)  # type: ignore[no-any-return]

    @property
    def nats_url(self) -> str:
        return str(json.loads((self.data_dir / "services.json").read_text())["nats"])


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpSystem]:
    system = UpSystem(tmp_path_factory.mktemp("stream-integrity") / "data")
    # Without the fix a start on a damaged stream never turns healthy: fail fast, not in 90 s.
    system.env["RELAYCTL_HEALTH_TIMEOUT"] = "25"
    if mount_tmpfs(system.data_dir / "nats", "48m"):
        system.tmpfs = system.data_dir / "nats"
    try:
        system.ok("up", "nats", "redis", "commands", "keys", "--detach", "--json")
        yield system
    finally:
        system.run("down", timeout=60)
        if system.tmpfs is not None:
            subprocess.run(["umount", "-l", str(system.tmpfs)], capture_output=True)


def test_an_undecodable_commit_at_the_tail_stops_no_start(up: UpSystem) -> None:
    """Garbage stored on an org's subject: handlers restarted after it become ready, the org
    stays writable (its next append expects the garbage's sequence), and status shows the
    skipped commit."""
    up.ok("org", "create", "tail")
    before = up.ok("project", "create", "tail", "web", "--json")
    bad = append_garbage(up.nats_url, "rc.ev.org.tail.OrgOptionSet")
    up.ok("up", "commands", "keys", "--recreate", "--detach")
    after = up.ok("project", "create", "tail", "api", "--json")
    assert after["id"] != before["id"] and after["numericId"] != before["numericId"]
    up.ok("project", "option", "set", "tail/api", "sentry:origins", '["example.com"]')
    status = up.status()
    assert all(s["healthy"] for s in status["services"].values()), status
    events = status["events"]
    assert events["healthy"] and events["last_sequence"] >= bad
    assert [s["sequence"] for s in events["skipped"]] == [bad]
    assert events["skipped"][0]["subject"] == "rc.ev.org.tail.OrgOptionSet"
    assert "BadMessage" in events["skipped"][0]["error"]
    text = up.ok("status")
    assert "undecodable commit(s) skipped" in text and f"#{bad} rc.ev.org.tail.OrgOptionSet" in text


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last byte."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as out:
        for chunk in (1024 * 1024, 4096, 1):
            try:
                while True:
                    out.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def test_a_full_disk_says_so_and_writes_again_after_space_and_a_nats_restart(up: UpSystem) -> None:
    """With the NATS store's disk full, a change fails with "event store cannot write" and
    status names the cause and what to restart; once space is freed and nats restarted as
    status says, changes are stored again."""
    if up.tmpfs is None:
        pytest.skip("needs a tmpfs for the NATS store (run as root)")
    filler = fill(up.tmpfs)
    failed = None
    for i in range(50):  # the store's last page may still take a few small commits
        result = up.run("org", "create", f"full-{i}")
        if result.returncode != 0:
            failed = result
            break
    assert failed is not None, "nothing failed on a full disk"
    assert "event store cannot write" in failed.stderr and "did not acknowledge" not in failed.stderr
    status = up.status()
    nats_entry, commands = status["services"]["nats"], status["services"]["commands"]
    assert not nats_entry["healthy"] and "no space left on device" in nats_entry["detail"]
    assert "relayctl up --recreate nats" in nats_entry["detail"]
    assert not commands["healthy"] and "event store cannot write" in commands["detail"]
    assert not status["events"]["healthy"] and "no space left on device" in status["events"]["write_error"]
    text = up.run("status")
    assert text.returncode == 1 and "event store cannot write: no space left on device" in text.stdout

    filler.unlink()
    up.ok("up", "nats", "--recreate", "--detach")
    deadline = time.monotonic() + 30
    while up.run("org", "create", "after-full").returncode != 0:  # the handlers reconnect
        assert time.monotonic() < deadline, "no change was stored after the restart"
        time.sleep(0.5)
    status = up.status()
    assert all(s["healthy"] for s in status["services"].values()), status
    assert status["events"]["healthy"] and status["events"]["write_error"] is None


# -- in-process handlers on servers of their own ---------------------------------------------------

@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    path = tmp_path_factory.mktemp("integrity-servers")
    nats_server = start_nats(path / "nats", log_path=path / "nats.log")
    redis_server = start_redis(path / "redis", log_path=path / "redis.log")
    yield nats_server, redis_server
    nats_server.stop()
    redis_server.stop()


def workers(servers: tuple[ServerProcess, ServerProcess], count: int, names: tuple[str, ...] = ("commands",),
            ready_timeout: float = 30.0) -> list[Worker]:
    started: list[Worker] = []
    try:
        for i in range(count):
            started.append(Worker(list(names), servers[0].url, servers[1].url, process_name=f"integrity-{i}",
                                  instrument=False).start(ready_timeout=ready_timeout))
    except BaseException:
        for worker in started:
            worker.stop()
        raise
    return started


def test_every_projection_starts_past_an_undecodable_commit(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """Every actor kind replays past garbage at the stream's end, logs it at error level, and
    the org it was stored under stays writable."""
    [worker] = workers(servers, 1)
    try:
        on_loop(servers[0].url, lambda nc: request(nc, "org.create", {"slug": "garbled", "name": None}))
    finally:
        worker.stop()
    bad = append_garbage(servers[0].url, "rc.ev.org.garbled.ProjectCreated")
    with structlog.testing.capture_logs() as logs:
        [worker] = workers(servers, 1, ("commands", "keys", "orgs", "configs"), ready_timeout=15)
    try:
        created = on_loop(servers[0].url, lambda nc: request(
            nc, "project.create", {"org": "garbled", "project": "web", "name": None, "template": None}))
        found = on_loop(servers[0].url, lambda nc: request(nc, "keys.lookup", {"public_keys": [created["publicKey"]]}))
        assert found[created["publicKey"]]["projectId"] == created["id"]
        status = on_loop(servers[0].url, lambda nc: request(nc, "stream.status", {}))
        assert bad in [s["sequence"] for s in status["skipped"]]
    finally:
        worker.stop()
    skipped = [e for e in logs if e["event"] == "events.undecodable_commit_skipped" and e["sequence"] == bad]
    assert {e["actor"] for e in skipped} == {"commands", "keys", "orgs", "configs"}
    assert all(e["log_level"] == "error" for e in skipped)


def test_a_lost_commit_shifts_no_later_id(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """A project's commit deleted from the middle of the stream: after a full replay every later
    project keeps the id it was created with (and a new project never takes one of theirs)."""
    org = "shift-" + uuid.uuid4().hex[:6]
    [worker] = workers(servers, 1)
    try:
        async def create(nc: NATS) -> list[dict[str, Any]]:
            await request(nc, "org.create", {"slug": org, "name": None})
            return [await request(nc, "project.create", {"org": org, "project": f"p{i}", "name": None,
                                                         "template": None}) for i in range(4)]
        created = on_loop(servers[0].url, create)
    finally:
        worker.stop()

    async def lose_the_first(nc: NATS) -> None:
        commits = await JetStreamEventStore(nc).read(aggregate_subject(ORG, org))
        first_project = next(seq for seq, events in commits if events[0].type == "ProjectCreated")
        await nc.jetstream().delete_msg(EVENT_STREAM, first_project)
    on_loop(servers[0].url, lose_the_first)

    [worker] = workers(servers, 1, ("commands", "keys"))
    try:
        async def after(nc: NATS) -> tuple[dict[str, Any], dict[str, Any]]:
            found = await request(nc, "keys.lookup", {"public_keys": [p["publicKey"] for p in created[1:]]})
            new = await request(nc, "project.create", {"org": org, "project": "new", "name": None, "template": None})
            return found, new
        found, new = on_loop(servers[0].url, after)
    finally:
        worker.stop()
    assert [found[p["publicKey"]]["projectId"] for p in created[1:]] == [p["id"] for p in created[1:]]
    assert new["id"] not in {p["id"] for p in created}
    assert new["numericId"] not in {p["numericId"] for p in created}


def test_two_handlers_deciding_at_once_never_hand_out_one_id(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """Two command handlers create projects in many orgs concurrently: every org, project and
    key id is unique, and every projection agrees with the ids the handlers replied."""
    orgs = [f"race-{uuid.uuid4().hex[:6]}-{i}" for i in range(8)]
    started = workers(servers, 2)
    try:
        async def race(nc: NATS) -> tuple[list[Any], list[Any]]:
            made = await asyncio.gather(*(request(nc, "org.create", {"slug": o, "name": None}) for o in orgs))
            projects = await asyncio.gather(*(
                request(nc, "project.create", {"org": o, "project": f"p{i}", "name": None, "template": None},
                        timeout=20) for o in orgs for i in range(6)))
            return made, projects
        made, projects = on_loop(servers[0].url, race)
    finally:
        for worker in started:
            worker.stop()
    assert len({m["id"] for m in made}) == len(orgs)
    assert len({p["id"] for p in projects}) == len(projects) == 48
    assert len({p["numericId"] for p in projects}) == len(projects)

    [worker] = workers(servers, 1, ("keys",))
    try:
        found = on_loop(servers[0].url, lambda nc: request(nc, "keys.lookup",
                                                             {"public_keys": [p["publicKey"] for p in projects]}))
    finally:
        worker.stop()
    assert {p["publicKey"]: (p["id"], p["numericId"]) for p in projects} == {
        k: (v["projectId"], v["numericId"]) for k, v in found.items()}


def test_racing_imports_never_put_one_key_under_two_orgs(servers: tuple[ServerProcess, ServerProcess]) -> None:
    """Imports of two orgs naming the same keys, sent at once to two handlers, and key.create
    racing them: each key ends up in exactly one org's commits; the losers get a Conflict
    that says who holds (or is claiming) the key."""
    rounds = 10
    keys = [uuid.uuid4().hex for _ in range(rounds)]
    started = workers(servers, 2)
    try:
        async def race(nc: NATS) -> list[Any]:
            out = []
            for i, key in enumerate(keys):
                tag = uuid.uuid4().hex[:6]
                specs = [{"slug": f"imp-{tag}-{side}", "projects": [{"slug": "web", "keys": [{"publicKey": key}]}]}
                         for side in ("a", "b")]
                calls = [request(nc, "import.org", {"org": spec}, timeout=20) for spec in specs]
                if i % 2:
                    await request(nc, "org.create", {"slug": f"kc-{tag}", "name": None})
                    await request(nc, "project.create", {"org": f"kc-{tag}", "project": "web", "name": None,
                                                         "template": None})
                    calls.append(request(nc, "key.create", {"org": f"kc-{tag}", "project": "web", "public_key": key},
                                         timeout=20))
                out.append(await asyncio.gather(*calls, return_exceptions=True))
            return out
        results = on_loop(servers[0].url, race)
    finally:
        for worker in started:
            worker.stop()

    for outcome in results:
        won = [r for r in outcome if not isinstance(r, BaseException)]
        lost = [r for r in outcome if isinstance(r, BaseException)]
        assert len(won) == 1, outcome
        assert all(isinstance(r, Conflict) and ("claimed by organization" in r.message or "belongs to" in r.message
                                                or "already exists" in r.message) for r in lost), lost

    async def holders(nc: NATS) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {k: set() for k in keys}
        for _, events in await JetStreamEventStore(nc).read():
            for e in events:
                if e.type == "KeyCreated" and e.payload["public_key"] in out:
                    out[e.payload["public_key"]].add(e.aggregate_id)
        return out
    assert all(len(orgs) == 1 for orgs in on_loop(servers[0].url, holders).values())


def test_an_import_over_the_message_limit_is_stored_in_parts_within_it(
        servers: tuple[ServerProcess, ServerProcess]) -> None:
    """An org whose import, sent whole, is far over the 8 MB NATS message limit as one commit
    is stored as part commits each within the limit (issue 15), and is then there whole."""
    org = "huge-" + uuid.uuid4().hex[:6]
    spec = {"slug": org, "projects": [{"slug": f"p{i}", "options": {"sentry:origins": [f"https://{i}.example.com"]},
                                       "keys": [{"publicKey": uuid.uuid4().hex} for _ in range(4)]}
                                      for i in range(9000)]}
    [worker] = workers(servers, 1)
    try:
        async def attempt(nc: NATS) -> tuple[Any, Any, list[int]]:
            before = await JetStreamEventStore(nc).last_sequence()
            result = await request(nc, "import.org", {"org": spec}, timeout=60)
            keys = await request(nc, "key.list", {"org": org, "project": "p8999"})
            store = JetStreamEventStore(nc)
            sizes = []
            for sequence in range(before + 1, await store.last_sequence() + 1):
                message = await store.message(sequence)
                if message is not None and message.subject.startswith(f"rc.ev.org.{org}."):
                    sizes.append(len(message.data))
            return result, keys, sizes
        result, keys, sizes = on_loop(servers[0].url, attempt)
    finally:
        worker.stop()
    assert (result["projects"], result["keys"]) == (9000, 36000)
    assert result["import"]["committed"] is True
    assert len(keys["keys"]) == 4
    assert len(sizes) > 1 and sum(sizes) > 8 * 1024 * 1024 and max(sizes) <= 8 * 1024 * 1024
