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
  are one code path. A stored message that does not decode is delivered as an
  `UndecodableCommit` (no events; its subject and the error), never dropped: a projection
  must reach the stream's last sequence whatever is stored there.
- `message(sequence)` is the stored message at a sequence (subject, message id, data), for
  checking what a snapshot claims to cover (bus/snapshots.py).
- `check_size(events)` raises the `CommitTooLarge` an append of `events` would, without
  I/O: a command checks it before the commits it appends first (ids, key claims).
  `commit_limit()` is the most bytes an encoded commit may take (`encode_commit`), what a
  command splits a large change by (an import in parts, domain/importer.py).

Append errors say what happened: a commit over the server's message size limit is a
`CommitTooLarge` (nothing stored; which aggregate, how large, the limit); a store that
refuses writes (JetStream storage limits, a stream that stopped writing after a disk error)
is a `StoreCannotWrite`, "event store cannot write: ...", an `Unavailable` like a store
that does not answer at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from bus.retry import Backoff, retry
from bus.settings import Settings
from messages.errors import BadRequest, Conflict, Unavailable
from messages.events import (
    DomainEvent,
    UndecodableCommit,
    aggregate_subject,
    decode_commit,
    encode_commit,
    event_subject,
)
from messages.subjects import EVENT_STREAM, EVENT_SUBJECTS

CommitCallback = Callable[[int, list[DomainEvent]], Any]
APPEND_ATTEMPT_TIMEOUT = 2.0  # one try of an append; a cluster electing a new leader answers none
WRONG_LAST_SEQUENCE = 10071  # JetStream API error code
FOLLOW_ATTEMPTS = 5
FOLLOW_BACKOFF = Backoff(initial=0.5, factor=2.0, maximum=2.0)
APPEND_BACKOFF = Backoff(initial=0.25, factor=1.0, maximum=0.25)  # a leader election takes a few of these
MAX_COMMIT_BYTES = 8 * 1024 * 1024  # the stream's max_msg_size; nats.conf's max_payload is the same
# JetStream API error codes of a store that is up but refuses to store (limits, storage):
# these never pass by retrying within one append, so they are reported at once.
CANNOT_WRITE_CODES = {
    10002: "JetStream account resource limits exceeded",
    10023: "JetStream has insufficient resources (its max_file_store is used up)",
    10028: "JetStream has insufficient memory resources",
    10039: "JetStream is not enabled for the account",
    10047: "JetStream has insufficient storage resources",
    10076: "JetStream is not enabled",
    10077: "the stream failed to store the message",
}
TOO_LARGE_CODE = 10054  # message size exceeds maximum allowed (the stream's max_msg_size)
# NATS headers as the server counts them against max_payload: "NATS/1.0\r\n", "k: v\r\n"..., "\r\n"
_HEADER_OVERHEAD = 12


class CommitTooLarge(BadRequest):
    """A commit larger than the event store takes in one message; nothing was stored."""


class _NotAcknowledged(Exception):
    """One append try got no acknowledgement (no stream leader right now): try again."""


class StoreCannotWrite(Unavailable):
    """The event store answers but stores nothing (limits, a disk error); nothing was stored."""


@dataclass(frozen=True)
class StoredMessage:
    sequence: int
    subject: str
    msg_id: str | None
    data: bytes


def decode_stored(sequence: int, subject: str, data: bytes) -> list[DomainEvent]:
    """The events of a stored message, or an `UndecodableCommit` saying why there are none."""
    try:
        return decode_commit(data, sequence)
    except Exception as exc:  # BadMessage, or anything else bytes from the stream may cause
        return UndecodableCommit(sequence, subject, f"{type(exc).__name__}: {exc}"[:300])


def too_large(events: list[DomainEvent], size: int, limit: int) -> CommitTooLarge:
    first = events[0]
    return CommitTooLarge(
        f"{first.aggregate} `{first.aggregate_id}`: the change is one commit of {size:,} bytes "
        f"({len(events)} events), over the event store's limit of {limit:,} bytes per commit "
        f"(the NATS message size limit, max_payload); nothing was stored",
        {"aggregate": first.aggregate, "aggregate_id": first.aggregate_id, "size": size, "limit": limit,
         "events": len(events)})


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
    async def message(self, sequence: int) -> StoredMessage | None: ...
    def check_size(self, events: list[DomainEvent]) -> None: ...
    def commit_limit(self) -> int: ...


def subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def stream_replicas() -> int:
    """Copies of the event stream: `RELAYCTL_STREAM_REPLICAS` (3 on a three-node cluster), else 1."""
    return int(Settings.load().value("RELAYCTL_STREAM_REPLICAS"))


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
            max_msg_size=MAX_COMMIT_BYTES,
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
        size = self._check_size(events, data, headers)
        ends = time.monotonic() + self.timeout

        async def attempt(_n: int) -> int:
            try:
                ack = await self.js.publish(event_subject(first.aggregate, first.aggregate_id, first.type), data,
                                            headers=headers,
                                            timeout=max(0.1, min(APPEND_ATTEMPT_TIMEOUT, ends - time.monotonic())))
                return int(ack.seq)
            except MaxPayloadError:
                raise too_large(events, size, self.nc.max_payload) from None
            except BadRequestError as exc:
                if exc.err_code == TOO_LARGE_CODE:
                    raise too_large(events, size, await self._max_msg_size()) from None
                if exc.err_code in CANNOT_WRITE_CODES:
                    raise self._cannot_write(exc) from None
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    last = _parse_last_sequence(exc.description or "")
                    # JetStream checks the expectation before the message id, so a retry of an
                    # append that was stored (its ack lost) fails here: answer it like a duplicate.
                    if last and await self._stored_with_id(last, first.id):
                        return last
                    raise Conflict("the aggregate changed concurrently",
                                   {"last_sequence": last}) from None
                raise
            except (TimeoutError, NoStreamResponseError, ServiceUnavailableError) as exc:
                if getattr(exc, "err_code", None) in CANNOT_WRITE_CODES:
                    raise self._cannot_write(exc) from None
                raise _NotAcknowledged() from exc

        # No stream leader right now (a node died, an election is on): try again until the
        # deadline. Safe: the message id makes a retry of a stored append a no-op.
        try:
            return await retry(attempt, retry_on=(_NotAcknowledged,), backoff=APPEND_BACKOFF, deadline=ends)
        except _NotAcknowledged:
            raise await self._no_acknowledgement() from None

    def check_size(self, events: list[DomainEvent]) -> None:
        """CommitTooLarge when `events` would not fit in one commit (no I/O)."""
        self._check_size(events, encode_commit(events), _largest_headers(events[0].id))

    def commit_limit(self) -> int:
        limit = min(self.nc.max_payload or MAX_COMMIT_BYTES, MAX_COMMIT_BYTES)
        return limit - _HEADER_OVERHEAD - sum(len(k) + len(v) + 4 for k, v in _largest_headers("0" * 32).items())

    def _check_size(self, events: list[DomainEvent], data: bytes, headers: dict[str, str]) -> int:
        size = len(data) + _HEADER_OVERHEAD + sum(len(k) + len(v) + 4 for k, v in headers.items())
        limit = min(self.nc.max_payload or MAX_COMMIT_BYTES, MAX_COMMIT_BYTES)
        if size > limit:
            raise too_large(events, size, limit)
        return size

    def _cannot_write(self, exc: Any) -> StoreCannotWrite:
        code = getattr(exc, "err_code", None)
        reason = CANNOT_WRITE_CODES.get(code, "") if isinstance(code, int) else ""
        description = getattr(exc, "description", None) or ""
        return StoreCannotWrite(f"event store cannot write: {reason}: {description} (JetStream error {code})",
                                {"reason": description, "err_code": code})

    async def _no_acknowledgement(self) -> Unavailable:
        """Why no append was acknowledged: is the stream there at all?"""
        try:
            await self.js.stream_info(self.stream)
        except (NatsError, TimeoutError, ConnectionError):
            return Unavailable(f"event store unavailable: no answer from the stream {self.stream} "
                               f"within {self.timeout:g} s (NATS or its JetStream leader is down)")
        # nats-server drops (never answers) an append it failed to write to disk, and keeps the
        # stream from writing from then on: after e.g. "no space left on device" only a restart
        # of that nats-server makes the stream write again, even once space is free.
        return StoreCannotWrite(
            f"event store cannot write: the stream {self.stream} answers but acknowledged no append within "
            f"{self.timeout:g} s. nats-server stops writing a stream after a disk write error (such as no "
            f"space left on device) until it restarts; `relayctl status` shows the cause",
            {"reason": "no acknowledgement"})

    async def _max_msg_size(self) -> int:
        try:
            configured = (await self.js.stream_info(self.stream)).config.max_msg_size
        except (NatsError, TimeoutError, ConnectionError):
            configured = None
        return int(configured) if configured and configured > 0 else MAX_COMMIT_BYTES

    async def message(self, sequence: int) -> StoredMessage | None:
        """The message stored at `sequence`, or None (none there, or the store did not answer)."""
        try:
            msg = await self.js.get_msg(self.stream, seq=sequence, direct=True)
        except (NatsError, TimeoutError, ConnectionError):
            return None
        headers = msg.headers or {}
        return StoredMessage(int(msg.seq or sequence), str(msg.subject), headers.get("Nats-Msg-Id"),
                             bytes(msg.data or b""))

    async def _stored_with_id(self, sequence: int, msg_id: str) -> bool:
        try:
            msg = await self.js.get_msg(self.stream, seq=sequence, direct=True)
        except (NatsError, TimeoutError, ConnectionError):
            return False
        return msg.headers is not None and msg.headers.get("Nats-Msg-Id") == msg_id

    async def last_sequence(self) -> int:
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq)

    async def follow(self, callback: CommitCallback, from_sequence: int = 1,
                     subject: str = EVENT_SUBJECTS) -> Subscription:
        async def on_message(msg: Any) -> None:
            seq = msg.metadata.sequence.stream
            result = callback(seq, decode_stored(seq, msg.subject, msg.data))
            if asyncio.iscoroutine(result):
                await result

        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=max(1, from_sequence))
        async def subscribe(_n: int) -> Subscription:
            subscription: Subscription = await self.js.subscribe(
                subject, ordered_consumer=True, cb=on_message, config=config, stream=self.stream,
                idle_heartbeat=2.0, pending_msgs_limit=-1, pending_bytes_limit=-1,
            )
            return subscription

        # Creating the consumer can time out while a cluster elects new leaders after losing
        # a node; a few tries ride that out instead of failing the projection.
        return await retry(subscribe, retry_on=(TimeoutError, NatsTimeoutError, ServiceUnavailableError),
                           backoff=FOLLOW_BACKOFF, attempts=FOLLOW_ATTEMPTS)

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


