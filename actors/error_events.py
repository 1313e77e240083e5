"""Error events for AI suggestions: validated Sentry events, stored per project.

An error event reaches the system two ways, and both go through `prepare_event`:

- `relayctl event store FILE --project ORG/PROJECT` (request/reply, message type
  `events.store`, subject `rc.events.store`): the reply carries the event id, a refusal
  carries the reason (`BadRequest`, details `{"reason": ...}`);
- any service publishing on `rc.events.ingest.<project_id>` (fire-and-forget): the
  payload is the request envelope of messages/envelope.py with type `events.ingest` and
  payload `{"event": map}`, or - so that `nats pub` works - a bare msgpack map or JSON
  object holding the event itself. An event that cannot be stored (unknown project,
  malformed, too large) is logged and counted with its reason, then dropped.

`prepare_event` validates with `validate_error_event` (a bad event is refused whole,
never half-stored), gives the event its id and computes its grouping hash once, at
write time, so every reader agrees on which events share a cached suggestion.

Storage is the JetStream KV bucket `rc_error_events` (messages/subjects.py), key
`<project_id>.<event_id>`, value a msgpack map (`StoredEvent.to_map`). KV rather than a
stream because the only read is a point lookup by project and event id; history 1 and
storing the same event id again overwrites it, so a retried store is harmless. Entries
expire after `EVENT_TTL` (30 days): the events are kept to be explained, not archived.

`InMemoryErrorEventStore` passes the same contract for unit tests of the AI actor.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, NotFoundError

from bus.eventstore import stream_replicas
from domain.ai_prompt import InvalidEvent, grouping_hash, validate_error_event
from messages.envelope import pack, unpack
from messages.errors import BadMessage
from messages.subjects import ERROR_EVENT_BUCKET

__all__ = [
    "EVENT_TTL",
    "INGEST_MESSAGE_TYPE",
    "MAX_EVENT_BYTES",
    "ErrorEventStore",
    "InMemoryErrorEventStore",
    "JetStreamErrorEventStore",
    "StoredEvent",
    "decode_ingest",
    "prepare_event",
]

EVENT_TTL = 30 * 24 * 3600.0
# Relay's own limit for one event is 1 MiB; anything larger is not an error event we can
# describe to a model anyway.
MAX_EVENT_BYTES = 1024 * 1024
INGEST_MESSAGE_TYPE = "events.ingest"
STORED_FORMAT = 1


@dataclass(frozen=True)
class StoredEvent:
    """One error event as stored: the validated event plus what readers need at once."""

    project_id: int
    event_id: str
    grouping_hash: str
    received: float
    event: dict[str, Any]

    @property
    def key(self) -> str:
        return event_key(self.project_id, self.event_id)

    def to_map(self) -> dict[str, Any]:
        return {"v": STORED_FORMAT, "projectId": self.project_id, "eventId": self.event_id,
                "groupingHash": self.grouping_hash, "received": self.received, "event": self.event}

    @classmethod
    def from_map(cls, raw: Any) -> StoredEvent:
        if not isinstance(raw, dict) or raw.get("v") != STORED_FORMAT:
            raise BadMessage("stored error event has an unknown format")
        return cls(int(raw["projectId"]), str(raw["eventId"]), str(raw["groupingHash"]),
                   float(raw["received"]), dict(raw["event"]))


def event_key(project_id: int, event_id: str) -> str:
    return f"{project_id}.{event_id}"


def prepare_event(project_id: int, event: Any, *, received: float | None = None) -> StoredEvent:
    """Validate `event` for `project_id` and return what to store; raises `InvalidEvent`."""
    checked = validate_error_event(event)
    size = len(pack(checked))
    if size > MAX_EVENT_BYTES:
        raise InvalidEvent(f"the event is {size} bytes; at most {MAX_EVENT_BYTES} are accepted")
    return StoredEvent(project_id, checked["event_id"], grouping_hash(checked),
                       time.time() if received is None else received, checked)


def decode_ingest(data: bytes) -> Any:
    """The event an `rc.events.ingest.<project_id>` message carries; raises `InvalidEvent`.

    Accepts the request envelope (type `events.ingest`, payload `{"event": ...}`), a bare
    msgpack map, or a JSON object. The returned value is not validated yet.
    """
    try:
        raw = unpack(data)
    except BadMessage:
        raw = None
    if raw is None or isinstance(raw, (int, float, str, bool)):
        # Not msgpack (or JSON text that happens to be a msgpack scalar): try JSON.
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise InvalidEvent("the message is neither msgpack nor JSON") from None
    if isinstance(raw, dict) and "payload" in raw and "deadline" in raw:
        if raw.get("type") != INGEST_MESSAGE_TYPE:
            raise InvalidEvent(f"unexpected message type {raw.get('type')!r}; "
                               f"expected {INGEST_MESSAGE_TYPE!r}")
        payload = raw.get("payload")
        if not isinstance(payload, dict) or "event" not in payload:
            raise InvalidEvent("the envelope's payload must be a map with an `event`")
        return payload["event"]
    return raw


class ErrorEventStore(Protocol):
    async def ensure(self) -> None: ...
    async def put(self, stored: StoredEvent) -> None: ...
    async def get(self, project_id: int, event_id: str) -> StoredEvent | None: ...


class JetStreamErrorEventStore:
    """Error events in a JetStream KV bucket, one key per project and event."""

    def __init__(self, nc: NATS, *, bucket: str = ERROR_EVENT_BUCKET, replicas: int | None = None,
                 ttl: float = EVENT_TTL, timeout: float = 5.0) -> None:
        self.js = nc.jetstream(timeout=timeout)
        self.bucket = bucket
        self.replicas = replicas if replicas is not None else stream_replicas()  # bus/replication.py
        self.ttl = ttl
        self._kv: Any = None

    async def ensure(self) -> None:
        await self._bucket()

    async def _bucket(self) -> Any:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(self.bucket)
            except (BucketNotFoundError, NotFoundError):
                # Creating is idempotent for an identical config, so two instances
                # starting at once both succeed.
                self._kv = await self.js.create_key_value(api.KeyValueConfig(
                    bucket=self.bucket, history=1, ttl=self.ttl, replicas=self.replicas,
                    max_value_size=MAX_EVENT_BYTES + 4096,
                    description="relayctl: Sentry error events for AI suggestions"))
        return self._kv

    async def put(self, stored: StoredEvent) -> None:
        kv = await self._bucket()
        await kv.put(stored.key, pack(stored.to_map()))

    async def get(self, project_id: int, event_id: str) -> StoredEvent | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(event_key(project_id, event_id))
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if entry.value is None:
            return None
        return StoredEvent.from_map(unpack(entry.value))


class InMemoryErrorEventStore:
    """The same contract in one process's memory (for unit tests)."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}

    async def ensure(self) -> None:
        return None

    async def put(self, stored: StoredEvent) -> None:
        self.entries[stored.key] = pack(stored.to_map())

    async def get(self, project_id: int, event_id: str) -> StoredEvent | None:
        data = self.entries.get(event_key(project_id, event_id))
        return StoredEvent.from_map(unpack(data)) if data is not None else None
