"""Command decisions on a plain DomainState, without any server."""

from __future__ import annotations

from typing import Any

import pytest

from domain.decider import Decider
from domain.decisions import IdDraw, IdPool
from domain.state import DomainState
from messages.errors import Conflict, Forbidden
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


# -- ids decided with the command ---------------------------------------------------------------

def given(*commits: list[DomainEvent]) -> DomainState:
    state = DomainState()
    for sequence, events in enumerate(commits, start=1):
        state.apply(sequence, events)
    return state


def pool(**blocks: tuple[int, int]) -> IdPool:
    ids = IdPool()
    for kind, (first, count) in blocks.items():
        ids.add(kind, first, count)
    return ids


def test_a_new_project_carries_the_ids_its_handler_decided() -> None:
    """project.create stores the project id and the key's numeric id in its events."""
    state = given([DomainEvent("OrgCreated", "acme", {"name": "Acme", "id": 1})])
    decision = Decider(state, "cli", IdDraw(pool(project=(10, 5), key=(20, 5)))).decide(
        "project.create", {"org": "acme", "project": "web", "name": None, "template": None})
    created, key = decision.events
    assert created.payload["id"] == 10 and key.payload["numeric_id"] == 20
    state.apply(2, decision.events)
    assert decision.result(state)["id"] == 10 and decision.result(state)["numericId"] == 20


def test_without_ids_a_decision_is_short_and_never_meant_to_be_stored() -> None:
    """A handler whose pool is empty learns how many ids of which kind the command needs."""
    draw = IdDraw()
    Decider(DomainState(), "cli", draw).decide("import.org", {"org": {
        "slug": "big", "projects": [{"slug": f"p{i}", "keys": [{}, {}]} for i in range(3)]}})
    assert draw.short == {"org": 1, "project": 3, "key": 6}


def test_a_decision_decided_again_takes_the_same_ids_until_one_is_stored() -> None:
    """Ids leave the pool only with commit(): a refused or conflicting decision takes them again."""
    ids = pool(org=(1, 3))
    first = IdDraw(ids)
    assert first.take("org") == 1
    again = IdDraw(ids)
    assert again.take("org") == 1 and again.take("org") == 2
    again.commit()
    assert IdDraw(ids).take("org") == 3 and ids.available("org") == 1


def test_an_id_block_starts_past_every_id_stored_or_claimed() -> None:
    """claim_ids asks for the ids after the highest stored id and the last claimed block."""
    state = given([DomainEvent("OrgCreated", "acme", {"name": "A", "id": 12})],
                  [DomainEvent("IdsClaimed", "project", {"first": 1, "count": 50, "owner": "h1"})])
    org_block = Decider(state, "cli").claim_ids("org", 50, "h2").events[0]
    project_block = Decider(state, "cli").claim_ids("project", 50, "h2").events[0]
    assert (org_block.aggregate, org_block.aggregate_id, org_block.payload["first"]) == ("ids", "org", 13)
    assert project_block.payload["first"] == 51 and project_block.payload["count"] == 50


# -- explicit keys are claimed before the org commit ------------------------------------------------

KEY = "0123456789abcdef0123456789abcdef"


def two_orgs() -> DomainState:
    return given([DomainEvent("OrgCreated", "acme", {"name": "A", "id": 1})],
                 [DomainEvent("OrgCreated", "beta", {"name": "B", "id": 2})],
                 [DomainEvent("ProjectCreated", "beta", {"project": "web", "name": "w", "template": None, "id": 1})])


def import_with_key(slug: str) -> dict[str, Any]:
    return {"org": {"slug": slug, "projects": [{"slug": "web", "keys": [{"publicKey": KEY}]}]}}


def test_an_explicit_key_is_claimed_for_the_org_at_its_current_version() -> None:
    """Importing a named key first needs a KeysClaimed for the org at the org's version."""
    state = two_orgs()
    decider = Decider(state, "cli", IdDraw(pool(project=(5, 5), key=(5, 5))))
    decision = decider.decide("import.org", import_with_key("acme"))
    assert decision.explicit_keys == [KEY]
    claim = decider.claims_for(decision)
    assert claim is not None and (claim.aggregate, claim.aggregate_id) == ("claims", "keys")
    assert [(e.type, e.payload) for e in claim.events] == [
        ("KeysClaimed", {"org": "acme", "org_version": 1, "public_keys": [KEY]})]
    state.apply(4, claim.events)
    assert decider.claims_for(decision) is None  # claimed: the org commit may go


def test_a_key_claimed_by_another_org_is_a_conflict() -> None:
    """While beta's claim may still be used (beta unchanged since), acme may not create the
    key; beta itself goes on with its claim."""
    state = two_orgs()
    state.apply(4, [DomainEvent("KeysClaimed", "keys", {"org": "beta", "org_version": 3, "public_keys": [KEY]})])
    decider = Decider(state, "cli", IdDraw(pool(project=(5, 5), key=(5, 5))))
    with pytest.raises(Conflict, match="claimed by organization `beta`"):
        decider.claims_for(decider.decide("import.org", import_with_key("acme")))
    own = Decider(state, "cli", IdDraw(pool(key=(5, 5))))
    assert own.claims_for(own.decide("key.create", {"org": "beta", "project": "web", "public_key": KEY})) is None


def test_a_claim_its_org_moved_past_can_be_taken_over() -> None:
    """Once the claiming org has a later commit that did not create the key, the claim is dead."""
    state = two_orgs()
    state.apply(4, [DomainEvent("KeysClaimed", "keys", {"org": "beta", "org_version": 3, "public_keys": [KEY]})])
    state.apply(5, [DomainEvent("OrgOptionSet", "beta", {"key": "sentry:origins", "value": ["x"]})])
    decider = Decider(state, "cli", IdDraw(pool(project=(5, 5), key=(5, 5))))
    claim = decider.claims_for(decider.decide("import.org", import_with_key("acme")))
    assert claim is not None and claim.events[0].payload["org"] == "acme"


def test_a_key_another_org_holds_is_refused_before_any_claim() -> None:
    """A key that exists is refused by the decision itself (the claim is for keys in flight)."""
    state = two_orgs()
    state.apply(4, [DomainEvent("KeyCreated", "beta", {"project": "web", "public_key": KEY, "rate_limit": None,
                                                       "numeric_id": 1})])
    with pytest.raises(Conflict):
        Decider(state, "cli", IdDraw(pool(project=(5, 5), key=(5, 5)))).decide("import.org", import_with_key("acme"))


def test_generated_keys_need_no_claim() -> None:
    """project.create and key.create without a key make a fresh random key: nothing to claim."""
    state = two_orgs()
    decider = Decider(state, "cli", IdDraw(pool(project=(5, 5), key=(5, 5))))
    for message_type, payload in (("project.create", {"org": "acme", "project": "p", "name": None, "template": None}),
                                  ("key.create", {"org": "beta", "project": "web", "public_key": None})):
        decision = decider.decide(message_type, payload)
        assert decision.explicit_keys == [] and decider.claims_for(decision) is None
