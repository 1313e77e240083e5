"""Projection snapshots: the folded state at a stream sequence, so a start need not
replay the whole stream - and never a way to make a projection believe something the
stream does not say.

Snapshots live in the JetStream object store `rc_snapshots` (an object store rather than
a KV bucket because a large installation's state exceeds one NATS message), one object
per projection name. Only the command handlers write them (the NATS roles of the other
actors may read the bucket, not write it); every projection loads one at start.

A snapshot is signed. Each command handler makes an Ed25519 key pair when it first saves
one (`SnapshotSigner`, the secret key never leaves its memory) and publishes the public key
in the event stream (`SnapshotKeyPublished` on `rc.ev.snapshot.<key>`), where only the
command handlers may write. An object is a msgpack map:

    header     msgpack map: format, name, stream, sequence (the last commit the state
               covers), msg_id and msg_digest (that commit's Nats-Msg-Id and the sha256
               of its data), digest (sha256 of body), key (the signer's public key),
               key_sequence (where the stream holds it)
    signature  the signer's signature over the header bytes
    body       the zstd-compressed msgpack of the state (domain/state.py `to_snapshot`)

`load` checks, before it decompresses anything: the key is the one the stream holds at
key_sequence in a `SnapshotKeyPublished` event, the signature over the header verifies with
it, the body has the digest, and the stream's message at `sequence` has `msg_id` and
`msg_digest` (so a snapshot of another stream, or of a stream since recreated, is refused). Why a signature:
anyone who can read the stream knows every sequence, message id and digest of it, so a
check of those proves the position a snapshot claims, not its content; only the secret
key, which a reader of the stream never has, proves the content. A snapshot that fails
any check is ignored (the projection replays from the start), logged at error level and
counted (`snapshots.rejected`); a missing one is the normal first start.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import msgpack
import sentry_relay
import structlog
import zstandard
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import api

from bus import metrics
from bus.eventstore import EventStore, decode_stored, stream_replicas
from bus.runtime import BUS_ERRORS
from messages.envelope import pack, unpack
from messages.errors import BadMessage
from messages.events import SNAPSHOT, DomainEvent, event_subject
from messages.subjects import EVENT_STREAM, SNAPSHOT_BUCKET

log = structlog.get_logger(__name__)
SNAPSHOT_OBJECT_FORMAT = 2
KEY_EVENT = "SnapshotKeyPublished"


class SnapshotRejected(Exception):
    """A stored snapshot that must not be trusted (the message says which check failed)."""


class SnapshotSigner:
    """A command handler's snapshot signing key: made in memory, published in the stream."""

    def __init__(self) -> None:
        self._secret, self.public_key = sentry_relay.generate_key_pair()
        self.key_sequence = 0  # the stream sequence of its SnapshotKeyPublished; 0: not yet

    async def published(self, events: EventStore, actor: str) -> int:
        """The stream sequence of this key's publication, appending it the first time."""
        if not self.key_sequence:
            key = str(self.public_key)
            self.key_sequence = await events.append(
                [DomainEvent(KEY_EVENT, key, {"public_key": key}, actor=actor)], 0)
        return self.key_sequence

    def sign(self, data: bytes) -> str:
        return str(self._secret.sign(data))


_PACK_CHUNK = 1 << 20  # bytes of msgpack handed to the compressor at a time
_ROWS_AT_ONCE = 1000  # rows of a streamed section packed by one call


def _array_header_size(length: int) -> int:
    """Bytes of msgpack's header of an array of `length` items (fixarray, array 16, array 32)."""
    return 1 if length < 16 else 3 if length < 1 << 16 else 5
_PLAIN = (dict, list, tuple, str, bytes, int, float, bool, type(None))


