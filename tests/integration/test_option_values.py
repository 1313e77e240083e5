"""Option values that pass a per-value check yet break configs (issue 10, items 10 and 16).

msgpack maps with non-string keys are refused, a project whose stored options cannot be
built never keeps the others from being served, and PII configs are validated as the
merge relays receive. Real NATS, JetStream, Redis, the actors, the gateway and the CLI."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import msgpack
import nats
import pytest
from sentry_relay.processing import pii_strip_event, validate_pii_config

from bus.client import subject_for
from bus.eventstore import JetStreamEventStore
from messages.events import DomainEvent
from tests.system import RelayClient, SystemUnderTest

# Relay validates the JSON text of this (`{"1": ...}`, applied as "1"), so it passed; the
# map stored had the int key 1, which the config builder cannot merge (TypeError).
INT_KEYED_PII = {"rules": {1: {"type": "ip", "redaction": {"method": "remove"}}},
                 "applications": {"$string": ["1"]}}


def raw_control(nats_url: str, message_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Send a control message as raw msgpack, exactly as any NATS client could; the reply map."""
    envelope = {"type": message_type, "v": 1, "id": uuid.uuid4().hex, "actor": "test",
                "deadline": time.time() + 10, "payload": payload}

    async def send() -> dict[str, Any]:
        nc = await nats.connect(nats_url)
        try:
            msg = await nc.request(subject_for(message_type), msgpack.packb(envelope, use_bin_type=True),
                                   timeout=10)
            reply: dict[str, Any] = msgpack.unpackb(msg.data, raw=False, strict_map_key=False)
            return reply
        finally:
            await nc.close()

    return asyncio.run(send())


@pytest.fixture(scope="module")
def relay(system: SystemUnderTest) -> RelayClient:
    return system.registered_relay()


def test_non_string_map_keys_are_refused_naming_the_path(system: SystemUnderTest, relay: RelayClient) -> None:
    """`project.option_set` with `{1: ...}` map keys gets a clear bad request naming the
    key and the path; nothing is stored, and the project's config is served as before."""
    project = system.new_project()
    before = relay.poll([project["publicKey"]], lambda r: project["publicKey"] in r["configs"])

    reply = raw_control(system.nats_url, "project.option_set",
                        {"org": project["org"], "project": project["slug"],
                         "key": "sentry:relay_pii_config", "value": INT_KEYED_PII})
    assert reply["ok"] is False, reply
    error = reply["error"]
    assert error["code"] == "bad_request", error
    assert "sentry:relay_pii_config" in error["message"] and "map key 1 at value.rules" in error["message"]

    reply = raw_control(system.nats_url, "org.option_set",
                        {"org": project["org"], "key": "sentry:relay_pii_config",
                         "value": {"rules": {}, "applications": {None: ["@ip"]}}})
    assert reply["ok"] is False and "map key None at value.applications" in reply["error"]["message"], reply

    option = system.cli("project", "option", "get", f"{project['org']}/{project['slug']}",
                        "sentry:relay_pii_config", "--json")
    assert option.exit_code == 0 and option.json()["value"] is None, option
    status, after = relay.configs([project["publicKey"]])
    assert status == 200 and after["configs"][project["publicKey"]]["rev"] == \
        before["configs"][project["publicKey"]]["rev"]


def append_legacy_option(nats_url: str, project: dict[str, Any], key: str, value: Any) -> None:
    """Store a ProjectOptionSet no command would decide today (as an older version stored
    it, or a bug might): straight into the event stream."""
    async def append() -> None:
        nc = await nats.connect(nats_url)
        try:
            event = DomainEvent("ProjectOptionSet", project["org"],
                                payload={"project": project["slug"], "key": key, "value": value})
            await JetStreamEventStore(nc).append([event], None)
        finally:
            await nc.close()

    asyncio.run(append())


