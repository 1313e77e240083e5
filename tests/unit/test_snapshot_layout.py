"""What a million projects cost: the state's memory layout and snapshots made and restored
without copying the state whole (bench_scale; issue 15). Same behaviour as before, less held."""

from __future__ import annotations

import asyncio
import io
import sys
from typing import Any

import msgpack
import pytest
import zstandard

from bus.eventstore import InMemoryEventStore
from bus.snapshots import InMemoryObjects, PackedSnapshot, SnapshotSigner, SnapshotStore, StreamedSnapshot, pack_body
from domain.model import Org, Project, ProjectKey, Relay, User
from domain.projections import EVERYTHING, KEYS, ORG_OPTIONS, PROJECT_OPTIONS, Projection
from domain.state import DomainState, Rows
from messages.envelope import pack, unpack
from tests.unit.test_state import KEY_A, KEY_B, ev, fold, history


def unpacked(body: bytes) -> object:
    return unpack(zstandard.ZstdDecompressor().decompressobj().decompress(body))


def test_domain_objects_have_no_instance_dict() -> None:
    """Slotted: a project or key is its fields, not a dict of them besides."""
    for obj in (Org(1, "o", "o"), Project(1, 1, "p", "p"), ProjectKey("k" * 32, 1, 1), Relay("r"), User("u")):
        assert not hasattr(obj, "__dict__"), type(obj).__name__


def test_repeated_strings_are_held_once() -> None:
    """A project named as its slug holds one string; statuses and option keys are interned
    (every event decodes its own copy of them); a key's claim is dropped once the key is created."""
    key = "".join(["d"] * 32)  # not interned by the compiler
    state = fold([[ev("OrgCreated", "acme", name="Acme", id=1)],
                  [ev("KeysClaimed", "keys", org="acme", org_version=1, public_keys=["".join(["d"] * 32)])],
                  [ev("ProjectCreated", "acme", project="web", name="".join("web"), template=None, id=1,
                      options={"".join("sentry:origins"): ["*"]}),
                   ev("KeyCreated", "acme", project="web", public_key=key, status="".join("active"),
                      rate_limit=None, numeric_id=1)]])
    project = state.project("acme", "web")
    assert project is not None and project.name is project.slug
    assert next(iter(project.options)) is sys.intern("sentry:origins")  # interned: the same object
    assert state.keys[key].status is sys.intern("active")
    assert key not in state.key_claims


def test_a_streamed_snapshot_packs_to_what_the_plain_one_holds() -> None:
    """`to_snapshot(streamed=True)` packed row by row (pack_body) unpacks to exactly the
    plain snapshot, and restores the same state in every projection."""
    state = fold(history())
    state.apply(40, [ev("KeysClaimed", "keys", org="acme", org_version=9, public_keys=["e" * 32])])
    plain = state.to_snapshot()
    streamed = state.to_snapshot(streamed=True)
    assert isinstance(streamed["projects"], Rows) and isinstance(streamed["keys"], Rows)
    body = pack_body(streamed)
    assert unpacked(body) == unpack(pack(plain))
    for projection in (EVERYTHING, Projection("keys", {KEYS}), Projection("configs", {ORG_OPTIONS, PROJECT_OPTIONS, KEYS})):
        restored = DomainState.from_snapshot(unpack(pack(plain)), projection)
        assert repr(DomainState.from_snapshot(unpacked(body), projection).__dict__) == repr(restored.__dict__)
    assert PackedSnapshot.of(state.to_snapshot(streamed=True)) == PackedSnapshot(40, body)


def test_a_streamed_section_that_gives_fewer_rows_than_it_says_is_refused() -> None:
    with pytest.raises(ValueError, match="said 2 rows and gave 1"):
        pack_body({"sequence": 1, "projects": Rows(2, iter([(1,)]))})


def test_restoring_with_consume_drops_the_rows_and_restores_the_same_state() -> None:
    state = fold(history())
    data = msgpack.unpackb(msgpack.packb(state.to_snapshot()), strict_map_key=False)
    restored = DomainState.from_snapshot(data, consume=True)
    assert data["projects"] == [] and data["keys"] == []
    assert restored.to_snapshot() == state.to_snapshot()


def test_keys_of_a_project_after_deletes_and_replacements() -> None:
    """The keys of a project (a tuple now) keep their order; a delete removes one."""
    state = fold(history())
    web = state.project("acme", "web")
    assert web is not None
    state.apply(30, [ev("KeyCreated", "acme", project="web", public_key="f" * 32, rate_limit=None)])
    state.apply(31, [ev("KeyDeleted", "acme", public_key=KEY_B)])
    assert [k.public_key for k in state.keys_of(web.id)] == [KEY_A, "f" * 32]
    again = DomainState.from_snapshot(state.to_snapshot())
    assert [k.public_key for k in again.keys_of(web.id)] == [KEY_A, "f" * 32]


