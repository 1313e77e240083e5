"""Signed relay calls and the small relay endpoints (PROTOCOL.md sections 1-3, 7):
authentication of every signed call, `publickeys/`, `projectids/` and `live/`."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import sentry_relay

from tests.integration.test_relay_registration import sign_at
from tests.system import RelayClient, SystemUnderTest, http_request

SIGNED_PATHS = ["projectconfigs/?version=3", "publickeys/", "projectids/"]
BODIES: dict[str, dict[str, Any]] = {"projectconfigs/?version=3": {"publicKeys": []}, "publickeys/": {"relay_ids": []},
          "projectids/": {"publicKeys": []}}


@pytest.fixture(scope="module")
def relay(system: SystemUnderTest) -> RelayClient:
    return system.registered_relay()


# -- live -----------------------------------------------------------------------------------------

def test_live_needs_no_auth(system: SystemUnderTest) -> None:
    """`GET live/` answers 200 {"is_healthy": true} to anyone."""
    status, headers, body = http_request(system.url + "/api/0/relays/live/")
    assert status == 200 and json.loads(body) == {"is_healthy": True}
    assert headers["content-type"].startswith("application/json")


# -- authentication of signed calls ----------------------------------------------------------------

@pytest.mark.parametrize("path", SIGNED_PATHS)
def test_signed_call_succeeds(relay: RelayClient, path: str) -> None:
    """A registered relay's freshly signed call is answered 200."""
    status, _ = relay.post(path, BODIES[path])
    assert status == 200


@pytest.mark.parametrize("path", SIGNED_PATHS)
def test_unknown_relay_is_401(system: SystemUnderTest, path: str) -> None:
    """A signed call from a relay that never registered answers 401 with a detail."""
    stranger = RelayClient(system.url)
    status, data = stranger.post(path, BODIES[path])
    assert status == 401 and data["detail"]


@pytest.mark.parametrize("path", SIGNED_PATHS)
def test_allowed_but_unregistered_relay_is_401(system: SystemUnderTest, path: str) -> None:
    """Being allowed is not being registered: signed calls answer 401 until registration."""
    pending = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--internal", "--", pending.public_key_str)
    status, data = pending.post(path, BODIES[path])
    assert status == 401 and data["detail"]


@pytest.mark.parametrize("path", SIGNED_PATHS)
def test_missing_signature_is_401(relay: RelayClient, path: str) -> None:
    """A call without the signature header, or without any relay header, answers 401."""
    status, data = relay.post(path, BODIES[path], sign=False, headers={"X-Sentry-Relay-Id": relay.relay_id})
    assert status == 401 and data["detail"]
    status, data = relay.post(path, BODIES[path], sign=False)
    assert status == 401 and data["detail"]


@pytest.mark.parametrize("path", SIGNED_PATHS)
def test_bad_signature_is_401(relay: RelayClient, path: str) -> None:
    """A signature by another key, over other bytes, or not a signature at all answers 401."""
    raw = json.dumps(BODIES[path]).encode()
    other, _ = sentry_relay.generate_key_pair()
    for signature in (other.sign(raw), relay.secret_key.sign(raw + b" "), "garbage", "a.b"):
        status, data = relay.post(path, raw, signature=signature)
        assert status == 401 and data["detail"], signature


def test_signature_of_another_relay_id_is_401(system: SystemUnderTest, relay: RelayClient) -> None:
    """A relay signing with its own key while claiming another registered relay's id answers 401."""
    other = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--internal", "--", other.public_key_str)
    other.register()
    status, data = other.post("projectconfigs/?version=3", {"publicKeys": []}, relay_id=relay.relay_id)
    assert status == 401 and data["detail"]


@pytest.mark.parametrize("path", SIGNED_PATHS)
def test_signature_older_than_300s_is_401(relay: RelayClient, path: str) -> None:
    """A signature older than 300 s answers 401, one a few minutes old is still good."""
    raw = json.dumps(BODIES[path]).encode()
    status, data = relay.post(path, raw, signature=sign_at(relay.secret_key, raw, time.time() - 330))
    assert status == 401 and data["detail"]
    status, _ = relay.post(path, raw, signature=sign_at(relay.secret_key, raw, time.time() - 200))
    assert status == 200


@pytest.mark.parametrize("path", SIGNED_PATHS)
def test_banned_relay_is_401(system: SystemUnderTest, path: str) -> None:
    """Once `relayctl relay deny` bans a registered relay, its signed calls answer 401."""
    banned = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--internal", "--", banned.public_key_str)
    banned.register()
    assert banned.post(path, BODIES[path])[0] == 200
    system.cli_ok("relay", "deny", "--", banned.public_key_str)
    status, data = banned.post(path, BODIES[path])
    assert status == 401 and data["detail"]


