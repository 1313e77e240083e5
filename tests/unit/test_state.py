"""The domain projection: folding events, what each fold reports as changed, snapshots."""

from __future__ import annotations

import copy
import json

import msgpack

from domain.model import DELETED, DISABLED
from domain.state import DomainState
from messages.events import DomainEvent, UndecodableCommit, event_subject

KEY_A = "a" * 32
KEY_B = "b" * 32
KEY_C = "c" * 32
RELAY = "r" * 43
OTHER_RELAY = "s" * 43


def ev(type_: str, aggregate_id: str, **payload: object) -> DomainEvent:
    return DomainEvent(type_, aggregate_id, dict(payload), actor="test", ts=1000.0)


def history() -> list[list[DomainEvent]]:
    """Commits covering every event type, as commands would make them."""
    return [
        [ev("OrgCreated", "acme", name="Acme")],
        [ev("OrgOptionSet", "acme", key="sentry:trusted-relays",
            value=[{"public_key": RELAY, "name": "edge"}])],
        [ev("ProjectTemplateSet", "acme", template="base", options={"sentry:origins": ["a.com"]})],
        [ev("ProjectCreated", "acme", project="web", name="Web", template="base"),
         ev("KeyCreated", "acme", project="web", public_key=KEY_A, rate_limit=None)],
        [ev("ProjectOptionSet", "acme", project="web", key="sentry:scrub_data", value=False)],
        [ev("KeyCreated", "acme", project="web", public_key=KEY_B, rate_limit={"window": 60, "count": 5})],
        [ev("KeyDisabled", "acme", public_key=KEY_B)],
        [ev("ProjectCreated", "acme", project="old", name="Old", template=None),
         ev("KeyCreated", "acme", project="old", public_key=KEY_C, rate_limit=None)],
        [ev("ProjectDeleted", "acme", project="old")],
        [ev("OrgCreated", "beta", name="Beta")],
        [ev("OrgOptionSet", "beta", key="ai:policy", value="denied")],
        [ev("OrgOptionUnset", "beta", key="ai:policy")],
        [ev("RelayAllowed", RELAY, internal=True)],
        [ev("RelayRegistered", RELAY, relay_id="relay-1", version="24.11.0")],
        [ev("RelaySeen", RELAY, version="24.12.0")],
        [ev("RelayDenied", OTHER_RELAY)],
        [ev("UserCreated", "ann", email="ann@example.com", superuser=False)],
        [ev("TokenCreated", "ann", token_hash="f" * 64)],
        [ev("PermissionAdded", "ann", permission="relay.admin")],
        [ev("PermissionAdded", "ann", permission="broadcasts.admin")],
        [ev("PermissionRemoved", "ann", permission="broadcasts.admin")],
    ]


def fold(commits: list[list[DomainEvent]], state: DomainState | None = None, start: int = 1) -> DomainState:
    state = state or DomainState()
    for offset, events in enumerate(commits):
        state.apply(start + offset, events)
    return state


def test_folding_builds_orgs_projects_keys_relays_and_users() -> None:
    """Every event type lands where the queries look for it."""
    state = fold(history())
    acme = state.org("acme")
    assert acme is not None and acme.name == "Acme" and acme.templates == {"base": {"sentry:origins": ["a.com"]}}
    web = state.project("acme", "web")
    assert web is not None and web.options == {"sentry:scrub_data": False} and web.template == "base"
    assert [k.public_key for k in state.keys_of(web.id)] == [KEY_A, KEY_B]
    assert state.keys[KEY_B].status == DISABLED and state.keys[KEY_B].rate_limit == {"window": 60, "count": 5}
    assert state.project("acme", "old") is None  # deleted: the slug is free again
    assert state.keys[KEY_C].project_id in state.projects
    assert state.projects[state.keys[KEY_C].project_id].status == DELETED
    assert state.org("beta") is not None and state.org("beta").options == {}  # type: ignore[union-attr]
    relay = state.relay_by_id("relay-1")
    assert relay is not None and relay.internal and relay.version == "24.12.0"
    assert state.relays[OTHER_RELAY].banned
    assert state.users["ann"].permissions == {"relay.admin"}
    assert state.trusted_by_any_org(RELAY) and not state.trusted_by_any_org(OTHER_RELAY)
    assert state.sequence == len(history())


