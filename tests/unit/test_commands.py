"""Command decisions on a plain DomainState, without any server."""

from __future__ import annotations

import pytest

from actors.commands import Decider
from actors.state import DomainState
from messages.errors import Forbidden
from messages.events import DomainEvent

RELAY_KEY = "A" * 43
RELAY_ID = "0d3c0b0e-2a5c-4b5e-9a0e-6f1d2c3b4a59"


def test_registering_a_relay_never_allowed_is_refused_without_stop() -> None:
    """A relay no operator allowed is refused, but not told to give up for good."""
    with pytest.raises(Forbidden) as refused:
        Decider(DomainState(), "gateway").decide("relay.register",
                                                 {"relay_id": RELAY_ID, "public_key": RELAY_KEY, "version": None})
    assert refused.value.details == {"banned": False}


def test_registering_a_banned_relay_is_refused_with_stop() -> None:
    """A banned relay's registration is refused and marked banned (the gateway adds "relay": "stop")."""
    state = DomainState()
    state.apply(1, [DomainEvent("RelayAllowed", RELAY_KEY, {"internal": False})])
    state.apply(2, [DomainEvent("RelayDenied", RELAY_KEY, {})])
    with pytest.raises(Forbidden) as refused:
        Decider(state, "gateway").decide("relay.register",
                                         {"relay_id": RELAY_ID, "public_key": RELAY_KEY, "version": None})
    assert refused.value.details == {"banned": True}


def test_registering_an_allowed_relay_records_it() -> None:
    """An allowed relay's first registration is a RelayRegistered event."""
    state = DomainState()
    state.apply(1, [DomainEvent("RelayAllowed", RELAY_KEY, {"internal": True})])
    decision = Decider(state, "gateway").decide("relay.register",
                                                {"relay_id": RELAY_ID, "public_key": RELAY_KEY, "version": "24.1.0"})
    assert [e.type for e in decision.events] == ["RelayRegistered"]