@pytest.mark.parametrize("path", SIGNED_PATHS)
def test_bad_json_after_good_signature_is_400(relay: RelayClient, path: str) -> None:
    """A correctly signed body that is not JSON answers 400 {"detail": "No valid json body"}."""
    assert relay.post(path, b"{oops") == (400, {"detail": "No valid json body"})


@pytest.mark.parametrize("path", SIGNED_PATHS + ["register/challenge/", "register/response/"])
def test_deeply_nested_json_is_400(relay: RelayClient, path: str) -> None:
    """A signed body nested a hundred thousand levels deep answers 400, not a server error."""
    deep = b"[" * 100_000 + b"]" * 100_000
    assert relay.post(path, deep) == (400, {"detail": "No valid json body"})


@pytest.mark.parametrize("relay_id", ["", "x" * 5000, "../../etc", "\u00e9", str(uuid.uuid4()).upper()])
def test_odd_relay_id_headers_are_401(relay: RelayClient, relay_id: str) -> None:
    """A relay id header that names no registered relay answers 401, whatever it contains."""
    try:
        relay_id.encode("latin-1")
    except UnicodeEncodeError:
        pytest.skip("not sendable as an HTTP header")
    status, data = relay.post("projectconfigs/?version=3", {"publicKeys": []}, relay_id=relay_id or " ")
    assert status == 401 and data["detail"]


# -- publickeys/ -------------------------------------------------------------------------------------

def test_publickeys_known_and_unknown(system: SystemUnderTest, relay: RelayClient) -> None:
    """`publickeys/` answers an internal caller each registered relay's key and internal
    flag, and null for unknown ids."""
    external = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--", external.public_key_str)
    external.register()
    unknown = str(uuid.uuid4())
    status, data = relay.post("publickeys/", {"relay_ids": [relay.relay_id, external.relay_id, unknown]})
    assert status == 200
    assert data == {
        "public_keys": {relay.relay_id: relay.public_key_str, external.relay_id: external.public_key_str,
                        unknown: None},
        "relays": {relay.relay_id: {"publicKey": relay.public_key_str, "internal": True},
                   external.relay_id: {"publicKey": external.public_key_str, "internal": False},
                   unknown: None},
    }
    sentry_relay.PublicKey.parse(data["public_keys"][relay.relay_id])


def test_publickeys_tells_an_external_relay_no_one_is_internal(system: SystemUnderTest, relay: RelayClient) -> None:
    """As Sentry: an external caller gets every relay's key but `internal: false` for all,
    itself and internal relays included."""
    external = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--", external.public_key_str)
    external.register()
    status, data = external.post("publickeys/", {"relay_ids": [relay.relay_id, external.relay_id]})
    assert status == 200
    assert data["public_keys"] == {relay.relay_id: relay.public_key_str, external.relay_id: external.public_key_str}
    assert data["relays"] == {relay.relay_id: {"publicKey": relay.public_key_str, "internal": False},
                              external.relay_id: {"publicKey": external.public_key_str, "internal": False}}


@pytest.mark.parametrize("body", [b"[]", b"{}", b'{"relay_ids": "x"}', b'{"relay_ids": [1]}',
                                  b'{"relay_ids": [null]}', b'{"relay_ids": [""]}'])
def test_publickeys_malformed_is_4xx(relay: RelayClient, body: bytes) -> None:
    """Malformed `publickeys/` bodies answer 2xx or 4xx, never 5xx."""
    assert relay.post("publickeys/", body)[0] < 500


# -- projectids/ -------------------------------------------------------------------------------------

def test_projectids_known_unknown_and_invalid(system: SystemUnderTest, relay: RelayClient) -> None:
    """`projectids/` maps existing keys to their project id and leaves unknown and non-hex keys out."""
    a, b = system.new_project(), system.new_project()
    unknown = uuid.uuid4().hex
    keys = [a["publicKey"], b["publicKey"], unknown, "not-a-key", a["publicKey"].upper(), a["publicKey"] + "\n", 7]
    status, data = relay.post("projectids/", {"publicKeys": keys})
    assert status == 200
    assert data == {"projectIds": {a["publicKey"]: a["id"], b["publicKey"]: b["id"]}}


def test_projectids_empty(relay: RelayClient) -> None:
    """An empty `projectids/` request answers an empty map."""
    assert relay.post("projectids/", {"publicKeys": []}) == (200, {"projectIds": {}})


@pytest.mark.parametrize("body", [b"[]", b"{}", b'{"publicKeys": "x"}', b'{"publicKeys": null}'])
def test_projectids_malformed_is_4xx(relay: RelayClient, body: bytes) -> None:
    """Malformed `projectids/` bodies answer 4xx, never 5xx."""
    status, _ = relay.post("projectids/", body)
    assert 400 <= status < 500