def test_integer_ids_follow_fold_order() -> None:
    """Org, project and key ids are handed out in fold order, the same on every replay."""
    first, second = fold(history()), fold(history())
    assert [o.id for o in first.orgs.values()] == [1, 2]
    assert [state.keys[KEY_A].numeric_id for state in (first, second)] == [1, 1]
    assert first.keys[KEY_C].numeric_id == 3
    assert first.to_snapshot() == second.to_snapshot()


def test_a_redelivered_commit_is_not_folded_twice() -> None:
    """Applying a sequence at or below the folded one changes nothing."""
    state = fold(history())
    before = state.to_snapshot()
    changes = state.apply(4, [ev("KeyCreated", "acme", project="web", public_key="d" * 32, rate_limit=None)])
    assert not changes.public_keys and state.to_snapshot() == before


def test_changes_name_the_keys_and_relays_a_commit_affects() -> None:
    """An org option touches every key of the org; trusting a relay touches that relay."""
    state = fold(history()[:8])
    changes = state.apply(100, [ev("OrgOptionSet", "acme", key="sentry:trusted-relays",
                                   value=[{"public_key": OTHER_RELAY, "name": "x"}])])
    assert changes.public_keys == {KEY_A, KEY_B, KEY_C}
    assert changes.relays == {RELAY, OTHER_RELAY}  # one lost trust, one gained it
    changes = state.apply(101, [ev("ProjectOptionSet", "acme", project="web", key="sentry:origins", value=[])])
    assert changes.public_keys == {KEY_A, KEY_B}
    changes = state.apply(102, [ev("KeyDeleted", "acme", public_key=KEY_A)])
    assert changes.public_keys == {KEY_A} and KEY_A not in state.keys


def test_events_of_unknown_orgs_or_projects_are_ignored() -> None:
    """An event for an org or project the state does not know is skipped, not a crash."""
    state = DomainState()
    state.apply(1, [ev("ProjectCreated", "ghost", project="p", name="p", template=None)])
    state.apply(2, [ev("KeyDisabled", "ghost", public_key=KEY_A)])
    state.apply(3, [ev("TokenCreated", "nobody", token_hash="x")])
    assert state.sequence == 3 and not state.projects and not state.users


def test_the_aggregate_version_is_its_last_commit() -> None:
    """`aggregate_version` is the sequence of the aggregate's last commit (0 when unknown)."""
    state = fold(history())
    assert state.aggregate_version("org", "acme") == 9
    assert state.aggregate_version("org", "beta") == 12
    assert state.aggregate_version("user", "ann") == 21
    assert state.aggregate_version("org", "nobody") == 0


def test_a_snapshot_round_trips() -> None:
    """`from_snapshot(to_snapshot())` restores the same state, indexes included."""
    state = fold(history())
    restored = DomainState.from_snapshot(state.to_snapshot())
    assert restored.to_snapshot() == state.to_snapshot()
    assert restored.project("acme", "web").id == state.project("acme", "web").id  # type: ignore[union-attr]
    assert restored.project("acme", "old") is None
    assert restored.relay_by_id("relay-1") is not None
    assert [k.public_key for k in restored.keys_of(state.project("acme", "web").id)] == [KEY_A, KEY_B]  # type: ignore[union-attr]


def test_a_snapshot_survives_serialization() -> None:
    """A snapshot is plain data: it survives msgpack and JSON unchanged."""
    snapshot = fold(history()).to_snapshot()
    via_msgpack = msgpack.unpackb(msgpack.packb(snapshot), strict_map_key=False)
    via_json = json.loads(json.dumps(snapshot))
    for data in (via_msgpack, via_json):
        assert DomainState.from_snapshot(data).to_snapshot() == snapshot


def test_a_restored_state_folds_on_exactly_like_the_original() -> None:
    """Events after a snapshot fold the same way (ids continue) as on the never-snapshotted state."""
    commits = history()
    more = [[ev("ProjectCreated", "beta", project="api", name="API", template=None),
             ev("KeyCreated", "beta", project="api", public_key="e" * 32, rate_limit=None)],
            [ev("ProjectCreated", "acme", project="old", name="Old again", template=None)]]
    full = fold(commits + more)
    restored = fold(more, DomainState.from_snapshot(fold(commits).to_snapshot()), start=len(commits) + 1)
    assert restored.to_snapshot() == full.to_snapshot()
    assert restored.keys["e" * 32].numeric_id == 4


