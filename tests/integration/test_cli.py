"""The `relayctl` CLI against the running system: every command's happy path, its errors,
its `--json` shapes (INTERFACE.md) and its messages (BEHAVIOUR.md)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import sentry_relay
from click.testing import CliRunner

from cli.main import main as cli_main
from tests.system import CliResult, SystemUnderTest


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def relay_key() -> str:
    return str(sentry_relay.generate_key_pair()[1])


def fails(result: CliResult, text: str, code: int = 1) -> None:
    """The command failed with `code`, said `text` on stderr, printed nothing, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert text in result.stderr, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


@pytest.fixture
def org(system: SystemUnderTest) -> str:
    slug = unique("org")
    system.cli_ok("org", "create", slug)
    return slug


@pytest.fixture
def project(system: SystemUnderTest, org: str) -> dict[str, Any]:
    return {"org": org, **system.cli_ok("project", "create", org, unique("p"), "--json")}


@pytest.fixture
def user(system: SystemUnderTest) -> str:
    name = unique("user")
    system.cli_ok("user", "create", name, "--email", f"{name}@example.com")
    return name


# -- orgs -------------------------------------------------------------------------------------

def test_org_create(system: SystemUnderTest) -> None:
    """`org create --json` prints {"id": int, "slug": str}; the text form names the org."""
    slug = unique("acme")
    out = system.cli_ok("org", "create", slug, "--name", "Acme Inc", "--json")
    assert set(out) == {"id", "slug"} and out["slug"] == slug and isinstance(out["id"], int)
    other = unique("acme")
    assert system.cli_ok("org", "create", other).startswith(f"Created organization `{other}` (id ")


def test_org_create_errors(system: SystemUnderTest, org: str) -> None:
    """A duplicate slug and an invalid slug fail with exit 1 and say why."""
    fails(system.cli("org", "create", org), f"Organization `{org}` already exists")
    fails(system.cli("org", "create", "Not A Slug"), "not a valid slug")


def test_org_options(system: SystemUnderTest, org: str) -> None:
    """Options are set from JSON, read back (defaults when unset) and unset."""
    assert system.cli_ok("org", "option", "get", org, "sentry:event_retention", "--json") == {"value": 90}
    assert system.cli("org", "option", "set", org, "sentry:event_retention", "30").stdout == \
        f"Set `sentry:event_retention` on `{org}`\n"
    assert system.cli_ok("org", "option", "get", org, "sentry:event_retention", "--json") == {"value": 30}
    assert system.cli_ok("org", "option", "get", org, "sentry:event_retention") == "30\n"
    system.cli_ok("org", "option", "set", org, "sentry:safe_fields", '["a", "b"]')
    assert system.cli_ok("org", "option", "get", org, "sentry:safe_fields", "--json") == {"value": ["a", "b"]}
    assert system.cli_ok("org", "option", "unset", org, "sentry:event_retention") == \
        f"Unset `sentry:event_retention` on `{org}`\n"
    assert system.cli_ok("org", "option", "get", org, "sentry:event_retention", "--json") == {"value": 90}
    system.cli_ok("org", "option", "unset", org, "sentry:event_retention")  # already unset: fine


def test_org_option_errors(system: SystemUnderTest, org: str) -> None:
    """Bad JSON, a wrong value, an unknown key or a project-only key, and an unknown org fail with 1."""
    fails(system.cli("org", "option", "set", org, "sentry:event_retention", "{nope"), "value is not valid JSON")
    fails(system.cli("org", "option", "set", org, "sentry:event_retention", '"ninety"'),
          "invalid value for sentry:event_retention")
    fails(system.cli("org", "option", "set", org, "sentry:nonsense", "1"), "unknown option")
    fails(system.cli("org", "option", "set", org, "sentry:origins", '["*"]'), "not an org option")
    fails(system.cli("org", "option", "get", "no-such-org", "ai:policy"), "No organization matching `no-such-org`")
    fails(system.cli("org", "option", "set", "no-such-org", "ai:policy", '"denied"'),
          "No organization matching `no-such-org`")


