"""The event store: append commits with optimistic concurrency, replay them, follow them.

Two implementations pass one contract (tests/integration/test_event_store.py):
`JetStreamEventStore`, the real one, and `InMemoryEventStore`, for unit tests of actors.

- `append(events, expected_sequence)` stores one commit (the events of one command, all of
  one aggregate) as one message. `expected_sequence` is the stream sequence of the
  aggregate's last commit as the writer saw it (0: the aggregate must not exist yet;
  None: no check). A stale expectation raises `Conflict` with `details["last_sequence"]`;
  nothing is stored. The first event's id is the message id, so a retry is stored once.
- `follow(callback, from_sequence)` delivers every commit from `from_sequence` on, first the
  stored ones and then live ones, through the same callback: replay and live processing
  are one code path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from messages.errors import Conflict, Unavailable
from messages.events import DomainEvent, aggregate_subject, decode_commit, encode_commit, event_subject
from messages.subjects import EVENT_STREAM, EVENT_SUBJECTS

CommitCallback = Callable[[int, list[DomainEvent]], Any]
APPEND_ATTEMPT_TIMEOUT = 2.0  # one try of an append; a cluster electing a new leader answers none
WRONG_LAST_SEQUENCE = 10071  # JetStream API error code
FOLLOW_ATTEMPTS = 5


class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


class EventStore(Protocol):
    async def ensure(self) -> None: ...
    async def append(self, events: list[DomainEvent], expected_sequence: int | None) -> int: ...
    async def last_sequence(self) -> int: ...
    async def follow(self, callback: CommitCallback, from_sequence: int = 1,
                     subject: str = EVENT_SUBJECTS) -> Subscription: ...
    async def read(self, subject: str = EVENT_SUBJECTS,
                   from_sequence: int = 1) -> list[tuple[int, list[DomainEvent]]]: ...


def _subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def stream_replicas() -> int:
    """Copies of the event stream: `RELAYCTL_STREAM_REPLICAS` (3 on a three-node cluster), else 1."""
    return int(os.environ.get("RELAYCTL_STREAM_REPLICAS") or 1)


class JetStreamEventStore:
    def __init__(self, nc: NATS, *, stream: str = EVENT_STREAM, replicas: int | None = None,
                 timeout: float = 5.0) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.stream = stream
        # Used when this process creates the stream; an existing stream keeps its own.
        self.replicas = replicas if replicas is not None else stream_replicas()
        self.timeout = timeout

    async def ensure(self) -> None:
        config = api.StreamConfig(
            name=self.stream, subjects=[EVENT_SUBJECTS], storage=api.StorageType.FILE,
            num_replicas=self.replicas, duplicate_window=120.0, allow_direct=True,
            max_msg_size=8 * 1024 * 1024,
        )
        try:
            await self.js.stream_info(self.stream)
        except NotFoundError:
            try:
                await self.js.add_stream(config)
            except BadRequestError as exc:
                try:
                    await self.js.stream_info(self.stream)  # created concurrently by another process
                except NotFoundError:
                    # e.g. another stream already holds rc.ev.>: say so instead of "not found"
                    raise Unavailable(f"cannot create event stream {self.stream}: {exc.description}") from None

    async def append(self, events: list[DomainEvent], expected_sequence: int | None) -> int:
        first = events[0]
        headers = {"Nats-Msg-Id": first.id}
        if expected_sequence is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_sequence)
            headers["Nats-Expected-Last-Subject-Sequence-Subject"] = aggregate_subject(
                first.aggregate, first.aggregate_id)
        data = encode_commit(events)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                ack = await self.js.publish(event_subject(first.aggregate, first.aggregate_id, first.type), data,
                                            headers=headers,
                                            timeout=max(0.1, min(APPEND_ATTEMPT_TIMEOUT, deadline - loop.time())))
                return int(ack.seq)
            except BadRequestError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    last = _parse_last_sequence(exc.description or "")
                    # JetStream checks the expectation before the message id, so a retry of an
                    # append that was stored (its ack lost) fails here: answer it like a duplicate.
                    if last and await self._stored_with_id(last, first.id):
                        return last
                    raise Conflict("the aggregate changed concurrently",
                                   {"last_sequence": last}) from None
                raise
            except (TimeoutError, NoStreamResponseError, ServiceUnavailableError):
                # No stream leader right now (a node died, an election is on): try again until
                # the deadline. Safe: the message id makes a retry of a stored append a no-op.
                if loop.time() + 0.25 >= deadline:
                    raise Unavailable("event store did not acknowledge the append in time") from None
                await asyncio.sleep(0.25)

    async def _stored_with_id(self, sequence: int, msg_id: str) -> bool:
        try:
            msg = await self.js.get_msg(self.stream, seq=sequence, direct=True)
        except Exception:
            return False
        return msg.headers is not None and msg.headers.get("Nats-Msg-Id") == msg_id

    async def last_sequence(self) -> int:
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def follow(self, callback: CommitCallback, from_sequence: int = 1,
                     subject: str = EVENT_SUBJECTS) -> Subscription:
        async def on_message(msg: Any) -> None:
            seq = msg.metadata.sequence.stream
            result = callback(seq, decode_commit(msg.data, seq))
            if asyncio.iscoroutine(result):
                await result

        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=max(1, from_sequence))
        # Creating the consumer can time out while a cluster elects new leaders after losing
        # a node; a few tries ride that out instead of failing the projection.
        for attempt in range(FOLLOW_ATTEMPTS):
            try:
                return await self.js.subscribe(
                    subject, ordered_consumer=True, cb=on_message, config=config, stream=self.stream,
                    idle_heartbeat=2.0, pending_msgs_limit=-1, pending_bytes_limit=-1,
                )
            except (TimeoutError, NatsTimeoutError, ServiceUnavailableError):
                if attempt + 1 == FOLLOW_ATTEMPTS:
                    raise
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    async def read(self, subject: str = EVENT_SUBJECTS, from_sequence: int = 1) -> list[tuple[int, list[DomainEvent]]]:
        """Every stored commit on `subject` from `from_sequence` up to now (not live)."""
        last = await self.last_sequence()
        if last < from_sequence:
            return []
        out: list[tuple[int, list[DomainEvent]]] = []
        done = asyncio.get_running_loop().create_future()

        def collect(seq: int, events: list[DomainEvent]) -> None:
            out.append((seq, events))
            if seq >= last and not done.done():
                done.set_result(None)

        sub = await self.follow(collect, from_sequence, subject)
        try:
            # A filtered subject may have no message at `last`: wait until delivery goes idle.
            while not done.done():
                before = len(out)
                try:
                    await asyncio.wait_for(asyncio.shield(done), 0.3)
                except TimeoutError:
                    if len(out) == before:
                        break
        finally:
            await sub.unsubscribe()
        return [item for item in out if item[0] <= last]


def _parse_last_sequence(description: str) -> int | None:
    tail = description.rsplit(":", 1)[-1].strip()
    return int(tail) if tail.isdigit() else None


class _MemorySubscription:
    def __init__(self, store: InMemoryEventStore, entry: Any) -> None:
        self._store, self._entry = store, entry

    async def unsubscribe(self) -> None:
        if self._entry in self._store._followers:
            self._store._followers.remove(self._entry)


class InMemoryEventStore:
    """The same contract, in one process's memory (for unit tests of one actor)."""

    def __init__(self) -> None:
        self._log: list[tuple[str, bytes, str]] = []  # (subject, commit, message id)
        self._ids: dict[str, int] = {}
        self._followers: list[tuple[str, CommitCallback]] = []

    async def ensure(self) -> None:
        return None

    async def append(self, events: list[DomainEvent], expected_sequence: int | None) -> int:
        first = events[0]
        if first.id in self._ids:
            return self._ids[first.id]
        if expected_sequence is not None:
            scope = aggregate_subject(first.aggregate, first.aggregate_id)
            last = max((i + 1 for i, (s, _, _) in enumerate(self._log) if _subject_matches(scope, s)), default=0)
            if last != expected_sequence:
                raise Conflict("the aggregate changed concurrently", {"last_sequence": last})
        subject = event_subject(first.aggregate, first.aggregate_id, first.type)
        data = encode_commit(events)
        self._log.append((subject, data, first.id))
        seq = len(self._log)
        self._ids[first.id] = seq
        for pattern, callback in list(self._followers):
            if _subject_matches(pattern, subject):
                await _call(callback, seq, decode_commit(data, seq))
        return seq

    async def last_sequence(self) -> int:
        return len(self._log)

    async def follow(self, callback: CommitCallback, from_sequence: int = 1,
                     subject: str = EVENT_SUBJECTS) -> Subscription:
        for seq, (s, data, _) in enumerate(self._log, start=1):
            if seq >= from_sequence and _subject_matches(subject, s):
                await _call(callback, seq, decode_commit(data, seq))
        entry = (subject, callback)
        self._followers.append(entry)
        return _MemorySubscription(self, entry)

    async def read(self, subject: str = EVENT_SUBJECTS, from_sequence: int = 1) -> list[tuple[int, list[DomainEvent]]]:
        return [(seq, decode_commit(data, seq)) for seq, (s, data, _) in enumerate(self._log, start=1)
                if seq >= from_sequence and _subject_matches(subject, s)]


async def _call(callback: CommitCallback, seq: int, events: list[DomainEvent]) -> None:
    result = callback(seq, events)
    if isinstance(result, Awaitable):
        await result
