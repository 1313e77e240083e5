"""Key lookup and org access, each fed requests over the in-memory bus."""

from __future__ import annotations

import json

import pytest

from actors.lookup import RELAY_AUTH_VALIDITY, KeyLookupActor, OrgAccessActor
from bus.config_cache import RELAY_AUTH_PREFIX, unseal
from bus.testing import ActorHarness, feed
from messages.errors import BadRequest
from messages.subjects import RELAY_AUTH_MAC_BUCKET, RELAY_CHANGED
from tests.unit.actors.conftest import INTERNAL_RELAY, KEY, ORG, OTHER_KEY, PROJECT, RELAY, STRANGER, given_project


def test_key_lookup_answers_known_and_unknown_keys(harness: ActorHarness) -> None:
    given_project(harness)
    harness.start(KeyLookupActor)
    answer = harness.ask("keys.lookup", {"public_keys": [KEY, OTHER_KEY]})
    assert answer == {KEY: {"projectId": 10, "organizationId": 1, "numericId": 100, "status": "active",
                            "projectStatus": "active", "rateLimit": None, "active": True},
                      OTHER_KEY: None}


def test_key_lookup_follows_a_disabled_project(harness: ActorHarness) -> None:
    given_project(harness)
    harness.given("ProjectDisabled", ORG, project=PROJECT)
    harness.start(KeyLookupActor)
    assert harness.ask("keys.lookup", {"public_keys": [KEY]})[KEY]["active"] is False


def test_key_lookup_sees_events_stored_after_it_started(harness: ActorHarness) -> None:
    harness.start(KeyLookupActor)
    assert harness.ask("keys.lookup", {"public_keys": [KEY]}) == {KEY: None}
    given_project(harness)
    assert harness.ask("keys.lookup", {"public_keys": [KEY]})[KEY]["projectId"] == 10


def test_an_endpoint_refuses_a_type_it_does_not_serve() -> None:
    """The harness goes through the same checks as a NATS service: schema and type."""
    with pytest.raises(BadRequest, match="public_keys"):
        feed(KeyLookupActor, "keys.lookup", {})


def test_feed_runs_one_message() -> None:
    events = [("OrgCreated", ORG, {"id": 1}), ("ProjectCreated", ORG, {"project": PROJECT, "id": 10}),
              ("KeyCreated", ORG, {"project": PROJECT, "public_key": KEY, "numeric_id": 7})]
    assert feed(KeyLookupActor, "keys.lookup", {"public_keys": [KEY]}, events=events)[KEY]["numericId"] == 7


def trust(h: ActorHarness, relay: str = RELAY) -> None:
    h.given("OrgOptionSet", ORG, key="sentry:trusted-relays", value=[{"public_key": relay, "name": "r"}])


def test_org_access_for_trusted_untrusted_and_internal_relays(harness: ActorHarness) -> None:
    given_project(harness)
    harness.given("OrgCreated", "other", id=2)
    trust(harness)
    harness.given("RelayAllowed", INTERNAL_RELAY, internal=True)
    harness.start(OrgAccessActor, None)
    assert harness.ask("org.has_access", {"relay_public_key": RELAY, "org_ids": [1, 2]}) == {"1": True, "2": False}
    assert harness.ask("org.has_access", {"relay_public_key": INTERNAL_RELAY, "org_ids": [1, 2]}) == {
        "1": True, "2": True}
    assert harness.ask("org.has_access", {"relay_public_key": STRANGER, "org_ids": [1]}) == {"1": False}


def test_relay_auth_by_id_and_by_key(harness: ActorHarness) -> None:
    given_project(harness)
    trust(harness)
    harness.given("RelayRegistered", RELAY, relay_id="id-1", version="24.1.0")
    harness.start(OrgAccessActor, None)
    answer = harness.ask("org.relay_auth", {"relay_id": "id-1", "public_key": RELAY})
    expected = {"relayId": "id-1", "publicKey": RELAY, "internal": False, "banned": False,
                "version": "24.1.0", "trusted": True}
    assert answer == {"byId": expected, "byKey": expected}
    assert harness.ask("org.relay_auth", {"relay_id": "nobody"}) == {"byId": None, "byKey": None}


def test_org_access_writes_sealed_relayauth_for_every_id_and_announces_changes(harness: ActorHarness) -> None:
    given_project(harness)
    harness.given("RelayRegistered", RELAY, relay_id="id-1")
    harness.given("RelayRegistered", RELAY, relay_id="id-2")
    harness.start(OrgAccessActor, harness.cache)
    key = harness.runtime.call(harness.bus.writer_key(RELAY_AUTH_MAC_BUCKET))
    for relay_id in ("id-1", "id-2"):
        name = RELAY_AUTH_PREFIX + relay_id
        entry = json.loads(unseal(key, name, harness.cache.values[name]) or b"null")
        assert entry["publicKey"] == RELAY and entry["relayId"] == relay_id and not entry["banned"]
        assert harness.cache.expires[name] > 0
    harness.given("RelayDenied", RELAY)
    # A read after the change is served once it is folded: by then the entries say banned.
    harness.ask("org.relay_auth", {"public_key": RELAY})
    for relay_id in ("id-1", "id-2"):
        name = RELAY_AUTH_PREFIX + relay_id
        assert json.loads(unseal(key, name, harness.cache.values[name]) or b"null")["banned"] is True
    announced = [data.decode() for _, data in harness.published(RELAY_CHANGED)]
    assert {"id-1", "id-2"} <= set(announced)
    assert RELAY_AUTH_VALIDITY > 0


def test_org_access_rewrites_everything_after_the_cache_restarted(harness: ActorHarness) -> None:
    given_project(harness)
    harness.given("RelayRegistered", RELAY, relay_id="id-1")
    ref = harness.start(OrgAccessActor, harness.cache)
    assert RELAY_AUTH_PREFIX + "id-1" in harness.cache.values
    harness.cache.restart()
    from actors.redis_watch import CheckRedis

    ref.ask(CheckRedis())
    assert RELAY_AUTH_PREFIX + "id-1" in harness.cache.values
