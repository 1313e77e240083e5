"""The event store contract: every implementation (JetStream and in-memory) must pass it.

Each test body is a coroutine run against a fresh, empty store. The JetStream store runs
on a nats-server of this module's own: the stream's subjects (`rc.ev.>`) would overlap the
system's stream on the session server, and JetStream refuses overlapping streams. Each
test gets a stream of its own name, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.embedded import ServerProcess, start_nats
from bus.eventstore import CommitTooLarge, EventStore, InMemoryEventStore, JetStreamEventStore, StoreCannotWrite
from bus.runtime import connect
from domain.state import DomainState
from messages.errors import Conflict, Unavailable
from messages.events import ORG, USER, DomainEvent, UndecodableCommit, aggregate_subject

Body = Callable[[EventStore], Awaitable[None]]


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path: Path = tmp_path_factory.mktemp("eventstore-nats")
    server = start_nats(path, log_path=path / "nats.log")
    yield server
    server.stop()


@pytest.fixture(params=["memory", "jetstream"])
def run_store(request: pytest.FixtureRequest) -> Callable[[Body], None]:
    """Run a test body against a fresh store of the parametrized implementation."""
    if request.param == "memory":
        return lambda body: asyncio.run(body(InMemoryEventStore()))
    url = request.getfixturevalue("own_nats").url

    def run(body: Body) -> None:
        async def main() -> None:
            nc = await connect(url, name="eventstore-test")
            store = JetStreamEventStore(nc, stream="T_" + uuid.uuid4().hex[:12])
            await store.ensure()
            try:
                await asyncio.wait_for(body(store), 30)
            finally:
                await store.js.delete_stream(store.stream)
                await nc.close()
        asyncio.run(main())
    return run


def org_created(slug: str, **kw: Any) -> DomainEvent:
    return DomainEvent("OrgCreated", slug, {"name": slug.title()}, **kw)


def option_set(slug: str, key: str, value: Any) -> DomainEvent:
    return DomainEvent("OrgOptionSet", slug, {"key": key, "value": value})


def project_with_key(slug: str, project: str) -> list[DomainEvent]:
    return [DomainEvent("ProjectCreated", slug, {"project": project, "name": project, "template": None}),
            DomainEvent("KeyCreated", slug, {"project": project, "public_key": uuid.uuid4().hex,
                                             "rate_limit": None})]


def sample_commits() -> list[list[DomainEvent]]:
    return [[org_created("acme")], project_with_key("acme", "web"), [org_created("beta")],
            [option_set("acme", "sentry:safe_fields", ["a"])], project_with_key("beta", "api"),
            [DomainEvent("UserCreated", "ann", {"email": None, "superuser": True})],
            [DomainEvent("KeyDisabled", "acme", {"public_key": "0" * 32})]]


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def store_raw(store: EventStore, subject: str, data: bytes) -> int:
    """Store bytes that are not a commit, as any writer of the stream could."""
    if isinstance(store, InMemoryEventStore):
        return await store.store_raw(subject, data)
    assert isinstance(store, JetStreamEventStore)
    return int((await store.js.publish(subject, data, stream=store.stream)).seq)


def fold(commits: list[tuple[int, list[DomainEvent]]]) -> DomainState:
    state = DomainState()
    for sequence, events in commits:
        state.apply(sequence, events)
    return state


class TestEventStoreContract:
    def test_append_returns_increasing_sequences(self, run_store: Callable[[Body], None]) -> None:
        """Each append returns a stream sequence greater than the one before."""
        async def body(store: EventStore) -> None:
            sequences = [await store.append(commit, None) for commit in sample_commits()]
            assert sequences == sorted(set(sequences)) and sequences[0] >= 1
            assert await store.last_sequence() == sequences[-1]
        run_store(body)

    def test_an_empty_store_has_sequence_zero(self, run_store: Callable[[Body], None]) -> None:
        """A new store's last sequence is 0 and reading it gives nothing."""
        async def body(store: EventStore) -> None:
            assert await store.last_sequence() == 0
            assert await store.read() == []
        run_store(body)

    def test_a_stale_expectation_conflicts_and_stores_nothing(self, run_store: Callable[[Body], None]) -> None:
        """Appending with an outdated expected sequence raises Conflict naming the real one."""
        async def body(store: EventStore) -> None:
            first = await store.append([org_created("acme")], 0)
            second = await store.append([option_set("acme", "sentry:safe_fields", ["a"])], first)
            with pytest.raises(Conflict) as info:
                await store.append([option_set("acme", "sentry:safe_fields", ["b"])], first)
            assert info.value.details["last_sequence"] == second
            stored = await store.read()
            assert [seq for seq, _ in stored] == [first, second]
            assert stored[-1][1][0].payload["value"] == ["a"]
        run_store(body)

    def test_expected_zero_means_the_aggregate_must_not_exist(self, run_store: Callable[[Body], None]) -> None:
        """Expecting 0 succeeds for a new aggregate and conflicts once it has events."""
        async def body(store: EventStore) -> None:
            await store.append([org_created("acme")], 0)
            with pytest.raises(Conflict):
                await store.append([org_created("acme")], 0)
            assert len(await store.read()) == 1
        run_store(body)

    def test_the_expectation_covers_one_aggregate_only(self, run_store: Callable[[Body], None]) -> None:
        """Another aggregate's commits never make an append conflict."""
        async def body(store: EventStore) -> None:
            acme = await store.append([org_created("acme")], 0)
            await store.append([org_created("beta")], 0)
            await store.append(project_with_key("beta", "web"), None)
            await store.append([option_set("acme", "sentry:safe_fields", [])], acme)
            await store.append([org_created("acme-2")], 0)  # a prefix is not the same aggregate
        run_store(body)

    def test_dotted_ids_are_separate_aggregates(self, run_store: Callable[[Body], None]) -> None:
        """User `ann` is a new aggregate even after user `ann.smith` exists (dots in ids)."""
        async def body(store: EventStore) -> None:
            await store.append([DomainEvent("UserCreated", "ann.smith", {"email": None, "superuser": False})], 0)
            seq = await store.append([DomainEvent("UserCreated", "ann", {"email": None, "superuser": False})], 0)
            ann = await store.read(aggregate_subject(USER, "ann"))
            assert [(s, [e.aggregate_id for e in events]) for s, events in ann] == [(seq, ["ann"])]
        run_store(body)

    def test_the_same_event_id_is_stored_once(self, run_store: Callable[[Body], None]) -> None:
        """A retried append (same first event id) returns the original sequence and stores nothing new."""
        async def body(store: EventStore) -> None:
            commit = [org_created("acme")]
            first = await store.append(commit, 0)
            await store.append([org_created("beta")], 0)
            again = await store.append(commit, 0)
            also = await store.append(commit, None)
            assert again == also == first
            assert [[e.aggregate_id for e in events] for _, events in await store.read()] == [["acme"], ["beta"]]
        run_store(body)

    def test_a_commit_is_stored_whole(self, run_store: Callable[[Body], None]) -> None:
        """All events of one append come back together, in order, under one sequence."""
        async def body(store: EventStore) -> None:
            await store.append([org_created("acme")], 0)
            commit = project_with_key("acme", "web") + [option_set("acme", "sentry:safe_fields", ["x"])]
            seq = await store.append(commit, None)
            [(read_seq, events)] = await store.read(from_sequence=seq)
            assert read_seq == seq
            assert [e.to_map() for e in events] == [e.to_map() for e in commit]
            assert {e.sequence for e in events} == {seq}
        run_store(body)

    def test_follow_replays_then_delivers_live_through_one_callback(
            self, run_store: Callable[[Body], None]) -> None:
        """follow() from 1 replays stored commits, then live ones; folding either way gives one state."""
        async def body(store: EventStore) -> None:
            commits = sample_commits()
            for commit in commits[:4]:
                await store.append(commit, None)
            delivered: list[tuple[int, list[DomainEvent]]] = []
            sub = await store.follow(lambda seq, events: delivered.append((seq, events)))
            await eventually(lambda: len(delivered) == 4)
            for commit in commits[4:]:
                await store.append(commit, None)
            await eventually(lambda: len(delivered) == len(commits))
            await sub.unsubscribe()

            sequences = [seq for seq, _ in delivered]
            assert sequences == sorted(set(sequences))
            stored = await store.read()
            assert [seq for seq, _ in stored] == sequences
            live, replayed = fold(delivered), fold(stored)
            assert live.to_snapshot() == replayed.to_snapshot()
            assert live.org("acme") is not None and "ann" in live.users

            await store.append([org_created("late")], 0)
            await asyncio.sleep(0.2)
            assert len(delivered) == len(commits)  # nothing after unsubscribe
        run_store(body)

    def test_follow_accepts_async_callbacks_and_a_start(self, run_store: Callable[[Body], None]) -> None:
        """A coroutine callback is awaited, and from_sequence skips what came before it."""
        async def body(store: EventStore) -> None:
            sequences = [await store.append(commit, None) for commit in sample_commits()]
            seen: list[int] = []

            async def callback(seq: int, events: list[DomainEvent]) -> None:
                await asyncio.sleep(0)
                seen.append(seq)

            sub = await store.follow(callback, from_sequence=sequences[3])
            await eventually(lambda: len(seen) == len(sequences) - 3)
            await sub.unsubscribe()
            assert seen == sequences[3:]
        run_store(body)

    def test_follow_of_one_aggregate(self, run_store: Callable[[Body], None]) -> None:
        """follow() on an aggregate's subject delivers that aggregate's commits only, live too."""
        async def body(store: EventStore) -> None:
            for commit in sample_commits():
                await store.append(commit, None)
            seen: list[str] = []
            sub = await store.follow(lambda seq, events: seen.extend(e.aggregate_id for e in events),
                                     subject=aggregate_subject(ORG, "beta"))
            await store.append([option_set("acme", "sentry:safe_fields", ["x"])], None)
            await store.append([option_set("beta", "sentry:safe_fields", ["y"])], None)
            await eventually(lambda: len(seen) == 4)
            await sub.unsubscribe()
            assert seen == ["beta"] * 4
        run_store(body)

    def test_read_of_one_aggregate(self, run_store: Callable[[Body], None]) -> None:
        """read() of an aggregate's subject returns its commits, oldest first, and nothing else."""
        async def body(store: EventStore) -> None:
            sequences = [await store.append(commit, None) for commit in sample_commits()]
            acme = await store.read(aggregate_subject(ORG, "acme"))
            assert [seq for seq, _ in acme] == [sequences[i] for i in (0, 1, 3, 6)]
            assert all(e.aggregate_id == "acme" for _, events in acme for e in events)
            assert await store.read(aggregate_subject(ORG, "nobody")) == []
            assert [seq for seq, _ in await store.read(aggregate_subject(ORG, "acme"), sequences[2])] == \
                [sequences[3], sequences[6]]
        run_store(body)


    def test_an_undecodable_message_is_delivered_as_such(self, run_store: Callable[[Body], None]) -> None:
        """Bytes that are no commit reach follow() and read() as an UndecodableCommit (subject,
        error, no events), in order, between the commits around them: never dropped."""
        async def body(store: EventStore) -> None:
            first = await store.append([org_created("acme")], 0)
            bad = await store_raw(store, "rc.ev.org.acme.OrgOptionSet", b"\xc1 not msgpack")
            after = await store.append([option_set("acme", "sentry:safe_fields", ["a"])], bad)
            delivered: list[tuple[int, list[DomainEvent]]] = []
            sub = await store.follow(lambda seq, events: delivered.append((seq, events)))
            await eventually(lambda: len(delivered) == 3)
            await sub.unsubscribe()
            for commits in (delivered, await store.read()):
                assert [seq for seq, _ in commits] == [first, bad, after]
                skipped = commits[1][1]
                assert isinstance(skipped, UndecodableCommit) and list(skipped) == []
                assert skipped.aggregate == ("org", "acme") and skipped.subject == "rc.ev.org.acme.OrgOptionSet"
                assert "BadMessage" in skipped.error
            state = fold(delivered)
            assert state.aggregate_version("org", "acme") == after and state.skipped[0]["sequence"] == bad
        run_store(body)

    def test_a_commit_over_the_size_limit_is_refused_saying_so(self, run_store: Callable[[Body], None]) -> None:
        """A commit larger than a message may be is a CommitTooLarge naming the aggregate, its
        size and the limit; nothing is stored."""
        async def body(store: EventStore) -> None:
            await store.append([org_created("big")], 0)
            events = [option_set("big", f"sentry:option{i}", "x" * 1000) for i in range(9000)]
            with pytest.raises(CommitTooLarge) as refused:
                await store.append(events, None)
            details = refused.value.details
            assert details["aggregate_id"] == "big" and details["size"] > details["limit"] == 8 * 1024 * 1024
            assert "org `big`" in refused.value.message and "8,388,608 bytes" in refused.value.message
            assert len(await store.read()) == 1
        run_store(body)

    def test_message_gives_what_is_stored_at_a_sequence(self, run_store: Callable[[Body], None]) -> None:
        """message(seq) is the stored subject, message id (the first event's id) and data."""
        async def body(store: EventStore) -> None:
            commit = [org_created("acme")]
            seq = await store.append(commit, 0)
            stored = await store.message(seq)
            assert stored is not None and (stored.sequence, stored.subject, stored.msg_id) == (
                seq, "rc.ev.org.acme.OrgCreated", commit[0].id)
            assert await store.message(seq + 5) is None
        run_store(body)


