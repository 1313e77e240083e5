"""NATS roles under `relayctl up`: every process connects as its role, the server refuses
what a role may not do, and the whole system still works with credentials.

The tests of this module share one system started with the real console script (its AI
actor pointed at a stub model) and run in file order: the system's own traffic first (no
permission violation at all), then the forbidden attempts.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from bus.client import request as bus_request
from bus.embedded import AUTH_CONFIG, CREDENTIALS_FILE, NATS_ROLES, role_url
from bus.eventstore import JetStreamEventStore
from bus.snapshots import SnapshotSigner, SnapshotStore
from bus.streaming import Chunk, Final, stream_request
from cli.services import ACTORS, SERVICES
from gateway.app import GATEWAY_BUCKET, registration_secret
from messages.envelope import Request
from messages.errors import BadRequest, DeadlineExceeded, Forbidden, NotFound, RelayctlError, Unauthorized
from messages.subjects import EVENT_STREAM, SNAPSHOT_BUCKET, inbox_prefix
from tests.ai_helpers import error_event, sse_text
from tests.openai_stub import OpenAIStub
from tests.system import RelayClient, RelayctlProcess, http_request

SUGGESTION = "Check that `rate` is set before you use it, then read it with a default."


class UpSystem(RelayctlProcess):

    @property
    def passwords(self) -> dict[str, str]:
        return json.loads((self.data_dir / CREDENTIALS_FILE).read_text())  # type: ignore[no-any-return]

    def url(self, role: str) -> str:
        return role_url(self.out["nats"], role, self.passwords)

    def nats_log(self) -> str:
        return (self.data_dir / "logs" / "nats.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpSystem]:
    with OpenAIStub(reply_text=SUGGESTION) as stub:
        system = UpSystem(tmp_path_factory.mktemp("nats-security") / "data")
        system.env.update({"OPENAI_BASE_URL": stub.url, "OPENAI_API_KEY": "test-key", "RELAYCTL_AI_MODEL": "stub"})
        try:
            system.out = system.ok("up", "--detach", "--bind", system.bind, "--exclude", "llm", "--json")
            yield system
        finally:
            system.run("down", timeout=60)


class Connection:
    """A NATS connection as one role (its replies on the role's inbox prefix, as the
    system's own processes get them), recording the errors the server reports to it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NATS | None = None

    async def open(self, url: str, role: str) -> NATS:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, connect_timeout=3,
                                     inbox_prefix=inbox_prefix(role))
        return self.nc

    def violations(self) -> list[str]:
        """The server's permission errors (nats-py lowercases them)."""
        return [e.lower() for e in self.errors if "permissions violation" in e.lower()]