def test_trusting_relays(system: SystemUnderTest, org: str) -> None:
    """trust-relay adds an entry to `sentry:trusted-relays`; untrust-relay removes it."""
    first, second = relay_key(), relay_key()
    assert system.cli_ok("org", "trust-relay", org, first, "--name", "edge", "--description", "eu") == \
        f"`{org}` now trusts relay `{first}`\n"
    system.cli_ok("org", "trust-relay", org, second)
    entries = system.cli_ok("org", "option", "get", org, "sentry:trusted-relays", "--json")["value"]
    assert [e["public_key"] for e in entries] == [first, second]
    assert entries[0]["name"] == "edge" and entries[0]["description"] == "eu" and entries[0]["created"]
    assert system.cli_ok("org", "untrust-relay", org, first) == f"`{org}` no longer trusts relay `{first}`\n"
    entries = system.cli_ok("org", "option", "get", org, "sentry:trusted-relays", "--json")["value"]
    assert [e["public_key"] for e in entries] == [second]
    fails(system.cli("org", "untrust-relay", org, first), "is not trusted by")
    fails(system.cli("org", "trust-relay", org, "short"), "not a valid relay public key")


def test_relay_keys_starting_with_a_dash_are_arguments(system: SystemUnderTest, org: str) -> None:
    """A relay key that starts with "-" (one in 64 do) is taken as the key, not as options."""
    key = next(k for k in (relay_key() for _ in range(5000)) if k.startswith("-"))
    assert system.cli_ok("relay", "allow", key) == f"Allowed relay `{key}`\n"
    assert key in [r["publicKey"] for r in system.cli_ok("relay", "list", "--json")["relays"]]
    assert system.cli_ok("org", "trust-relay", org, key) == f"`{org}` now trusts relay `{key}`\n"
    assert system.cli_ok("org", "untrust-relay", org, key) == f"`{org}` no longer trusts relay `{key}`\n"
    assert system.cli_ok("relay", "deny", key) == f"Banned relay `{key}`\n"


# -- projects ---------------------------------------------------------------------------------

def test_project_create(system: SystemUnderTest, org: str) -> None:
    """`project create --json` has exactly the INTERFACE.md fields, and the project has that key."""
    slug = unique("web")
    out = system.cli_ok("project", "create", org, slug, "--name", "Web", "--json")
    assert set(out) == {"id", "slug", "organizationId", "publicKey", "numericId"}
    assert out["slug"] == slug and len(out["publicKey"]) == 32
    assert all(isinstance(out[k], int) for k in ("id", "organizationId", "numericId"))
    org_id = system.cli_ok("org", "create", unique("o"), "--json")["id"]
    assert out["organizationId"] < org_id
    keys = system.cli_ok("key", "list", f"{org}/{slug}", "--json")["keys"]  # read-your-writes
    assert keys == [{"publicKey": out["publicKey"], "numericId": out["numericId"], "status": "active"}]


def test_project_create_errors(system: SystemUnderTest, project: dict[str, Any]) -> None:
    """A duplicate project and an unknown org fail with exit 1."""
    fails(system.cli("project", "create", project["org"], project["slug"]),
          f"Project `{project['org']}/{project['slug']}` already exists")
    fails(system.cli("project", "create", "no-such-org", "web"), "No organization matching `no-such-org`")


def test_project_options(system: SystemUnderTest, project: dict[str, Any]) -> None:
    """Project options: defaults, set (normalized), get, unset; errors exit 1."""
    ref = f"{project['org']}/{project['slug']}"
    assert system.cli_ok("project", "option", "get", ref, "sentry:origins", "--json") == {"value": ["*"]}
    out = system.cli_ok("project", "option", "set", ref, "filters:localhost", "true", "--json")
    assert out["value"] == "1"
    assert system.cli_ok("project", "option", "get", ref, "filters:localhost", "--json") == {"value": "1"}
    system.cli_ok("project", "option", "set", ref, "sentry:origins", '["https://a.example"]')
    assert system.cli_ok("project", "option", "get", ref, "sentry:origins", "--json") == \
        {"value": ["https://a.example"]}
    assert system.cli_ok("project", "option", "unset", ref, "sentry:origins") == f"Unset `sentry:origins` on `{ref}`\n"
    assert system.cli_ok("project", "option", "get", ref, "sentry:origins", "--json") == {"value": ["*"]}
    fails(system.cli("project", "option", "set", ref, "sentry:scrub_data", "maybe"), "value is not valid JSON")
    fails(system.cli("project", "option", "set", ref, "sentry:scrub_data", '"maybe"'), "expected a boolean")
    fails(system.cli("project", "option", "get", f"{project['org']}/nope", "sentry:origins"),
          f"No project matching `{project['org']}/nope`")


