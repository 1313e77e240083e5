"""Relay registration (PROTOCOL.md section 3): the challenge/response handshake as a real
Relay performs it, and every way the upstream refuses one."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sentry_relay
from sentry_relay.auth import SecretKey

from gateway.keys import SECRET
from tests.system import RelayClient, SystemUnderTest

# -- signatures with a chosen timestamp ---------------------------------------------------------
# `SecretKey.sign` always stamps "now"; a signature from the past needs the Ed25519
# signature made here (RFC 8032, section 5.1.6) over the same bytes Relay signs:
# `{"t":"<RFC 3339>"}` NUL body, written as b64(sig) "." b64(header).

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
Point = tuple[int, int, int, int]


def _point_add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    pa, pb = (y1 - x1) * (y2 - x2) % _P, (y1 + x1) * (y2 + x2) % _P
    pc, pd = 2 * t1 * t2 * _D % _P, 2 * z1 * z2 % _P
    e, f, g, h = pb - pa, pd - pc, pd + pc, pb + pa
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _scalar_mult(s: int, point: Point) -> Point:
    result: Point = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            result = _point_add(result, point)
        point = _point_add(point, point)
        s >>= 1
    return result


def _encode_point(point: Point) -> bytes:
    x, y, z, _ = point
    zinv = pow(z, _P - 2, _P)
    x, y = x * zinv % _P, y * zinv % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _base_point() -> Point:
    y = 4 * pow(5, _P - 2, _P) % _P
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if x & 1:
        x = _P - x
    return x, y, 1, x * y % _P


_G = _base_point()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _ed25519_sign(seed: bytes, message: bytes) -> bytes:
    digest = hashlib.sha512(seed).digest()
    a = (int.from_bytes(digest[:32], "little") & ((1 << 254) - 8)) | (1 << 254)
    public = _encode_point(_scalar_mult(a, _G))
    r = int.from_bytes(hashlib.sha512(digest[32:] + message).digest(), "little") % _L
    big_r = _encode_point(_scalar_mult(r, _G))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % _L
    return big_r + ((r + k * a) % _L).to_bytes(32, "little")


def sign_at(secret_key: SecretKey, body: bytes, when: float) -> str:
    """A relay signature of `body` stamped with the Unix time `when`, as Relay writes it."""
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = json.dumps({"t": stamp}, separators=(",", ":")).encode()
    seed = _unb64(str(secret_key))[:32]
    return _b64(_ed25519_sign(seed, header + b"\0" + body)) + "." + _b64(header)


def backdated_token(token: str, secret: str, seconds: int) -> str:
    """The same registration token, issued `seconds` earlier and sealed with the upstream's
    secret (Relay's token is base64(JSON state) ":" base64(HMAC-SHA512(secret, that)))."""
    state = json.loads(_unb64(token.split(":", 1)[0]))
    state["timestamp"] -= seconds
    payload = _b64(json.dumps(state, separators=(",", ":")).encode())
    return payload + ":" + _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha512).digest())


# -- helpers ------------------------------------------------------------------------------------

@pytest.fixture
def relay(system: SystemUnderTest) -> RelayClient:
    client = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--internal", "--", client.public_key_str)
    return client


def relays_listed(system: SystemUnderTest, public_key: str) -> list[dict[str, Any]]:
    return [r for r in system.cli_ok("relay", "list", "--json")["relays"] if r["publicKey"] == public_key]


def token_for(relay: RelayClient) -> str:
    status, data = relay.challenge()
    assert status == 200, data
    return data["token"]  # type: ignore[no-any-return]


def respond(relay: RelayClient, token: str, **overrides: Any) -> tuple[int, Any]:
    return relay.post("register/response/", {"relay_id": relay.relay_id, "token": token,
                                             "version": relay.version, **overrides})


# -- the helpers themselves ----------------------------------------------------------------------

def test_backdated_signature_is_a_real_relay_signature() -> None:
    """A signature made by `sign_at` for now is one Relay's own verifier accepts."""
    secret, public = sentry_relay.generate_key_pair()
    assert public.verify(b"{}", sign_at(secret, b"{}", time.time()), max_age=60)
    assert not public.verify(b"{}", sign_at(secret, b"{}", time.time() - 120), max_age=60)