def format_4(snapshot: dict[str, Any]) -> dict[str, Any]:
    """`snapshot` as format 4 wrote it: projects and keys as maps, no columns."""
    old = dict(snapshot, format=4)
    del old["columns"]
    old["projects"] = [dict(zip(snapshot["columns"]["projects"], row, strict=True)) for row in snapshot["projects"]]
    old["keys"] = [dict(zip(snapshot["columns"]["keys"], row, strict=True)) for row in snapshot["keys"]]
    for p in old["projects"]:
        p["options"], p["teams"] = p["options"] or {}, p["teams"] or []
    return old


def test_a_format_4_snapshot_of_maps_is_still_read() -> None:
    """Snapshots written before rows (projects and keys as maps) restore the same state."""
    snapshot = fold(history()).to_snapshot()
    assert DomainState.from_snapshot(format_4(snapshot)).to_snapshot() == snapshot


def test_a_snapshot_read_as_a_stream_restores_every_projection() -> None:
    """`StreamedSnapshot` (how an actor loads one: rows unpacked as they are restored) gives
    each projection the state the whole unpacked snapshot gives, sections it skips unread."""
    state = fold(history())
    state.apply(40, [ev("KeysClaimed", "keys", org="acme", org_version=9, public_keys=["e" * 32])])
    body = pack_body(state.to_snapshot(streamed=True))
    for projection in (EVERYTHING, Projection("keys", {KEYS}), Projection("org access", {ORG_OPTIONS}),
                       Projection("configs", {ORG_OPTIONS, PROJECT_OPTIONS, KEYS})):
        whole = DomainState.from_snapshot(unpack(pack(state.to_snapshot())), projection)
        streamed = DomainState.from_snapshot(StreamedSnapshot(body), projection, consume=True)
        assert repr(streamed.__dict__) == repr(whole.__dict__), projection.name


def test_a_format_4_snapshot_read_as_a_stream() -> None:
    snapshot = fold(history()).to_snapshot()
    old = format_4(snapshot)
    body = zstandard.ZstdCompressor().compress(pack(old))
    assert DomainState.from_snapshot(StreamedSnapshot(body)).to_snapshot() == snapshot


def test_a_streamed_section_asked_for_after_a_later_one_is_refused() -> None:
    """Sections are read in the order they were written: a skipped one cannot be read later
    (it would look empty)."""
    data = StreamedSnapshot(pack_body(fold(history()).to_snapshot(streamed=True)))
    projects = data["projects"]
    assert data["relays"]
    with pytest.raises(ValueError, match="in order"):
        list(projects)


def test_rows_packed_many_at_once_are_the_rows_packed_one_by_one() -> None:
    """pack_body packs a section's rows a chunk per call and cuts the chunk's own array
    header: for every header size the bytes are those of the rows packed one by one."""
    from bus.snapshots import _ROWS_AT_ONCE, _array_header_size

    for n in (1, 15, 16, _ROWS_AT_ONCE, 65535, 65536):
        assert len(msgpack.packb([None] * n)) - n == _array_header_size(n), n
    rows = [(i, "p", None) for i in range(2 * _ROWS_AT_ONCE + 7)]
    body = pack_body({"sequence": 1, "projects": Rows(len(rows), iter(rows))})
    assert unpacked(body) == {"sequence": 1, "projects": [list(r) for r in rows]}


class _ChunkedObjects(InMemoryObjects):
    """An object store that, like nats-py's, answers `get` without `writeinto` by joining
    its chunks with `+=` (quadratic: 30 s for the 70 MB of a million projects): refused here."""

    async def get(self, name: str, writeinto: io.BytesIO | None = None) -> Any:
        assert writeinto is not None, "the snapshot was read without a buffer to write its chunks into"
        return await super().get(name, writeinto)


def test_a_snapshot_is_read_into_a_buffer_and_restores() -> None:
    store = InMemoryEventStore()
    snapshots = SnapshotStore(None, store, objects=_ChunkedObjects())
    state = DomainState()

    async def run() -> Any:
        for _ in range(3):
            sequence = await store.append([ev("OrgCreated", f"org{_}", name="x")], None)
            state.apply(sequence, (await store.read())[-1][1])
        assert await snapshots.save("s", PackedSnapshot.of(state.to_snapshot(streamed=True)), SnapshotSigner(), "t")
        return await snapshots.load_streamed("s")

    loaded = asyncio.run(run())
    assert loaded is not None
    assert DomainState.from_snapshot(loaded).to_snapshot() == state.to_snapshot()


def test_a_stored_object_is_read_from_its_framing_and_body_as_pack_would_make_it() -> None:
    """save() hands the object store the outer map's framing and the body one after the other
    (no copy of the body): the bytes read are pack({header, signature, body})'s, at every bin size."""
    from bus.snapshots import _bin_header, _Pieces

    for size in (0, 5, 255, 256, 1 << 16, 70000):
        body = b"b" * size
        head = pack({"header": b"h", "signature": "s", "body": b""})
        read = io.BufferedReader(_Pieces(head[:-2] + _bin_header(size), body)).read()
        assert read == pack({"header": b"h", "signature": "s", "body": body}), size