def pack_body(snapshot: dict[str, Any]) -> bytes:
    """The zstd-compressed msgpack of `snapshot`, made piece by piece: a value that is sized
    and iterable but no plain value (domain/state.py `Rows`) is packed one row at a time as
    it is read, so the state of a million projects is never copied whole (the bytes are
    those `pack(snapshot)` would give, the rows written as arrays)."""
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    out: list[bytes] = []
    pending: list[bytes] = []
    size = 0

    def write(data: bytes) -> None:
        nonlocal size
        pending.append(data)
        size += len(data)
        if size >= _PACK_CHUNK:
            out.append(compressor.compress(b"".join(pending)))
            pending.clear()
            size = 0

    write(packer.pack_map_header(len(snapshot)))
    for name, value in snapshot.items():
        write(packer.pack(name))
        if isinstance(value, Sized) and isinstance(value, Iterable) and not isinstance(value, _PLAIN):
            write(packer.pack_array_header(len(value)))
            written = 0
            rows = iter(value)
            while chunk := list(itertools.islice(rows, _ROWS_AT_ONCE)):
                # one call for many rows: the chunk's items, its own array header cut off
                packed = packer.pack(chunk)
                write(packed[_array_header_size(len(chunk)):])
                written += len(chunk)
            if written != len(value):
                raise ValueError(f"snapshot section {name!r} said {len(value)} rows and gave {written}")
        else:
            write(packer.pack(value))
    out.append(compressor.compress(b"".join(pending)))
    out.append(compressor.flush())
    return b"".join(out)


def _bin_header(length: int) -> bytes:
    """msgpack's header of a bin of `length` bytes (bin 8, 16 or 32)."""
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


class _Pieces(io.RawIOBase):
    """The bytes of `pieces`, one after another, read without joining them."""

    def __init__(self, *pieces: bytes) -> None:
        self._pieces = [memoryview(p) for p in pieces]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._pieces and not len(self._pieces[0]):
            self._pieces.pop(0)
        if not self._pieces:
            return 0
        piece = self._pieces[0]
        n = min(len(buffer), len(piece))
        buffer[:n] = piece[:n]
        self._pieces[0] = piece[n:]
        return n


@dataclass(frozen=True)
class PackedSnapshot:
    """A snapshot packed where its state lives (`of`, on the actor's thread, so the event
    loop is not held while a million rows are packed), to be signed and stored by `save`."""

    sequence: int
    body: bytes  # pack_body's

    @classmethod
    def of(cls, snapshot: dict[str, Any]) -> PackedSnapshot:
        return cls(int(snapshot["sequence"]), pack_body(snapshot))


_SAVE_ERRORS: tuple[type[Exception], ...] = (*BUS_ERRORS, SnapshotRejected, ValueError, TypeError, OverflowError)
_LOAD_ERRORS: tuple[type[Exception], ...] = (*BUS_ERRORS, KeyError)  # KeyError: InMemoryObjects has none


@dataclass(frozen=True)
class _Checked:
    header: dict[str, Any]
    body: bytes


@dataclass(frozen=True)
class _Object:
    data: bytes


