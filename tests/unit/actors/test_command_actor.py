"""The command actor over the in-memory bus: commands in, events stored, replies out."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from actors.commands import CommandActor
from actors.lookup import OrgAccessActor
from bus.service import ActorService, Call
from bus.testing import ActorHarness
from messages.endpoints import endpoint_for
from messages.errors import BadRequest, Conflict, NotFound, RelayctlError
from tests.unit.actors.conftest import ORG, PROJECT, RELAY


def test_commands_store_events_and_queries_see_them(harness: ActorHarness) -> None:
    harness.start(CommandActor)
    assert harness.ask("org.create", {"slug": ORG, "name": "Acme"})["slug"] == ORG
    harness.ask("project.create", {"org": ORG, "project": PROJECT})
    key = harness.ask("key.create", {"org": ORG, "project": PROJECT})["publicKey"]
    assert key in [k["publicKey"] for k in harness.ask("key.list", {"org": ORG, "project": PROJECT})["keys"]]
    stored = [e.type for _, commit in harness.runtime.call(harness.store.read()) for e in commit]
    assert {"OrgCreated", "ProjectCreated", "KeyCreated"} <= set(stored)


def test_errors_come_back_as_wire_errors(harness: ActorHarness) -> None:
    harness.start(CommandActor)
    harness.ask("org.create", {"slug": ORG})
    with pytest.raises(Conflict, match="already exists"):
        harness.ask("org.create", {"slug": ORG})
    with pytest.raises(NotFound, match="No organization matching `nope`"):
        harness.ask("project.create", {"org": "nope", "project": PROJECT})


def test_a_change_already_in_effect_stores_nothing(harness: ActorHarness) -> None:
    harness.start(CommandActor)
    harness.ask("org.create", {"slug": ORG})
    harness.ask("project.create", {"org": ORG, "project": PROJECT})
    option = {"org": ORG, "project": PROJECT, "key": "sentry:scrub_data", "value": False}
    harness.ask("project.option_set", option)
    before = harness.runtime.call(harness.store.last_sequence())
    harness.ask("project.option_set", option)
    assert harness.runtime.call(harness.store.last_sequence()) == before


def test_relay_access_replies_once_org_access_applied_it(harness: ActorHarness) -> None:
    harness.start(CommandActor)
    orgs = harness.start(OrgAccessActor, harness.cache)
    harness.ask("relay.allow", {"public_key": RELAY, "internal": True})
    # By the reply, the org access actor has folded the change.
    assert orgs.proxy().state.get().relays[RELAY].internal is True


class HeldService:
    """Stands in for the org access actor: holds every call until released."""

    def __init__(self) -> None:
        self.calls: queue.Queue[Call] = queue.Queue()

    def tell(self, call: Any) -> None:
        self.calls.put(call)


def test_the_command_actor_serves_others_while_a_relay_access_change_waits(harness: ActorHarness) -> None:
    """No actor blocks on another actor's reply: while org access has not answered, the
    command actor goes on; the held command replies once org access does."""
    harness.start(CommandActor)
    held = HeldService()
    subject = endpoint_for("org.relay_auth").subject
    harness.runtime.call(harness.bus.serve(ActorService("orgs", held, {subject: _schemas(subject)})))
    waiting = harness.send("relay.allow", {"public_key": RELAY, "internal": False})
    call = held.calls.get(timeout=5)  # the command is stored and waits for org access
    assert harness.ask("org.create", {"slug": ORG})["slug"] == ORG
    assert not waiting.done()
    call.reply({"byId": None, "byKey": None})
    assert waiting.result(timeout=5) is None


def _schemas(subject: str) -> Any:
    from messages.endpoints import served_by

    return served_by("orgs")[subject]


def test_a_bug_in_a_validator_is_an_internal_error_not_a_bad_request(harness: ActorHarness,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the catalogue's InvalidOption is the caller's fault; any other ValueError is ours."""
    from domain import options

    def broken(scope: str, key: str, value: Any) -> Any:
        raise ValueError("a bug")

    harness.start(CommandActor)
    harness.ask("org.create", {"slug": ORG})
    harness.ask("project.create", {"org": ORG, "project": PROJECT})
    option = {"org": ORG, "project": PROJECT, "key": "sentry:scrub_data", "value": "nope"}
    with pytest.raises(BadRequest, match="sentry:scrub_data") as refused:
        harness.ask("project.option_set", option)
    assert refused.value.details == {"key": "sentry:scrub_data"}
    monkeypatch.setattr(options, "validate_option", broken)
    with pytest.raises(RelayctlError) as failed:
        harness.ask("project.option_set", option)
    assert failed.value.code == "internal" and "ValueError" in failed.value.message


