"""Projection snapshots: a start from a snapshot reaches the same state as a full replay,
and a snapshot nobody but a command handler signed is never trusted.

The tests share one nats-server of this module's own, with the NATS role users, so the
permission test sees what the server refuses. The system's processes connect as the
operator here (the roles of actors are exercised in test_nats_security.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import sentry_relay
import structlog
import zstandard
from nats.aio.client import Client as NATS

from actors.commands import CommandActor
from actors.lookup import KeyLookupActor
from actors.worker import Worker
from bus.client import request
from bus.embedded import ServerProcess, nats_passwords, role_url, start_nats, start_redis
from bus.eventstore import JetStreamEventStore
from bus.runtime import connect
from bus.snapshots import SnapshotSigner, SnapshotStore
from domain.decisions import token_hash
from domain.state import DomainState
from messages.envelope import pack, unpack
from messages.errors import Unauthorized
from messages.subjects import SNAPSHOT_BUCKET, inbox_prefix

NAME = CommandActor.SNAPSHOT_NAME
FORGED_TOKEN = "a-token-nobody-was-ever-given"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess, dict[str, str]]]:
    path: Path = tmp_path_factory.mktemp("snapshots")
    passwords = nats_passwords(path)
    nats_server = start_nats(path / "nats", log_path=path / "nats.log", passwords=passwords)
    redis_server = start_redis(path / "redis", log_path=path / "redis.log")
    yield nats_server, redis_server, passwords
    nats_server.stop()
    redis_server.stop()


def run(url: str, body: Callable[[NATS], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        nc = await connect(url, name="snapshot-test", allow_reconnect=False)
        try:
            return await body(nc)
        finally:
            await nc.close()
    return asyncio.run(main())


def commands_worker(servers: tuple[ServerProcess, ServerProcess, dict[str, str]],
                    actors: list[str] | None = None) -> Worker:
    nats_server, redis_server, _ = servers
    return Worker(actors or ["commands"], nats_server.url, redis_server.url, instrument=False).start()


def write_snapshot(servers: tuple[ServerProcess, ServerProcess, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
                   org: str) -> None:
    """Make the command handlers write a snapshot: more commits than RELAYCTL_SNAPSHOT_EVERY."""
    monkeypatch.setenv("RELAYCTL_SNAPSHOT_EVERY", "5")
    worker = commands_worker(servers)
    try:
        async def setup(nc: NATS) -> None:
            await request(nc, "org.create", {"slug": org, "name": None})
            for i in range(12):
                await request(nc, "project.create", {"org": org, "project": f"p{i}", "name": None, "template": None})
        run(servers[0].url, setup)
    finally:
        worker.stop()


def replayed_and_stored(url: str) -> tuple[dict[str, Any], dict[str, Any] | None, bytes]:
    async def body(nc: NATS) -> tuple[dict[str, Any], dict[str, Any] | None, bytes]:
        store = JetStreamEventStore(nc)
        state = DomainState()
        for seq, events in await store.read():
            state.apply(seq, events)
        raw = (await (await nc.jetstream().object_store(SNAPSHOT_BUCKET)).get(NAME)).data
        return state.to_snapshot(), await SnapshotStore(nc, store).load(NAME), bytes(raw)
    return run(url, body)  # type: ignore[no-any-return]


def plant(url: str, data: bytes) -> None:
    async def body(nc: NATS) -> None:
        await (await nc.jetstream().object_store(SNAPSHOT_BUCKET)).put(NAME, data)
    run(url, body)


def started_from(servers: tuple[ServerProcess, ServerProcess, dict[str, str]],
                 monkeypatch: pytest.MonkeyPatch) -> tuple[int, dict[str, Any], Any]:
    """Start a command handler (that writes no snapshot of its own) and the key lookup actor
    (which checks tokens): where the handler started from, its state, and what a forged
    token gets."""
    monkeypatch.setenv("RELAYCTL_SNAPSHOT_EVERY", "0")
    worker = commands_worker(servers, ["commands", "keys"])
    try:
        ref = worker.supervisors["commands"].ref
        assert ref is not None
        proxy = ref.proxy()

        async def authenticate(nc: NATS) -> Any:
            try:
                return await request(nc, "user.authenticate", {"token": FORGED_TOKEN})
            except Unauthorized as exc:
                return exc
        return proxy.snapshot_sequence.get(), proxy.state.get().to_snapshot(), run(servers[0].url, authenticate)
    finally:
        worker.stop()


def with_superuser(state: dict[str, Any]) -> dict[str, Any]:
    """The state an attacker wants a projection to believe: a superuser with their token."""
    return {**state, "users": [*state["users"], {"username": "intruder", "email": None, "superuser": True,
                                                  "permissions": [], "token_hashes": [token_hash(FORGED_TOKEN)]}]}


def held(state: DomainState) -> dict[str, Any]:
    """What a projection holds, comparable."""
    return {"sequence": state.sequence, "next_ids": state.next_ids,
            **{name: sorted(map(repr, getattr(state, name).values())) for name in ("orgs", "projects", "keys", "users")}}


def test_start_from_snapshot_equals_full_replay(servers: tuple[ServerProcess, ServerProcess, dict[str, str]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The command handlers write a signed snapshot; an actor started later loads it and ends in the
    replayed state, as far as its projection holds it (the key lookup: keys, projects, orgs, users)."""
    write_snapshot(servers, monkeypatch, "snap")
    replayed, snapshot, _ = replayed_and_stored(servers[0].url)
    assert snapshot is not None and 5 <= snapshot["sequence"] <= replayed["sequence"]

    nats_server, redis_server, _ = servers
    worker = Worker(["keys"], nats_server.url, redis_server.url, instrument=False).start()
    try:
        ref = worker.supervisors["keys"].ref
        assert ref is not None
        proxy = ref.proxy()
        loaded = held(proxy.state.get())
        sequence = proxy.snapshot_sequence.get()
    finally:
        worker.stop()
    assert sequence == snapshot["sequence"]  # it did start from the snapshot, not from 1
    assert loaded == held(DomainState.from_snapshot(replayed, KeyLookupActor.projection))
    assert loaded["keys"]