def test_ensure_is_idempotent(own_nats: ServerProcess) -> None:
    """Calling ensure() on an existing stream (another process made it) is harmless."""
    async def main() -> None:
        nc = await connect(own_nats.url, name="eventstore-test")
        store = JetStreamEventStore(nc, stream="T_" + uuid.uuid4().hex[:12])
        try:
            await store.ensure()
            await store.append([org_created("acme")], 0)
            await JetStreamEventStore(nc, stream=store.stream).ensure()
            assert await store.last_sequence() == 1
        finally:
            await store.js.delete_stream(store.stream)
            await nc.close()
    asyncio.run(main())


def test_a_stream_that_cannot_be_made_is_a_clear_error(own_nats: ServerProcess) -> None:
    """When another stream already holds the event subjects, ensure() says so (Unavailable)."""
    async def main() -> None:
        nc = await connect(own_nats.url, name="eventstore-test")
        owner = JetStreamEventStore(nc, stream="T_" + uuid.uuid4().hex[:12])
        try:
            await owner.ensure()
            with pytest.raises(Unavailable, match="overlap"):
                await JetStreamEventStore(nc, stream="T_" + uuid.uuid4().hex[:12]).ensure()
        finally:
            await owner.js.delete_stream(owner.stream)
            await nc.close()
    asyncio.run(main())


