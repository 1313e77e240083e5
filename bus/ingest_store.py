"""The ingest stream: every envelope the gateway accepted, kept durably before it answers 200.

Relay drops an envelope its upstream answered with a 2xx or a 4xx, so the gateway may
answer 200 only once the envelope is stored, and must answer 503 (Relay retries) whenever
it cannot store it. Storing means a JetStream publish acknowledged by `RC_INGEST`
(/work/notes/ingest-contract.md):

- one message per envelope on `rc.in.<project id>`, data = the decompressed envelope,
  headers `Rc-*` saying where it came from (`HEADER_*` below);
- `Nats-Msg-Id` = `<project id>:<event id>` when the envelope has an event id, so a
  Relay's retry of an envelope whose 200 it never saw is stored once (`duplicate_window`);
- an envelope that does not fit in one NATS message is put whole into the object store
  `rc_ingest_blobs` first, and the stream message carries only its headers plus `Rc-Blob`
  (the object's name): nothing is truncated. `read_envelope` reads either form;
- the stream discards *new* messages when full (`max_bytes`), so a full stream refuses
  (the gateway answers 503 and relays keep their envelopes) instead of silently dropping
  the oldest envelopes before anything consumed them. Envelopes age out after `max_age`.

Consumers (the forwarder, error events, outcomes) are durable pull consumers on the
stream and ack only when done; they are not part of this module.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog
from nats.js import api
from nats.js.errors import BadRequestError, NotFoundError, ObjectNotFoundError

from bus.eventstore import CANNOT_WRITE_CODES
from bus.runtime import BUS_ERRORS
from bus.settings import Settings
from messages.subjects import (
    INGEST_BLOB_BUCKET,
    INGEST_METRICS,
    INGEST_OUTCOMES,
    INGEST_STREAM,
    INGEST_SUBJECTS,
    ingest_subject,
)

__all__ = [
    "HEADER_BLOB", "HEADER_CLIENT_IP", "HEADER_EVENT_ID", "HEADER_KIND", "HEADER_PROJECT_ID", "HEADER_PUBLIC_KEY",
    "HEADER_RECEIVED_AT", "HEADER_RELAY_ID", "HEADER_SIZE", "INGEST_BLOB_BUCKET", "INGEST_METRICS",
    "INGEST_OUTCOMES", "INGEST_STREAM", "INGEST_SUBJECTS", "IngestCannotWrite", "IngestSettings", "IngestStore",
    "read_envelope",
]

log = structlog.get_logger(__name__)

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_PROJECT_ID = "Rc-Project-Id"
HEADER_PUBLIC_KEY = "Rc-Public-Key"
HEADER_RECEIVED_AT = "Rc-Received-At"
HEADER_RELAY_ID = "Rc-Relay-Id"
HEADER_CLIENT_IP = "Rc-Client-Ip"
HEADER_EVENT_ID = "Rc-Event-Id"
HEADER_SIZE = "Rc-Size"
HEADER_BLOB = "Rc-Blob"
HEADER_KIND = "Rc-Kind"  # on rc.in.relay.*: "outcomes" or "metrics"

GIB = 1024 ** 3
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_MAX_BYTES = GIB
DUPLICATE_WINDOW = 600.0
# Room left in a NATS message for what the client adds beyond data and headers.
_PAYLOAD_MARGIN = 1024
_HEADER_OVERHEAD = 12  # "NATS/1.0\r\n" ... "\r\n"


class IngestCannotWrite(Exception):
    """The stream (or the blob bucket) did not acknowledge: nothing may be answered 200."""


@dataclass(frozen=True)
class IngestSettings:
    """How the stream is made when this process creates it; an existing stream keeps its own.
    `RELAYCTL_INGEST_MAX_AGE` (seconds), `RELAYCTL_INGEST_MAX_BYTES`, `RELAYCTL_STREAM_REPLICAS`."""

    max_age: float = DEFAULT_MAX_AGE
    max_bytes: int = DEFAULT_MAX_BYTES
    replicas: int = 1
    timeout: float = 3.0  # per publish: Relay gives an envelope request a few seconds

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> IngestSettings:
        """From the process's settings (bus/settings.py; default: built from the environment)."""
        settings = settings or Settings.load()
        return cls(max_age=settings.value("RELAYCTL_INGEST_MAX_AGE") or DEFAULT_MAX_AGE,
                   max_bytes=settings.value("RELAYCTL_INGEST_MAX_BYTES") or DEFAULT_MAX_BYTES,
                   replicas=settings.value("RELAYCTL_STREAM_REPLICAS"),
                   timeout=settings.value("RELAYCTL_INGEST_PUBLISH_TIMEOUT"))


def stream_config(settings: IngestSettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=INGEST_STREAM, subjects=[INGEST_SUBJECTS], storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.NEW,
        max_age=settings.max_age, max_bytes=settings.max_bytes, num_replicas=settings.replicas,
        duplicate_window=DUPLICATE_WINDOW, allow_direct=True,
    )


def header_size(headers: dict[str, str]) -> int:
    """What `headers` take of a NATS message, as the server counts them against max_payload."""
    return _HEADER_OVERHEAD + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


# What a JetStream publish, stream or bucket call may meet: NATS's errors (nats.js's too),
# a timeout, a connection gone.
_NATS_FAILURES: tuple[type[Exception], ...] = (*BUS_ERRORS, OSError)


