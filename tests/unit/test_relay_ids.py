"""Every relay id a key registered under stays known, follows the key's rights, and survives
a snapshot (issue 10 item 7: an earlier id must not keep the rights it had)."""

from __future__ import annotations

from domain.queries import relay_auth
from domain.state import DomainState
from messages.events import DomainEvent

RELAY = "r" * 43
FIRST, SECOND = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"


def fold(state: DomainState, *commits: DomainEvent) -> None:
    for event in commits:
        state.apply(state.sequence + 1, [event])


def registered_twice() -> DomainState:
    state = DomainState()
    fold(state, DomainEvent("RelayAllowed", RELAY, {"internal": True}),
         DomainEvent("RelayRegistered", RELAY, {"relay_id": FIRST, "version": "24.11.0"}),
         DomainEvent("RelayRegistered", RELAY, {"relay_id": SECOND, "version": "24.11.0"}),
         DomainEvent("RelayRegistered", RELAY, {"relay_id": FIRST, "version": "24.11.0"}))
    return state


def test_every_registered_id_is_kept_once_in_order() -> None:
    state = registered_twice()
    relay = state.relays[RELAY]
    assert relay.relay_ids == [FIRST, SECOND] and relay.relay_id == FIRST
    assert state.relay_by_id(SECOND) is relay


def test_an_earlier_id_follows_a_ban() -> None:
    state = registered_twice()
    fold(state, DomainEvent("RelayDenied", RELAY, {}))
    for relay_id in (FIRST, SECOND):
        info = relay_auth(state, state.relay_by_id(relay_id), relay_id)
        assert info is not None and info["relayId"] == relay_id and info["banned"] and not info["internal"]


def test_every_id_survives_a_snapshot() -> None:
    restored = DomainState.from_snapshot(registered_twice().to_snapshot())
    assert restored.relays[RELAY].relay_ids == [FIRST, SECOND]
    assert restored.relay_by_id(SECOND) is restored.relays[RELAY]
    assert restored.relay_by_id(FIRST) is restored.relays[RELAY]