def test_a_store_over_its_storage_limit_says_it_cannot_write_and_writes_again_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With JetStream's storage limit used up (max_file_store), an append fails at once with
    "event store cannot write" and the server's reason, not a timeout; once space is freed
    (here another stream purged) appends work again, no restart."""
    conf = tmp_path / "small.conf"
    conf.write_text("max_payload: 8MB\njetstream { max_file_store: 2MB, max_memory_store: 8MB }\n")
    monkeypatch.setenv("RELAYCTL_NATS_CONF", str(conf))
    server = start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log")

    async def main() -> None:
        nc = await connect(server.url, name="eventstore-test")
        store = JetStreamEventStore(nc, stream="T_" + uuid.uuid4().hex[:12], timeout=3.0)
        await store.ensure()
        await store.js.add_stream(name="FILLER", subjects=["filler"])
        try:
            await store.append([org_created("acme")], 0)
            with pytest.raises(Exception):
                for _ in range(40):
                    await store.js.publish("filler", b"x" * 100_000)
            with pytest.raises(StoreCannotWrite, match="event store cannot write: .*insufficient resources"):
                await store.append([option_set("acme", "sentry:safe_fields", ["a"])], None)
            await store.js.purge_stream("FILLER")
            await store.append([option_set("acme", "sentry:safe_fields", ["b"])], None)
            assert [events[0].type for _, events in await store.read()] == ["OrgCreated", "OrgOptionSet"]
        finally:
            await nc.close()
    try:
        asyncio.run(main())
    finally:
        server.stop()
