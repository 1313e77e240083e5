"""The endpoint table (messages/endpoints.py) and what is derived from it: client routing,
each actor's endpoints, the CLI's retry policy and the NATS role permissions."""

from __future__ import annotations

from typing import Any

import pytest

from actors.worker import ACTOR_NAMES, _kinds
from bus.client import subject_for
from bus.embedded import NATS_ROLES
from bus.runtime import role_of
from messages.commands import CONTROL, QUERIES
from messages.endpoints import (
    ACTORS,
    API_WRITES,
    CAUGHT_UP,
    ENDPOINTS,
    LATEST,
    OPERATOR,
    ROLES,
    STORES,
    TOKEN_FIELD,
    TOPICS,
    api_subject,
    consistency,
    on_behalf,
    queries_of,
    retry_safe,
    served_by,
)
from messages.errors import BadRequest
from messages.subjects import inbox_prefix


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def may(role: str, action: str, subject: str) -> bool:
    return any(matches(allowed, subject) for allowed in NATS_ROLES[role][action]["allow"])


def rc_publishes(role: str) -> set[str]:
    return {s for s in NATS_ROLES[role]["publish"]["allow"] if s.startswith("rc.")}


# -- the table --------------------------------------------------------------------------------

def test_every_control_message_has_an_endpoint_of_its_own() -> None:
    """`<aggregate>.<command>` is served on rc.ctl.<aggregate>.<command> by the command
    handlers, and that subject accepts that one type."""
    control = {e.subject: e for e in ENDPOINTS if e.subject.startswith("rc.ctl.")}
    assert sorted(control) == sorted(f"rc.ctl.{t}" for t in CONTROL)
    for subject, endpoint in control.items():
        assert endpoint.types == (subject.removeprefix("rc.ctl."),)
        # the command handlers serve them all, but the token check of every AI request,
        # which is on the read side
        assert endpoint.actor == ("keys" if endpoint.types == ("user.authenticate",) else "commands")


def test_every_query_is_served_by_one_actor_and_no_subject_is_a_wildcard() -> None:
    """Each query type is on exactly one endpoint; endpoints are literal subjects."""
    served = [t for e in ENDPOINTS if not e.on_behalf for t in e.types]
    assert sorted(served) == sorted({*CONTROL, *QUERIES})
    assert not any("*" in e.subject or ">" in e.subject for e in ENDPOINTS)


def test_the_client_sends_each_type_to_its_endpoint() -> None:
    """bus.client routes by the table; a type nobody serves is a bad request, not a guess."""
    assert subject_for("relay.allow") == "rc.ctl.relay.allow"
    assert subject_for("org.relay_auth") == "rc.org.access"
    assert subject_for("config.history") == "rc.config.get"
    with pytest.raises(BadRequest, match="unknown message type 'relay.promote'"):
        subject_for("relay.promote")


def test_each_actor_serves_its_rows_of_the_table() -> None:
    """The worker's actors are the table's, each serving exactly its endpoints with their schemas."""
    kinds = _kinds()
    assert tuple(kinds) == ACTOR_NAMES == ACTORS
    for name, kind in kinds.items():
        assert kind.endpoints == served_by(name)
    assert served_by("orgs") == {"rc.org.access": {"org.has_access": QUERIES["org.has_access"],
                                                   "org.relay_auth": QUERIES["org.relay_auth"]}}


def test_queries_and_idempotent_commands_are_retried() -> None:
    """Reads are safe to send again, and the commands the table lists idempotent; no other change."""
    assert retry_safe("relay.list") and retry_safe("config.history") and retry_safe("keys.lookup")
    assert retry_safe("transport.flush") and retry_safe("relay.register")
    assert not retry_safe("relay.allow") and not retry_safe("import.org") and not retry_safe("events.store")
    assert not retry_safe("no.such_type")
    idempotent = {t for e in ENDPOINTS for t in e.idempotent}
    assert idempotent <= {t for e in ENDPOINTS for t in e.commands}


def test_every_query_declares_how_fresh_its_answer_is() -> None:
    """CAUGHT_UP or LATEST for each query, None for a command; config.get is caught up
    like config.history, the command handlers' queries too, but their status."""
    queries = {t for e in ENDPOINTS for t in e.queries}
    assert all(consistency(t) in (CAUGHT_UP, LATEST) for t in queries)
    assert consistency("org.create") is None and consistency("no.such_type") is None
    assert consistency("config.get") == consistency("config.history") == CAUGHT_UP
    assert consistency("keys.lookup") == LATEST and consistency("stream.status") == LATEST
    assert all(consistency(t) == CAUGHT_UP for t in queries_of("commands") - {"stream.status"})


# -- NATS role permissions --------------------------------------------------------------------

def test_a_role_may_call_exactly_the_endpoints_the_table_gives_it() -> None:
    """For every role and endpoint: it may publish the subject iff it is a caller, and
    subscribe to it iff it serves it."""
    for role in ROLES:
        for endpoint in ENDPOINTS:
            assert may(role, "publish", endpoint.subject) == endpoint.may_call(role), (role, endpoint.subject)
            serves = endpoint.actor == role or role == OPERATOR
            assert may(role, "subscribe", endpoint.subject) == serves, (role, endpoint.subject)


