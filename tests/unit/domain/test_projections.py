"""Per-actor projections: a projection restricted to some parts answers what its actor asks
exactly as the whole state does - folded from the stream or loaded from a full snapshot - and
holds nothing else."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from actors.ai import AISuggestionActor
from actors.base import ProjectionActor
from actors.commands import CommandActor
from actors.configs import ConfigActor
from actors.forwarder import ForwarderActor
from actors.lookup import KeyLookupActor, OrgAccessActor
from domain.model import TRUSTED_RELAYS
from domain.project_config import PII_OPTION, build_project_config
from domain.projections import EVENT_PARTS, EVERYTHING, KEYS, ORGS, PROJECTS, RELAYS, USERS, Projection
from domain.queries import QUERY_ANSWERS, keys_lookup, org_has_access, relay_auth
from domain.state import Changes, DomainState
from messages.events import DomainEvent
from tests.unit.domain.gwt import event, key

RELAY = "CTx27wo6qDRbBDaDtQrpsOYerTwTYaKn5BgkIdebZ0M"
OTHER_RELAY = "1kRSzb1lBDA-hOSCdnF32Dygiw0gGMOevtxSaWnSSV0"
NOW = 1_750_000_100.0


def legacy(type_: str, aggregate_id: str, **payload: Any) -> DomainEvent:
    """An event stored before ids were: its id comes from the fold-order counter."""
    return event(type_, aggregate_id, **payload)


def stream() -> list[list[DomainEvent]]:
    """Commits touching every part: orgs, options, templates, projects, keys, relays, users,
    id blocks, key claims, legacy events without ids, deletions and trust changes."""
    trust = [{"public_key": RELAY, "name": "edge"}]
    return [
        [event("IdsClaimed", "org", first=1, count=50, owner="c1"), event("IdsClaimed", "project", first=1, count=50,
                                                                          owner="c1")],
        [event("OrgCreated", "acme", name="Acme", id=1),
         event("OrgOptionSet", "acme", key="sentry:safe_fields", value=["id"]),
         event("ProjectTemplateSet", "acme", template="strict", options={"sentry:scrub_data": True})],
        [event("KeysClaimed", "keys", org="acme", org_version=2, public_keys=[key(1), key(2)])],
        [event("ProjectCreated", "acme", project="web", name="web", template=None, id=1),
         event("ProjectOptionSet", "acme", project="web", key="sentry:origins", value=["a.example"]),
         event("KeyCreated", "acme", project="web", public_key=key(1), rate_limit=None, numeric_id=1),
         event("KeyCreated", "acme", project="web", public_key=key(2), rate_limit=None, numeric_id=2)],
        [event("ProjectCreated", "acme", project="api", name="api", template="strict", id=2),
         legacy("KeyCreated", "acme", project="api", public_key=key(3), rate_limit=None, numeric_id=None)],
        [legacy("OrgCreated", "beta", name="Beta", id=None),
         legacy("ProjectCreated", "beta", project="app", name="app", template=None, id=None),
         legacy("KeyCreated", "beta", project="app", public_key=key(4), rate_limit=None, numeric_id=None)],
        [event("RelayAllowed", RELAY, internal=False), event("RelayAllowed", OTHER_RELAY, internal=True)],
        [event("RelayRegistered", RELAY, relay_id="r-1", version="1.0")],
        [event("OrgOptionSet", "acme", key=TRUSTED_RELAYS, value=trust)],
        [event("KeyDisabled", "acme", public_key=key(2)),
         event("KeyRateLimitSet", "acme", public_key=key(1), rate_limit={"count": 5, "window": 60})],
        [event("ProjectDisabled", "beta", project="app")],
        [event("UserCreated", "ann", email=None, superuser=False), event("TokenCreated", "ann", token_hash="h" * 64),
         event("PermissionAdded", "ann", permission="ai.suggest")],
        [event("RelaySeen", RELAY, version="1.1"), event("RelayDenied", OTHER_RELAY)],
        [event("ProjectOptionUnset", "acme", project="web", key="sentry:origins"),
         event("OrgOptionSet", "acme", key=PII_OPTION, value=None)],
        [event("KeyDeleted", "acme", public_key=key(2)), event("ProjectDeleted", "acme", project="api")],
        [event("OrgOptionUnset", "acme", key=TRUSTED_RELAYS)],
        [event("RelayRegistered", RELAY, relay_id="r-2", version="1.2"),
         event("OrgOptionSet", "beta", key=TRUSTED_RELAYS, value=trust)],
        # an import in parts, committed: folded at its commit
        [event("ImportStarted", "gamma", import_id="i-1", projects=2),
         event("ImportPart", "gamma", import_id="i-1", part=1, first=0, count=1, header=True),
         event("OrgCreated", "gamma", name="Gamma", id=7),
         event("OrgOptionSet", "gamma", key=TRUSTED_RELAYS, value=trust),
         event("ProjectCreated", "gamma", project="g1", name="g1", template=None, id=7),
         event("KeyCreated", "gamma", project="g1", public_key=key(5), rate_limit=None, numeric_id=7)],
        [event("ImportPart", "gamma", import_id="i-1", part=2, first=1, count=1, header=False),
         event("ProjectCreated", "gamma", project="g2", name="g2", template=None, id=8),
         event("KeyCreated", "gamma", project="g2", public_key=key(6), rate_limit=None, numeric_id=8),
         event("ImportCommitted", "gamma", import_id="i-1", parts=2)],
        # one still pending: nothing of it folded (and it is in a snapshot), its key's claim held
        [event("KeysClaimed", "keys", org="delta", org_version=0, public_keys=[key(7)])],
        [event("ImportStarted", "delta", import_id="i-2", projects=2),
         event("ImportPart", "delta", import_id="i-2", part=1, first=0, count=1, header=True),
         event("OrgCreated", "delta", name="Delta", id=9),
         event("ProjectCreated", "delta", project="d1", name="d1", template=None, id=9),
         event("KeyCreated", "delta", project="d1", public_key=key(7), rate_limit=None, numeric_id=9)],
    ]


def fold(projection: Projection) -> tuple[DomainState, list[Changes]]:
    state = DomainState(projection)
    changes = [state.apply(sequence, commit) for sequence, commit in enumerate(stream(), 1)]
    return state, changes


ALL_KEYS = [key(n) for n in range(1, 8)]


def key_lookup_answers(state: DomainState) -> Any:
    return keys_lookup(state, ALL_KEYS), QUERY_ANSWERS["keys.lookup"](state, {"public_keys": ALL_KEYS})


def org_access_answers(state: DomainState) -> Any:
    access = {relay: org_has_access(state, {"relay_public_key": relay, "org_ids": [1, 2, 3]})
              for relay in (RELAY, OTHER_RELAY)}
    auth = {relay: relay_auth(state, state.relays.get(relay)) for relay in (RELAY, OTHER_RELAY)}
    by_id = {relay_id: relay_auth(state, state.relay_by_id(relay_id), relay_id) for relay_id in ("r-1", "r-2", "x")}
    return access, auth, by_id


def config_answers(state: DomainState) -> Any:
    out = {}
    for public_key, found in state.keys.items():
        project = state.projects[found.project_id]
        org = state.orgs[project.org_id]
        out[public_key] = build_project_config(org, project, found, now=NOW, project_keys=state.keys_of(project.id))
    return out


def user_answers(state: DomainState) -> Any:
    return {name: sorted(u.token_hashes) for name, u in state.users.items()}


def org_and_project_answers(state: DomainState) -> Any:
    """What the AI and forwarder actors read: orgs and projects with their options."""
    return ({slug: repr(state.org(slug)) for slug in state.org_by_slug},
            {(o, p): repr(state.project(o, p)) for o in ("acme", "beta") for p in ("web", "api", "app")},
            {i: repr(p) for i, p in state.projects.items()})


ACTORS: list[tuple[type[ProjectionActor], Any, Any]] = [
    (AISuggestionActor, org_and_project_answers, lambda c: None),
    (ForwarderActor, org_and_project_answers, lambda c: None),
    (KeyLookupActor, lambda s: (key_lookup_answers(s), user_answers(s)), lambda c: None),
    (OrgAccessActor, org_access_answers, lambda c: c.relays),
    (ConfigActor, config_answers, lambda c: c.public_keys),
]


@pytest.mark.parametrize(("actor", "answers", "changed"), ACTORS, ids=lambda a: getattr(a, "name", ""))
def test_a_restricted_projection_answers_as_the_whole_state(actor: Any, answers: Any, changed: Any) -> None:
    full, full_changes = fold(EVERYTHING)
    restricted, restricted_changes = fold(actor.projection)
    assert not actor.projection.is_full
    assert answers(restricted) == answers(full)
    # ... and tells its actor what changed, commit by commit, as the whole state would
    assert [changed(c) for c in restricted_changes] == [changed(c) for c in full_changes]
    # ... and so does one loaded from the snapshot the command actor writes
    loaded = DomainState.from_snapshot(full.to_snapshot(), actor.projection)
    assert answers(loaded) == answers(full)
    assert loaded.sequence == full.sequence and loaded.next_ids == full.next_ids


def test_the_key_lookup_holds_only_keys_projects_orgs_and_users() -> None:
    state, _ = fold(KeyLookupActor.projection)
    assert state.keys and state.projects and state.users
    assert not state.relays and not state.key_claims and not state.aggregate_sequence
    assert all(not p.options for p in state.projects.values())
    assert all(not o.options and not o.templates for o in state.orgs.values())
    assert KeyLookupActor.projection.parts == {KEYS, PROJECTS, ORGS, USERS, "ids"}


def test_org_access_holds_no_project_key_or_user() -> None:
    state, _ = fold(OrgAccessActor.projection)
    assert not state.projects and not state.keys and not state.users and not state.key_claims
    assert state.relays and state.orgs
    assert RELAYS in OrgAccessActor.projection.parts


def test_the_config_builder_holds_no_relay_user_claim_or_version() -> None:
    state, _ = fold(ConfigActor.projection)
    assert not state.relays and not state.users and not state.key_claims and not state.aggregate_sequence


def test_the_command_actor_folds_everything_with_versions() -> None:
    assert CommandActor.projection is EVERYTHING
    state, _ = fold(EVERYTHING)
    assert state.aggregate_sequence and state.key_claims and state.relays and state.users
    # the claims of keys created are dropped; the pending import's is held
    assert list(state.key_claims) == [key(7)]


def test_only_the_whole_state_can_be_a_snapshot() -> None:
    state, _ = fold(ConfigActor.projection)
    with pytest.raises(ValueError, match="would lack the other parts"):
        state.to_snapshot()


def test_every_fold_handler_belongs_to_a_part() -> None:
    handlers = {name[len("_on_"):] for name, _ in inspect.getmembers(DomainState, inspect.isfunction)
                if name.startswith("_on_")}
    assert handlers == set(EVENT_PARTS), "a new event type must say which part of the state it changes"


def test_a_projection_adds_the_parts_its_parts_refer_to() -> None:
    assert Projection("p", {KEYS}).parts == {KEYS, PROJECTS, ORGS, "ids"}
    assert Projection("r", {RELAYS}).parts == {RELAYS}
    with pytest.raises(ValueError, match="unknown parts"):
        Projection("x", {"widgets"})


@pytest.mark.parametrize("projection", [EVERYTHING, KeyLookupActor.projection, OrgAccessActor.projection,
                                        ConfigActor.projection], ids=lambda p: p.name)
def test_every_projection_folds_an_import_in_parts_only_when_committed(projection: Projection) -> None:
    state, changes = fold(projection)
    assert changes[-4].public_keys == set() and changes[-1].public_keys == set()  # a part, the pending one
    if projection.holds(KEYS):
        assert {key(5), key(6)} <= set(state.keys) and key(7) not in state.keys
        assert changes[-3].public_keys >= {key(5), key(6)}  # the commit
    assert state.org("gamma") is not None and state.org("delta") is None
    assert set(state.imports) == {"delta"}
    restored = DomainState.from_snapshot(fold(EVERYTHING)[0].to_snapshot(), projection)
    assert [e.type for e in restored.imports["delta"].events] == [
        e for e in ("OrgCreated", "ProjectCreated", "KeyCreated") if projection.is_full or e in projection.events]