def _largest_headers(msg_id: str) -> dict[str, str]:
    """The headers an append may send, at their largest (the subject names at most a 255-character id, escaped)."""
    return {"Nats-Msg-Id": msg_id, "Nats-Expected-Last-Subject-Sequence": "0" * 20,
            "Nats-Expected-Last-Subject-Sequence-Subject": "x" * 300}


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

    def __init__(self, max_commit_bytes: int = MAX_COMMIT_BYTES) -> None:
        self._log: list[tuple[str, bytes, str | None]] = []  # (subject, commit, message id)
        self._ids: dict[str, int] = {}
        self._followers: list[tuple[str, CommitCallback]] = []
        self.max_commit_bytes = max_commit_bytes

    async def ensure(self) -> None:
        return None

    async def append(self, events: list[DomainEvent], expected_sequence: int | None) -> int:
        first = events[0]
        if first.id in self._ids:
            return self._ids[first.id]
        self.check_size(events)
        data = encode_commit(events)
        if expected_sequence is not None:
            scope = aggregate_subject(first.aggregate, first.aggregate_id)
            last = max((i + 1 for i, (s, _, _) in enumerate(self._log) if subject_matches(scope, s)), default=0)
            if last != expected_sequence:
                raise Conflict("the aggregate changed concurrently", {"last_sequence": last})
        seq = await self.store_raw(event_subject(first.aggregate, first.aggregate_id, first.type), data, first.id)
        self._ids[first.id] = seq
        return seq

    def check_size(self, events: list[DomainEvent]) -> None:
        data = encode_commit(events)
        if len(data) > self.max_commit_bytes:
            raise too_large(events, len(data), self.max_commit_bytes)

    def commit_limit(self) -> int:
        return self.max_commit_bytes

    async def store_raw(self, subject: str, data: bytes, msg_id: str | None = None) -> int:
        """Store `data` on `subject` as it is, like any writer of the stream could (tests use
        it for messages that are not commits), and deliver it to the followers."""
        self._log.append((subject, data, msg_id))
        seq = len(self._log)
        for pattern, callback in list(self._followers):
            if subject_matches(pattern, subject):
                await _call(callback, seq, decode_stored(seq, subject, data))
        return seq

    async def last_sequence(self) -> int:
        return len(self._log)

    async def follow(self, callback: CommitCallback, from_sequence: int = 1,
                     subject: str = EVENT_SUBJECTS) -> Subscription:
        for seq, (s, data, _) in enumerate(self._log, start=1):
            if seq >= from_sequence and subject_matches(subject, s):
                await _call(callback, seq, decode_stored(seq, s, data))
        entry = (subject, callback)
        self._followers.append(entry)
        return _MemorySubscription(self, entry)

    async def read(self, subject: str = EVENT_SUBJECTS, from_sequence: int = 1) -> list[tuple[int, list[DomainEvent]]]:
        return [(seq, decode_stored(seq, s, data)) for seq, (s, data, _) in enumerate(self._log, start=1)
                if seq >= from_sequence and subject_matches(subject, s)]

    async def message(self, sequence: int) -> StoredMessage | None:
        if not 1 <= sequence <= len(self._log):
            return None
        subject, data, msg_id = self._log[sequence - 1]
        return StoredMessage(sequence, subject, msg_id, data)


async def _call(callback: CommitCallback, seq: int, events: list[DomainEvent]) -> None:
    result = callback(seq, events)
    if isinstance(result, Awaitable):
        await result
