"""Relay usage per version (as Sentry's RelayUsage) and key rate limits, in the fold."""

from __future__ import annotations

import pytest

from domain.decisions import checked_rate_limit
from domain.state import MAX_RELAY_USAGE, DomainState
from messages.errors import BadRequest
from messages.events import DomainEvent

RELAY = "r" * 43
KEY = "a" * 32


def ev(type_: str, aggregate_id: str, ts: float, **payload: object) -> DomainEvent:
    return DomainEvent(type_, aggregate_id, dict(payload), actor="test", ts=ts)


def test_each_relay_version_has_its_own_first_and_last_seen() -> None:
    state = DomainState()
    state.apply(1, [ev("RelayAllowed", RELAY, 1.0, internal=True)])
    state.apply(2, [ev("RelayRegistered", RELAY, 10.0, relay_id="id-1", version="24.10.0")])
    state.apply(3, [ev("RelaySeen", RELAY, 100.0, version="24.10.0")])
    state.apply(4, [ev("RelayRegistered", RELAY, 200.0, relay_id="id-1", version="24.11.0")])
    state.apply(5, [ev("RelaySeen", RELAY, 300.0, version="24.11.0")])
    relay = state.relays[RELAY]
    assert relay.usage == [
        {"relayId": "id-1", "version": "24.10.0", "firstSeen": 10.0, "lastSeen": 100.0},
        {"relayId": "id-1", "version": "24.11.0", "firstSeen": 200.0, "lastSeen": 300.0},
    ]
    assert relay.first_seen == 10.0 and relay.last_seen == 300.0
    assert DomainState.from_snapshot(state.to_snapshot()).relays[RELAY].usage == relay.usage


def test_relay_usage_is_bounded() -> None:
    state = DomainState()
    state.apply(1, [ev("RelayAllowed", RELAY, 1.0, internal=True)])
    for i in range(MAX_RELAY_USAGE + 10):
        state.apply(2 + i, [ev("RelayRegistered", RELAY, 10.0 + i, relay_id="id-1", version=f"24.{i}.0")])
    usage = state.relays[RELAY].usage
    assert len(usage) == MAX_RELAY_USAGE and usage[-1]["version"] == f"24.{MAX_RELAY_USAGE + 9}.0"


def test_a_key_rate_limit_is_folded_into_the_key() -> None:
    state = DomainState()
    state.apply(1, [ev("OrgCreated", "acme", 1.0, name="Acme", id=1)])
    state.apply(2, [ev("ProjectCreated", "acme", 1.0, project="web", name="Web", template=None, id=1),
                    ev("KeyCreated", "acme", 1.0, project="web", public_key=KEY, rate_limit=None, numeric_id=1)])
    changes = state.apply(3, [ev("KeyRateLimitSet", "acme", 2.0, public_key=KEY,
                                 rate_limit={"count": 5, "window": 60})])
    assert state.keys[KEY].rate_limit == {"count": 5, "window": 60} and KEY in changes.public_keys
    state.apply(4, [ev("KeyRateLimitSet", "acme", 3.0, public_key=KEY, rate_limit=None)])
    assert state.keys[KEY].rate_limit is None


@pytest.mark.parametrize(("count", "window", "clear", "expected"), [
    (5, 60, False, {"count": 5, "window": 60}), (0, 1, False, {"count": 0, "window": 1}), (None, None, True, None)])
def test_checked_rate_limit(count: int | None, window: int | None, clear: bool, expected: object) -> None:
    assert checked_rate_limit(count, window, clear) == expected


@pytest.mark.parametrize(("count", "window", "clear"), [(5, None, False), (None, None, False), (-1, 60, False),
                                                        (5, 0, False), (5, 10 ** 9, False), (5, 60, True)])
def test_checked_rate_limit_refuses(count: int | None, window: int | None, clear: bool) -> None:
    with pytest.raises(BadRequest):
        checked_rate_limit(count, window, clear)