# -- success --------------------------------------------------------------------------------------

def test_full_registration_records_the_relay(system: SystemUnderTest, relay: RelayClient) -> None:
    """Challenge then response register the relay with its id, version and first/last seen."""
    status, challenge = relay.challenge()
    assert status == 200
    assert challenge["relay_id"] == relay.relay_id and isinstance(challenge["token"], str)
    assert relays_listed(system, relay.public_key_str)[0]["relayId"] is None  # nothing stored yet
    status, data = respond(relay, challenge["token"])
    assert (status, data) == (200, {"relay_id": relay.relay_id})
    [listed] = relays_listed(system, relay.public_key_str)
    assert listed["relayId"] == relay.relay_id and listed["version"] == relay.version
    assert listed["firstSeen"] and listed["lastSeen"] and listed["internal"] and not listed["banned"]


def test_reregistration_is_idempotent(system: SystemUnderTest, relay: RelayClient) -> None:
    """Registering again (Relay does so every 10 minutes) succeeds and lists the relay once."""
    relay.register()
    first = relays_listed(system, relay.public_key_str)
    relay.register()
    relay.register()
    again = relays_listed(system, relay.public_key_str)
    assert len(again) == 1 and again[0]["relayId"] == relay.relay_id
    assert again[0]["firstSeen"] == first[0]["firstSeen"]
    status, _ = relay.configs([], version=3)
    assert status == 200


def test_relay_without_version_registers(system: SystemUnderTest, relay: RelayClient) -> None:
    """An old Relay that sends no version registers all the same."""
    body = {"relay_id": relay.relay_id, "public_key": relay.public_key_str}
    status, data = relay.post("register/challenge/", body)
    assert status == 200, data
    status, data = relay.post("register/response/", {"relay_id": relay.relay_id, "token": data["token"]})
    assert (status, data) == (200, {"relay_id": relay.relay_id})


def test_version_upgrade_is_recorded(system: SystemUnderTest, relay: RelayClient) -> None:
    """A relay re-registering with a newer version shows that version in the relay list."""
    relay.register()
    relay.version = "25.1.0"
    relay.register()
    assert relays_listed(system, relay.public_key_str)[0]["version"] == "25.1.0"


# -- challenge rejections ---------------------------------------------------------------------------

def test_challenge_with_invalid_json_is_400(relay: RelayClient) -> None:
    """A body that is not JSON answers 400 with Sentry's exact detail."""
    assert relay.post("register/challenge/", b"{not json") == (400, {"detail": "No valid json body"})
    assert relay.post("register/challenge/", b"\xff\xfe") == (400, {"detail": "No valid json body"})


@pytest.mark.parametrize("body", [
    {"public_key": "KEY", "version": "24.11.0"},
    {"relay_id": "not-a-uuid", "public_key": "KEY", "version": "24.11.0"},
    {"relay_id": "ID", "version": "24.11.0"},
    {"relay_id": "ID", "public_key": "", "version": "24.11.0"},
    {"relay_id": "ID", "public_key": "not a key", "version": "24.11.0"},
    {"relay_id": "ID", "public_key": 42, "version": "24.11.0"},
    {"relay_id": "ID", "public_key": "KEY", "version": 24},
    [],
    "a string",
], ids=["no-relay-id", "bad-relay-id", "no-public-key", "empty-public-key", "invalid-public-key",
        "public-key-not-string", "version-not-string", "list-body", "string-body"])
def test_challenge_with_missing_or_invalid_fields_is_400(relay: RelayClient, body: Any) -> None:
    """A challenge with a missing or malformed field answers 400 with a detail."""
    if isinstance(body, dict):
        body = {k: relay.relay_id if v == "ID" else relay.public_key_str if v == "KEY" else v
                for k, v in body.items()}
    status, data = relay.post("register/challenge/", body)
    assert status == 400 and isinstance(data, dict) and data["detail"]


def test_challenge_field_errors_name_the_field(relay: RelayClient) -> None:
    """Field errors say which field is wrong, like Sentry's serializer errors."""
    status, data = relay.post("register/challenge/", {"relay_id": "nope", "public_key": relay.public_key_str})
    assert status == 400 and "relay_id" in data["errors"]


