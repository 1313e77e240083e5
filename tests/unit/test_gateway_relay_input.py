"""Relay input sentry_relay cannot read is a 400 or 401, never a 503: the registration and
signed-request checks catch exactly what it raises (gateway/relay_auth.py
`RELAY_INPUT_ERRORS`) - its own errors, and the UnicodeEncodeError of text that is not
UTF-8 (a lone surrogate from a JSON escape, an undecodable header byte)."""

from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
import sentry_relay
from aiohttp import web

from gateway.app import create_app
from gateway.errors import HTTPFailure
from gateway.keys import INGEST, RELAY_AUTH, RELAY_AUTH_CACHE, SECRET
from gateway.registration import Registration, check_version

SURROGATE = "\udcff"  # what aiohttp makes of a header byte that is not UTF-8


def fake_request(body: bytes, headers: dict[str, str]) -> Any:
    async def read() -> bytes:
        return body

    return SimpleNamespace(headers=headers, read=read)


@pytest.fixture
def app() -> web.Application:
    app = create_app("nats://127.0.0.1:1", None, instrument_process=False)  # never started: no I/O
    app[SECRET] = "secret"
    return app


def status_of(call: Any) -> tuple[int, str]:
    with pytest.raises(HTTPFailure) as failure:
        asyncio.run(call)
    return failure.value.status, str(failure.value.detail)


def test_an_unreadable_version_is_400() -> None:
    for version in ("not a version", SURROGATE):
        with pytest.raises(HTTPFailure) as failure:
            check_version(version)
        assert failure.value.status == 400 and "Invalid relay version" in failure.value.detail


@pytest.mark.parametrize(("field", "value", "signature", "detail"), [
    ("public_key", "\ud800", "sig", "Invalid public key"),
    ("public_key", "not a key", "sig", "Invalid public key"),
    ("version", "\ud800", "sig", "Invalid relay version"),
    (None, None, SURROGATE, "Invalid relay signature"),
    (None, None, "not.a.signature", "Invalid relay signature"),
])
def test_a_challenge_it_cannot_read_is_400(app: web.Application, field: str | None, value: str | None,
                                           signature: str, detail: str) -> None:
    relay_id = str(uuid.uuid4())
    _, public_key = sentry_relay.generate_key_pair()
    data: dict[str, Any] = {"relay_id": relay_id, "public_key": str(public_key)}
    if field is not None:
        data[field] = value
    request = fake_request(json.dumps(data).encode(),
                           {"X-Sentry-Relay-Id": relay_id, "X-Sentry-Relay-Signature": signature})
    status, text = status_of(Registration(app).challenge(request))
    assert status == 400 and text.startswith(detail)


@pytest.mark.parametrize("signature", [SURROGATE, "not.a.signature"])
def test_a_response_it_cannot_read_is_400(app: web.Application, signature: str) -> None:
    relay_id = str(uuid.uuid4())
    request = fake_request(json.dumps({"relay_id": relay_id, "token": "t"}).encode(),
                           {"X-Sentry-Relay-Id": relay_id, "X-Sentry-Relay-Signature": signature})
    status, text = status_of(Registration(app).response(request))
    assert status == 400 and text.startswith("Invalid registration response")


@pytest.mark.parametrize("signature", [SURROGATE, "not.a.signature", "x" * 500])
def test_a_signed_call_it_cannot_read_is_401_and_an_envelope_only_unproven(app: web.Application,
                                                                          signature: str) -> None:
    relay_id = str(uuid.uuid4())
    _, public_key = sentry_relay.generate_key_pair()
    app[RELAY_AUTH_CACHE].put(relay_id, {"publicKey": str(public_key), "internal": True})
    request = fake_request(b"{}", {"X-Sentry-Relay-Id": relay_id, "X-Sentry-Relay-Signature": signature})
    assert status_of(app[RELAY_AUTH].authenticate(request, b"{}")) == (401, "Invalid relay signature")
    assert asyncio.run(app[INGEST].relay_of(request)) is None  # taken as an SDK's envelope


def test_a_stored_key_it_cannot_parse_fails_the_signature_not_the_request(app: web.Application) -> None:
    relay_id = str(uuid.uuid4())
    app[RELAY_AUTH_CACHE].put(relay_id, {"publicKey": "not a key", "internal": True})
    request = fake_request(b"{}", {"X-Sentry-Relay-Id": relay_id, "X-Sentry-Relay-Signature": "a.b"})
    assert status_of(app[RELAY_AUTH].authenticate(request, b"{}")) == (401, "Invalid relay signature")