def test_a_management_api_write_is_decided_for_the_user_of_the_token_it_carries(harness: ActorHarness) -> None:
    """On `rc.api.*` the command actor checks the request's token on its own state: the
    token's user is the events' actor whatever the envelope names; a member without the
    scope, a stranger to the org and a bad token are refused and nothing is stored."""
    from domain.access import user_token
    from domain.decisions import token_hash
    from messages.endpoints import api_subject
    from messages.errors import Forbidden, Unauthorized

    tokens = {name: user_token(f"secret-{name}") for name in ("ann", "bob", "eve")}
    harness.given("OrgCreated", ORG, name="Acme", id=1)
    harness.given("ProjectCreated", ORG, project=PROJECT, id=10)
    for name, token in tokens.items():
        harness.given("UserCreated", name, email=None, superuser=False)
        digest = token_hash(token)
        harness.given("TokenCreated", name, token_hash=digest, id=digest[:12], scopes=None, org=None, name=None)
    harness.given("MemberAdded", ORG, username="ann", role="admin")
    harness.given("MemberAdded", ORG, username="bob", role="member")
    harness.start(CommandActor)
    subject = api_subject("project.delete")
    payload = {"org": ORG, "project": PROJECT}
    before = harness.runtime.call(harness.store.last_sequence())
    for token, error in ((tokens["bob"], Forbidden), (tokens["eve"], NotFound), ("sntryu_" + "0" * 64, Unauthorized)):
        with pytest.raises(error):
            harness.ask("project.delete", {**payload, "token": token}, subject=subject, actor="user:ann")
    with pytest.raises(BadRequest, match="token"):
        harness.ask("project.delete", payload, subject=subject, actor="user:ann")
    assert harness.runtime.call(harness.store.last_sequence()) == before
    harness.ask("project.delete", {**payload, "token": tokens["ann"]}, subject=subject, actor="user:eve")
    (_, commit), = [c for c in harness.runtime.call(harness.store.read()) if c[0] > before]
    assert [(e.type, e.actor) for e in commit] == [("ProjectDeleted", "user:ann")]
    assert "secret" not in repr(commit) and tokens["ann"] not in repr(commit)


def test_an_import_over_the_commit_limit_is_stored_in_parts_each_within_it() -> None:
    """The command actor splits an org whose events exceed one commit into part commits
    within the store's limit, after claiming its ids and keys, and replies once the org is
    folded whole (its claims too are split to fit)."""
    from bus.eventstore import InMemoryEventStore

    store = InMemoryEventStore(max_commit_bytes=8 * 1024)
    with ActorHarness(store=store) as h:
        h.start(CommandActor)
        keys = [f"{i:032x}" for i in range(1, 301)]
        spec = {"slug": ORG, "projects": [{"slug": f"p{i}", "keys": [{"publicKey": keys[i]}]} for i in range(300)]}
        reply = h.ask("import.org", {"org": spec, "part": {"id": "imp-1", "first": 0, "projects": 300, "last": True}})
        assert (reply["projects"], reply["keys"]) == (300, 300)
        assert reply["import"] == {"id": "imp-1", "resumed": False, "committed": True, "projects_staged": None,
                                   "abandoned": None}
        messages = [h.runtime.call(store.message(s)) for s in range(1, h.runtime.call(store.last_sequence()) + 1)]
        assert all(m is not None and len(m.data) <= 8 * 1024 for m in messages)
        kinds = [m.subject.split(".")[2] + "." + m.subject.rsplit(".", 1)[-1] for m in messages if m is not None]
        assert kinds.count("claims.KeysClaimed") > 1  # 300 keys do not fit in one claim either
        assert kinds.count("org.ImportPart") > 5 and "org.ImportStarted" in kinds
        listed = h.ask("key.list", {"org": ORG, "project": "p299"})["keys"]
        assert [k["publicKey"] for k in listed] == [keys[299]]
        # the same again: nothing differs, nothing is stored
        before = h.runtime.call(store.last_sequence())
        again = h.ask("import.org", {"org": spec, "part": {"id": "imp-1", "first": 0, "projects": 300, "last": True}})
        assert again["events"] == 0 and h.runtime.call(store.last_sequence()) == before


# -- a decision kept while its key claims are stored ------------------------------------------------