def as_role(up: UpSystem, role: str, body: Callable[[NATS, Connection], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        conn = Connection()
        nc = await conn.open(up.url(role), role)
        try:
            return await body(nc, conn)
        finally:
            await nc.close()
    return asyncio.run(run())


def last_sequence(up: UpSystem) -> int:
    async def body(nc: NATS, _: Connection) -> int:
        return int((await nc.jetstream().stream_info(EVENT_STREAM)).state.last_seq)
    return as_role(up, "operator", body)  # type: ignore[no-any-return]


# -- credentials ----------------------------------------------------------------------------------

def test_credentials_are_private_files(up: UpSystem) -> None:
    """The role passwords, the generated server config and the state file are mode 0600."""
    for path in (up.data_dir / CREDENTIALS_FILE, up.data_dir / "nats" / AUTH_CONFIG,
                 up.data_dir / "services.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert set(up.passwords) == set(NATS_ROLES)
    assert len(set(up.passwords.values())) == len(NATS_ROLES)


def test_up_json_gives_the_operators_url_and_where_it_is_kept(up: UpSystem) -> None:
    """`up --json` is for programs: its `nats` URL is the operator's own, credentials
    included, which any NATS client can use (INTERFACE.md), and it names the 0600 file
    that keeps the operator's URLs. Only the text on screen hides them (test_up.py)."""
    assert up.out["nats"] == up.url("operator")
    path = Path(up.out["credentials"])
    assert path == up.data_dir / "operator-credentials.json" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert up.operator_credentials()["nats"] == up.out["nats"]
    assert json.loads((up.data_dir / "services.json").read_text())["nats"] == up.out["nats"]
    assert up.operator_credentials()["redis"] == up.out["redis"]

    async def plain_client() -> Any:  # a NATS client as anyone would use it: no inbox prefix
        nc = await nats.connect(up.out["nats"], allow_reconnect=False, connect_timeout=3)
        try:
            return await bus_request(nc, "relay.list", {}, timeout=5)
        finally:
            await nc.close()
    assert "relays" in asyncio.run(plain_client())


def test_no_credentials_or_a_wrong_password_cannot_connect(up: UpSystem) -> None:
    """The server refuses a client without credentials and one with a wrong password."""
    bare = "nats://" + up.out["nats"].rpartition("@")[2]
    wrong = role_url(bare, "operator", {"operator": "not-the-password"})
    for url in (bare, wrong):
        with pytest.raises(Exception):
            asyncio.run(nats.connect(url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=1))


def test_no_password_is_on_a_command_line(up: UpSystem) -> None:
    """Every process gets its credentials from its environment, never its (world-readable) argv."""
    services = json.loads((up.data_dir / "services.json").read_text())["services"]
    secrets = list(up.passwords.values())
    for name, record in services.items():
        if not record.get("pid"):
            continue
        cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes().decode(errors="replace")
        assert not any(secret in cmdline for secret in secrets), name
        assert not any(secret in " ".join(record["cmd"]) for secret in secrets), name


# -- the system works with credentials -------------------------------------------------------------

def test_the_whole_system_works_as_its_roles(up: UpSystem) -> None:
    """CLI commands, relay registration and config fetches through the gateway all work under
    the roles, and the server logged no permission violation for any of the system's processes."""
    status = up.ok("status", "--json")["services"]
    assert set(status) == set(SERVICES) - {"llm"} and all(s["healthy"] for s in status.values()), status
    up.ok("org", "create", "secure")
    project = up.ok("project", "create", "secure", "web", "--json")
    key = project["publicKey"]
    relay = RelayClient(up.out["gateway"])
    up.ok("relay", "allow", "--internal", "--", relay.public_key_str)
    relay.register()
    config = relay.poll([key], lambda d: key in d["configs"])["configs"][key]
    assert config["slug"] == "web" and config["disabled"] is False
    up.ok("project", "option", "set", "secure/web", "sentry:origins", '["example.com"]')
    config = relay.poll([key], lambda d: d["configs"].get(key, {}).get("config", {}).get("allowedDomains")
                        == ["example.com"])["configs"][key]
    assert relay.configs([key], version=2)[0] == 200
    assert relay.post("publickeys/", {"relay_ids": [relay.relay_id]})[0] == 200
    assert relay.post("projectids/", {"publicKeys": [key]}) == (200, {"projectIds": {key: project["id"]}})
    assert up.ok("config", "history", key, "--json")["events"]
    assert up.ok("relay", "list", "--json")["relays"][0]["relayId"] == relay.relay_id
    assert "Violation" not in up.nats_log()


def test_the_commands_role_writes_snapshots(up: UpSystem) -> None:
    """The command handlers' role can create, write (signed: its key goes into the stream)
    and read the snapshot object store (the other actors' roles only read it: test_snapshots.py)."""
    async def body(nc: NATS, conn: Connection) -> Any:
        events = JetStreamEventStore(nc)
        sequence = await events.last_sequence()
        store = SnapshotStore(nc, events)
        assert await store.save("security-test", {"sequence": sequence}, SnapshotSigner(), "test")
        loaded = await store.load("security-test")
        await nc.flush()
        return loaded == {"sequence": sequence}, conn.violations()
    assert as_role(up, "commands", body) == (True, [])


def test_the_gateway_role_reads_its_registration_secret_and_asks_queries(up: UpSystem) -> None:
    """The gateway's own needs: the KV bucket of the registration secret and the actor queries."""
    async def body(nc: NATS, conn: Connection) -> Any:
        secret = await registration_secret(nc)
        found = await bus_request(nc, "keys.lookup", {"public_keys": ["0" * 32]}, timeout=5)
        await nc.flush()
        return secret, found, conn.violations()
    secret, found, violations = as_role(up, "gateway", body)
    assert secret and found == {"0" * 32: None} and violations == []


def new_project(up: UpSystem) -> tuple[str, str]:
    org = "sec-" + uuid.uuid4().hex[:8]
    up.ok("org", "create", org)
    up.ok("project", "create", org, "web", "--json")
    return org, "web"


def store_event(up: UpSystem, org: str, project: str, tmp_path: Path) -> str:
    path = tmp_path / f"event-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(error_event()))
    return str(up.ok("event", "store", str(path), "--project", f"{org}/{project}", "--json")["eventId"])


def srv_replies(up: UpSystem, subject: str) -> list[dict[str, Any]]:
    async def body(nc: NATS, _: Connection) -> list[dict[str, Any]]:
        replies: list[dict[str, Any]] = []

        async def collect(msg: Any) -> None:
            replies.append(json.loads(msg.data))

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=collect)
        await nc.publish(subject, b"", reply=inbox)
        await asyncio.sleep(0.5)
        await sub.unsubscribe()
        return replies
    return as_role(up, "operator", body)  # type: ignore[no-any-return]


def test_every_actor_answers_srv_ping_info_and_stats_as_its_role(up: UpSystem) -> None:
    """Each actor's micro service answers $SRV.PING, $SRV.INFO and $SRV.STATS (a reply to a
    request it received), and the command handlers list one endpoint per control subject."""
    assert sorted(reply["name"] for reply in srv_replies(up, "$SRV.PING")) == sorted(ACTORS)
    [commands] = srv_replies(up, "$SRV.INFO.commands")
    subjects = {e["subject"] for e in commands["endpoints"]}
    assert {"rc.ctl.relay.register", "rc.ctl.relay.allow", "rc.ctl.user.token_create"} <= subjects
    assert not any(s.endswith(">") or "*" in s for s in subjects), subjects
    [stats] = srv_replies(up, "$SRV.STATS.keys")
    assert stats["type"] == "io.nats.micro.v1.stats_response"
    assert "Violation" not in up.nats_log()


def test_an_ai_suggestion_streams_its_chunks_to_the_gateway_role(up: UpSystem, tmp_path: Path) -> None:
    """The AI actor answers one request with many replies - the chunks, then the result - to
    the gateway's own inbox, over NATS as the gateway role and over HTTP through the gateway."""
    org, project = new_project(up)
    event_id = store_event(up, org, project, tmp_path)

    async def body(nc: NATS, conn: Connection) -> Any:
        items: list[Chunk | Final] = []
        async with stream_request(nc, "ai.suggest", {"org": org, "project": project, "event_id": event_id},
                                  timeout=30) as replies:
            async for item in replies:
                items.append(item)
        await nc.flush()
        return items, conn.violations()
    items, violations = as_role(up, "gateway", body)
    chunks = [item.text for item in items if isinstance(item, Chunk)]
    assert len(chunks) > 1 and "".join(chunks) == SUGGESTION, items
    assert isinstance(items[-1], Final) and violations == []

    org, project = new_project(up)  # a new project: no cached answer
    event_id = store_event(up, org, project, tmp_path)
    username = "streamer-" + uuid.uuid4().hex[:8]
    up.ok("user", "create", username, "--superuser")
    token = up.ok("token", "create", username, "--json")["token"]
    status, headers, sse = http_request(
        f"{up.out['gateway']}/api/0/projects/{org}/{project}/events/{event_id}/ai-fix-suggest/?stream=yes",
        headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), (status, sse)
    assert sse_text(sse) == SUGGESTION
    assert "Violation" not in up.nats_log()


def test_the_management_api_works_as_the_gateway_role(up: UpSystem) -> None:
    """Through `up`'s own gateway (the gateway role): a project created, its key given a rate
    limit and read back, the project deleted - no permissions violation."""
    tag = uuid.uuid4().hex[:8]
    admin = f"api-{tag}"
    up.ok("user", "create", admin)
    up.ok("permissions", "add", "-u", admin, "-p", "relayctl.admin")
    token = up.ok("token", "create", admin, "--json")["token"]
    base, auth = up.out["gateway"], {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, _, data = http_request(base + path, method, json.dumps(body).encode() if body is not None else None,
                                       auth)
        return status, json.loads(data) if data else None
    org = f"api-org-{tag}"
    assert call("POST", "/api/0/organizations/", {"name": org, "slug": org})[0] == 201
    assert call("POST", f"/api/0/teams/{org}/{org}/projects/", {"name": "web"})[0] == 201
    status, key = call("POST", f"/api/0/projects/{org}/web/keys/", {"name": "k", "rateLimit": {"window": 60,
                                                                                               "count": 10}})
    assert status == 201 and key["rateLimit"] == {"window": 60, "count": 10}
    assert [k["id"] for k in call("GET", f"/api/0/projects/{org}/web/keys/")[1]].count(key["id"]) == 1
    assert call("DELETE", f"/api/0/projects/{org}/web/")[0] == 204
    assert "Violation" not in up.nats_log()


# -- what the roles may not do ----------------------------------------------------------------------

def test_the_gateway_cannot_append_domain_events(up: UpSystem) -> None:
    """A publish (plain or JetStream) on rc.ev.> by the gateway is refused by the server
    and never lands in the event stream."""
    before = last_sequence(up)

    async def body(nc: NATS, conn: Connection) -> list[str]:
        await nc.publish("rc.ev.org.x.OrgCreated", b"\x80")
        with pytest.raises(Exception):
            await nc.jetstream().publish("rc.ev.org.x.OrgCreated", b"\x80", timeout=1)
        await nc.flush()
        await asyncio.sleep(0.2)
        return conn.violations()
    violations = as_role(up, "gateway", body)
    assert violations and all("rc.ev.org.x.orgcreated" in v for v in violations)
    assert last_sequence(up) == before


@pytest.mark.parametrize("role", ["gateway", "keys", "orgs", "configs", "metrics", "transport", "ai"])
def test_only_the_commands_role_may_publish_events(up: UpSystem, role: str) -> None:
    """Every role but the command handlers (and the operator) is refused rc.ev.>."""
    before = last_sequence(up)

    async def body(nc: NATS, conn: Connection) -> list[str]:
        await nc.publish("rc.ev.relay.x.RelayAllowed", b"\x80")
        await nc.flush()
        await asyncio.sleep(0.1)
        return conn.violations()
    assert as_role(up, role, body)
    assert last_sequence(up) == before


def test_the_gateway_cannot_send_control_commands(up: UpSystem) -> None:
    """A control request from the gateway gets no reply (the server drops it and reports a
    permissions violation) and changes nothing: users, tokens, relay access, imports,
    exports and trusted relays are the operator's."""
    slug = "gw-" + uuid.uuid4().hex[:8]
    up.ok("org", "create", slug)
    key = relay_key()
    before = last_sequence(up)
    attempts: tuple[tuple[str, dict[str, Any]], ...] = (("user.create", {"username": slug, "superuser": True}),
                ("user.token_create", {"username": slug}),
                ("relay.allow", {"public_key": key, "internal": True}),
                ("import.org", {"org": {"slug": f"imported-{slug}"}}),
                ("export.orgs", {}),
                ("org.trust_relay", {"org": slug, "public_key": key, "name": "intruder"}))

    async def body(nc: NATS, conn: Connection) -> tuple[list[Any], list[str]]:
        answers = await asyncio.gather(*(bus_request(nc, t, p, timeout=1) for t, p in attempts),
                                       return_exceptions=True)
        await nc.flush()
        return answers, conn.violations()
    answers, violations = as_role(up, "gateway", body)
    for (message_type, _), answer in zip(attempts, answers):
        assert isinstance(answer, DeadlineExceeded), (message_type, answer)
        assert any(f"rc.ctl.{message_type}" in v for v in violations), (message_type, violations)
    assert last_sequence(up) == before
    assert up.run("permissions", "list", "-u", slug).returncode == 1  # no such user
    assert key not in relay_keys(up)


# The management API's writes: the gateway may send them only on rc.api.*, each with a user's token.
API_ATTEMPTS = ("org.trust_relay", "org.create", "project.delete", "key.create", "org.member_add")


def api_payloads(org: str, username: str, key: str) -> dict[str, dict[str, Any]]:
    return {"org.trust_relay": {"org": org, "public_key": key, "name": "intruder"},
            "org.create": {"slug": f"{org}-new", "name": None, "owner": username},
            "project.delete": {"org": org, "project": "web"},
            "key.create": {"org": org, "project": "web"},
            "org.member_add": {"org": org, "username": username, "role": "owner"}}


def test_the_gateway_cannot_send_the_management_apis_writes_as_control_commands(up: UpSystem) -> None:
    """The writes the management API makes are refused by the server on the operator's
    control subjects: the gateway's credentials alone trust no relay, create no org, delete
    no project, make no key, add no member."""
    tag = uuid.uuid4().hex[:8]
    org, user, key = f"victim-{tag}", f"intruder-{tag}", relay_key()
    up.ok("org", "create", org)
    up.ok("project", "create", org, "web")
    up.ok("user", "create", user)
    payloads = api_payloads(org, user, key)
    before = last_sequence(up)

    async def body(nc: NATS, conn: Connection) -> tuple[list[Any], list[str]]:
        answers = await asyncio.gather(*(bus_request(nc, t, payloads[t], timeout=1, actor="user:root")
                                         for t in API_ATTEMPTS), return_exceptions=True)
        await nc.flush()
        return answers, conn.violations()
    answers, violations = as_role(up, "gateway", body)
    for message_type, answer in zip(API_ATTEMPTS, answers):
        assert isinstance(answer, DeadlineExceeded), (message_type, answer)
        assert any(f"rc.ctl.{message_type}" in v for v in violations), (message_type, violations)
    assert last_sequence(up) == before
    assert key not in relay_keys(up)
    assert up.run("key", "list", f"{org}/web").returncode == 0  # the project is still there


def test_the_management_apis_writes_are_authorized_by_the_command_handlers(up: UpSystem) -> None:
    """On rc.api.* each write carries the caller's bearer token and the command handlers
    decide who that is: no token, an unknown or revoked token, a user who is no member of
    the org (not found, as for an org that does not exist) and a member lacking the scope
    are refused with an error reply, and nothing is stored. A good token's write is decided
    for the token's user, whatever actor the envelope names."""
    tag = uuid.uuid4().hex[:8]
    org, key = f"victim-{tag}", relay_key()
    outsider, member, revoked, owner = (f"{who}-{tag}" for who in ("outsider", "member", "revoked", "owner"))
    up.ok("org", "create", org)
    up.ok("project", "create", org, "web")
    tokens: dict[str, str] = {}
    for username in (outsider, member, revoked, owner):
        up.ok("user", "create", username)
        made = up.ok("token", "create", username, "--json")
        tokens[username] = made["token"]
        if username != outsider:
            up.ok("org", "member", "add", org, username, "--role", "owner" if username == owner else "member")
    # an owner and creator of orgs, but for the revocation of its token
    up.ok("org", "member", "add", org, revoked, "--role", "owner")
    up.ok("permissions", "add", "-u", revoked, "-p", "relayctl.admin")
    up.ok("token", "revoke", token_id(up, revoked))
    payloads = api_payloads(org, outsider, key)
    cases: list[tuple[str, dict[str, str], type[RelayctlError]]] = [
        ("no token", {}, BadRequest),
        ("unknown token", {"token": "sntryu_" + "0" * 64}, Unauthorized),
        ("revoked token", {"token": tokens[revoked]}, Unauthorized),
        ("no member", {"token": tokens[outsider]}, NotFound),
        ("no scope", {"token": tokens[member]}, Forbidden),
    ]
    before = last_sequence(up)

    async def body(nc: NATS, conn: Connection) -> tuple[list[Any], Any, list[str]]:
        answers = await asyncio.gather(*(
            bus_request(nc, t, {**payloads[t], **token}, subject=f"rc.api.{t}", timeout=10, actor=f"user:{owner}")
            for _, token, _ in cases for t in API_ATTEMPTS), return_exceptions=True)
        created = await bus_request(nc, "key.create", {"org": org, "project": "web", "token": tokens[owner]},
                                    subject="rc.api.key.create", timeout=10, actor=f"user:{outsider}")
        await nc.flush()
        return answers, created, conn.violations()
    answers, created, violations = as_role(up, "gateway", body)
    expected = [(name, t, error) for name, _, error in cases for t in API_ATTEMPTS]
    for (name, message_type, error), answer in zip(expected, answers):
        wanted = Forbidden if message_type == "org.create" and error is NotFound else error  # no org to see
        assert type(answer) is wanted, (name, message_type, answer)
    assert violations == []
    after = last_sequence(up)
    assert after == before + 1  # the owner's key alone
    assert key not in relay_keys(up)
    assert up.run("key", "list", f"{org}/web").returncode == 0  # the project is still there
    assert up.run("org", "member", "list", f"{org}-new").returncode != 0  # no such org
    members = {m["username"]: m["role"] for m in up.ok("org", "member", "list", org, "--json")["members"]}
    assert outsider not in members and members[member] == "member"
    history = up.ok("config", "history", created["publicKey"], "--json")["events"]
    assert [e["actor"] for e in history if e["type"] == "KeyCreated"] == [f"user:{owner}"]


def token_id(up: UpSystem, username: str) -> str:
    """The id of `username`'s only token."""
    tokens = up.ok("token", "list", username, "--json")["tokens"]
    assert len(tokens) == 1, tokens
    return str(tokens[0]["id"])


def test_the_gateway_cannot_touch_the_stream_api(up: UpSystem) -> None:
    """The gateway can neither read, purge nor delete the event stream."""
    before = last_sequence(up)

    async def body(nc: NATS, conn: Connection) -> list[str]:
        js = nc.jetstream(timeout=1)
        for attempt in (js.purge_stream(EVENT_STREAM), js.delete_stream(EVENT_STREAM),
                        js.stream_info(EVENT_STREAM), js.get_msg(EVENT_STREAM, seq=1)):
            with pytest.raises(Exception):
                await attempt
        await nc.flush()
        return conn.violations()
    assert len(as_role(up, "gateway", body)) >= 4
    assert last_sequence(up) == before


def test_actor_roles_cannot_purge_the_stream_or_steal_commands(up: UpSystem) -> None:
    """An actor role may follow the stream but not purge it, and may not subscribe to the
    control subjects (only the command handlers serve them)."""
    async def body(nc: NATS, conn: Connection) -> list[str]:
        js = nc.jetstream(timeout=1)
        assert (await js.stream_info(EVENT_STREAM)).config.name == EVENT_STREAM
        with pytest.raises(Exception):
            await js.purge_stream(EVENT_STREAM)
        await nc.subscribe("rc.ctl.>")
        await nc.flush()
        await asyncio.sleep(0.2)
        return conn.violations()
    violations = as_role(up, "keys", body)
    assert any("rc.ctl.>" in v for v in violations) and any("purge" in v for v in violations)
    up.ok("org", "create", "still-served-" + uuid.uuid4().hex[:6])


# -- control subjects carry only their own message type ------------------------------------------

def relay_keys(up: UpSystem) -> set[str]:
    """The relays allowed so far. The command handlers answer in order, so whatever reached
    them before this read has been handled (a relay.allow waits for the org access actor)."""
    return {r["publicKey"] for r in up.ok("relay", "list", "--json")["relays"]}


def relay_key() -> str:
    return (uuid.uuid4().hex + uuid.uuid4().hex)[:43]


def test_a_control_subject_accepts_only_its_own_message_type(up: UpSystem) -> None:
    """The gateway may send on rc.ctl.relay.register and rc.ctl.user.authenticate only. Any
    other control message sent there (relay.allow, user.create, token_create, trust_relay,
    import, export) gets a bad_request reply naming what the subject accepts and changes
    nothing; the gateway's own messages are still answered there."""
    tag = uuid.uuid4().hex[:8]
    org, user, key = f"victim-{tag}", f"victim-{tag}", relay_key()
    up.ok("org", "create", org)
    up.ok("user", "create", user)
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("rc.ctl.relay.register", "relay.allow", {"public_key": key, "internal": True}),
        ("rc.ctl.relay.register", "user.create", {"username": f"intruder-{tag}", "superuser": True}),
        ("rc.ctl.relay.register", "user.token_create", {"username": user}),
        ("rc.ctl.relay.register", "org.trust_relay", {"org": org, "public_key": key}),
        ("rc.ctl.relay.register", "import.org", {"org": {"slug": f"imported-{tag}"}}),
        ("rc.ctl.relay.register", "export.orgs", {}),
        ("rc.ctl.user.authenticate", "relay.allow", {"public_key": key, "internal": True}),
        ("rc.ctl.user.authenticate", "user.token_create", {"username": user}),
    ]
    before = last_sequence(up)

    async def body(nc: NATS, conn: Connection) -> Any:
        answers: list[Any] = []
        for subject, message_type, payload in attempts:
            try:
                answers.append(await bus_request(nc, message_type, payload, subject=subject, timeout=5))
            except RelayctlError as exc:
                answers.append(exc)
        try:
            own: Any = await bus_request(nc, "user.authenticate", {"token": "not-a-token"}, timeout=5)
        except RelayctlError as exc:
            own = exc
        await nc.flush()
        return answers, own, conn.violations()
    answers, own, violations = as_role(up, "gateway", body)
    for (subject, message_type, _), answer in zip(attempts, answers):
        assert isinstance(answer, BadRequest), (subject, message_type, answer)
        assert f"{message_type!r} is not accepted on {subject}" in answer.message, answer.message
    assert own.code == "unauthorized", own  # answered: the subject still serves its own type
    assert violations == []
    assert last_sequence(up) == before
    assert key not in relay_keys(up)
    assert up.run("permissions", "list", "-u", f"intruder-{tag}").returncode == 1  # no such user


def envelope_of(message_type: str, payload: dict[str, Any]) -> bytes:
    return Request(message_type, payload, deadline=time.time() + 60).encode()


def test_the_gateway_cannot_point_its_buckets_deliveries_at_a_control_subject(up: UpSystem) -> None:
    """The gateway writes its KV bucket but may not create a consumer on it, so it cannot have
    JetStream deliver a message it stored (a `relay.allow` envelope) to rc.ctl.relay.allow."""
    key, name = relay_key(), "probe-" + uuid.uuid4().hex[:8]
    stream = f"KV_{GATEWAY_BUCKET}"

    async def body(nc: NATS, conn: Connection) -> list[str]:
        js = nc.jetstream(timeout=2)
        kv = await js.key_value(GATEWAY_BUCKET)
        await kv.put(name, envelope_of("relay.allow", {"public_key": key, "internal": True}))
        with pytest.raises(Exception):
            await js.add_consumer(stream, config=api.ConsumerConfig(
                deliver_subject="rc.ctl.relay.allow", deliver_group="rc-commands",
                filter_subject=f"$KV.{GATEWAY_BUCKET}.{name}", ack_policy=api.AckPolicy.NONE))
        await asyncio.sleep(1.0)
        await kv.purge(name)
        await nc.flush()
        return conn.violations()
    violations = as_role(up, "gateway", body)
    assert any(f"$js.api.consumer.create.{stream.lower()}" in v for v in violations), violations
    assert key not in relay_keys(up)


def test_a_stored_message_delivered_to_a_control_subject_is_not_a_request(up: UpSystem) -> None:
    """Each control subject is a literal subscription, so a push consumer pointed at one (with
    the handlers' queue group) delivers there what a stream holds - here a stored
    `relay.allow` envelope, as any role that may write a stream and create consumers on it
    could arrange. The command handlers drop it unanswered (its reply subject is JetStream's,
    no client's inbox), and no relay is allowed."""
    key, stream = relay_key(), "PROBE_" + uuid.uuid4().hex[:8].upper()
    before = last_sequence(up)

    async def body(nc: NATS, conn: Connection) -> list[str]:
        js = nc.jetstream(timeout=2)
        await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
        try:
            await js.publish(f"{stream.lower()}.allow", envelope_of("relay.allow", {"public_key": key, "internal": True}))
            consumer = await js.add_consumer(stream, config=api.ConsumerConfig(
                deliver_subject="rc.ctl.relay.allow", deliver_group="rc-commands", ack_policy=api.AckPolicy.NONE))
            deadline = time.monotonic() + 5
            while (await js.consumer_info(stream, consumer.name)).delivered.stream_seq < 1:
                assert time.monotonic() < deadline, "JetStream delivered nothing to rc.ctl.relay.allow"
                await asyncio.sleep(0.05)
        finally:
            await js.delete_stream(stream)
        await nc.flush()
        return conn.violations()
    assert as_role(up, "operator", body) == []
    assert key not in relay_keys(up)
    assert last_sequence(up) == before
    assert "service.not_a_request" in (up.data_dir / "logs" / "commands.log").read_text(errors="replace")


def test_an_actor_role_cannot_create_the_snapshot_bucket_to_capture_replies(up: UpSystem) -> None:
    """Creating a stream chooses its subjects: a stream on `_INBOX.>` would store every reply
    in the system for its creator to read. Only a bucket's writer may create it - the
    snapshot bucket the command handlers - so another actor role is refused, whether the
    bucket exists yet or not."""
    stream = f"OBJ_{SNAPSHOT_BUCKET}"

    async def body(nc: NATS, conn: Connection) -> list[str]:
        with pytest.raises(Exception):
            await nc.jetstream(timeout=1).add_stream(name=stream, subjects=["_INBOX.>", f"$O.{SNAPSHOT_BUCKET}.>"])
        await nc.flush()
        return conn.violations()
    try:
        violations = as_role(up, "keys", body)
    finally:
        async def cleanup(nc: NATS, _: Connection) -> None:
            js = nc.jetstream()
            try:
                info = await js.stream_info(stream)
            except Exception:
                return
            if "_INBOX.>" in (info.config.subjects or []):
                await js.delete_stream(stream)
        as_role(up, "operator", cleanup)
    assert any(f"$js.api.stream.create.{stream.lower()}" in v for v in violations), violations


# -- inboxes: each role reads only its own replies --------------------------------------------------

@pytest.mark.parametrize("role", ["gateway", "metrics", "transport", "keys", "ai", "commands"])
def test_a_role_subscribes_only_to_its_own_inboxes(up: UpSystem, role: str) -> None:
    """No role but the operator may subscribe to every inbox, the operator's or another
    role's; its own prefix it may."""
    other = "keys" if role == "gateway" else "gateway"
    forbidden = ["_INBOX.>", "_INBOX.*.>", f"{inbox_prefix('operator')}.>", f"{inbox_prefix(other)}.>", ">"]

    async def body(nc: NATS, conn: Connection) -> tuple[list[str], list[str]]:
        for subject in forbidden:
            await nc.subscribe(subject)
        await nc.flush()
        await asyncio.sleep(0.3)
        refused = conn.violations()
        await nc.subscribe(f"{inbox_prefix(role)}.>")
        await nc.flush()
        await asyncio.sleep(0.3)
        return refused, conn.violations()[len(refused):]
    refused, own = as_role(up, role, body)
    assert len(refused) == len(forbidden) and all("subscription" in v for v in refused), refused
    assert own == []


@pytest.mark.parametrize("role", ["keys", "metrics", "ai", "commands", "gateway"])
def test_a_role_cannot_publish_into_another_roles_inbox(up: UpSystem, role: str) -> None:
    """A service answers only requests it received: publishing into the operator's inbox,
    another role's or the plain root is refused, and nothing arrives there."""
    other = "commands" if role == "gateway" else "gateway"
    targets = [f"{inbox_prefix('operator')}.probe", f"{inbox_prefix(other)}.probe", "_INBOX.probe"]
    received: list[str] = []

    async def main() -> list[str]:
        watcher, attacker = Connection(), Connection()
        wnc = await watcher.open(up.url("operator"), "operator")
        anc = await attacker.open(up.url(role), role)
        try:
            async def got(msg: Any) -> None:
                received.append(msg.subject)

            for target in targets:
                await wnc.subscribe(target, cb=got)
            await wnc.flush()
            for target in targets:
                await anc.publish(target, b"forged")
            await anc.flush()
            await asyncio.sleep(0.3)
            return attacker.violations()
        finally:
            await anc.close()
            await wnc.close()
    violations = asyncio.run(main())
    assert received == []
    assert len(violations) == len(targets), violations


@pytest.mark.parametrize("role", ["gateway", "metrics", "transport"])
def test_no_role_reads_the_operators_token_reply(up: UpSystem, role: str) -> None:
    """While the operator creates an API token, a role listening on every inbox gets a
    permissions violation, not the reply that carries the token."""
    username = "reader-" + uuid.uuid4().hex[:8]
    up.ok("user", "create", username)
    seen: list[bytes] = []

    async def main() -> tuple[str, list[str]]:
        conn = Connection()
        nc = await conn.open(up.url(role), role)
        try:
            async def got(msg: Any) -> None:
                seen.append(msg.data)

            await nc.subscribe("_INBOX.>", cb=got)
            await nc.flush()
            created = await asyncio.to_thread(up.ok, "token", "create", username, "--json")
            await asyncio.sleep(0.3)
            return str(created["token"]), conn.violations()
        finally:
            await nc.close()
    token, violations = asyncio.run(main())
    assert token and not any(token.encode() in data for data in seen)
    assert violations


# -- forged JetStream control messages ----------------------------------------------------------

@pytest.mark.parametrize("role", ["keys", "gateway", "metrics"])
def test_a_forged_stalled_heartbeat_writes_nothing_into_the_event_stream(up: UpSystem, role: str) -> None:
    """An idle heartbeat with a "consumer stalled" header makes nats-py publish an empty
    message on the subject it names. Forged by another role, naming an rc.ev. subject and
    sent to every projection's deliver subject (the command handlers' included), it is
    refused by the server - each deliver subject is under its own role's inbox prefix - and
    the event stream gets no message."""
    async def deliver_subjects(nc: NATS, _: Connection) -> list[str]:
        consumers = await nc.jetstream().consumers_info(EVENT_STREAM)
        return [c.config.deliver_subject for c in consumers if c.config.deliver_subject]
    subjects = as_role(up, "operator", deliver_subjects)
    assert subjects
    target = f"rc.ev.org.victim-{uuid.uuid4().hex[:8]}.OrgCreated"
    before = last_sequence(up)

    async def body(nc: NATS, conn: Connection) -> list[str]:
        for subject in subjects:
            await nc.publish(subject, b"", headers={"Status": "100", "Description": "Idle Heartbeat",
                                                     "Nats-Consumer-Stalled": target})
        await nc.flush()
        await asyncio.sleep(0.5)
        return conn.violations()
    violations = as_role(up, role, body)
    assert last_sequence(up) == before
    assert len(violations) == len(subjects), violations
    prefixes = {inbox_prefix(actor) + "." for actor in ACTORS}
    assert all(s.startswith(tuple(prefixes)) for s in subjects), subjects
    assert any(s.startswith(inbox_prefix("commands") + ".") for s in subjects), subjects


# -- the data plane ---------------------------------------------------------------------------------

def test_the_gateway_role_appends_envelopes_and_blobs_but_reads_none_back(up: UpSystem) -> None:
    """Through `up`'s own gateway (gateway role): an SDK envelope and one larger than a NATS
    message (the blob bucket) are stored and read back whole as the operator; the gateway
    role itself may not create a consumer on the ingest stream."""
    import zstandard

    from bus.ingest_store import HEADER_BLOB, read_envelope
    from messages.subjects import INGEST_STREAM, ingest_subject

    org = "ingest-" + uuid.uuid4().hex[:8]
    up.ok("org", "create", org)
    project = up.ok("project", "create", org, "web", "--json")
    url = f"{up.out['gateway']}/api/{project['id']}/envelope/"
    auth = {"X-Sentry-Auth": f"Sentry sentry_key={project['publicKey']}, sentry_version=7"}
    small = b'{"event_id":"%s"}\n{"type":"event","length":2}\n{}\n' % uuid.uuid4().hex.encode()
    blob = b"x" * (9 * 1024 * 1024)
    big = b'{"event_id":"%s"}\n{"type":"attachment","length":%d}\n' % (uuid.uuid4().hex.encode(), len(blob)) + blob
    for body, headers in ((small, {}), (zstandard.ZstdCompressor().compress(big), {"Content-Encoding": "zstd"})):
        status, _, data = http_request(url, "POST", body, {**auth, **headers}, timeout=30)
        assert status == 200, data

    async def read(nc: NATS, _: Connection) -> list[tuple[bool, bytes]]:
        js = nc.jetstream()
        out = []
        sub = await js.subscribe(ingest_subject(project["id"]), ordered_consumer=True)
        for _ in range(2):
            msg = await sub.next_msg(timeout=5)
            out.append((bool((msg.headers or {}).get(HEADER_BLOB)), await read_envelope(js, msg)))
        await sub.unsubscribe()
        return out
    assert as_role(up, "operator", read) == [(False, small), (True, big)]

    async def consume(nc: NATS, conn: Connection) -> list[str]:
        with pytest.raises(Exception):
            await nc.jetstream().add_consumer(INGEST_STREAM, api.ConsumerConfig(
                deliver_subject=inbox_prefix("gateway") + ".x", ack_policy=api.AckPolicy.NONE), timeout=1)
        await nc.flush()
        await asyncio.sleep(0.2)
        return conn.violations()
    assert as_role(up, "gateway", consume)