# What the management API (gateway/api/) sends: its reads on the control subjects, and the
# writes of orgs, members, teams, projects and keys on their own `rc.api.` subjects only,
# each carrying the user's token - never users, tokens nor relay access.
MANAGEMENT_API_WRITES = (
    "org.create", "org.update", "org.member_add", "org.member_remove",
    "project.create", "project.update", "project.option_set", "project.option_unset", "project.delete",
    "key.create", "key.update", "key.disable", "key.enable", "key.delete", "key.rate_limit", "team.create",
    "team.delete", "project.team_add", "project.team_remove", "org.trust_relay", "org.untrust_relay",
    "relay.allow", "relay.deny")
MANAGEMENT_API = {f"rc.ctl.{t}" for t in (
    "api.orgs", "api.org", "api.projects", "api.project", "api.keys", "api.key", "api.project_options",
    "org.member_list", "relay.list",
)} | {f"rc.api.{t}" for t in MANAGEMENT_API_WRITES}


def test_the_gateway_may_send_only_its_queries_and_two_control_messages() -> None:
    """The internet-facing gateway: relay.register and user.authenticate, the actor queries its
    endpoints ask, its metrics and error reports, the envelopes it appends to the ingest
    stream, and the management API's messages. Nothing else of rc.*, no consumer on any
    stream: it reads nothing back."""
    assert rc_publishes("gateway") == {
        "rc.ctl.relay.register", "rc.ctl.user.authenticate", "rc.keys.lookup", "rc.org.access", "rc.config.get",
        "rc.config.build", "rc.ai.suggest", "rc.metrics.query", "rc.metrics.record", "rc.transport.envelope",
        "rc.in.>", "rc.ingest.api"} | MANAGEMENT_API
    assert not rc_publishes("gateway") & {"rc.ctl.user.create", "rc.ctl.token.create", "rc.ctl.relay.allow",
                                          "rc.ctl.user.permission_add", "rc.ctl.import.org"}
    # none of the operator's writes: the gateway's credentials alone change nothing
    assert not {f"rc.ctl.{t}" for t in MANAGEMENT_API_WRITES} & rc_publishes("gateway")
    assert not may("gateway", "publish", "rc.ctl.org.trust_relay")
    # the forwarder's narrow reads only: not the endpoint that finds any event by its id
    assert may("gateway", "publish", "rc.ingest.api") and not may("gateway", "publish", "rc.ingest.query")
    assert not any(s.startswith("$JS.API.CONSUMER") for s in NATS_ROLES["gateway"]["publish"]["allow"])
    assert not any(s.startswith("$JS.API.STREAM.CREATE.RC_EVENTS") or "PURGE.RC_" in s
                   for s in NATS_ROLES["gateway"]["publish"]["allow"])
    assert set(NATS_ROLES["gateway"]["subscribe"]["allow"]) == {"_INBOX.gateway.>", "rc.relay.changed",
                                                               "rc.config.changed.*"}
    assert "allow_responses" not in NATS_ROLES["gateway"]  # it serves nothing


def test_the_management_api_writes_have_their_own_subjects_and_carry_a_token() -> None:
    """Each write of the API is the same command on `rc.api.<aggregate>.<command>`, served by
    the command handlers with the command's schema plus the user's token, and every one has
    a scope in domain/authorization.py (what the command handlers check)."""
    from domain.authorization import WRITE_SCOPES

    assert set(API_WRITES) == set(MANAGEMENT_API_WRITES) == set(WRITE_SCOPES)
    served = served_by("commands")
    for message_type in API_WRITES:
        subject = api_subject(message_type)
        assert subject == f"rc.api.{message_type}" and on_behalf(subject)
        assert served[subject] == {message_type: {**CONTROL[message_type], TOKEN_FIELD: served[subject][
            message_type][TOKEN_FIELD]}}
        assert served[subject][message_type][TOKEN_FIELD].required
        # the operator's own endpoint of the command is where the client sends the type
        assert subject_for(message_type) == f"rc.ctl.{message_type}" and not on_behalf(subject_for(message_type))
    with pytest.raises(KeyError):
        api_subject("user.create")  # users and tokens have no API endpoint
    assert not any(e.on_behalf for e in ENDPOINTS if e.subject.startswith("rc.ctl."))


def test_only_the_command_handlers_append_events_and_only_they_serve_control_subjects() -> None:
    for role in ROLES:
        allowed = role in (OPERATOR, "commands")
        assert may(role, "publish", "rc.ev.org.acme.OrgCreated") == allowed, role
        assert may(role, "subscribe", "rc.ctl.relay.allow") == allowed, role
    assert may("commands", "publish", "rc.org.access")  # it waits there for relay access changes
    assert not may("keys", "publish", "rc.org.access")


