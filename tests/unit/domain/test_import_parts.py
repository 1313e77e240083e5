"""Imports in parts (domain/importer.py, domain/state.py): an org too large for one commit is
stored as part commits, each within a byte budget, staged by the fold and folded all at
once when committed; an interrupted one is resumed by its id (parts stored are skipped) or
abandoned; nothing else may change the org in between."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from domain.decider import Decider
from domain.decisions import IdDraw, IdPool
from domain.importer import ImportDecision
from domain.queries import export_orgs
from domain.state import DomainState
from messages.envelope import pack, unpack
from messages.errors import BadRequest, Conflict, NotFound
from messages.events import ID_KINDS, DomainEvent, encode_commit
from tests.unit.domain.gwt import NOW, acme_web, key

BUDGET = 1500  # bytes of events per part commit


def size(e: DomainEvent) -> int:
    return len(encode_commit([e]))


class Importer:
    """One state, and the commits of each decision folded into it as the command actor does."""

    def __init__(self, *given: DomainEvent) -> None:
        self.state = DomainState()
        self.sequence = 0
        self.keys = itertools.count(1)
        self.pool = IdPool()
        for kind in ID_KINDS:
            self.pool.add(kind, 1, 1000)
        for e in given:
            self.store([e])

    def decider(self) -> Decider:
        return Decider(self.state, "tester", IdDraw(self.pool), clock=lambda: NOW,
                       new_key=lambda: key(next(self.keys)))

    def store(self, events: list[DomainEvent]) -> Any:
        self.sequence += 1
        return self.state.apply(self.sequence, events)

    def piece(self, spec: dict[str, Any], import_id: str, first: int, total: int, last: bool,
              store: int | None = None, restart: bool = False) -> tuple[ImportDecision, list[list[DomainEvent]]]:
        """Decide one piece and store its first `store` part commits (all by default)."""
        decider = self.decider()
        decision = decider.decide("import.org", {"org": spec, "restart": restart,
                                                 "part": {"id": import_id, "first": first, "projects": total,
                                                          "last": last}})
        assert isinstance(decision, ImportDecision)
        commits = decision.commits(BUDGET, size)
        for events in commits[:store]:
            self.store(events)
        decider.ids.commit()
        return decision, commits


def org(n: int, first: int = 0, header: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"slug": "acme", "projects": [{"slug": f"p{i}", "keys": [{"publicKey": key(1000 + i)}]}
                                                         for i in range(first, first + n)]}
    if header:
        spec["name"] = "Acme"
        spec["options"] = {"sentry:require_scrub_ip_address": True}
    return spec


def test_import_in_parts_stages_every_part_and_folds_them_when_committed() -> None:
    imp = Importer()
    decision, commits = imp.piece(org(6), "imp-1", 0, 10, last=False)
    assert len(commits) > 1 and all(len(encode_commit(c)) <= BUDGET + 600 for c in commits)
    assert [e.type for e in commits[0][:3]] == ["ImportStarted", "ImportPart", "OrgCreated"]
    assert all(c[0].type == "ImportPart" for c in commits[1:])
    # nothing of the org is visible while it is pending
    assert imp.state.org("acme") is None and not imp.state.keys
    pending = imp.state.pending_import("acme")
    assert pending is not None and pending.decided() == 6 and pending.projects == 10
    assert decision.result(imp.state)["import"]["committed"] is False

    decision, commits = imp.piece(org(4, first=6, header=False), "imp-1", 6, 10, last=True)
    assert commits[-1][-1].type == "ImportCommitted"
    assert imp.state.pending_import("acme") is None
    found = imp.state.org("acme")
    assert found is not None and found.options == {"sentry:require_scrub_ip_address": True}
    assert sorted(imp.state.keys) == [key(1000 + i) for i in range(10)]
    assert [p.id for p in imp.state.projects.values()] == list(range(1, 11))  # file order
    assert decision.result(imp.state)["import"] == {"id": "imp-1", "resumed": True, "committed": True,
                                                   "projects_staged": None, "abandoned": None}


def test_the_commit_reports_every_key_as_changed_at_once() -> None:
    imp = Importer()
    _, commits = imp.piece(org(5), "imp-1", 0, 5, last=True, store=0)
    changes = [imp.store(c) for c in commits]
    assert all(not c.public_keys for c in changes[:-1])
    assert changes[-1].public_keys == {key(1000 + i) for i in range(5)}


def test_an_interrupted_import_is_resumed_by_its_id_skipping_the_parts_stored() -> None:
    imp = Importer()
    whole = org(8)
    _, commits = imp.piece(whole, "imp-1", 0, 8, last=True, store=2)  # stopped after two parts
    assert len(commits) > 2
    staged = imp.state.pending_import("acme")
    assert staged is not None and imp.state.org("acme") is None
    done = staged.decided()
    # the same file again: the projects decided are skipped, the rest stored, then committed
    decision, _ = imp.piece(whole, "imp-1", 0, 8, last=True)
    assert decision.session is not None and decision.session.resumed
    assert [u.index for u in decision.units] == list(range(done, 8))
    assert imp.state.pending_import("acme") is None
    assert sorted(imp.state.keys) == [key(1000 + i) for i in range(8)]
    assert len(imp.state.projects) == 8
    # and the stored import is the file: an export of it holds each project once
    assert [p["slug"] for p in export_orgs(imp.state)["orgs"][0]["projects"]] == [f"p{i}" for i in range(8)]


def test_a_resume_after_every_part_was_stored_only_commits() -> None:
    imp = Importer()
    _, commits = imp.piece(org(4), "imp-1", 0, 4, last=True)
    imp = Importer()
    for events in commits:
        imp.store([e for e in events if e.type != "ImportCommitted"])
    decision, again = imp.piece(org(4), "imp-1", 0, 4, last=True)
    assert [[e.type for e in c] for c in again] == [["ImportPart", "ImportCommitted"]]
    assert len(imp.state.keys) == 4


def test_an_import_of_another_id_is_refused_while_one_is_pending_unless_restarted() -> None:
    imp = Importer()
    imp.piece(org(6), "imp-1", 0, 6, last=True, store=1)
    refused = pytest.raises(Conflict, imp.piece, org(6), "imp-2", 0, 6, True)
    assert "unfinished import imp-1" in str(refused.value) and "--restart" in str(refused.value)
    decision, commits = imp.piece(org(6), "imp-2", 0, 6, last=True, restart=True)
    assert [e.type for e in commits[0][:2]] == ["ImportAbandoned", "ImportStarted"]
    assert decision.result(imp.state)["import"]["abandoned"] == "imp-1"
    assert imp.state.pending_import("acme") is None and len(imp.state.keys) == 6


def test_no_other_command_may_change_an_org_being_imported() -> None:
    imp = Importer(*acme_web())
    spec = {"slug": "acme", "projects": [{"slug": f"n{i}"} for i in range(6)]}
    imp.piece(spec, "imp-1", 0, 6, last=True, store=1)
    with pytest.raises(Conflict, match="is being imported"):
        imp.decider().decide("project.create", {"org": "acme", "project": "other", "name": None, "template": None})
    fresh = Importer()
    fresh.piece(org(6), "imp-1", 0, 6, last=True, store=1)  # a new org, not visible yet
    with pytest.raises(Conflict, match="is being imported"):
        fresh.decider().decide("org.create", {"slug": "acme", "name": None})


def test_a_change_between_parts_drops_the_import() -> None:
    """Only possible in the moment before another handler folded its start: its parts were
    decided on a state that no longer holds, so they are dropped, never folded."""
    imp = Importer(*acme_web())
    spec = {"slug": "acme", "projects": [{"slug": f"n{i}"} for i in range(6)]}
    imp.piece(spec, "imp-1", 0, 6, last=False, store=1)
    changes = imp.store([DomainEvent("ProjectCreated", "acme", {"project": "n0", "name": "n0", "template": None,
                                                                "id": 500})])
    assert imp.state.pending_import("acme") is None
    assert changes.problems[0]["event"] == "state.import_dropped"
    assert imp.state.project("acme", "n1") is None  # nothing staged was folded
    # a part of it stored after that stages nothing and folds nothing
    stale = DomainEvent("ImportPart", "acme", {"import_id": "imp-1", "part": 2, "first": 5, "count": 1,
                                               "header": False})
    created = DomainEvent("ProjectCreated", "acme", {"project": "n5", "name": "n5", "template": None, "id": 501})
    committed = DomainEvent("ImportCommitted", "acme", {"import_id": "imp-1", "parts": 2})
    assert imp.store([stale, created, committed]).problems[0]["event"] == "state.import_not_pending"
    assert imp.state.project("acme", "n5") is None


def test_a_later_piece_of_a_new_org_without_its_start_is_refused() -> None:
    with pytest.raises(BadRequest, match="from its start"):
        Importer().piece(org(2, first=4, header=False), "imp-1", 4, 6, last=True)


def test_duplicates_across_parts_are_refused_naming_the_file_path() -> None:
    imp = Importer()
    imp.piece(org(3), "imp-1", 0, 6, last=False)
    dup_project = {"slug": "acme", "projects": [{"slug": "p1"}]}
    with pytest.raises(BadRequest, match=r"acme.projects\[3\].slug: duplicate project `p1`"):
        imp.piece(dup_project, "imp-1", 3, 6, last=False)
    dup_key = {"slug": "acme", "projects": [{"slug": "q", "keys": [{"publicKey": key(1000)}]}]}
    with pytest.raises(BadRequest, match=r"acme.projects\[3\].keys\[0\].publicKey: duplicate key"):
        imp.piece(dup_key, "imp-1", 3, 6, last=False)


def test_a_key_staged_by_one_orgs_import_is_refused_to_another_org() -> None:
    imp = Importer()
    imp.piece(org(3), "imp-1", 0, 6, last=False)
    other = {"slug": "beta", "projects": [{"slug": "x", "keys": [{"publicKey": key(1001)}]}]}
    with pytest.raises(Conflict, match="being imported into organization `acme`"):
        imp.decider().decide("import.org", {"org": other})


def test_claims_of_an_org_with_a_pending_import_stay_live() -> None:
    imp = Importer()
    imp.store([DomainEvent("KeysClaimed", "keys", {"org": "acme", "org_version": 0, "public_keys": [key(1004)]})])
    imp.piece(org(3), "imp-1", 0, 6, last=False)  # acme moved past version 0, its import pending
    imp.store([DomainEvent("OrgCreated", "beta", {"name": "beta", "id": 900})])
    imp.store([DomainEvent("ProjectCreated", "beta", {"project": "x", "name": "x", "template": None, "id": 900})])
    decider = imp.decider()
    decision = decider.decide("key.create", {"org": "beta", "project": "x", "public_key": key(1004)})
    with pytest.raises(Conflict, match="claimed by organization `acme`"):
        decider.claims_for(decision)


def test_claims_are_split_by_max_keys() -> None:
    decider = Importer().decider()
    decision = decider.decide("import.org", {"org": org(5)})
    claim = decider.claims_for(decision, max_keys=2)
    assert claim is not None and claim.events[0].payload["public_keys"] == [key(1000), key(1001)]


def test_a_project_too_large_for_one_part_is_refused_naming_it() -> None:
    spec = {"slug": "acme", "projects": [{"slug": "big", "keys": [{"publicKey": key(i)} for i in range(20)]}]}
    with pytest.raises(BadRequest, match=r"acme.projects\[0\]: its events take"):
        Importer().piece(spec, "imp-1", 0, 1, last=True)


def test_a_pending_import_survives_a_snapshot() -> None:
    imp = Importer()
    _, commits = imp.piece(org(6), "imp-1", 0, 6, last=True, store=2)
    from bus.snapshots import StreamedSnapshot, pack_body

    restored = DomainState.from_snapshot(unpack(pack(imp.state.to_snapshot())))
    streamed = DomainState.from_snapshot(StreamedSnapshot(pack_body(imp.state.to_snapshot())), consume=True)
    for sequence, events in enumerate(commits[2:], start=imp.sequence + 1):
        restored.apply(sequence, events)
        streamed.apply(sequence, events)
        imp.state.apply(sequence, events)
    assert restored.pending_import("acme") is None and streamed.pending_import("acme") is None
    assert sorted(restored.keys) == sorted(streamed.keys) == sorted(imp.state.keys) == [
        key(1000 + i) for i in range(6)]
    # a snapshot of format 3 (before imports in parts) still loads
    old = {**imp.state.to_snapshot(), "format": 3}
    del old["imports"]
    assert DomainState.from_snapshot(old).imports == {}


def test_a_bad_part_is_refused() -> None:
    with pytest.raises(BadRequest, match="part: must be"):
        Importer().decider().decide("import.org", {"org": org(3), "part": {"id": "x", "first": 2, "projects": 3,
                                                                           "last": True}})


def test_the_events_as_folded_leave_out_staged_parts_until_committed() -> None:
    """What a key's config history shows (it reads the stream): an import's events at its
    commit's sequence, nothing of one abandoned, no framing events."""
    from domain.state import folded_events

    imp = Importer()
    _, dropped = imp.piece(org(3), "imp-1", 0, 3, last=True, store=1)
    _, kept = imp.piece(org(3), "imp-2", 0, 3, last=True, restart=True, store=0)
    commits = [(1, dropped[0]), *((n, c) for n, c in enumerate(kept, start=2))]
    folded = folded_events(commits)
    assert {sequence for sequence, _ in folded} == {len(kept) + 1}
    assert [e.type for _, e in folded if e.type == "KeyCreated"] == ["KeyCreated"] * 3
    assert all(e.id not in {x.id for x in dropped[0]} for _, e in folded)
    assert not [e for _, e in folded if e.type.startswith("Import")]
    plain = [DomainEvent("OrgCreated", "beta", {"name": "beta", "id": 9})]
    assert folded_events([(1, plain)]) == [(1, plain[0])]


def test_import_abandon_drops_the_unfinished_import_and_unlocks_the_org() -> None:
    imp = Importer()
    imp.piece(org(6), "imp-1", 0, 6, last=True, store=1)
    decision = imp.decider().decide("import.abandon", {"org": "acme", "import_id": None})
    assert [(e.type, e.payload["import_id"]) for e in decision.events] == [("ImportAbandoned", "imp-1")]
    imp.store(decision.events)
    assert decision.result(imp.state)["import_id"] == "imp-1"
    assert imp.state.pending_import("acme") is None and imp.state.org("acme") is None and not imp.state.keys
    imp.decider().decide("org.create", {"slug": "acme", "name": None})  # no longer locked


def test_import_abandon_of_no_or_another_import_is_refused() -> None:
    with pytest.raises(NotFound, match="has no unfinished import"):
        Importer().decider().decide("import.abandon", {"org": "acme", "import_id": None})
    imp = Importer()
    imp.piece(org(6), "imp-1", 0, 6, last=True, store=1)
    with pytest.raises(Conflict, match="is imp-1, not imp-2"):
        imp.decider().decide("import.abandon", {"org": "acme", "import_id": "imp-2"})
