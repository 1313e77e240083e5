"""What a newcomer meets first (issue 16 items 10 and 11), through the real `relayctl`
console script against a running system: help for every command, the option catalogue,
relay keys, the import format; `--json` on every change and JSON errors, RFC 3339 times."""

from __future__ import annotations

import json
import re
import stat
import uuid
from pathlib import Path

import click
import pytest
import sentry_relay

from cli.main import main as cli_main
from cli.option_docs import OPTION_DOCS, PREFIX_DOCS
from domain.options import OPTIONS, PREFIX_OPTIONS
from tests.system import RelayClient, Relayctl, SystemUnderTest

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture(scope="module")
def cli(system: SystemUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Relayctl:
    return Relayctl(system.nats_url, tmp_path_factory.mktemp("cli") / "data")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def every_command(group: click.Group = cli_main, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                                           click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in sorted(group.commands.items()):
        found.append(((*path, name), command))
        if isinstance(command, click.Group):
            found += every_command(command, (*path, name))
    return found


# -- item 10: help --------------------------------------------------------------------------

def test_every_command_and_option_says_what_it_does() -> None:
    """No command, group or option of the tree is without a description."""
    missing = [" ".join(path) for path, command in every_command() if not (command.help or "").strip()]
    assert missing == []
    bare = [f"{' '.join(path)} {param.name}" for path, command in every_command() for param in command.params
            if isinstance(param, click.Option) and not param.help]
    assert bare == []


def test_help_lists_a_description_for_every_command(cli: Relayctl) -> None:
    """`relayctl GROUP --help` shows a line of text beside every command: the real script
    for the top level, every group in-process."""
    from click.testing import CliRunner

    def listed(out: str) -> list[str]:
        return [line for line in out.split("Commands:\n", 1)[1].splitlines() if line.startswith("  ")]

    top = listed(cli.ok("--help"))
    assert len(top) >= 20 and all(len(line.split(None, 1)) == 2 for line in top), top
    for path in [path for path, command in every_command() if isinstance(command, click.Group)]:
        result = CliRunner().invoke(cli_main, [*path, "--help"])
        assert result.exit_code == 0, result.output
        lines = listed(result.output)
        assert lines and all(len(line.split(None, 1)) == 2 for line in lines), result.output


def test_option_list_is_the_catalogue(cli: Relayctl) -> None:
    """`option list --json` has one row per catalogue key (and the filters: prefix) with
    scope, type, default and meaning; `--scope` narrows it; the text form shows each key."""
    rows = cli.ok("option", "list", "--json")["options"]
    expected = [*OPTIONS, *(prefix + "<name>" for prefix in PREFIX_OPTIONS)]
    assert [r["key"] for r in rows] == expected
    for row in rows:
        assert set(row) == {"key", "scopes", "type", "default", "meaning"}
        assert row["type"] and row["meaning"] and set(row["scopes"]) <= {"org", "project"}
    assert {r["key"]: r["default"] for r in rows}["sentry:event_retention"] == 90
    org_rows = cli.ok("option", "list", "--scope", "org", "--json")["options"]
    assert {r["key"] for r in org_rows} == {k for k, spec in OPTIONS.items() if "org" in spec.scopes}
    text = cli.ok("option", "list")
    assert all(key in text for key in OPTIONS)
    # Every documented key is in the catalogue, and the other way round.
    assert set(OPTION_DOCS) == set(OPTIONS) and set(PREFIX_DOCS) == set(PREFIX_OPTIONS)


def test_option_set_help_describes_each_key_of_its_scope(cli: Relayctl) -> None:
    out = cli.ok("project", "option", "set", "--help")
    assert all(key in out for key, spec in OPTIONS.items() if "project" in spec.scopes)
    assert "sentry:event_retention" not in out  # an org option
    assert "how long events are kept" in cli.ok("org", "option", "set", "--help")


def test_dash_h_is_help_for_commands_taking_relay_keys(cli: Relayctl, system: SystemUnderTest) -> None:
    """`relay allow -h` prints help (no relay key is two characters long) and allows
    nothing; a key that starts with "-h" is still a key."""
    for args in (("relay", "allow", "-h"), ("relay", "deny", "-h"), ("org", "trust-relay", "-h")):
        out = cli.ok(*args)
        assert out.startswith("Usage: "), out
    assert all(r["publicKey"] != "-h" for r in cli.ok("relay", "list", "--json")["relays"])
    key = next(k for k in (str(sentry_relay.generate_key_pair()[1]) for _ in range(100_000)) if k.startswith("-h"))
    assert cli.ok("relay", "allow", key) == f"Allowed relay `{key}`\n"


def test_relay_keygen_makes_credentials_a_relay_registers_with(cli: Relayctl, system: SystemUnderTest,
                                                               tmp_path: Path) -> None:
    """`relay keygen` prints Relay's credentials.json; `-o FILE` writes it 0600 (never over
    an existing file); a relay using those credentials registers once allowed."""
    printed = cli.ok("relay", "keygen", "--json")
    assert set(printed) == {"secret_key", "public_key", "id"}
    path = tmp_path / "credentials.json"
    written = cli.ok("relay", "keygen", "-o", str(path), "--json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credentials = json.loads(path.read_text())
    assert written == {"public_key": credentials["public_key"], "id": credentials["id"], "file": str(path)}
    refused = cli.run("relay", "keygen", "-o", str(path))
    assert refused.returncode == 1 and "exists already" in refused.stderr
    assert json.loads(path.read_text()) == credentials

    relay = RelayClient(system.url)
    relay.secret_key = sentry_relay.SecretKey.parse(credentials["secret_key"])
    relay.public_key = sentry_relay.PublicKey.parse(credentials["public_key"])
    relay.relay_id = credentials["id"]
    cli.ok("relay", "allow", "--", credentials["public_key"])
    relay.register()
    listed = {r["publicKey"]: r for r in cli.ok("relay", "list", "--json")["relays"]}
    assert listed[credentials["public_key"]]["relayId"] == credentials["id"]


def test_import_help_describes_the_file_format(cli: Relayctl) -> None:
    out = cli.ok("import", "--help")
    for field in ('"orgs"', '"slug"', '"options"', '"trustedRelays"', '"projects"', '"keys"', '"publicKey"',
                  '"status"', "option list"):
        assert field in out, field


# -- item 11: --json everywhere, JSON errors, RFC 3339 ------------------------------------------

def test_every_change_takes_json(cli: Relayctl, system: SystemUnderTest, tmp_path: Path) -> None:
    """Every state-changing command prints one JSON document with --json."""
    org = unique("js")
    assert cli.ok("org", "create", org, "--json")["slug"] == org
    assert cli.ok("org", "option", "set", org, "sentry:event_retention", "30", "--json")["value"] == 30
    assert cli.ok("org", "option", "unset", org, "sentry:event_retention", "--json") == \
        {"org": org, "key": "sentry:event_retention", "unset": True}
    relay = str(sentry_relay.generate_key_pair()[1])
    assert cli.ok("org", "trust-relay", org, relay, "--json") == {"org": org, "publicKey": relay, "trusted": True}
    assert cli.ok("org", "untrust-relay", org, relay, "--json") == {"org": org, "publicKey": relay, "trusted": False}
    assert cli.ok("org", "template", "set", org, "base", '{"sentry:scrub_data": false}', "--json") == \
        {"org": org, "template": "base", "options": {"sentry:scrub_data": False}}
    project = cli.ok("project", "create", org, "web", "--json")
    ref = f"{org}/web"
    assert cli.ok("project", "option", "set", ref, "sentry:origins", '["a.example"]', "--json")["value"] == \
        ["a.example"]
    assert cli.ok("project", "option", "unset", ref, "sentry:origins", "--json") == \
        {"org": org, "project": "web", "key": "sentry:origins", "unset": True}
    for verb, status in (("disable", "disabled"), ("enable", "active"), ("delete", "deleted")):
        key = cli.ok("key", "create", ref, "--json")["publicKey"]
        assert cli.ok("key", verb, key, "--json") == {"publicKey": key, "status": status}
    for verb, status in (("disable", "disabled"), ("enable", "active")):
        assert cli.ok("project", verb, ref, "--json") == {"org": org, "project": "web", "status": status}
    assert cli.ok("relay", "allow", relay, "--json") == {"publicKey": relay, "allowed": True, "internal": False}
    assert cli.ok("relay", "deny", relay, "--json") == {"publicKey": relay, "banned": True}
    user = unique("u")
    cli.ok("user", "create", user, "--json")
    assert cli.ok("permissions", "add", "-u", user, "-p", "relay.admin", "--json") == \
        {"username": user, "permission": "relay.admin", "added": True}
    assert cli.ok("permissions", "remove", "-u", user, "-p", "relay.admin", "--json") == \
        {"username": user, "permission": "relay.admin", "removed": True}
    assert cli.ok("project", "delete", ref, "--json")["status"] == "deleted"
    assert project["publicKey"]


def test_errors_with_json_are_one_json_document(cli: Relayctl) -> None:
    """With --json an error is {"error": {"code", "message"}} on stdout (the message also on
    stderr, as without --json), and the exit status of the text form: 1 for a refused command, 2 for a usage error."""
    org = unique("err")
    cli.ok("org", "create", org)
    assert cli.json_error("org", "create", org, "--json") == \
        {"code": "conflict", "message": f"Organization `{org}` already exists"}
    assert cli.json_error("org", "create", "Not A Slug", "--json")["code"] == "bad_request"
    assert cli.json_error("org", "option", "get", "no-such-org", "ai:policy", "--json")["code"] == "not_found"
    assert cli.json_error("org", "option", "set", org, "ai:policy", "{nope", "--json")["code"] == "bad_request"
    assert cli.json_error("project", "option", "get", "noslash", "ai:policy", "--json", exit_code=2)["code"] == \
        "usage"
    missing = cli.json_error("org", "create", "--json", exit_code=2)
    assert missing["code"] == "usage" and "SLUG" in missing["message"]
    assert cli.json_error("org", "nonsense", "--json", exit_code=2)["code"] == "usage"
    # Without --json the same errors stay text on stderr.
    plain = cli.run("org", "create", org)
    assert plain.returncode == 1 and plain.stdout == "" and plain.stderr.startswith("error: ")


def test_json_timestamps_are_rfc3339_utc(cli: Relayctl, system: SystemUnderTest) -> None:
    """`relay list --json` and `config history --json` give times as RFC 3339 UTC."""
    relay = RelayClient(system.url)
    cli.ok("relay", "allow", "--", relay.public_key_str)
    relay.register()
    listed = {r["publicKey"]: r for r in cli.ok("relay", "list", "--json")["relays"]}[relay.public_key_str]
    assert RFC3339_UTC.match(listed["firstSeen"]) and RFC3339_UTC.match(listed["lastSeen"]), listed
    org = unique("ts")
    cli.ok("org", "create", org)
    key = cli.ok("project", "create", org, "web", "--json")["publicKey"]
    events = cli.ok("config", "history", key, "--json")["events"]
    assert events and all(RFC3339_UTC.match(e["ts"]) for e in events), events


# -- item 13: import does not carry ids, and says so ----------------------------------------------

def test_import_gives_its_own_ids_and_says_so(cli: Relayctl, tmp_path: Path) -> None:
    """An exported org imported again under another slug gets new project ids (public keys
    kept); the import says ids are this system's own, and `import --help` explains DSNs."""
    org = unique("exp")
    cli.ok("org", "create", org)
    original = cli.ok("project", "create", org, "web", "--json")
    exported = json.loads(cli.ok("export", "-"))
    [spec] = [o for o in exported["orgs"] if o["slug"] == org]
    spec["slug"] = unique("imp")
    spec["projects"][0]["keys"] = []  # new keys: the original one belongs to the first org
    path = tmp_path / "orgs.json"
    path.write_text(json.dumps({"orgs": [spec]}))
    out = cli.ok("import", str(path))
    assert "Ids are this system's own (public keys are kept)" in out
    assert "Ids are this system's own" not in cli.ok("import", str(path))  # nothing new: no note
    [key] = cli.ok("key", "list", f"{spec['slug']}/web", "--json")["keys"]
    config = cli.ok("config", "get", key["publicKey"], "--json")
    assert config["projectId"] != original["id"]
    assert "DSN names its project id" in cli.ok("import", "--help")
