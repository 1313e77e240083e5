"""NATS roles under `relayctl up`: every process connects as its role, the server refuses
what a role may not do, and the whole system still works with credentials.

The tests of this module share one system started with the real console script and run
in file order: the system's own traffic first (no permission violation at all), then the
forbidden attempts.
"""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from bus.client import request as bus_request
from bus.embedded import AUTH_CONFIG, CREDENTIALS_FILE, NATS_ROLES, role_url
from bus.snapshots import SnapshotStore
from cli.services import SERVICES
from gateway.app import registration_secret
from messages.errors import DeadlineExceeded, RelayctlError
from messages.subjects import EVENT_STREAM
from tests.system import RelayClient, RelayctlProcess


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
    system = UpSystem(tmp_path_factory.mktemp("nats-security") / "data")
    try:
        system.out = system.ok("up", "--detach", "--bind", system.bind, "--exclude", "llm", "--json")
        yield system
    finally:
        system.run("down", timeout=60)


class Connection:
    """A NATS connection as one role, recording the errors the server reports to it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NATS | None = None

    async def open(self, url: str) -> NATS:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, connect_timeout=3)
        return self.nc

    def violations(self) -> list[str]:
        """The server's permission errors (nats-py lowercases them)."""
        return [e.lower() for e in self.errors if "permissions violation" in e.lower()]


def as_role(up: UpSystem, role: str, body: Callable[[NATS, Connection], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        conn = Connection()
        nc = await conn.open(up.url(role))
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


def test_up_prints_the_operators_url_with_credentials(up: UpSystem) -> None:
    """`up --json` and the state file give the operator's URL, which any NATS client can use."""
    assert up.out["nats"] == up.url("operator")
    assert json.loads((up.data_dir / "services.json").read_text())["nats"] == up.out["nats"]

    async def body(nc: NATS, _: Connection) -> Any:
        return await bus_request(nc, "relay.list", {}, timeout=5)
    assert "relays" in as_role(up, "operator", body)


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
    """The roles of actors can create, write and read the snapshot object store."""
    async def body(nc: NATS, conn: Connection) -> Any:
        store = SnapshotStore(nc)
        assert await store.save("security-test", {"sequence": 1})
        loaded = await store.load("security-test")
        await nc.flush()
        return loaded, conn.violations()
    assert as_role(up, "commands", body) == ({"sequence": 1}, [])


def test_the_gateway_role_reads_its_registration_secret_and_asks_queries(up: UpSystem) -> None:
    """The gateway's own needs: the KV bucket of the registration secret and the actor queries."""
    async def body(nc: NATS, conn: Connection) -> Any:
        secret = await registration_secret(nc)
        found = await bus_request(nc, "keys.lookup", {"public_keys": ["0" * 32]}, timeout=5)
        await nc.flush()
        return secret, found, conn.violations()
    secret, found, violations = as_role(up, "gateway", body)
    assert secret and found == {"0" * 32: None} and violations == []


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
    permissions violation) and changes nothing."""
    slug = "gw-" + uuid.uuid4().hex[:8]
    before = last_sequence(up)

    async def body(nc: NATS, conn: Connection) -> tuple[type[BaseException], list[str]]:
        for message_type, payload in (("org.create", {"slug": slug}),
                                      ("relay.allow", {"public_key": "A" * 43, "internal": True}),
                                      ("relay.deny", {"public_key": "A" * 43})):
            with pytest.raises(RelayctlError) as caught:
                await bus_request(nc, message_type, payload, timeout=1)
            assert isinstance(caught.value, DeadlineExceeded), caught.value
        await nc.flush()
        return type(caught.value), conn.violations()
    _, violations = as_role(up, "gateway", body)
    assert any("rc.ctl.org.create" in v for v in violations)
    assert last_sequence(up) == before
    assert up.run("org", "option", "get", slug, "sentry:origins").returncode == 1  # no such org


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