class HeldFolds:
    """An in-memory store whose commits reach the actors only when released (in order): a
    command can be stored while the one before it still waits to be folded."""

    def __init__(self) -> None:
        from bus.eventstore import InMemoryEventStore

        class Store(InMemoryEventStore):
            async def follow(inner, callback: Any, from_sequence: int = 1, subject: str = "rc.ev.>") -> Any:  # noqa: N805
                async def gated(sequence: int, events: Any) -> None:
                    if self.holding:
                        self.held.append((callback, sequence, events))
                        return
                    result = callback(sequence, events)
                    if result is not None:
                        await result
                return await InMemoryEventStore.follow(inner, gated, from_sequence, subject)

        self.store = Store()
        self.holding = False
        self.held: list[Any] = []

    async def release(self) -> None:
        self.holding = False
        for callback, sequence, events in self.held:
            result = callback(sequence, events)
            if result is not None:
                await result
        self.held.clear()


def stored_events(h: ActorHarness, since: int) -> list[Any]:
    return [e for s, commit in h.runtime.call(h.store.read()) if s > since for e in commit]


def claim_held(h: ActorHarness, held: HeldFolds, spec: dict[str, Any]) -> tuple[Any, int]:
    """Send an import naming a key and wait until its claim is stored (not yet folded)."""
    from tests.waiting import wait_for

    before = h.runtime.call(h.store.last_sequence())
    held.holding = True
    reply = h.send("import.org", {"org": spec})
    wait_for(lambda: any(e.type == "KeysClaimed" for e in stored_events(h, before)))
    return reply, h.runtime.call(h.store.last_sequence())


def test_an_import_whose_ids_went_to_another_command_meanwhile_is_decided_again() -> None:
    """While an import's key claim waits to be folded, another command takes ids from the
    handler's pool: the import, decided before, held the same ids; it is decided again, so
    no two projects (or keys) get one id."""
    held = HeldFolds()
    with ActorHarness(store=held.store) as h:
        h.given("OrgCreated", ORG, name="Acme", id=1)
        h.given("OrgCreated", "beta", name="Beta", id=2)
        h.start(CommandActor)
        h.ask("project.create", {"org": "beta", "project": "first"})  # the handler now holds a block of ids
        before = h.runtime.call(h.store.last_sequence())
        spec = {"slug": ORG, "projects": [{"slug": "p0", "keys": [{"publicKey": "c" * 32}]}]}
        imported, claimed = claim_held(h, held, spec)
        other = h.send("project.create", {"org": "beta", "project": "second"})
        from tests.waiting import wait_for
        wait_for(lambda: h.runtime.call(h.store.last_sequence()) > claimed)  # stored, not folded
        h.runtime.call(held.release())
        assert imported.result(timeout=5)["projects"] == 1 and other.result(timeout=5)["slug"] == "second"
        created = [e.payload for e in stored_events(h, before) if e.type in ("ProjectCreated", "KeyCreated")]
        project_ids = [p["id"] for p in created if "id" in p]
        key_ids = [p["numeric_id"] for p in created if "numeric_id" in p]
        assert len(project_ids) == 2 and len(set(project_ids)) == 2
        assert len(key_ids) == 2 and len(set(key_ids)) == 2


def test_an_import_whose_org_changed_meanwhile_is_decided_again() -> None:
    """Another handler changes the org (it sets the option the import sets) after the import
    was decided and just before its key claim is stored: once both are folded, the import is
    decided again on the org as it is then, and stores only what still differs."""
    from bus.eventstore import InMemoryEventStore
    from messages.events import DomainEvent

    class SlipIn(InMemoryEventStore):
        """Stores `slip` (as another handler would) just before the first key claim."""
        slip: list[DomainEvent] | None = None

        async def append(self, events: list[DomainEvent], expected_sequence: int | None) -> int:
            if self.slip is not None and events[0].type == "KeysClaimed":
                slip, self.slip = self.slip, None
                await super().append(slip, None)
            return await super().append(events, expected_sequence)

    store = SlipIn()
    with ActorHarness(store=store) as h:
        h.given("OrgCreated", ORG, name="Acme", id=1)
        h.given("ProjectCreated", ORG, project="p0", id=10)
        h.given("OrgCreated", "beta", name="Beta", id=2)
        h.start(CommandActor)
        h.ask("project.create", {"org": "beta", "project": "first"})  # the handler now holds a block of ids
        before = h.runtime.call(h.store.last_sequence())
        store.slip = [DomainEvent("ProjectOptionSet", ORG, {"project": "p0", "key": "sentry:scrub_data",
                                                            "value": False})]
        spec = {"slug": ORG, "projects": [{"slug": "p0", "options": {"sentry:scrub_data": False},
                                           "keys": [{"publicKey": "c" * 32}]}]}
        assert h.ask("import.org", {"org": spec})["keys"] == 1
        stored = [(e.type, e.actor) for e in stored_events(h, before) if e.type not in ("IdsClaimed", "KeysClaimed")]
        # (its key claimed again too: the first claim was made for the org as it was before)
        assert stored == [("ProjectOptionSet", "system"), ("KeyCreated", "test")]