def test_project_status(system: SystemUnderTest, project: dict[str, Any]) -> None:
    """A disabled project serves {"disabled": true}; enabling restores it; deleting frees the slug."""
    ref, key = f"{project['org']}/{project['slug']}", project["publicKey"]
    assert system.cli_ok("project", "disable", ref) == f"Disabled project `{ref}`\n"
    assert system.cli_ok("config", "get", key, "--json") == {"disabled": True}
    system.cli_ok("project", "disable", ref)  # already disabled: a no-op, not an error
    assert system.cli_ok("project", "enable", ref) == f"Enabled project `{ref}`\n"
    assert system.cli_ok("config", "get", key, "--json").get("disabled") is False
    assert system.cli_ok("project", "delete", ref) == f"Deleted project `{ref}`\n"
    fails(system.cli("key", "list", ref), f"No project matching `{ref}`")
    again = system.cli_ok("project", "create", project["org"], project["slug"], "--json")
    assert again["id"] != project["id"] and again["publicKey"] != key


# -- keys -------------------------------------------------------------------------------------

def test_keys(system: SystemUnderTest, project: dict[str, Any]) -> None:
    """Keys are created, listed with their status, disabled, enabled and deleted."""
    ref = f"{project['org']}/{project['slug']}"
    created = system.cli_ok("key", "create", ref, "--json")
    assert set(created) == {"publicKey", "numericId", "projectId"} and created["projectId"] == project["id"]
    assert system.cli_ok("key", "disable", created["publicKey"]) == f"Disabled key {created['publicKey']}\n"
    listed = system.cli_ok("key", "list", ref, "--json")
    assert listed == {"keys": [
        {"publicKey": project["publicKey"], "numericId": project["numericId"], "status": "active"},
        {"publicKey": created["publicKey"], "numericId": created["numericId"], "status": "disabled"}]}
    system.cli_ok("key", "enable", created["publicKey"])
    assert system.cli_ok("key", "list", ref, "--json")["keys"][1]["status"] == "active"
    system.cli_ok("key", "delete", created["publicKey"])
    assert [k["publicKey"] for k in system.cli_ok("key", "list", ref, "--json")["keys"]] == [project["publicKey"]]
    fails(system.cli("key", "disable", created["publicKey"]), f"No key matching `{created['publicKey']}`")
    fails(system.cli("key", "disable", "xyz"), "not a valid project key")
    fails(system.cli("key", "create", f"{project['org']}/missing"), f"No project matching `{project['org']}/missing`")


# -- relays -----------------------------------------------------------------------------------

def test_relays(system: SystemUnderTest) -> None:
    """relay allow / deny show up in `relay list --json` with the documented fields."""
    internal, banned = relay_key(), relay_key()
    assert system.cli_ok("relay", "allow", internal, "--internal") == f"Allowed relay `{internal}` (internal)\n"
    system.cli_ok("relay", "allow", banned)
    assert system.cli_ok("relay", "deny", banned) == f"Banned relay `{banned}`\n"
    relays = {r["publicKey"]: r for r in system.cli_ok("relay", "list", "--json")["relays"]}
    assert set(relays[internal]) == {"publicKey", "relayId", "internal", "banned", "version", "firstSeen",
                                     "lastSeen", "usage"}
    assert relays[internal]["internal"] is True and relays[internal]["banned"] is False
    assert relays[banned]["banned"] is True and relays[banned]["relayId"] is None
    assert "BANNED" in system.cli_ok("relay", "list")
    fails(system.cli("relay", "allow", "not-a-key"), "not a valid relay public key")


# -- users and permissions --------------------------------------------------------------------

def test_users_and_tokens(system: SystemUnderTest, user: str) -> None:
    """`token create --json` prints {"token": str}; a duplicate user or unknown user fails."""
    token = system.cli_ok("token", "create", user, "--json")
    assert set(token) == {"token"} and len(token["token"]) >= 32
    assert system.cli_ok("token", "create", user).strip() != token["token"]
    fails(system.cli("user", "create", user), f"User `{user}` already exists")
    fails(system.cli("token", "create", "nobody-here"), "No user matching `nobody-here`")


def test_usernames_with_dots_are_separate_users(system: SystemUnderTest) -> None:
    """User `x` can be created after user `x.y` (their events must not share a scope)."""
    base = unique("dot")
    system.cli_ok("user", "create", f"{base}.smith")
    system.cli_ok("user", "create", base)
    system.cli_ok("permissions", "add", "-u", base, "-p", "relay.admin")
    assert system.cli_ok("permissions", "list", "-u", f"{base}.smith", "--json")["permissions"] == []