def test_challenge_without_signature_is_400(relay: RelayClient) -> None:
    """A challenge without the signature header answers 400."""
    body = {"relay_id": relay.relay_id, "public_key": relay.public_key_str, "version": relay.version}
    status, data = relay.post("register/challenge/", body, sign=False,
                              headers={"X-Sentry-Relay-Id": relay.relay_id})
    assert status == 400 and data["detail"]
    status, data = relay.post("register/challenge/", body, sign=False)
    assert status == 400 and data["detail"]


def test_challenge_signed_by_another_key_is_400(relay: RelayClient) -> None:
    """A challenge whose signature was not made by the presented public key answers 400."""
    other, _ = sentry_relay.generate_key_pair()
    body = json.dumps({"relay_id": relay.relay_id, "public_key": relay.public_key_str,
                       "version": relay.version}).encode()
    status, data = relay.post("register/challenge/", body, signature=other.sign(body))
    assert status == 400 and data["detail"]
    status, data = relay.post("register/challenge/", body, signature="garbage")
    assert status == 400 and data["detail"]


def test_challenge_signed_over_other_bytes_is_400(relay: RelayClient) -> None:
    """A signature over a different body (e.g. re-serialized JSON) answers 400."""
    body = {"relay_id": relay.relay_id, "public_key": relay.public_key_str, "version": relay.version}
    raw = json.dumps(body).encode()
    status, data = relay.post("register/challenge/", raw, signature=relay.secret_key.sign(raw + b" "))
    assert status == 400 and data["detail"]


def test_challenge_with_old_signature_is_400(relay: RelayClient) -> None:
    """A challenge signed more than 60 s ago answers 400."""
    raw = json.dumps({"relay_id": relay.relay_id, "public_key": relay.public_key_str,
                      "version": relay.version}).encode()
    status, data = relay.post("register/challenge/", raw, signature=sign_at(relay.secret_key, raw, time.time() - 90))
    assert status == 400 and data["detail"]
    status, data = relay.post("register/challenge/", raw, signature=sign_at(relay.secret_key, raw, time.time() - 5))
    assert status == 200, data


def test_challenge_relay_id_differing_from_header_is_400(relay: RelayClient) -> None:
    """A body relay_id other than the X-Sentry-Relay-Id header answers 400."""
    body = {"relay_id": relay.relay_id, "public_key": relay.public_key_str, "version": relay.version}
    status, data = relay.post("register/challenge/", body, relay_id=str(uuid.uuid4()))
    assert status == 400 and data["detail"]


def test_known_relay_switching_public_key_is_400(system: SystemUnderTest, relay: RelayClient) -> None:
    """A registered relay id presenting another public key answers 400 with Sentry's detail."""
    relay.register()
    impostor = RelayClient(system.url)
    impostor.relay_id = relay.relay_id
    system.cli_ok("relay", "allow", "--internal", "--", impostor.public_key_str)
    assert impostor.challenge() == (400, {"detail": "Attempted to register agent with a different public key"})
    [listed] = relays_listed(system, relay.public_key_str)
    assert listed["relayId"] == relay.relay_id


def test_relay_not_allowed_is_403(system: SystemUnderTest) -> None:
    """A relay key the operator never allowed answers 403, without telling it to stop."""
    stranger = RelayClient(system.url)
    assert stranger.challenge() == (403, {"detail": "Relay is not allowed to register"})


def test_banned_relay_is_told_to_stop(system: SystemUnderTest, relay: RelayClient) -> None:
    """A banned relay gets 403 with "relay": "stop" on registration and 401 on signed calls."""
    relay.register()
    system.cli_ok("relay", "deny", "--", relay.public_key_str)
    status, data = relay.challenge()
    assert status == 403 and data["relay"] == "stop" and data["detail"]
    status, data = relay.configs([], version=3)
    assert status == 401 and data["detail"]
    assert relays_listed(system, relay.public_key_str)[0]["banned"]


def test_banned_before_response_is_told_to_stop(system: SystemUnderTest, relay: RelayClient) -> None:
    """A relay banned between challenge and response gets 403 "stop" and is not registered."""
    token = token_for(relay)
    system.cli_ok("relay", "deny", "--", relay.public_key_str)
    status, data = respond(relay, token)
    assert status == 403 and data["relay"] == "stop"
    assert relay.configs([], version=3)[0] == 401


