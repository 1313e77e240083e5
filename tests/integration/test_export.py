"""`relayctl export FILE`: everything `import` reads, so a system can be moved by file.

Two systems of their own (each an empty NATS + Redis and the actors): one is filled with
the CLI, exported, and the file imported into the other, which must then serve the same
configs for every key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_relay

from bus.embedded import start_nats, start_redis
from tests.system import SystemUnderTest

ACTORS = ["commands", "keys", "orgs", "configs"]
VOLATILE = ("lastFetch", "lastChange", "rev")


def empty_system(path: Path) -> SystemUnderTest:
    nats = start_nats(path / "nats", log_path=path / "nats.log")
    redis = start_redis(path / "redis", log_path=path / "redis.log")
    sut = SystemUnderTest(nats.url, redis.url, actors=ACTORS)
    sut.servers = (nats, redis)  # type: ignore[attr-defined]
    try:
        return sut.start(with_gateway=False)
    except BaseException:
        nats.stop()
        redis.stop()
        raise


def stop_system(sut: SystemUnderTest) -> None:
    try:
        sut.stop()
    finally:
        for server in sut.servers:  # type: ignore[attr-defined]
            server.stop()


@pytest.fixture
def two_systems(tmp_path: Path) -> Iterator[tuple[SystemUnderTest, SystemUnderTest]]:
    source = empty_system(tmp_path / "source")
    try:
        target = empty_system(tmp_path / "target")
    except BaseException:
        stop_system(source)
        raise
    try:
        yield source, target
    finally:
        stop_system(target)
        stop_system(source)


def fill(sut: SystemUnderTest) -> list[str]:
    """Orgs with options and trusted relays, projects with options, active and disabled keys;
    made org by org, the order an import replays. Returns every public key."""
    relay_key = str(sentry_relay.generate_key_pair()[1])
    keys = []
    sut.cli_ok("org", "create", "acme", "--name", "Acme Inc")
    sut.cli_ok("org", "option", "set", "acme", "sentry:require_scrub_ip_address", "true")
    sut.cli_ok("org", "trust-relay", "acme", relay_key, "--name", "edge", "--description", "the edge relay")
    web = sut.cli_ok("project", "create", "acme", "web", "--name", "Web", "--json")
    keys.append(web["publicKey"])
    sut.cli_ok("project", "option", "set", "acme/web", "sentry:origins", '["example.com"]')
    sut.cli_ok("project", "option", "set", "acme/web", "filters:localhost", '"1"')
    second = sut.cli_ok("key", "create", "acme/web", "--json")["publicKey"]
    keys.append(second)
    sut.cli_ok("key", "disable", second)
    api = sut.cli_ok("project", "create", "acme", "api", "--json")
    keys.append(api["publicKey"])
    sut.cli_ok("project", "option", "set", "acme/api", "sentry:scrub_data", "false")
    sut.cli_ok("org", "create", "globex")
    keys.append(sut.cli_ok("project", "create", "globex", "shop", "--json")["publicKey"])
    return keys


def served_config(sut: SystemUnderTest, public_key: str) -> dict[str, Any]:
    doc: dict[str, Any] = sut.cli_ok("config", "get", public_key, "--json")
    return {k: v for k, v in doc.items() if k not in VOLATILE}


def test_export_then_import_serves_identical_configs(
        two_systems: tuple[SystemUnderTest, SystemUnderTest], tmp_path: Path) -> None:
    """An export holds orgs (options, trusted relays), projects (options) and keys (status);
    importing it into an empty system serves the same config for every key."""
    source, target = two_systems
    keys = fill(source)
    path = tmp_path / "export.json"
    summary = source.cli_ok("export", str(path), "--json")
    exported = json.loads(path.read_text())
    print(f"\nexport: {summary}")
    assert summary == {"orgs": 2, "projects": 3, "keys": 4, "file": str(path)}
    acme = exported["orgs"][0]
    assert acme["slug"] == "acme" and acme["name"] == "Acme Inc"
    assert acme["options"] == {"sentry:require_scrub_ip_address": True}
    assert [(r["name"], r["description"]) for r in acme["trustedRelays"]] == [("edge", "the edge relay")]
    web = acme["projects"][0]
    assert web["options"] == {"sentry:origins": ["example.com"], "filters:localhost": "1"}
    assert [(k["publicKey"], k["status"]) for k in web["keys"]] == [(keys[0], "active"), (keys[1], "disabled")]

    imported = target.cli_ok("import", str(path), "--json")
    print(f"import: {imported}")
    assert {k: imported[k] for k in ("orgs", "projects", "keys")} == {"orgs": 2, "projects": 3, "keys": 4}
    for public_key in keys:
        before, after = served_config(source, public_key), served_config(target, public_key)
        assert after == before, public_key
    print(f"identical configs for {len(keys)} keys (1 disabled), apart from {', '.join(VOLATILE)}")
    again = tmp_path / "again.json"
    target.cli_ok("export", str(again))
    assert json.loads(again.read_text()) == exported, "an export of the import is the same file"


def test_export_to_stdout_and_errors(two_systems: tuple[SystemUnderTest, SystemUnderTest], tmp_path: Path) -> None:
    """`export -` prints the document; an unwritable path is an error on stderr, no traceback."""
    source, _ = two_systems
    assert json.loads(source.cli_ok("export", "-")) == {"orgs": []}
    result = source.cli("export", str(tmp_path / "missing-dir" / "x.json"))
    assert result.exit_code == 1 and "cannot write" in result.stderr and "Traceback" not in result.stderr