def test_permissions_messages(system: SystemUnderTest, user: str) -> None:
    """add/remove/list print exactly the messages of BEHAVIOUR.md."""
    assert system.cli_ok("permissions", "add", "-u", user, "-p", "relay.admin") == \
        f"Added permission `relay.admin` to `{user}`\n"
    assert system.cli_ok("permissions", "add", "-u", user, "-p", "relay.admin") == \
        f"Permission already exists for `{user}`\n"
    system.cli_ok("permissions", "add", "--user", user, "--permission", "broadcasts.admin")
    assert system.cli_ok("permissions", "list", "-u", user) == \
        f"Permissions for `{user}`:\n- broadcasts.admin\n- relay.admin\n"
    assert system.cli_ok("permissions", "list", "-u", user, "--json") == \
        {"username": user, "permissions": ["broadcasts.admin", "relay.admin"]}
    assert system.cli_ok("permissions", "remove", "-u", user, "-p", "relay.admin") == \
        f"Removed permission `relay.admin` from `{user}`\n"
    assert system.cli_ok("permissions", "remove", "-u", user, "-p", "relay.admin") == \
        f"Permission does not exist for `{user}`\n"
    assert system.cli_ok("permissions", "list", "-u", user) == f"Permissions for `{user}`:\n- broadcasts.admin\n"


@pytest.mark.parametrize("args", [
    ("permissions", "add", "-u", "ghost-user", "-p", "relay.admin"),
    ("permissions", "remove", "-u", "ghost-user", "-p", "relay.admin"),
    ("permissions", "list", "-u", "ghost-user"),
])
def test_permissions_of_an_unknown_user(system: SystemUnderTest, args: tuple[str, ...]) -> None:
    """Every permissions command exits 1 with "No user matching `USER`" for an unknown user."""
    fails(system.cli(*args), "No user matching `ghost-user`")


def test_a_new_user_has_no_permissions(system: SystemUnderTest, user: str) -> None:
    """`permissions list` of a user without any prints just the heading."""
    assert system.cli_ok("permissions", "list", "-u", user) == f"Permissions for `{user}`:\n"


# -- configs ----------------------------------------------------------------------------------

def test_config_get_and_history(system: SystemUnderTest, project: dict[str, Any]) -> None:
    """`config get` prints the config right after a change; `config history` lists what changed it."""
    ref, key = f"{project['org']}/{project['slug']}", project["publicKey"]
    system.cli_ok("project", "option", "set", ref, "sentry:origins", '["https://x.example"]')
    config = system.cli_ok("config", "get", key, "--json")
    assert config["disabled"] is False and config["config"]["allowedDomains"] == ["https://x.example"]
    again = json.loads(system.cli_ok("config", "get", key))
    assert {k: v for k, v in again.items() if k != "lastFetch"} == \
        {k: v for k, v in config.items() if k != "lastFetch"}
    events = system.cli_ok("config", "history", key, "--json")["events"]
    assert [e["type"] for e in events] == ["OrgCreated", "ProjectCreated", "KeyCreated", "ProjectOptionSet"]
    assert [e["sequence"] for e in events] == sorted(e["sequence"] for e in events)
    assert events[0]["actor"].startswith("cli")
    fails(system.cli("config", "get", "short"), "is not a project key")
    fails(system.cli("config", "get", "g" * 32), "is not a project key")
    fails(system.cli("config", "history", "f" * 32), f"No key matching `{'f' * 32}`")


# -- import -----------------------------------------------------------------------------------

def import_spec(suffix: str) -> dict[str, Any]:
    return {"orgs": [
        {"slug": f"imp-a-{suffix}", "name": "Importer A",
         "options": {"sentry:event_retention": 30, "ai:policy": "denied"},
         "trustedRelays": [{"public_key": relay_key(), "name": "edge"}],
         "projects": [
             {"slug": "web", "options": {"sentry:origins": "a.example\nb.example", "filters:localhost": True},
              "keys": [{"publicKey": uuid.uuid4().hex}, {"publicKey": uuid.uuid4().hex, "status": "disabled"}]},
             {"slug": "api"}]},
        {"slug": f"imp-b-{suffix}", "projects": [{"slug": "mobile", "name": "Mobile"}]},
    ]}


def write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_import_is_idempotent(system: SystemUnderTest, tmp_path: Path) -> None:
    """Importing a file loads everything; importing it again changes nothing and says so."""
    suffix = uuid.uuid4().hex[:8]
    spec = import_spec(suffix)
    path = write(tmp_path, "import.json", spec)
    first = system.cli_ok("import", path, "--json")
    assert set(first) == {"orgs", "projects", "keys", "events", "seconds"}
    assert (first["orgs"], first["projects"], first["keys"]) == (2, 3, 4)
    assert first["events"] == 2 + 3 + 3 + 2 + 4  # orgs, org options, projects, project options, keys
    second = system.cli_ok("import", path, "--json")
    assert {k: second[k] for k in ("orgs", "projects", "keys", "events")} == \
        {"orgs": 0, "projects": 0, "keys": 0, "events": 0}

    a = f"imp-a-{suffix}"
    assert system.cli_ok("org", "option", "get", a, "sentry:event_retention", "--json") == {"value": 30}
    assert system.cli_ok("project", "option", "get", f"{a}/web", "sentry:origins", "--json") == \
        {"value": ["a.example", "b.example"]}
    keys = system.cli_ok("key", "list", f"{a}/web", "--json")["keys"]
    assert [(k["publicKey"], k["status"]) for k in keys] == \
        [(k["publicKey"], k.get("status", "active")) for k in spec["orgs"][0]["projects"][0]["keys"]]
    assert len(system.cli_ok("key", "list", f"{a}/api", "--json")["keys"]) == 1
    assert "Imported 0 orgs, 0 projects, 0 keys (0 events)" in system.cli_ok("import", path)


