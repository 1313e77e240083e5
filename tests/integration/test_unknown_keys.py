"""One answer for "unknown" (issue 16 item 8), through the real `relayctl` script: an
option key the catalogue lacks is refused by get and unset as by set, and `config get` of
a project key nobody created fails as `config history` does."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.system import Relayctl, SystemUnderTest


@pytest.fixture(scope="module")
def cli(system: SystemUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Relayctl:
    return Relayctl(system.nats_url, tmp_path_factory.mktemp("cli") / "data")


@pytest.fixture(scope="module")
def project(cli: Relayctl) -> dict[str, str]:
    org = f"unk-{uuid.uuid4().hex[:8]}"
    cli.ok("org", "create", org)
    created = cli.ok("project", "create", org, "web", "--json")
    return {"org": org, "ref": f"{org}/web", "key": created["publicKey"]}


def refused(cli: Relayctl | SystemUnderTest, args: tuple[str, ...], text: str) -> None:
    """Exit 1, `text` on stderr, nothing on stdout: from the real script (a `Relayctl`), or
    in-process (the system's CliRunner) for the long lists of cases."""
    if isinstance(cli, Relayctl):
        run = cli.run(*args)
        code, stdout, stderr = run.returncode, run.stdout, run.stderr
    else:
        result = cli.cli(*args)
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    assert code == 1, (args, stdout, stderr)
    assert stdout == "" and text in stderr and "Traceback" not in stderr, stderr


def test_unknown_option_keys_are_refused_by_get_set_and_unset(cli: Relayctl, system: SystemUnderTest,
                                                              project: dict[str, str]) -> None:
    org, ref = project["org"], project["ref"]
    # The real script: get and unset answer as set does.
    for verb, *value in (("set", "1"), ("get",), ("unset",)):
        refused(cli, ("org", "option", verb, org, "sentry:nonsense", *value), "unknown option 'sentry:nonsense'")
    # Every other case, in-process: project scope, and a key of the other scope.
    for verb, *value in (("set", "1"), ("get",), ("unset",)):
        refused(system, ("project", "option", verb, ref, "sentry:nonsense", *value),
                "unknown option 'sentry:nonsense'")
    for verb, *value in (("set", '["*"]'), ("get",), ("unset",)):
        refused(system, ("org", "option", verb, org, "sentry:origins", *value), "sentry:origins is not an org option")
    for verb, *value in (("set", "30"), ("get",), ("unset",)):
        refused(system, ("project", "option", verb, ref, "sentry:event_retention", *value),
                "sentry:event_retention is not a project option")
    # With --json, the error document names the kind.
    assert cli.json_error("org", "option", "get", org, "sentry:nonsense", "--json") == \
        {"code": "bad_request", "message": "unknown option 'sentry:nonsense'"}
    # Known keys still read their default and unset quietly.
    assert cli.ok("org", "option", "get", org, "sentry:event_retention", "--json") == {"value": 90}
    cli.ok("project", "option", "unset", ref, "sentry:origins")
    assert cli.ok("project", "option", "get", ref, "filters:some-new-filter", "--json") == {"value": "0"}


def test_config_get_of_an_unknown_key_says_not_found(cli: Relayctl, project: dict[str, str],
                                                     tmp_path: Path) -> None:
    nobody = uuid.uuid4().hex
    refused(cli, ("config", "get", nobody), f"No key matching `{nobody}`")
    refused(cli, ("config", "history", nobody), f"No key matching `{nobody}`")
    assert cli.json_error("config", "get", nobody, "--json") == \
        {"code": "not_found", "message": f"No key matching `{nobody}`"}
    # Malformed keys: one answer from both commands.
    for command in ("get", "history"):
        refused(cli, ("config", command, "short"), "`short` is not a project key (32 hex characters)")
    # A key that exists but is disabled is still {"disabled": true}, as relays get it.
    cli.ok("key", "disable", project["key"])
    assert cli.ok("config", "get", project["key"], "--json") == {"disabled": True}
    cli.ok("key", "enable", project["key"])
    assert cli.ok("config", "get", project["key"], "--json")["disabled"] is False