def test_each_role_reads_only_its_own_inboxes_and_answers_only_requests_it_received() -> None:
    """Every role but the operator subscribes to its own inbox prefix only and publishes to
    no inbox at all: a service answers through `allow_responses`, once per request (many
    times for the streamed AI suggestions), for a bounded time."""
    for role in ROLES:
        if role == OPERATOR:
            continue
        inboxes = [s for s in NATS_ROLES[role]["subscribe"]["allow"] if s.startswith("_INBOX")]
        assert inboxes == [f"_INBOX.{role}.>"], role
        assert not any(s.startswith("_INBOX") for s in NATS_ROLES[role]["publish"]["allow"]), role
        assert not may(role, "subscribe", f"{inbox_prefix(OPERATOR)}.x")
        responses = NATS_ROLES[role].get("allow_responses")
        if any(e.actor == role for e in ENDPOINTS):
            assert responses == {"max": -1 if role == "ai" else 1, "expires": "300s"}, role
            other = "keys" if role == "commands" else "commands"
            assert may(role, "subscribe", f"$SRV.PING.{role}") and not may(role, "subscribe", f"$SRV.PING.{other}")
        else:
            assert responses is None, role


def test_no_role_but_the_command_handlers_may_write_a_stream_and_point_its_deliveries_anywhere() -> None:
    """Creating a push consumer lets a role choose where JetStream delivers; with write access
    to the same store it could have any message it likes delivered to any subject. Only the
    command handlers (who may append events anyway) hold both."""
    for store in STORES:
        prefix = {"stream": "", "kv": "KV_", "object": "OBJ_"}[store.kind] + store.name
        for role in ROLES:
            if role in (OPERATOR, "commands"):
                continue
            consumes = may(role, "publish", f"$JS.API.CONSUMER.CREATE.{prefix}")
            writes = role in store.writers or (store.kind == "stream" and any(
                role in t.publishers for t in TOPICS if t.subject == "rc.ev.>"))
            assert not (consumes and writes), (role, store.name)


def test_only_a_writer_may_create_a_bucket() -> None:
    """Whoever creates a stream chooses its subjects (a stream on `_INBOX.>` would store every
    reply): a bucket is created by its writers only; a stream by its readers and writers (the
    event stream exists once any actor has started; the ingest stream once a gateway has)."""
    for store in STORES:
        name = {"stream": "", "kv": "KV_", "object": "OBJ_"}[store.kind] + store.name
        creators = {r for r in ROLES if may(r, "publish", f"$JS.API.STREAM.CREATE.{name}")}
        expected = set(store.readers) | set(store.writers) if store.kind == "stream" else set(store.writers)
        assert creators == expected | {OPERATOR}, store.name


def test_topics_are_published_and_followed_by_their_roles() -> None:
    """rc.relay.changed: the org access actor tells the gateways; metrics and error reports
    come from every process; ingested error events only from outside (the operator)."""
    assert {r for r in ROLES if may(r, "publish", "rc.relay.changed")} == {OPERATOR, "orgs"}
    assert {r for r in ROLES if may(r, "subscribe", "rc.relay.changed")} == {OPERATOR, "gateway"}
    assert all(may(r, "publish", "rc.metrics.record") for r in ROLES)
    assert {r for r in ROLES if may(r, "publish", "rc.events.ingest.7")} == {OPERATOR}
    assert {r for r in ROLES if may(r, "publish", "rc.config.changed." + "0" * 32)} == {OPERATOR, "configs"}
    # the gateway streams configs going live (GET /api/0/relayctl/config-changes/)
    assert {r for r in ROLES if may(r, "subscribe", "rc.config.changed.*")} == {OPERATOR, "gateway"}


# -- the role a process connects as -------------------------------------------------------------

@pytest.mark.parametrize(("url", "role"), [
    ("nats://gateway:secret@127.0.0.1:4222", "gateway"),
    ("nats://commands:pw@h1:4222,nats://commands:pw@h2:4222", "commands"),
    ("nats://127.0.0.1:4222", None),  # an external NATS without users
    ("nats://alice:pw@127.0.0.1:4222", None),  # a user that is not one of ours
    ("not a url", None),
])
def test_the_inbox_prefix_follows_the_role_in_the_url(url: str, role: str | None) -> None:
    assert role_of(url) == role
    assert inbox_prefix(role_of(url)) == (f"_INBOX.{role}" if role else "_INBOX")


def test_the_permissions_are_valid_nats_server_config() -> None:
    """Every permission list is non-empty and holds subjects only (no empty tokens)."""
    def subjects(permissions: dict[str, Any]) -> list[str]:
        return [*permissions["publish"]["allow"], *permissions["subscribe"]["allow"]]
    for role, permissions in NATS_ROLES.items():
        assert permissions["publish"]["allow"] and permissions["subscribe"]["allow"], role
        assert all(s and "" not in s.split(".") and " " not in s for s in subjects(permissions)), role


def test_the_architecture_document_holds_the_table_as_it_is() -> None:
    """docs/architecture.md shows the endpoint table; it is the table's own rendering."""
    from pathlib import Path

    from messages.endpoints import describe

    text = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    shown = text.split("<!-- endpoints:begin -->\n", 1)[1].split("<!-- endpoints:end -->", 1)[0]
    assert shown == describe(), "run `python -m messages.endpoints` and paste it into docs/architecture.md"