def test_import_is_all_or_nothing_per_org(system: SystemUnderTest, tmp_path: Path) -> None:
    """An org with one invalid option value imports nothing of that org, and the error names it."""
    suffix = uuid.uuid4().hex[:8]
    spec = import_spec(suffix)
    bad = spec["orgs"][1]
    bad["projects"].append({"slug": "broken", "options": {"sentry:scrub_data": "sometimes"}})
    result = system.cli("import", write(tmp_path, "bad.json", spec))
    fails(result, f"imp-b-{suffix}.projects[1].options.sentry:scrub_data")
    # With --json the same error is the JSON error document on stdout (issue 16 item 11).
    result = system.cli("import", write(tmp_path, "bad.json", spec), "--json")
    assert result.exit_code == 1 and result.stderr.startswith("error: ")
    assert f"imp-b-{suffix}.projects[1].options.sentry:scrub_data" in result.json()["error"]["message"]
    fails(system.cli("key", "list", f"imp-b-{suffix}/mobile"), f"No organization matching `imp-b-{suffix}`")
    assert len(system.cli_ok("key", "list", f"imp-a-{suffix}/web", "--json")["keys"]) == 2


def test_import_file_errors(system: SystemUnderTest, tmp_path: Path) -> None:
    """A file that is not JSON, or not {"orgs": [...]}, fails with exit 1; a missing file with 2."""
    fails(system.cli("import", write(tmp_path, "x.json", "{not json")), "is not valid JSON")
    fails(system.cli("import", write(tmp_path, "y.json", {"projects": []})), 'expected {"orgs": [...]}')
    fails(system.cli("import", write(tmp_path, "z.json", {"orgs": [{"slug": "Bad Slug"}]})), "org.slug")
    fails(system.cli("import", str(tmp_path / "missing.json")), "No such file", code=2)


# -- read-your-writes -------------------------------------------------------------------------

def test_read_your_writes(system: SystemUnderTest) -> None:
    """Each change is visible to the very next command."""
    for _ in range(5):
        slug = unique("ryw")
        system.cli_ok("org", "create", slug)
        system.cli_ok("org", "option", "set", slug, "ai:policy", '"denied"')
        assert system.cli_ok("org", "option", "get", slug, "ai:policy", "--json") == {"value": "denied"}
        created = system.cli_ok("project", "create", slug, "web", "--json")
        system.cli_ok("key", "disable", created["publicKey"])
        assert system.cli_ok("key", "list", f"{slug}/web", "--json")["keys"][0]["status"] == "disabled"
        assert system.cli_ok("config", "get", created["publicKey"], "--json") == {"disabled": True}


# -- usage errors and connection errors -------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("org", "create"),
    ("org", "frobnicate"),
    ("project", "option", "get", "no-slash", "sentry:origins"),
    ("key", "list", "a/b/c"),
    ("permissions", "add", "-p", "relay.admin"),
    ("org", "create", "x", "--bogus"),
])
def test_usage_errors_exit_2(system: SystemUnderTest, args: tuple[str, ...]) -> None:
    """Missing arguments, unknown commands and options, and malformed ORG/PROJECT exit 2."""
    result = system.cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr


def test_no_nats_is_a_clear_error(tmp_path: Path) -> None:
    """Without `up` or --nats-url, and with a NATS that is down, commands fail with exit 1."""
    runner = CliRunner(env={"RELAYCTL_NATS_URL": None})
    result = runner.invoke(cli_main, ["--data-dir", str(tmp_path), "org", "create", "x"])
    assert result.exit_code == 1 and "no NATS to talk to" in result.stderr
    result = runner.invoke(cli_main, ["--nats-url", "nats://127.0.0.1:1", "org", "create", "x"])
    assert result.exit_code == 1 and "cannot connect to NATS" in result.stderr
    assert "Traceback" not in result.stderr