def test_a_snapshot_is_not_changed_by_later_folds() -> None:
    """A snapshot taken now still describes now after more events are folded."""
    state = fold(history())
    snapshot = state.to_snapshot()
    frozen = copy.deepcopy(snapshot)
    state.apply(50, [ev("OrgCreated", "gamma", name="G"),
                     ev("ProjectCreated", "gamma", project="p", name="p", template=None),
                     ev("KeyCreated", "gamma", project="p", public_key="9" * 32, rate_limit=None)])
    state.apply(51, [ev("PermissionAdded", "ann", permission="more")])
    assert snapshot == frozen


def test_a_snapshot_of_another_format_is_refused() -> None:
    """Restoring a snapshot of an unknown format raises instead of guessing."""
    snapshot = fold(history()).to_snapshot()
    snapshot["format"] = 999
    try:
        DomainState.from_snapshot(snapshot)
    except ValueError:
        return
    raise AssertionError("a foreign snapshot format was accepted")


# -- ids stored in events, undecodable commits -------------------------------------------------

def project_with_ids(org: str, project: str, key: str, project_id: int, key_id: int) -> list[DomainEvent]:
    return [ev("ProjectCreated", org, project=project, name=project, template=None, id=project_id),
            ev("KeyCreated", org, project=project, public_key=key, rate_limit=None, numeric_id=key_id)]


def test_stored_ids_are_the_ids() -> None:
    """Org, project and key ids come from the events that create them, not from fold order."""
    state = fold([[ev("OrgCreated", "acme", name="Acme", id=7)], project_with_ids("acme", "web", KEY_A, 40, 900)])
    assert state.org("acme").id == 7  # type: ignore[union-attr]
    assert state.project("acme", "web").id == 40  # type: ignore[union-attr]
    assert state.keys[KEY_A].numeric_id == 900 and state.keys[KEY_A].project_id == 40


def test_a_lost_commit_changes_no_later_id() -> None:
    """Folding a stream with one commit missing (or unreadable) gives every other object the
    id it has in the whole stream: ids never shift."""
    commits = [[ev("OrgCreated", "acme", name="Acme", id=1)], project_with_ids("acme", "a", KEY_A, 1, 1),
               project_with_ids("acme", "b", KEY_B, 2, 2), project_with_ids("acme", "c", KEY_C, 3, 3)]
    whole = fold(commits)
    gap = DomainState()
    for sequence, events in enumerate(commits, start=1):
        gap.apply(sequence, UndecodableCommit(sequence, "rc.ev.org.acme.ProjectCreated", "broken")
                  if sequence == 2 else events)
    for slug in ("b", "c"):
        assert gap.project("acme", slug).id == whole.project("acme", slug).id  # type: ignore[union-attr]
    assert gap.keys[KEY_C].numeric_id == whole.keys[KEY_C].numeric_id == 3
    assert gap.project("acme", "a") is None


def test_legacy_events_without_ids_still_fold_in_order_and_never_collide() -> None:
    """Events stored before ids were (id None) get fold-order ids; the counter stays past every
    stored id and every claimed block, so neither can repeat one."""
    state = fold([[ev("OrgCreated", "old", name="Old", id=None)],
                  [ev("OrgCreated", "new", name="New", id=5)],
                  [ev("IdsClaimed", "org", first=6, count=50, owner="h1")],
                  [ev("OrgCreated", "later-legacy", name="L", id=None)]])
    assert [state.org(s).id for s in ("old", "new", "later-legacy")] == [1, 5, 56]  # type: ignore[union-attr]
    assert state.next_ids["org"] == 57


def test_a_duplicate_stored_id_is_replaced_the_same_way_on_every_replay() -> None:
    """An event carrying an id already taken (no handler decides that) gets the next free one."""
    commits = [[ev("OrgCreated", "acme", name="A", id=3)], [ev("OrgCreated", "beta", name="B", id=3)]]
    first, second = fold(commits), fold(commits)
    assert first.org("acme").id == 3 and first.org("beta").id == 4  # type: ignore[union-attr]
    assert first.to_snapshot() == second.to_snapshot()


