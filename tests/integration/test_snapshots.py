"""Projection snapshots: a start from a snapshot reaches the same state as a full replay."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from actors.commands import CommandActor
from actors.state import DomainState
from actors.worker import Worker
from bus.client import request
from bus.embedded import ServerProcess
from bus.eventstore import JetStreamEventStore
from bus.snapshots import SnapshotStore


async def _setup(url: str) -> None:
    nc = await nats.connect(url)
    await request(nc, "org.create", {"slug": "snap", "name": None})
    for i in range(12):
        await request(nc, "project.create", {"org": "snap", "project": f"p{i}", "name": None, "template": None})
    await nc.close()


async def _replayed_and_snapshot(url: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    nc = await nats.connect(url)
    store = JetStreamEventStore(nc)
    state = DomainState()
    for seq, events in await store.read():
        state.apply(seq, events)
    snapshot = await SnapshotStore(nc).load(CommandActor.SNAPSHOT_NAME)
    await nc.close()
    return state.to_snapshot(), snapshot


def test_start_from_snapshot_equals_full_replay(fresh_servers: tuple[ServerProcess, ServerProcess],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The command handlers write a snapshot; an actor started later loads it and ends in the replayed state."""
    nats_server, redis_server = fresh_servers
    monkeypatch.setattr(CommandActor, "snapshot_every", 5)
    worker = Worker(["commands"], nats_server.url, redis_server.url, instrument=False).start()
    try:
        asyncio.run(_setup(nats_server.url))
    finally:
        worker.stop()
    replayed, snapshot = asyncio.run(_replayed_and_snapshot(nats_server.url))
    assert snapshot is not None and 5 <= snapshot["sequence"] <= replayed["sequence"]

    worker = Worker(["keys"], nats_server.url, redis_server.url, instrument=False).start()
    try:
        ref = worker.supervisors["keys"].ref
        assert ref is not None
        proxy = ref.proxy()
        loaded = proxy.state.get().to_snapshot()
        started_from = proxy.snapshot_sequence.get()
    finally:
        worker.stop()
    assert started_from == snapshot["sequence"]  # it did start from the snapshot, not from 1
    assert loaded == replayed
