"""Relay registration: the challenge and the response (PROTOCOL.md).

A relay proves it holds the key it registers with by signing both calls; the gateway
answers a challenge token sealed with the system's registration secret (shared by every
gateway through JetStream KV, gateway/app.py), so any gateway validates any other's token.
Only a relay the operator allowed (`relayctl relay allow`) may register, never one that
is banned nor one whose id is already registered with another key; Sentry's status codes
and `detail` texts keep Relay's retry logic behaving.
"""

from __future__ import annotations

from typing import Any

import sentry_relay
from aiohttp import web

from gateway.ask import ask_for_relay
from gateway.errors import HTTPFailure, json_response, parse_json
from gateway.keys import SECRET
from gateway.relay_auth import RELAY_INPUT_ERRORS, UUID_RE, signature_of
from messages.errors import BadRequest, Forbidden

REGISTER_MAX_AGE = 60


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_version(version: str | None) -> None:
    """400 for a relay version `sentry_relay` cannot read or does not support."""
    if version is None:
        return
    try:
        supported = sentry_relay.is_version_supported(version)
    except RELAY_INPUT_ERRORS as exc:
        raise HTTPFailure(400, f"Invalid relay version: {first_line(exc)}") from None
    if not supported:
        raise HTTPFailure(400, f"Relay version {version} is not supported")


def _signature(request: web.Request, data: dict[str, Any]) -> str:
    """The request's signature, once it names the relay of the body."""
    header_id, signature = signature_of(request)
    if not signature:
        raise HTTPFailure(400, "Missing relay signature")
    if header_id != data["relay_id"]:
        raise HTTPFailure(400, "relay_id in the body does not match X-Sentry-Relay-Id")
    return signature


async def _read_step(request: web.Request, required: str) -> tuple[bytes, dict[str, Any], dict[str, list[str]]]:
    """A registration step's body, its JSON object, and the field errors of its `relay_id`
    (a UUID) and its `required` string (the caller adds its own, then refuses them all)."""
    body = await request.read()
    data = parse_json(body)
    if not isinstance(data, dict):
        raise HTTPFailure(400, "No valid json body")
    errors: dict[str, list[str]] = {}
    if not isinstance(data.get("relay_id"), str) or not UUID_RE.fullmatch(data["relay_id"]):
        errors["relay_id"] = ["Must be a valid UUID."]
    if not isinstance(data.get(required), str) or not data[required]:
        errors[required] = ["This field is required."]
    return body, data, errors


class Registration:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def challenge(self, request: web.Request) -> web.Response:
        body, data, errors = await _read_step(request, "public_key")
        version = data.get("version")
        if version is not None and not isinstance(version, str):
            errors["version"] = ["Must be a string."]
        if errors:
            raise HTTPFailure(400, "Invalid registration request", errors=errors)
        signature = _signature(request, data)
        check_version(version)
        try:
            sentry_relay.PublicKey.parse(data["public_key"])
        except RELAY_INPUT_ERRORS as exc:
            raise HTTPFailure(400, f"Invalid public key: {first_line(exc)}") from None
        try:
            challenge = sentry_relay.create_register_challenge(body, signature, self.app[SECRET],
                                                               max_age=REGISTER_MAX_AGE)
        except RELAY_INPUT_ERRORS as exc:
            raise HTTPFailure(400, f"Invalid relay signature: {first_line(exc)}") from None
        auth = await ask_for_relay(self.app, "org.relay_auth",
                                   {"relay_id": data["relay_id"], "public_key": data["public_key"]})
        known = auth.get("byId")
        if known and known["publicKey"] != data["public_key"]:
            raise HTTPFailure(400, "Attempted to register agent with a different public key")
        allowed = auth.get("byKey")
        if allowed is None:
            raise HTTPFailure(403, "Relay is not allowed to register")
        if allowed.get("banned"):
            raise HTTPFailure(403, "Relay is not allowed to register", relay="stop")
        return json_response({"relay_id": str(challenge["relay_id"]), "token": challenge["token"]})

    async def response(self, request: web.Request) -> web.Response:
        body, data, errors = await _read_step(request, "token")
        if errors:
            raise HTTPFailure(400, "Invalid registration response", errors=errors)
        signature = _signature(request, data)
        try:
            validated = sentry_relay.validate_register_response(body, signature, self.app[SECRET],
                                                                max_age=REGISTER_MAX_AGE)
        except sentry_relay.UnpackErrorSignatureExpired:
            raise HTTPFailure(401, "Challenge expired") from None
        except RELAY_INPUT_ERRORS as exc:
            raise HTTPFailure(400, f"Invalid registration response: {first_line(exc)}") from None
        if str(validated["relay_id"]) != data["relay_id"]:
            raise HTTPFailure(400, "The token was issued to another relay")
        version = validated.get("version")
        check_version(version if isinstance(version, str) else None)
        try:
            await ask_for_relay(self.app, "relay.register", {"relay_id": data["relay_id"],
                                                             "public_key": validated["public_key"],
                                                             "version": version}, retries=0)
        except Forbidden as exc:
            if exc.details.get("banned"):
                raise HTTPFailure(403, exc.message, relay="stop") from None
            raise HTTPFailure(403, exc.message) from None
        except BadRequest as exc:
            raise HTTPFailure(400, exc.message) from None
        return json_response({"relay_id": data["relay_id"]})
