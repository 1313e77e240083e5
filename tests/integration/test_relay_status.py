"""`relayctl relay status RELAY_ID_OR_KEY` (issue 16 item 18), through the real script:
state, ids and versions, last registration and config fetch, last error, what it may see."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import sentry_relay

from gateway.keys import RELAY_ACTIVITY
from tests.system import RelayClient, Relayctl, SystemUnderTest

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def cli(system: SystemUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Relayctl:
    # The in-process gateway writes what it saw within 0.2 s, not 10 s: the test need not wait.
    assert system.gateway is not None
    activity = system.gateway.app[RELAY_ACTIVITY]
    activity.write_every = activity.error_write_every = 0.2
    return Relayctl(system.nats_url, tmp_path_factory.mktemp("cli") / "data")


def status_until(cli: Relayctl, ref: str, ready: Any) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 10
    while True:
        doc: dict[str, Any] = cli.ok("relay", "status", ref, "--json")
        if ready(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def test_unknown_relay(cli: Relayctl) -> None:
    nobody = str(uuid.uuid4())
    result = cli.run("relay", "status", nobody)
    assert result.returncode == 1 and f"No relay matching `{nobody}`" in result.stderr, result.stderr
    assert cli.json_error("relay", "status", nobody, "--json")["code"] == "not_found"


def test_an_allowed_relay_that_never_registered(cli: Relayctl) -> None:
    key = str(sentry_relay.generate_key_pair()[1])
    cli.ok("relay", "allow", "--", key)
    doc = cli.ok("relay", "status", "--json", "--", key)
    assert doc["state"] == "allowed, never registered" and doc["relayId"] is None
    assert doc["lastConfigFetch"] is None and doc["lastError"] is None and doc["lastRegistration"] is None
    assert doc["sees"] == {"everyOrg": False, "trustedBy": [], "trustedByCount": 0}
    assert "may see:            no org" in cli.ok("relay", "status", "--", key)


def test_a_registered_relay_shows_its_fetches_errors_and_orgs(cli: Relayctl, system: SystemUnderTest) -> None:
    relay = RelayClient(system.url, version="24.11.2")
    org = f"rs-{uuid.uuid4().hex[:8]}"
    cli.ok("org", "create", org)
    key = cli.ok("project", "create", org, "web", "--json")["publicKey"]
    cli.ok("relay", "allow", "--", relay.public_key_str)
    cli.ok("org", "trust-relay", org, "--", relay.public_key_str)
    relay.register()
    assert relay.configs([key])[0] == 200
    assert relay.post("projectconfigs/?version=3", {"publicKeys": [key]}, signature="not-a-signature")[0] == 401

    doc = status_until(cli, relay.relay_id, lambda d: d["lastConfigFetch"] and d["lastError"])
    assert doc["publicKey"] == relay.public_key_str and doc["state"] == "registered" and not doc["internal"]
    assert doc["relayId"] == relay.relay_id and doc["relayIds"] == [relay.relay_id]
    assert doc["version"] == "24.11.2" and [u["version"] for u in doc["usage"]] == ["24.11.2"]
    for when in (doc["firstSeen"], doc["lastRegistration"], doc["lastConfigFetch"]["at"], doc["lastError"]["at"]):
        assert RFC3339_UTC.match(when), doc
    assert doc["lastConfigFetch"]["version"] == "3"
    assert doc["lastError"]["status"] == 401 and doc["lastError"]["route"] == "/api/0/relays/projectconfigs/"
    assert doc["sees"] == {"everyOrg": False, "trustedBy": [org], "trustedByCount": 1}
    # The same relay by its public key; the text form says it all in lines.
    assert cli.ok("relay", "status", "--json", "--", relay.public_key_str)["relayId"] == relay.relay_id
    text = cli.ok("relay", "status", relay.relay_id)
    assert f"may see:            1 org(s) trusting it: {org}" in text and "answered 401" in text
    assert "last config fetch:  " in text and "(protocol v3)" in text

    cli.ok("relay", "allow", "--internal", "--", relay.public_key_str)
    assert cli.ok("relay", "status", relay.relay_id, "--json")["sees"]["everyOrg"] is True
    cli.ok("relay", "deny", "--", relay.public_key_str)
    banned = cli.ok("relay", "status", relay.relay_id, "--json")
    assert banned["state"] == "banned" and banned["sees"]["everyOrg"] is False