class InMemoryObjects:
    """An object store in memory (`put`, `get` as JetStream's): the in-memory bus's snapshots."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, name: str, data: bytes | io.BufferedIOBase) -> None:
        self.objects[name] = data.read() if isinstance(data, io.BufferedIOBase) else bytes(data)

    async def get(self, name: str, writeinto: io.BytesIO | None = None) -> _Object:
        if name not in self.objects:
            raise KeyError(name)
        if writeinto is not None:
            writeinto.write(self.objects[name])
            return _Object(b"")
        return _Object(self.objects[name])


class SnapshotStore:
    def __init__(self, nc: NATS | None, events: EventStore, stream: str | None = None, bucket: str = SNAPSHOT_BUCKET,
                 replicas: int | None = None, objects: Any = None) -> None:
        """Snapshots of the projection of `events` (the stream named `stream`, by default
        the event store's own), in the JetStream object store `bucket`, or in `objects`
        when given (InMemoryObjects: the same checks, without NATS)."""
        self.js = nc.jetstream() if nc is not None else None
        self.events = events
        self.stream = stream or str(getattr(events, "stream", EVENT_STREAM))
        self.bucket = bucket
        self.replicas = replicas if replicas is not None else stream_replicas()  # bus/replication.py
        self._store: Any = objects

    async def _objects(self, create: bool) -> Any:
        if self._store is None:
            assert self.js is not None
            try:
                self._store = await self.js.object_store(self.bucket)
            except NatsError:
                if not create:
                    raise
                self._store = await self.js.create_object_store(
                    self.bucket, config=api.ObjectStoreConfig(storage=api.StorageType.FILE, replicas=self.replicas))
        return self._store

    async def save(self, name: str, snapshot: dict[str, Any] | PackedSnapshot, signer: SnapshotSigner,
                   actor: str) -> bool:
        """Sign and store `snapshot` (the state as of its `sequence`, or packed already)
        under `name`. Rows streamed (`Rows`) are read while it is packed, before the first
        await: the state they read must not change until then."""
        try:
            packed = snapshot if isinstance(snapshot, PackedSnapshot) else PackedSnapshot.of(snapshot)
            sequence, body = packed.sequence, packed.body
            covered = await self.events.message(sequence)
            if covered is None:
                raise SnapshotRejected(f"the stream has no message at sequence {sequence}")
            header = pack({"format": SNAPSHOT_OBJECT_FORMAT, "name": name, "stream": self.stream,
                           "sequence": sequence, "msg_id": covered.msg_id,
                           "msg_digest": hashlib.sha256(covered.data).hexdigest(),
                           "digest": hashlib.sha256(body).hexdigest(), "key": str(signer.public_key),
                           "key_sequence": await signer.published(self.events, actor)})
            # the object is pack({"header", "signature", "body"}); read from its framing and the
            # body as they are, not copied into one more buffer of the body's size
            head = pack({"header": header, "signature": signer.sign(header), "body": b""})
            framing = head[:-2] + _bin_header(len(body))  # the empty body's bin 8 header (2 bytes), replaced
            await (await self._objects(create=True)).put(name, io.BufferedReader(_Pieces(framing, body)))
            return True
        except _SAVE_ERRORS as exc:
            log.warning("snapshot.save_failed", name=name, error=str(exc))
            return False

    async def load(self, name: str) -> dict[str, Any] | None:
        """The snapshot stored under `name` if every check passes; None otherwise."""
        return await self._load(name, streamed=False)  # type: ignore[return-value]

    async def load_streamed(self, name: str) -> StreamedSnapshot | None:
        """`load`, its body unpacked as it is read: the rows of its large sections (projects,
        keys, key claims) one at a time, in order, each once (`StreamedSnapshot`)."""
        return await self._load(name, streamed=True)  # type: ignore[return-value]

    async def _load(self, name: str, streamed: bool) -> Mapping[str, Any] | None:
        # Written into a buffer: nats-py's object store otherwise joins the chunks with `+=`,
        # quadratic in the size (30 s for the 70 MB of a million projects, 4 s this way).
        buffer = io.BytesIO()
        try:
            await (await self._objects(create=False)).get(name, writeinto=buffer)
        except _LOAD_ERRORS:
            return None  # none yet (or no bucket yet): replay from the start
        try:
            checked = await self._check(name, buffer.getvalue())
            del buffer
            value: Any
            if streamed:
                value = StreamedSnapshot(checked.body)
            else:
                # pack_body's frames do not say their size up front: read as a stream
                value = unpack(zstandard.ZstdDecompressor().decompressobj().decompress(checked.body))
            if not isinstance(value, Mapping) or value.get("sequence") != checked.header["sequence"]:
                raise SnapshotRejected("the state does not cover the sequence its header names")
        except Exception as exc:  # untrusted bytes: whatever they cause, the snapshot is refused
            reason = str(exc) if isinstance(exc, SnapshotRejected) else f"unreadable: {type(exc).__name__}: {exc}"
            log.error("snapshot.rejected", name=name, reason=reason)
            metrics.incr("snapshots.rejected", tags={"name": name})
            return None
        return value

    async def _check(self, name: str, data: bytes) -> _Checked:
        try:
            outer = unpack(data)
        except BadMessage:
            raise SnapshotRejected("not a signed snapshot (not a msgpack map)") from None
        if not isinstance(outer, dict) or not all(isinstance(outer.get(k), t) for k, t in (
                ("header", bytes), ("signature", str), ("body", bytes))):
            raise SnapshotRejected("not a signed snapshot (header, signature, body)")
        try:
            header = unpack(outer["header"])
        except BadMessage:
            header = None
        if not isinstance(header, dict) or header.get("format") != SNAPSHOT_OBJECT_FORMAT:
            raise SnapshotRejected("unknown snapshot format")
        if header.get("name") != name or header.get("stream") != self.stream:
            raise SnapshotRejected(f"made for {header.get('name')!r} of stream {header.get('stream')!r}")
        key, key_sequence, sequence = header.get("key"), header.get("key_sequence"), header.get("sequence")
        if not isinstance(key, str) or not isinstance(key_sequence, int) or not isinstance(sequence, int):
            raise SnapshotRejected("malformed header")
        published = await self.events.message(key_sequence)
        events = decode_stored(key_sequence, published.subject, published.data) if published else []
        if published is None or published.subject != event_subject(SNAPSHOT, key, KEY_EVENT) or not any(
                e.type == KEY_EVENT and e.payload.get("public_key") == key for e in events):
            raise SnapshotRejected(f"its signing key is not the one the stream holds at sequence {key_sequence}")
        try:
            valid = sentry_relay.PublicKey.parse(key).verify(outer["header"], outer["signature"])
        except Exception:
            valid = False
        if not valid:
            raise SnapshotRejected("the signature does not verify")
        if hashlib.sha256(outer["body"]).hexdigest() != header.get("digest"):
            raise SnapshotRejected("the body does not match the signed digest")
        covered = await self.events.message(sequence)
        if covered is None or covered.msg_id != header.get("msg_id") or \
                hashlib.sha256(covered.data).hexdigest() != header.get("msg_digest"):
            raise SnapshotRejected(f"the stream's message at sequence {sequence} is not the one it was made at")
        return _Checked(header, outer["body"])


class StreamedSnapshot(Mapping[str, Any]):
    """A snapshot body read as it is asked for: a section's value is unpacked when it (or one
    after it) is looked up, and the sections in `LAZY` are `Section`s whose rows are unpacked
    one at a time as they are iterated - so a million projects are never all unpacked at
    once beside the objects made of them. Sections must be read in the order they were
    written (domain/state.py `from_snapshot` does); one skipped is passed over unread. Only
    for a body whose signature and digest were checked (its bytes are trusted)."""

    LAZY = frozenset({"projects", "keys", "key_claims"})

    def __init__(self, body: bytes) -> None:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
        self._unpacker = msgpack.Unpacker(reader, raw=False, strict_map_key=False, max_buffer_size=1 << 30)
        self._left = self._unpacker.read_map_header()
        self._read: dict[str, Any] = {}
        self._open: Section | None = None

    def _advance(self, key: str) -> None:
        while key not in self._read and self._left:
            if self._open is not None:
                self._open.skip()
                self._open = None
            name = self._unpacker.unpack()
            self._left -= 1
            if name in self.LAZY:
                self._open = Section(self._unpacker, self._unpacker.read_array_header())
                self._read[name] = self._open
            else:
                self._read[name] = self._unpacker.unpack()

    def __getitem__(self, key: str) -> Any:
        self._advance(key)
        return self._read[key]

    def __iter__(self) -> Iterator[str]:
        self._advance("")  # everything (no section is named "")
        return iter(self._read)

    def __len__(self) -> int:
        return len(self._read) + self._left


class Section:
    """The rows of one large snapshot section, unpacked as they are iterated (once)."""

    def __init__(self, unpacker: msgpack.Unpacker, count: int) -> None:
        self._unpacker = unpacker
        self.count = count
        self._left = count
        self._skipped = False

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        if self._skipped:
            raise ValueError("a snapshot section asked for after a later one: sections are read in order")
        while self._left:
            self._left -= 1
            yield self._unpacker.unpack()

    def skip(self) -> None:
        self._skipped = self._left > 0
        while self._left:
            self._left -= 1
            self._unpacker.skip()