def test_a_planted_unsigned_snapshot_is_ignored(servers: tuple[ServerProcess, ServerProcess, dict[str, str]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot in the old unsigned form with a made-up superuser (what any writer of the
    bucket could plant) is refused at load, logged at error level; the actor replays from 1."""
    write_snapshot(servers, monkeypatch, "snap-unsigned")
    replayed, _, _ = replayed_and_stored(servers[0].url)
    plant(servers[0].url, zstandard.ZstdCompressor().compress(pack(with_superuser(replayed))))
    with structlog.testing.capture_logs() as logs:
        sequence, state, answer = started_from(servers, monkeypatch)
    assert isinstance(answer, Unauthorized), answer  # the forged token is nobody's
    assert sequence == 0 and "intruder" not in {u["username"] for u in state["users"]}
    assert state["sequence"] >= replayed["sequence"]
    rejected = [e for e in logs if e["event"] == "snapshot.rejected"]
    assert rejected and rejected[0]["log_level"] == "error" and "not a signed snapshot" in rejected[0]["reason"]


def test_a_forged_snapshot_fails_its_checks(servers: tuple[ServerProcess, ServerProcess, dict[str, str]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Knowing everything the stream holds is not enough: a forger's own signature, a genuine
    key with a forger's signature, and a genuine header over another body are each refused."""
    write_snapshot(servers, monkeypatch, "snap-forged")
    replayed, _, genuine = replayed_and_stored(servers[0].url)
    outer = unpack(genuine)
    header = unpack(outer["header"])
    body = zstandard.ZstdCompressor().compress(pack(with_superuser(replayed)))
    forger_secret, forger_public = sentry_relay.generate_key_pair()

    def signed(fields: dict[str, Any], secret: Any, data: bytes) -> bytes:
        packed = pack({**header, "digest": hashlib.sha256(data).hexdigest(), **fields})
        return pack({"header": packed, "signature": str(secret.sign(packed)), "body": data})

    forgeries = {
        # the genuine key's place in the stream, the forger's key and signature
        "signing key is not the one the stream holds": signed({"key": str(forger_public)}, forger_secret, body),
        # the genuine key named, signed by the forger
        "signature does not verify": signed({}, forger_secret, body),
        # the genuine header and signature, another body
        "body does not match": pack({**outer, "body": body}),
    }
    for reason, data in forgeries.items():
        plant(servers[0].url, data)
        with structlog.testing.capture_logs() as logs:
            sequence, state, answer = started_from(servers, monkeypatch)
        assert isinstance(answer, Unauthorized), (reason, answer)
        assert sequence == 0 and "intruder" not in {u["username"] for u in state["users"]}, reason
        assert any(e["event"] == "snapshot.rejected" and reason in e["reason"] for e in logs), (reason, logs)


def test_only_the_command_handlers_may_write_snapshots(servers: tuple[ServerProcess, ServerProcess,
                                                                       dict[str, str]]) -> None:
    """With the role users, the server refuses a snapshot write from every other actor role
    (which may still read the bucket), and accepts the command handlers' own."""
    nats_server, _, passwords = servers
    plain = "nats://127.0.0.1:" + str(nats_server.port)

    async def attempt(role: str) -> tuple[bytes | None, bool, list[str]]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        nc = await nats.connect(role_url(plain, role, passwords), error_cb=on_error, allow_reconnect=False,
                                inbox_prefix=inbox_prefix(role))
        try:
            objects = await nc.jetstream(timeout=2).object_store(SNAPSHOT_BUCKET)
            try:
                await objects.put(f"written-by-{role}", role.encode())
                written = True
            except Exception:
                written = False
            await nc.flush()
            read = (await objects.get("written-by-commands")).data
            return read, written, [e for e in errors if "permissions violation" in e]
        finally:
            await nc.close()

    async def main() -> None:
        assert await attempt("commands") == (b"commands", True, [])
        others = ("keys", "orgs", "configs", "metrics", "transport", "ai")
        # at once: each refused write waits out its publish timeout
        for role, (read, written, violations) in zip(others, await asyncio.gather(*map(attempt, others))):
            assert read == b"commands" and not written and violations, role

    asyncio.run(main())


def test_a_snapshot_survives_its_signer(servers: tuple[ServerProcess, ServerProcess, dict[str, str]]) -> None:
    """A snapshot signed by a handler that has stopped since still loads: its key stays in the stream."""
    async def body(nc: NATS) -> tuple[dict[str, Any] | None, int]:
        events = JetStreamEventStore(nc)
        sequence = await events.last_sequence()
        store = SnapshotStore(nc, events)
        assert await store.save("survivor", {"sequence": sequence}, SnapshotSigner(), "test")
        return await SnapshotStore(nc, JetStreamEventStore(nc)).load("survivor"), sequence
    loaded, sequence = run(servers[0].url, body)
    assert loaded == {"sequence": sequence}
