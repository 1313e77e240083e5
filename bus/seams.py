"""The seam between actors and the messaging system: `Bus`, over NATS or in memory.

An actor asks the bus for the few things it needs - send a request and get its reply,
publish a message, subscribe to a subject, follow the event stream, the MAC key of a
bucket, the snapshot store - and never sees a NATS connection. `NatsBus` is the real
one; `InMemoryBus` routes the same calls inside one process, with the same envelope,
schema validation and error replies as a NATS service (it serves through the same
`ActorService.answer`), so a unit test of an actor exercises its real request path
(bus/testing.py). Which one an actor gets is decided where the process is put together
(actors/worker.py), never inside an actor.

Every method is a coroutine run on the process's event loop (`BusRuntime.call` from an
actor thread, as for the event store).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bus.client import request as nats_request
from bus.client import subject_for
from bus.eventstore import (
    CommitCallback,
    EventStore,
    InMemoryEventStore,
    JetStreamEventStore,
    Subscription,
    subject_matches,
)
from bus.snapshots import InMemoryObjects, SnapshotStore
from messages.envelope import Request, decode_reply
from messages.errors import DeadlineExceeded, Unavailable
from messages.subjects import EVENT_SUBJECTS

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from bus.service import ActorService



@dataclass(frozen=True)
class Message:
    """What a subscriber is given for each message."""

    subject: str
    data: bytes


MessageCallback = Callable[[Message], Awaitable[None] | None]
DEFAULT_MAX_PAYLOAD = 1024 * 1024


class Bus(Protocol):
    """What an actor may do on the messaging system."""

    @property
    def events(self) -> EventStore: ...
    @property
    def snapshots(self) -> SnapshotStore: ...
    @property
    def max_payload(self) -> int: ...
    async def request(self, message_type: str, payload: dict[str, Any], *, timeout: float = 5.0,
                      actor: str = "", after: int = 0) -> Any: ...
    async def publish(self, subject: str, data: bytes) -> None: ...
    async def flush(self, timeout: float = 2.0) -> None: ...
    async def subscribe(self, subject: str, callback: MessageCallback, queue: str = "") -> Subscription: ...
    async def follow(self, callback: CommitCallback, from_sequence: int = 1,
                     subject: str = EVENT_SUBJECTS) -> Subscription: ...
    async def writer_key(self, bucket: str) -> bytes: ...
    async def serve(self, service: ActorService) -> None: ...
    async def unserve(self, service: ActorService) -> None: ...


class NatsBus:
    """The bus over one NATS connection (with JetStream for the stream and the buckets)."""

    def __init__(self, nc: NATS, events: JetStreamEventStore | None = None) -> None:
        self.nc = nc
        self._events = events or JetStreamEventStore(nc)
        self._snapshots = SnapshotStore(nc, self._events)

    @property
    def events(self) -> JetStreamEventStore:
        return self._events

    @property
    def snapshots(self) -> SnapshotStore:
        return self._snapshots

    @property
    def max_payload(self) -> int:
        value = getattr(self.nc, "max_payload", 0)
        return value if isinstance(value, int) and value > 0 else DEFAULT_MAX_PAYLOAD

    async def request(self, message_type: str, payload: dict[str, Any], *, timeout: float = 5.0,
                      actor: str = "", after: int = 0) -> Any:
        return await nats_request(self.nc, message_type, payload, timeout=timeout, actor=actor, after=after)

    async def publish(self, subject: str, data: bytes) -> None:
        await self.nc.publish(subject, data)

    async def flush(self, timeout: float = 2.0) -> None:
        await self.nc.flush(timeout=int(max(1, timeout)))

    async def subscribe(self, subject: str, callback: MessageCallback, queue: str = "") -> Subscription:
        async def deliver(msg: Any) -> None:
            result = callback(Message(msg.subject, msg.data))
            if asyncio.iscoroutine(result):
                await result

        subscription: Subscription = await self.nc.subscribe(subject, queue=queue, cb=deliver)
        return subscription

    async def follow(self, callback: CommitCallback, from_sequence: int = 1,
                     subject: str = EVENT_SUBJECTS) -> Subscription:
        return await self._events.follow(callback, from_sequence, subject)

    async def writer_key(self, bucket: str) -> bytes:
        from bus.cache_keys import writer_key

        return await writer_key(self.nc, bucket)

    async def serve(self, service: ActorService) -> None:
        await service.start(self.nc)

    async def unserve(self, service: ActorService) -> None:
        await service.stop()


@dataclass
class _MemorySubscription:
    bus: InMemoryBus
    subject: str
    callback: MessageCallback
    queue: str

    async def unsubscribe(self) -> None:
        if self in self.bus._subscriptions:
            self.bus._subscriptions.remove(self)


@dataclass
class InMemoryBus:
    """The bus inside one process: requests go to the services `serve`d on it, messages to
    its subscribers (one per queue group, like NATS), and every published message is kept
    in `published` for a test to look at."""

    _events: EventStore = field(default_factory=InMemoryEventStore)
    max_payload: int = DEFAULT_MAX_PAYLOAD
    published: list[tuple[str, bytes]] = field(default_factory=list)
    keys: dict[str, bytes] = field(default_factory=dict)
    _subscriptions: list[_MemorySubscription] = field(default_factory=list)
    _services: dict[str, ActorService] = field(default_factory=dict)
    _objects: InMemoryObjects = field(default_factory=InMemoryObjects)

    @property
    def events(self) -> EventStore:
        return self._events

    @property
    def snapshots(self) -> SnapshotStore:
        return SnapshotStore(None, self._events, objects=self._objects)

    async def request(self, message_type: str, payload: dict[str, Any], *, timeout: float = 5.0,
                      actor: str = "", after: int = 0, stream: Callable[[str], None] | None = None,
                      subject: str | None = None) -> Any:
        """`subject`: another endpoint than the type's own (the management API's `rc.api.*`)."""
        subject = subject or subject_for(message_type)
        service = self._services.get(subject)
        if service is None:
            raise Unavailable(f"no service is answering on {subject}")
        envelope = Request(type=message_type, payload=payload, deadline=time.time() + timeout, actor=actor,
                           after=after)
        try:
            data, _headers = await asyncio.wait_for(
                service.answer(envelope.encode(), subject, stream or (lambda chunk: None)), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer on {subject} within {timeout:.1f}s") from None
        return decode_reply(data)

    async def publish(self, subject: str, data: bytes) -> None:
        self.published.append((subject, data))
        groups: set[str] = set()
        for subscription in list(self._subscriptions):
            if not subject_matches(subscription.subject, subject):
                continue
            if subscription.queue:
                if subscription.queue in groups:
                    continue
                groups.add(subscription.queue)
            result = subscription.callback(Message(subject, data))
            if asyncio.iscoroutine(result):
                await result

    async def flush(self, timeout: float = 2.0) -> None:
        return None

    async def subscribe(self, subject: str, callback: MessageCallback, queue: str = "") -> Subscription:
        subscription = _MemorySubscription(self, subject, callback, queue)
        self._subscriptions.append(subscription)
        return subscription

    async def follow(self, callback: CommitCallback, from_sequence: int = 1,
                     subject: str = EVENT_SUBJECTS) -> Subscription:
        return await self._events.follow(callback, from_sequence, subject)

    async def writer_key(self, bucket: str) -> bytes:
        return self.keys.setdefault(bucket, secrets.token_bytes(32))

    async def serve(self, service: ActorService) -> None:
        for subject in service.endpoints:
            self._services[subject] = service

    async def unserve(self, service: ActorService) -> None:
        for subject in service.endpoints:
            if self._services.get(subject) is service:
                del self._services[subject]