def test_an_undecodable_commit_is_skipped_and_counts_for_its_aggregate() -> None:
    """A commit that does not decode is recorded, changes nothing else, and is its aggregate's
    last sequence: the next append's expectation matches what JetStream holds."""
    state = fold(history())
    before = state.to_snapshot()
    changes = state.apply(30, UndecodableCommit(30, "rc.ev.org.acme.OrgOptionSet", "BadMessage: not msgpack"))
    assert not changes.public_keys and not changes.relays
    assert state.sequence == 30 and state.aggregate_version("org", "acme") == 30
    assert state.skipped == [{"sequence": 30, "subject": "rc.ev.org.acme.OrgOptionSet",
                              "error": "BadMessage: not msgpack"}]
    after = state.to_snapshot()
    assert {k: v for k, v in after.items() if k not in ("sequence", "aggregates", "skipped")} == \
        {k: v for k, v in before.items() if k not in ("sequence", "aggregates", "skipped")}
    state.apply(31, UndecodableCommit(31, "rc.ev.garbage", "BadMessage: x"))  # no aggregate at all
    assert state.sequence == 31 and len(state.skipped) == 2


def test_an_undecodable_commit_of_an_escaped_id_counts_for_that_aggregate() -> None:
    """The aggregate of a skipped commit is read back from its (escaped) subject."""
    state = DomainState()
    state.apply(1, UndecodableCommit(1, event_subject("user", "ann.smith", "UserCreated"), "x"))
    assert state.aggregate_version("user", "ann.smith") == 1


def test_key_claims_and_skipped_commits_survive_a_snapshot() -> None:
    """What the command handlers need (claims) and what status shows (skipped) are in the snapshot."""
    state = fold(history())
    state.apply(40, [ev("KeysClaimed", "keys", org="acme", org_version=9, public_keys=["d" * 32])])
    state.apply(41, UndecodableCommit(41, "rc.ev.org.beta.OrgCreated", "bad"))
    restored = DomainState.from_snapshot(json.loads(json.dumps(state.to_snapshot())))
    assert restored.to_snapshot() == state.to_snapshot()
    assert restored.key_claims["d" * 32].org == "acme" and restored.key_claims["d" * 32].org_version == 9
    assert restored.skipped == state.skipped


def test_a_claim_is_dropped_once_its_org_creates_the_key() -> None:
    """A created key keeps other orgs from it by itself: its claim is dropped when its org's
    KeyCreated is folded (a million keys imported leave no million claims, in memory or in a
    snapshot), and a snapshot of before that restores without the used claims. Another org's
    claim of a key, and a claim of a key not created yet, stay."""
    state = fold(history())
    state.apply(40, [ev("KeysClaimed", "keys", org="acme", org_version=9, public_keys=["d" * 32, "e" * 32])])
    state.apply(41, [ev("KeysClaimed", "keys", org="beta", org_version=3, public_keys=["f" * 32])])
    old_snapshot = json.loads(json.dumps(state.to_snapshot()))
    state.apply(42, [ev("KeyCreated", "acme", project="web", public_key="d" * 32, rate_limit=None, numeric_id=90),
                     ev("KeyCreated", "acme", project="web", public_key="f" * 32, rate_limit=None, numeric_id=91)])
    assert "d" * 32 in state.keys and "f" * 32 in state.keys
    assert set(state.key_claims) == {"e" * 32, "f" * 32}
    assert [row[0] for row in state.to_snapshot()["key_claims"]] == ["e" * 32, "f" * 32]
    restored = DomainState.from_snapshot(old_snapshot)
    assert set(restored.key_claims) == {"d" * 32, "e" * 32, "f" * 32}  # none of them created then
    later = json.loads(json.dumps(state.to_snapshot()))
    later["key_claims"].append(["d" * 32, "acme", 9, 40])  # as a snapshot written before claims were dropped
    assert set(DomainState.from_snapshot(later).key_claims) == {"e" * 32}
