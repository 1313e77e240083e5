"""Signed relay requests: who is calling, proven by an Ed25519 signature of the raw body.

Every relay call but registration carries `X-Sentry-Relay-Id` and
`X-Sentry-Relay-Signature`; `RelayAuth.authenticate` checks the signature with
`sentry_relay` over the raw body before any JSON parsing (PROTOCOL.md) and answers the
caller's `RelayIdentity`, or 401 with Sentry's texts. What the gateway knows of a relay
(its public key, banned, internal, trusted) comes from a short-lived in-process cache
(`RelayAuthCache`), else the sealed `relayauth:<id>` entry in Redis - checked with the
org access actor's MAC key (gateway/mac_keys.py) and its expiry - else `org.relay_auth`
over NATS.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import sentry_relay
import structlog
from aiohttp import web

from bus import metrics
from bus.cache_keys import RELAY_AUTH_MAC_BUCKET
from bus.config_cache import RELAY_AUTH_PREFIX, unseal
from bus.redis_clients import get_one
from gateway.ask import ask_for_relay
from gateway.errors import REDIS_ERRORS, HTTPFailure
from gateway.keys import NC, REDIS_READ
from gateway.mac_keys import MacKeys

log = structlog.get_logger(__name__)

SIGNED_MAX_AGE = 300
# What `sentry_relay` raises for input it cannot read (a key, a signature, a version, a
# signed body): its own errors, and a ValueError (UnicodeEncodeError) for text that is not
# UTF-8 - a lone surrogate from a JSON escape or an undecodable header byte.
RELAY_INPUT_ERRORS: tuple[type[Exception], ...] = (sentry_relay.RelayError, ValueError)
# Used with fullmatch: `$` alone would let a trailing newline through, and the key is
# spliced into the response unescaped.
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class RelayAuthCache:
    """Relay auth data kept in the gateway for a moment, so a relay polling every 100 ms
    costs no Redis round trip per request. The org access actor publishes
    `rc.relay.changed` on every change (ban, internal flag, trust), which drops the entry
    at once; the TTL only bounds how long a lost notification could matter."""

    def __init__(self, ttl: float = 2.0, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def get(self, relay_id: str) -> dict[str, Any] | None:
        hit = self._entries.get(relay_id)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, relay_id: str, info: dict[str, Any]) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[relay_id] = (time.monotonic() + self.ttl, info)

    def drop(self, relay_id: str | None = None) -> None:
        if relay_id is None:
            self._entries.clear()
        else:
            self._entries.pop(relay_id, None)


@dataclass
class RelayIdentity:
    relay_id: str
    public_key: str
    internal: bool
    trusted: bool


def signature_of(request: web.Request) -> tuple[str, str]:
    """The relay id and signature headers of a request ("" when absent)."""
    relay_id = request.headers.get("X-Sentry-Relay-Id", "")
    signature = request.headers.get("X-Sentry-Relay-Signature", "")
    return relay_id, signature


class RelayAuth:
    """The signed-request check, and what is known of a relay, for every relay route."""

    def __init__(self, app: web.Application, cache: RelayAuthCache, mac_keys: MacKeys) -> None:
        self.app = app
        self.cache = cache
        self.mac_keys = mac_keys
        self._parsed_keys: dict[str, Any] = {}

    async def authenticate(self, request: web.Request, body: bytes) -> RelayIdentity:
        relay_id, signature = signature_of(request)
        if not relay_id or not signature:
            raise HTTPFailure(401, "Missing relay signature")
        if not UUID_RE.fullmatch(relay_id):  # no registered relay has such an id; never look it up
            raise HTTPFailure(401, "Unknown relay")
        info = await self.relay_info(relay_id)
        if info is None:
            raise HTTPFailure(401, "Unknown relay")
        if info.get("banned"):
            raise HTTPFailure(401, "Relay is banned")
        try:
            valid = self._public_key(info["publicKey"]).verify(body, signature, max_age=SIGNED_MAX_AGE)
        except RELAY_INPUT_ERRORS:
            valid = False
        if not valid:
            raise HTTPFailure(401, "Invalid relay signature")
        structlog.contextvars.bind_contextvars(relay_id=relay_id)
        return RelayIdentity(relay_id, info["publicKey"], bool(info.get("internal")), bool(info.get("trusted")))

    def _public_key(self, text: str) -> Any:
        """The parsed key, parsed once per key rather than on every signed request."""
        parsed = self._parsed_keys.get(text)
        if parsed is None:
            parsed = sentry_relay.PublicKey.parse(text)
            if len(self._parsed_keys) >= 10_000:
                self._parsed_keys.clear()
            self._parsed_keys[text] = parsed
        return parsed

    async def relay_info(self, relay_id: str) -> dict[str, Any] | None:
        """What is known of a registered relay (`publicKey`, `banned`, `internal`,
        `trusted`), or None for a relay nobody registered."""
        cached = self.cache.get(relay_id)
        if cached is not None:
            return cached
        info = None
        redis_read = self.app[REDIS_READ]
        if redis_read is not None:
            try:
                raw = await get_one(redis_read, RELAY_AUTH_PREFIX + relay_id)
            except REDIS_ERRORS as exc:
                log.warning("gateway.redis_unavailable", error=str(exc))
                raw = None
            if raw:
                info = await self._checked_relay_auth(relay_id, raw)
        if info is None:
            info = (await ask_for_relay(self.app, "org.relay_auth", {"relay_id": relay_id})).get("byId")
        if info is not None:
            self.cache.put(relay_id, info)
        return info  # type: ignore[no-any-return]

    async def _checked_relay_auth(self, relay_id: str, raw: bytes) -> dict[str, Any] | None:
        """A relayauth entry's content if it is sealed with the org access actor's key and
        has not expired; else None (logged), and the caller asks over NATS."""
        nc = self.app[NC]
        key = await self.mac_keys.get(nc, RELAY_AUTH_MAC_BUCKET)
        if key is None:
            return None
        name = RELAY_AUTH_PREFIX + relay_id
        payload = unseal(key, name, raw)
        if payload is None:
            log.warning("gateway.cache_entry_forged", key=name)
            metrics.incr("relay.cache_forged", tags={"kind": "relayauth"})
            self.mac_keys.failed(nc, RELAY_AUTH_MAC_BUCKET)
            return None
        try:
            info = json.loads(payload)
            expires = float(info["expires"])
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("gateway.cache_entry_corrupt", key=name, error=str(exc))
            return None
        if expires < time.time():
            log.info("gateway.relay_auth_expired", key=name)
            return None
        return info  # type: ignore[no-any-return]