def test_allowing_a_banned_relay_again_lifts_the_ban(system: SystemUnderTest, relay: RelayClient) -> None:
    """`relay allow` after `relay deny` lets the relay register and fetch configs again."""
    relay.register()
    system.cli_ok("relay", "deny", "--", relay.public_key_str)
    assert relay.challenge()[0] == 403
    system.cli_ok("relay", "allow", "--internal", "--", relay.public_key_str)
    relay.register()
    assert relay.configs([], version=3)[0] == 200


# -- one key, several relay ids ---------------------------------------------------------------------

def under_new_id(relay: RelayClient) -> RelayClient:
    """The same relay (same key pair) registering again under another relay id, as after
    its credentials file lost the id but kept the key."""
    again = RelayClient(relay.base_url, relay.version)
    again.secret_key, again.public_key = relay.secret_key, relay.public_key
    again.register()
    return again


def eventually(relay: RelayClient, keys: list[str], expected: tuple[int, Any], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while (answer := relay.configs(keys)) != expected:
        assert time.monotonic() < deadline, (relay.relay_id, answer)
        time.sleep(0.05)


UNAUTHORIZED = (403, "Relay unauthorized for config information")


def test_every_id_of_a_denied_relay_is_banned(system: SystemUnderTest, relay: RelayClient) -> None:
    """A key that registered under two relay ids and is then denied is banned under both:
    the earlier id keeps no access."""
    relay.register()
    again = under_new_id(relay)
    for client in (relay, again):
        assert client.configs([])[0] == 200
    system.cli_ok("relay", "deny", "--", relay.public_key_str)
    for client in (again, relay):
        eventually(client, [], (401, {"detail": "Relay is banned"}))


def test_every_id_of_a_demoted_relay_loses_internal_access(system: SystemUnderTest, relay: RelayClient) -> None:
    """Demoted from internal (and trusted by no org), a relay is refused configs under every
    id it registered under."""
    relay.register()
    again = under_new_id(relay)
    system.cli_ok("relay", "allow", "--", relay.public_key_str)
    for client in (again, relay):
        eventually(client, [], UNAUTHORIZED)


def test_every_id_of_an_untrusted_relay_loses_org_access(system: SystemUnderTest) -> None:
    """An external relay untrusted by the only org that trusted it loses that org's configs
    under every id it registered under."""
    project = system.new_project()
    key = project["publicKey"]
    relay = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--", relay.public_key_str)
    system.cli_ok("org", "trust-relay", "--", project["org"], relay.public_key_str)
    relay.register()
    again = under_new_id(relay)
    for client in (relay, again):
        client.poll([key], lambda r: r["configs"].get(key, {}).get("disabled") is False)
    system.cli_ok("org", "untrust-relay", "--", project["org"], relay.public_key_str)
    for client in (again, relay):
        eventually(client, [key], UNAUTHORIZED)


def test_unknown_relay_banned_up_front_is_told_to_stop(system: SystemUnderTest) -> None:
    """A key banned before it ever registered is told to stop on its first challenge."""
    relay = RelayClient(system.url)
    system.cli_ok("relay", "deny", "--", relay.public_key_str)
    status, data = relay.challenge()
    assert status == 403 and data["relay"] == "stop"


def test_not_allowed_relay_is_never_told_to_stop(system: SystemUnderTest) -> None:
    """Only a ban carries "relay": "stop", so an unknown relay keeps retrying until allowed."""
    relay = RelayClient(system.url)
    status, data = relay.challenge()
    assert status == 403 and "relay" not in data
    system.cli_ok("relay", "allow", "--", relay.public_key_str)
    relay.register()


@pytest.mark.parametrize("version", ["abc", "1.0"])
def test_unparsable_version_is_400(relay: RelayClient, version: str) -> None:
    """A version `sentry_relay` cannot parse answers 400 with a one-line detail, not 500."""
    relay.version = version
    status, data = relay.challenge()
    assert status == 400 and "\n" not in data["detail"]


# -- response rejections ----------------------------------------------------------------------------

def test_response_with_invalid_json_is_400(relay: RelayClient) -> None:
    """A response body that is not JSON answers 400 with Sentry's exact detail."""
    assert relay.post("register/response/", b"nope") == (400, {"detail": "No valid json body"})


@pytest.mark.parametrize("fields", [{"token": None}, {"token": ""}, {"token": 7}, {"relay_id": "x"},
                                    {"relay_id": None}, {"version": "abc"}],
                         ids=["no-token", "empty-token", "token-not-string", "bad-relay-id",
                              "null-relay-id", "bad-version"])
def test_response_with_missing_or_invalid_fields_is_400(relay: RelayClient, fields: dict[str, Any]) -> None:
    """A response with a missing or malformed field answers 400 and registers nothing."""
    body = {"relay_id": relay.relay_id, "token": token_for(relay), "version": relay.version, **fields}
    status, data = relay.post("register/response/", {k: v for k, v in body.items() if v is not None})
    assert status == 400 and data["detail"]
    assert relay.configs([], version=3)[0] == 401


def test_response_without_signature_is_400(relay: RelayClient) -> None:
    """A response without the signature header answers 400."""
    body = {"relay_id": relay.relay_id, "token": token_for(relay), "version": relay.version}
    status, data = relay.post("register/response/", body, sign=False, headers={"X-Sentry-Relay-Id": relay.relay_id})
    assert status == 400 and data["detail"]


def test_response_signed_by_another_key_is_400(system: SystemUnderTest, relay: RelayClient) -> None:
    """A response not signed by the key the token was issued to answers 400."""
    raw = json.dumps({"relay_id": relay.relay_id, "token": token_for(relay), "version": relay.version}).encode()
    other, _ = sentry_relay.generate_key_pair()
    status, data = relay.post("register/response/", raw, signature=other.sign(raw))
    assert status == 400 and data["detail"]
    assert relay.configs([], version=3)[0] == 401


def test_tampered_token_is_400(relay: RelayClient) -> None:
    """A token that was altered after it was issued answers 400."""
    token = token_for(relay)
    payload, mac = token.split(":", 1)
    state = json.loads(_unb64(payload))
    state["timestamp"] += 1
    forged = _b64(json.dumps(state, separators=(",", ":")).encode()) + ":" + mac
    status, data = respond(relay, forged)
    assert status == 400 and data["detail"]
    status, data = respond(relay, "not-a-token")
    assert status == 400 and data["detail"]


def test_token_of_another_relay_is_400(system: SystemUnderTest, relay: RelayClient) -> None:
    """A relay presenting a token issued to a different relay answers 400."""
    other = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--internal", "--", other.public_key_str)
    status, data = respond(other, token_for(relay))
    assert status == 400 and data["detail"]
    status, data = respond(other, token_for(relay), relay_id=relay.relay_id)
    assert status == 400 and data["detail"]


def test_response_relay_id_differing_from_header_is_400(relay: RelayClient) -> None:
    """A response whose body relay_id differs from the header answers 400."""
    body = {"relay_id": relay.relay_id, "token": token_for(relay), "version": relay.version}
    status, data = relay.post("register/response/", body, relay_id=str(uuid.uuid4()))
    assert status == 400 and data["detail"]


def test_expired_challenge_is_401(system: SystemUnderTest, relay: RelayClient) -> None:
    """A token issued more than 60 s ago answers 401 {"detail": "Challenge expired"}."""
    assert system.gateway is not None
    token = backdated_token(token_for(relay), system.gateway.app[SECRET], seconds=120)
    assert respond(relay, token) == (401, {"detail": "Challenge expired"})
    assert relay.configs([], version=3)[0] == 401
    fresh = backdated_token(token_for(relay), system.gateway.app[SECRET], seconds=5)
    assert respond(relay, fresh) == (200, {"relay_id": relay.relay_id})


def test_response_with_old_signature_is_refused(relay: RelayClient) -> None:
    """A response whose signature is older than 60 s is refused and registers nothing."""
    raw = json.dumps({"relay_id": relay.relay_id, "token": token_for(relay), "version": relay.version}).encode()
    status, data = relay.post("register/response/", raw, signature=sign_at(relay.secret_key, raw, time.time() - 90))
    assert status in (400, 401) and data["detail"]
    assert relay.configs([], version=3)[0] == 401