def test_one_unbuildable_project_never_blocks_the_others(system: SystemUnderTest, relay: RelayClient) -> None:
    """A stored int-keyed PII config (accepted before validation refused it) builds as the
    JSON Relay validated. A project whose stored options cannot be built at all keeps its
    last good revision in the cache and is pending where a fresh build is asked for (v2,
    v3 noCache); every other key in the same request is served, and the failure is counted."""
    legacy, bad, good = system.new_project(), system.new_project(), system.new_project()
    last_good = relay.poll([bad["publicKey"]], lambda r: bad["publicKey"] in r["configs"])

    append_legacy_option(system.nats_url, legacy, "sentry:relay_pii_config", INT_KEYED_PII)
    append_legacy_option(system.nats_url, bad, "sentry:breakdowns",
                         {"ops": {"type": "spanOperations", "matches": [b"\xff-not-json"]}})
    # Later changes the builder picks up prove the legacy events have been folded.
    for project in (legacy, bad):
        system.cli_ok("project", "option", "set", f"{project['org']}/{project['slug']}",
                      "sentry:scrub_ip_address", "true")

    served = relay.poll([legacy["publicKey"]], lambda r: "project:1" in json.dumps(r["configs"]))
    pii_config = served["configs"][legacy["publicKey"]]["config"]["piiConfig"]
    assert pii_config["applications"] == {"$string": ["project:1"]}
    validate_pii_config(json.dumps(pii_config))

    keys = [bad["publicKey"], good["publicKey"], legacy["publicKey"]]
    status, v2 = relay.configs(keys, version=2)
    assert status == 200, v2
    assert good["publicKey"] in v2["configs"] and bad["publicKey"] not in v2["configs"]
    status, v3 = relay.configs(keys, version=3, noCache=True)
    assert status == 200, v3
    assert good["publicKey"] in v3["configs"] and legacy["publicKey"] in v3["configs"], v3
    assert bad["publicKey"] in v3["pending"] and bad["publicKey"] not in v3["configs"], v3
    # The cache keeps the last good revision of the unbuildable project.
    status, v3 = relay.configs(keys, version=3)
    assert status == 200 and good["publicKey"] in v3["configs"], v3
    assert v3["configs"][bad["publicKey"]]["rev"] == last_good["configs"][bad["publicKey"]]["rev"]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counters = system.cli_ok("metrics", "--json")["counters"]
        if any(k.startswith("config.build_failures") for k in counters):
            break
        time.sleep(0.2)
    assert any(k.startswith("config.build_failures") for k in counters)

    # The operator repairs it with an ordinary command; the project is served again.
    system.cli_ok("project", "option", "unset", f"{bad['org']}/{bad['slug']}", "sentry:breakdowns")
    relay.poll([bad["publicKey"]], lambda r: bad["publicKey"] in r["configs"]
               and r["configs"][bad["publicKey"]]["rev"] != last_good["configs"][bad["publicKey"]]["rev"])


def test_pii_configs_are_validated_as_the_merge_relays_get(system: SystemUnderTest, relay: RelayClient) -> None:
    """An org rule whose regex does not compile, a project applying an org rule under a name
    the merge does not have, and an org change that would leave a project's rule dangling
    are refused with the project named and Relay's words; a correct reference is served
    and scrubs."""
    project = system.new_project()
    org, ref = project["org"], f"{project['org']}/{project['slug']}"
    broken = {"rules": {"bad": {"type": "pattern", "pattern": "(", "redaction": {"method": "remove"}}}}
    tokens = {"rules": {"tok": {"type": "pattern", "pattern": "tok_[a-z]+", "redaction": {"method": "remove"}}}}

    refused = system.cli("org", "option", "set", org, "sentry:relay_pii_config", json.dumps(broken))
    assert refused.exit_code == 1 and "regex parse error" in refused.stderr, refused
    assert "rule `organization:bad`" in refused.stderr

    system.cli_ok("org", "option", "set", org, "sentry:relay_pii_config", json.dumps(tokens))
    refused = system.cli("project", "option", "set", ref, "sentry:relay_pii_config",
                         json.dumps({"applications": {"$string": ["tok"]}}))
    assert refused.exit_code == 1, refused
    assert f"project `{ref}`" in refused.stderr and "`tok` is not a rule" in refused.stderr

    system.cli_ok("project", "option", "set", ref, "sentry:relay_pii_config",
                  json.dumps({"applications": {"$string": ["organization:tok"]}}))
    served = relay.poll([project["publicKey"]], lambda r: "organization:tok" in json.dumps(
        r["configs"].get(project["publicKey"], {}).get("config", {}).get("piiConfig", {}).get("applications", {})))
    pii_config = served["configs"][project["publicKey"]]["config"]["piiConfig"]
    validate_pii_config(json.dumps(pii_config))
    assert "tok_" not in json.dumps(pii_strip_event(pii_config, {"message": "key tok_secret here"}))

    refused = system.cli("org", "option", "unset", org, "sentry:relay_pii_config")
    assert refused.exit_code == 1 and f"project `{ref}`" in refused.stderr, refused
    assert "`organization:tok` is not a rule" in refused.stderr
