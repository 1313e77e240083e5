"""The forwarder over the in-memory bus: its JetStream side and its stores are given to it
(no production branch for a test), so its queries are fed like any other actor's."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.errors import NotFoundError

from actors.error_events import InMemoryErrorEventStore, prepare_event
from actors.forwarder import ForwarderActor, ForwardSettings
from actors.ingest_stats import InMemoryIngestStats
from bus.testing import ActorHarness
from messages.errors import BadRequest, NotFound
from tests.ai_helpers import error_event
from tests.unit.actors.conftest import ORG, PROJECT, given_project


class NoStream:
    """A JetStream whose ingest stream does not exist (yet): the consumers wait for it."""

    def __getattr__(self, name: str) -> Any:
        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise NotFoundError()

        return refuse


def start(harness: ActorHarness, events: InMemoryErrorEventStore, stats: InMemoryIngestStats) -> None:
    harness.start(ForwarderActor, jetstream=NoStream(), events=events, stats=stats,
                  settings=ForwardSettings(consumers=frozenset({"forwarder"})))


def test_an_event_stored_for_a_project_is_shown_with_its_slugs(harness: ActorHarness) -> None:
    given_project(harness)
    events, stats = InMemoryErrorEventStore(), InMemoryIngestStats()
    stored = prepare_event(10, error_event(), received=1_700_000_000.0)
    harness.runtime.call(events.put(stored))
    harness.runtime.call(stats.index_event(10, stored.event_id, stored.received))
    start(harness, events, stats)

    shown = harness.ask("events.show", {"event_id": stored.event_id})
    assert (shown["org"], shown["project"], shown["projectId"]) == (ORG, PROJECT, 10)
    assert shown["event"]["event_id"] == stored.event_id


def test_an_unknown_or_malformed_event_id_is_a_clear_error(harness: ActorHarness) -> None:
    given_project(harness)
    start(harness, InMemoryErrorEventStore(), InMemoryIngestStats())
    with pytest.raises(NotFound, match="No event matching"):
        harness.ask("events.show", {"event_id": "f" * 32})
    with pytest.raises(BadRequest, match="not an event id"):
        harness.ask("events.show", {"event_id": "nope"})