class IngestStore:
    """Appends to `RC_INGEST` over one NATS connection (the gateway's)."""

    def __init__(self, nc: Any, settings: IngestSettings | None = None) -> None:
        self.nc = nc
        self.settings = settings or IngestSettings.from_settings()
        self.js = nc.jetstream(timeout=self.settings.timeout)
        self._ready = False
        self._blobs: Any = None
        self._lock = asyncio.Lock()

    async def ensure(self) -> None:
        """Create the stream and the blob bucket unless they exist (made by whoever comes first)."""
        try:
            await self.js.stream_info(INGEST_STREAM)
        except NotFoundError:
            try:
                await self.js.add_stream(stream_config(self.settings))
            except BadRequestError as exc:
                try:
                    await self.js.stream_info(INGEST_STREAM)  # created concurrently
                except NotFoundError:
                    raise IngestCannotWrite(f"cannot create stream {INGEST_STREAM}: {exc.description}") from None
        self._ready = True

    async def blobs(self) -> Any:
        if self._blobs is None:
            async with self._lock:
                if self._blobs is None:
                    self._blobs = await blob_store(self.js, self.settings, create=True)
        return self._blobs

    def fits(self, size: int, headers: dict[str, str]) -> bool:
        """Whether `size` bytes of data and `headers` go in one NATS message."""
        limit = int(self.nc.max_payload)
        if size < limit // 2:  # headers are a few hundred bytes: no need to count them
            return True
        return size + header_size(headers) + _PAYLOAD_MARGIN <= limit

    async def append(self, subject: str, data: bytes, headers: dict[str, str]) -> int:
        """Store one message, the data as a blob when it does not fit; the stream sequence.
        Raises `IngestCannotWrite` when it was not acknowledged."""
        headers = {**headers, HEADER_SIZE: str(len(data))}
        if not self.fits(len(data), headers):
            name = headers.get(HEADER_MSG_ID) or ""
            await self._put_blob(name, data)
            headers[HEADER_BLOB] = name
            data = b""
        try:
            return await self._publish(subject, data, headers)
        except NotFoundError:
            raise IngestCannotWrite(f"stream {INGEST_STREAM} is missing") from None

    async def append_envelope(self, project_id: int, data: bytes, headers: dict[str, str]) -> int:
        return await self.append(ingest_subject(project_id), data, headers)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> int:
        if not self._ready:
            await self._ensure_or_fail()
        try:
            ack = await self.js.publish(subject, data, headers=headers, timeout=self.settings.timeout)
            return int(ack.seq)
        except _NATS_FAILURES as exc:
            # No stream answered: it was deleted (or JetStream lost its state). Make it again
            # once; the message id keeps this retry from storing the envelope twice.
            if type(exc).__name__ not in ("NoStreamResponseError", "NoRespondersError"):
                raise self._cannot_write(exc) from None
        await self._ensure_or_fail()
        try:
            ack = await self.js.publish(subject, data, headers=headers, timeout=self.settings.timeout)
            return int(ack.seq)
        except _NATS_FAILURES as exc:
            raise self._cannot_write(exc) from None

    async def _ensure_or_fail(self) -> None:
        try:
            await self.ensure()
        except IngestCannotWrite:
            raise
        except _NATS_FAILURES as exc:
            raise self._cannot_write(exc) from None

    async def _put_blob(self, name: str, data: bytes) -> None:
        try:
            store = await self.blobs()
            try:
                info = await store.get_info(name)
                if int(info.size) == len(data) and not getattr(info, "deleted", False):
                    return  # a retry of an envelope already kept: never rewrite what a reader may be reading
            except ObjectNotFoundError:
                pass
            await store.put(name, data)
        except IngestCannotWrite:
            raise
        except _NATS_FAILURES as exc:
            self._blobs = None
            raise self._cannot_write(exc, what=f"blob bucket {INGEST_BLOB_BUCKET}") from None

    @staticmethod
    def _cannot_write(exc: BaseException, what: str = f"stream {INGEST_STREAM}") -> IngestCannotWrite:
        code = getattr(exc, "err_code", None)
        reason = CANNOT_WRITE_CODES.get(code, "") if isinstance(code, int) else ""
        description = getattr(exc, "description", None) or str(exc) or type(exc).__name__
        text = f"{what} cannot store the envelope: {reason + ': ' if reason else ''}{description}"
        return IngestCannotWrite(text)


async def blob_store(js: Any, settings: IngestSettings | None = None, *, create: bool = False) -> Any:
    """The blob bucket; with `create`, made when missing (objects live as long as envelopes)."""
    try:
        return await js.object_store(INGEST_BLOB_BUCKET)
    except NotFoundError:
        if not create:
            raise
    settings = settings or IngestSettings.from_settings()
    try:
        return await js.create_object_store(INGEST_BLOB_BUCKET, config=api.ObjectStoreConfig(
            storage=api.StorageType.FILE, replicas=settings.replicas, ttl=settings.max_age,
            max_bytes=settings.max_bytes))
    except BadRequestError:
        return await js.object_store(INGEST_BLOB_BUCKET)  # created concurrently


async def read_envelope(js: Any, msg: Any) -> bytes:
    """The envelope of an `RC_INGEST` message: its data, or the blob it names (`Rc-Blob`).
    Raises `ObjectNotFoundError` when the blob is gone (aged out or deleted)."""
    headers = msg.headers or {}
    name = headers.get(HEADER_BLOB)
    if not name:
        return bytes(msg.data or b"")
    store = await js.object_store(INGEST_BLOB_BUCKET)
    result = await store.get(name)
    return bytes(result.data or b"")
