"""Reads on the read side: a CAUGHT_UP query asks the store for its last sequence without
blocking the actor, once for every read that arrives while a question is out, and not at
all when the request names `after`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.lookup import KeyLookupActor
from bus.eventstore import InMemoryEventStore
from bus.testing import ActorHarness
from domain.decisions import token_hash
from messages.errors import Unauthorized
from tests.waiting import wait_for

TOKEN = "a-token"


class GatedStore(InMemoryEventStore):
    """Counts `last_sequence` questions, and can hold them until released."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0
        self.gate: asyncio.Event | None = None

    async def last_sequence(self) -> int:
        self.asked += 1
        if self.gate is not None:
            await self.gate.wait()
        return await super().last_sequence()


@pytest.fixture
def gated() -> Any:
    store = GatedStore()
    with ActorHarness(store=store) as h:
        h.given("UserCreated", "ann")
        h.given("TokenCreated", "ann", token_hash=token_hash(TOKEN))
        yield h, store


def test_reads_arriving_while_a_question_is_out_share_the_next_one(gated: Any) -> None:
    harness, store = gated
    harness.start(KeyLookupActor)

    async def gate() -> asyncio.Event:
        return asyncio.Event()

    store.gate = harness.runtime.call(gate())
    before = store.asked
    first = harness.send("user.authenticate", {"token": TOKEN})
    wait_for(lambda: store.asked == before + 1)  # the first read's question, held
    others = [harness.send("user.authenticate", {"token": TOKEN}) for _ in range(9)]
    wait_for(lambda: harness.bus._services["rc.keys.lookup"].in_flight == 10)  # all told to the actor
    # The actor is not blocked: a LATEST read sent after them is answered at once, so the
    # nine were taken in (each parked for the next question) while the first question is out.
    assert harness.ask("keys.lookup", {"public_keys": []}) == {}
    assert not first.done() and not any(o.done() for o in others)
    harness.runtime.loop.call_soon_threadsafe(store.gate.set)
    for answer in [first, *others]:
        assert answer.result(timeout=5)["username"] == "ann"
    assert store.asked == before + 2  # one more question for the nine


def test_a_read_naming_after_asks_the_store_nothing(gated: Any) -> None:
    harness, store = gated
    harness.start(KeyLookupActor)
    sequence = harness.runtime.call(store.last_sequence())
    before = store.asked
    assert harness.ask("user.authenticate", {"token": TOKEN}, after=sequence)["username"] == "ann"
    assert store.asked == before
    with pytest.raises(Unauthorized):
        harness.ask("user.authenticate", {"token": "nope"}, after=sequence)
