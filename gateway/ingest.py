"""The data plane of the gateway: envelopes from SDKs and relays, stored before 200.

Routes (as Sentry and Relay serve them, DATAPLANE.md):
- `POST /api/<project id>/envelope/` - one envelope; `POST /api/<project id>/store/` - a
  legacy JSON event, wrapped into an envelope of one `event` item; `OPTIONS` on both for
  browser SDKs (CORS, origins from the project's `sentry:origins`, i.e. `allowedDomains`).
- `POST /api/0/relays/outcomes/` and `/metrics/` - signed by a registered internal relay,
  answered `202 {}`; the body is appended to the ingest stream for the consumers.

Every envelope is decoded (aiohttp decodes `Content-Encoding` in bounded steps as it reads;
the decompressed size is capped while reading, so a zip bomb stops at the cap), checked
(gateway/envelopes.py), authenticated by its public key against the cached project
config in Redis (sealed entries, as relays read them: no NATS hop unless the cache misses;
a key read within the last second is not read again), rate limited when an SDK sent it
directly (bus/rate_limits.py; refusals are reported as outcomes), and appended to
`RC_INGEST` (bus/ingest_store.py). The answer is `200 {"id": ...}` only after JetStream
acknowledged; when it cannot be stored the answer is 503 with `Retry-After`, which Relay
retries - every other 4xx makes Relay drop the envelope, so a 4xx is kept for envelopes
that are truly unacceptable (malformed, unknown key, over the size cap, rate limited).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
import zlib
from base64 import b64decode
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import sentry_relay
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from sentry_relay.consts import DataCategory

from bus import metrics
from bus.config_cache import cache_key
from bus.ingest_store import (
    HEADER_CLIENT_IP,
    HEADER_EVENT_ID,
    HEADER_KIND,
    HEADER_MSG_ID,
    HEADER_PROJECT_ID,
    HEADER_PUBLIC_KEY,
    HEADER_RECEIVED_AT,
    HEADER_RELAY_ID,
    IngestCannotWrite,
    IngestStore,
)
from bus.rate_limits import ITEM_CATEGORIES, Quota, RateLimiter, envelope_categories, quotas_of
from bus.redis_clients import get_one
from bus.runtime import BUS_ERRORS
from bus.settings import Settings
from gateway.ask import ask_for_relay
from gateway.envelopes import MalformedEnvelope, check, normalize_event_id, wrap_event
from gateway.errors import REDIS_ERRORS, HTTPFailure, error_response, json_response, parse_json
from gateway.keys import (
    INGEST,
    INGEST_HELD,
    INGEST_OUTCOME_TASK,
    INGEST_STORE,
    NC,
    PROJECT_CONFIGS,
    REDIS,
    RELAY_AUTH,
    SETTINGS,
)
from gateway.project_configs import ProjectConfigs
from gateway.relay_auth import RELAY_INPUT_ERRORS, SIGNED_MAX_AGE, UUID_RE, RelayAuth, RelayIdentity
from messages.errors import RelayctlError, Unavailable
from messages.subjects import INGEST_METRICS, INGEST_OUTCOMES

log = structlog.get_logger(__name__)

MIB = 1024 * 1024
# Relay's own `limits.max_envelope_size`: an upstream must take what its relays take.
DEFAULT_MAX_ENVELOPE = 200 * MIB
LARGE_BODY = 1024 * 1024
ENCODINGS = ("", "identity", "gzip", "x-gzip", "deflate", "br", "zstd")
CORS_ALLOW_HEADERS = ("x-sentry-auth, x-requested-with, origin, accept, content-type, content-encoding, "
                      "authentication, authorization, sentry-trace, baggage")
CORS_EXPOSE_HEADERS = "x-sentry-error, x-sentry-rate-limits, retry-after"
# How long a key's config read from Redis is used without reading it again: a disabled key,
# a new rate limit or origin reaches ingest this much later than the cache
# (`RELAYCTL_INGEST_KEY_CACHE_SECONDS`).
KEY_FRESH_FOR = 1.0
KEY_ASK_TIMEOUT = 3.0  # a cache miss asks the config builder once, within Relay's patience
UNKNOWN_KEY_TTL = 10.0  # a key the builder said is unknown is not asked again for this long
PUBLIC_KEY_RE = re.compile(r"[0-9a-f]{32}")  # with fullmatch: no trailing newline slips through
# What writing to the ingest stream fails with when it cannot be written: not acknowledged,
# or NATS away (then no envelope is answered 200; counts are dropped, logged).
STORE_ERRORS: tuple[type[Exception], ...] = (IngestCannotWrite, *BUS_ERRORS)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


F = TypeVar("F", bound=Callable[..., Any])


def reads_own_body(handler: F) -> F:
    """Mark a handler that streams its body itself (gateway/limits.py leaves it unread)."""
    handler.reads_own_body = True  # type: ignore[attr-defined]
    return handler


@dataclass(frozen=True)
class IngestSettings:
    max_envelope: int = DEFAULT_MAX_ENVELOPE  # decompressed bytes
    body_timeout: float = 60.0  # seconds to receive a whole body
    # decompressed bytes all requests of this gateway may hold at once; past it a 503 (Relay
    # retries), so many large envelopes at once cannot exhaust the process's memory
    max_in_flight: int = 4 * DEFAULT_MAX_ENVELOPE
    key_fresh_for: float = KEY_FRESH_FOR  # seconds a key's config read from Redis is used

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestSettings:
        """`RELAYCTL_INGEST_*` of the process's settings (bus/settings.py); unset: the defaults."""
        d = cls()

        def value(name: str, default: float) -> float:
            return float(settings.value(f"RELAYCTL_INGEST_{name}", default))

        return cls(max_envelope=int(value("MAX_ENVELOPE_SIZE", d.max_envelope)),
                   body_timeout=value("BODY_TIMEOUT", d.body_timeout),
                   max_in_flight=int(value("MAX_IN_FLIGHT", d.max_in_flight)),
                   key_fresh_for=value("KEY_CACHE_SECONDS", d.key_fresh_for))


@dataclass(frozen=True)
class KeyInfo:
    """What ingest needs of an active key, read from its project config."""

    public_key: str
    project_id: int
    organization_id: int
    numeric_id: int
    allowed_domains: tuple[str, ...]
    quotas: tuple[Quota, ...]
    trusted_relays: tuple[str, ...]


def key_info(public_key: str, doc: dict[str, Any], trusted: tuple[str, ...]) -> KeyInfo | None:
    """The key's info from its project config document; None when it is disabled."""
    if doc.get("disabled") is not False:
        return None
    keys = doc.get("publicKeys") or []
    entry = next((k for k in keys if isinstance(k, dict) and k.get("publicKey") == public_key), None)
    if entry is None or entry.get("isEnabled") is False:
        return None
    config = doc.get("config") or {}
    domains = config.get("allowedDomains")
    return KeyInfo(public_key, int(doc["projectId"]), int(doc.get("organizationId") or 0),
                   int(entry.get("numericId") or 0),
                   tuple(d for d in domains if isinstance(d, str)) if isinstance(domains, list) else ("*",),
                   quotas_of(config), trusted)


class KeyResolver:
    """Public key -> `KeyInfo`, from the sealed config cache the relays read
    (`relayconfig:<key>`). A value read again (the usual case) is compared, not decoded
    again. A miss asks the config builder once (`config.build`, which also fills the cache);
    a key it says nobody created is remembered as unknown for `UNKNOWN_KEY_TTL`, so made-up
    keys cost no NATS request each."""

    def __init__(self, configs: ProjectConfigs, max_entries: int = 50_000, fresh_for: float = KEY_FRESH_FOR) -> None:
        self.configs = configs
        self.max_entries = max_entries
        self.fresh_for = fresh_for
        self._parsed: dict[str, tuple[bytes, KeyInfo | None, float]] = {}
        self._unknown: dict[str, float] = {}

    async def resolve(self, public_key: str) -> KeyInfo | None:
        name = cache_key(public_key)
        held = self._parsed.get(name)
        now = time.monotonic()
        if held is not None and now - held[2] < self.fresh_for:
            return held[1]  # read from Redis a moment ago: a busy key costs no round trip each
        value = await self._cached_value(name)
        if value is not None:
            if held is not None and held[0] == value:
                self._parsed[name] = (value, held[1], now)
                return held[1]
            entry = await self.configs.cached_entry(name, value)
            if entry is not None:
                info = self._parse(public_key, entry.body, entry.trusted_relays)
                if len(self._parsed) >= self.max_entries:
                    self._parsed.clear()
                self._parsed[name] = (value, info, now)
                return info
        return await self._built(public_key)

    async def _cached_value(self, name: str) -> bytes | None:
        redis = self.configs.redis_read
        if redis is None:
            return None
        try:
            return await get_one(redis, name)
        except REDIS_ERRORS as exc:
            log.warning("gateway.redis_unavailable", error=str(exc))
            return None

    async def _built(self, public_key: str) -> KeyInfo | None:
        until = self._unknown.get(public_key)
        if until is not None and until > time.monotonic():
            return None
        try:
            built = await ask_for_relay(self.configs.app, "config.build",
                                        {"public_keys": [public_key], "global": False},
                                        timeout=KEY_ASK_TIMEOUT, retries=0)
        except RelayctlError as exc:
            raise Unavailable(f"the project config of this key cannot be read now: {exc.message}") from None
        found = built.get("entries", {}).get(public_key)
        if found is None:
            raise Unavailable("the project config of this key is not built yet")
        rev, trusted, doc = found
        info = self._parse(public_key, doc if isinstance(doc, bytes) else str(doc).encode(), tuple(trusted))
        if info is None:
            if len(self._unknown) >= self.max_entries:
                self._unknown.clear()
            self._unknown[public_key] = time.monotonic() + UNKNOWN_KEY_TTL
        return info

    @staticmethod
    def _parse(public_key: str, body: bytes, trusted: tuple[str, ...]) -> KeyInfo | None:
        try:
            return key_info(public_key, json.loads(body), trusted)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ingest.config_unreadable", public_key=public_key, error=str(exc))
            raise Unavailable("the project config of this key cannot be read") from None


# -- request parts ---------------------------------------------------------------------------------

def auth_key(request: web.Request) -> str | None:
    """The public key from `X-Sentry-Auth` (or `Authorization: Sentry ...`), else the
    `sentry_key` query parameter."""
    for header in ("X-Sentry-Auth", "Authorization"):
        value = request.headers.get(header, "")
        if header == "Authorization" and not value.lower().startswith("sentry "):
            continue
        for part in value.removeprefix("Sentry ").removeprefix("sentry ").split(","):
            name, _, found = part.strip().partition("=")
            if name.strip() == "sentry_key" and found.strip():
                return found.strip().strip('"')
    return request.query.get("sentry_key") or None


def dsn_key(header: dict[str, Any]) -> str | None:
    dsn = header.get("dsn")
    if not isinstance(dsn, str):
        return None
    try:
        return urlsplit(dsn).username or None
    except ValueError:
        return None


def origin_allowed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Sentry's `sentry:origins` rules: `*`, a host (`example.com`), a wildcard host
    (`*.example.com`, which includes example.com), optionally with a scheme and a port."""
    if "*" in allowed:
        return True
    parts = urlsplit(origin)
    host = (parts.hostname or "").lower()
    if not host:
        return False
    for pattern in allowed:
        pattern = pattern.strip().lower()
        scheme = ""
        if "://" in pattern:
            scheme, _, pattern = pattern.partition("://")
        pattern = pattern.split("/", 1)[0]
        name, _, port = pattern.partition(":")
        if scheme and scheme != parts.scheme:
            continue
        if port and port != "*" and str(parts.port or "") != port:
            continue
        if name == host or (name.startswith("*.") and (host == name[2:] or host.endswith(name[1:]))):
            return True
    return False


def received_at() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class Rejected(HTTPFailure):
    """A refusal an SDK logs: the `detail` also in `X-Sentry-Error`, as Relay sends it, and
    any other headers of the answer (`Retry-After`, `X-Sentry-Rate-Limits`)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail)
        # Header-safe: printable ASCII only (a detail may quote what the client sent).
        safe = "".join(c if " " <= c <= "~" else "?" for c in detail[:200])
        self.headers = {"X-Sentry-Error": safe, **(headers or {})}

    def response(self) -> web.Response:
        response = super().response()
        response.headers.update(self.headers)
        return response


def rejected(status: int, detail: str, **headers: str) -> Rejected:
    return Rejected(status, detail, headers)


def failure_response(failure: HTTPFailure) -> web.Response:
    return failure.response()


# -- outcomes of what the gateway refuses ----------------------------------------------------------

RATE_LIMITED = 2  # Relay's outcome code


def category_code(item_type: str) -> int:
    """Relay's data category number of an envelope item type (DEFAULT when it has none)."""
    names = ITEM_CATEGORIES.get(item_type) or ("default",)
    try:
        return int(DataCategory[names[0].upper()].value)
    except KeyError:
        return int(DataCategory.DEFAULT.value)


class RefusedOutcomes:
    """Envelopes refused after their key was known (rate limited), reported the way a Relay
    reports outcomes - an `{"outcomes": [...]}` batch on `rc.in.relay.outcomes` - so
    `project stats` counts what SDKs sent straight to relayctl too. Counted in memory and
    written at most once per `interval`; a batch that cannot be written is dropped (logged):
    it is a count, never an envelope."""

    def __init__(self, endpoints: IngestEndpoints, interval: float = 1.0, max_entries: int = 10_000) -> None:
        self.endpoints = endpoints
        self.interval = interval
        self.max_entries = max_entries
        self._counts: dict[tuple[int, int, int, int, str, int], int] = {}

    def add(self, info: KeyInfo, outcome: int, reason: str, item_types: list[str]) -> None:
        for item_type in item_types:
            key = (info.organization_id, info.project_id, info.numeric_id, outcome, reason, category_code(item_type))
            if key in self._counts or len(self._counts) < self.max_entries:
                self._counts[key] = self._counts.get(key, 0) + 1

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> None:
        if not self._counts:
            return
        counts, self._counts = self._counts, {}
        stamp = received_at()
        body = json.dumps({"outcomes": [
            {"timestamp": stamp, "org_id": org, "project_id": project, "key_id": key, "outcome": outcome,
             "reason": reason, "category": category, "quantity": quantity, "source": "relayctl-gateway"}
            for (org, project, key, outcome, reason, category), quantity in counts.items()]}).encode()
        headers = {HEADER_MSG_ID: f"outcomes:{uuid.uuid4().hex}", HEADER_KIND: "outcomes", HEADER_RECEIVED_AT: stamp}
        try:
            await self.endpoints.store.append(INGEST_OUTCOMES, body, headers)
        except STORE_ERRORS as exc:
            log.warning("ingest.outcomes_dropped", entries=len(counts), error=str(exc))


# -- the endpoints ---------------------------------------------------------------------------------

class IngestEndpoints:
    def __init__(self, app: web.Application, settings: IngestSettings | None = None) -> None:
        self.app = app
        self.settings = settings or IngestSettings.from_settings(app[SETTINGS])
        self.auth: RelayAuth = app[RELAY_AUTH]
        self.keys = KeyResolver(app[PROJECT_CONFIGS], fresh_for=self.settings.key_fresh_for)
        self.refused = RefusedOutcomes(self)
        self.in_flight = 0  # decompressed bytes the requests being handled hold

    @property
    def store(self) -> IngestStore:
        store: IngestStore | None = self.app[INGEST_STORE]
        if store is None:
            raise Unavailable("the ingest stream (NATS) is unavailable")
        return store

    # -- envelopes --------------------------------------------------------------------------

    @reads_own_body
    async def envelope(self, request: web.Request) -> web.StreamResponse:
        return await self._ingest(request, legacy=False)

    @reads_own_body
    async def store_event(self, request: web.Request) -> web.StreamResponse:
        return await self._ingest(request, legacy=True)

    async def _ingest(self, request: web.Request, *, legacy: bool) -> web.StreamResponse:
        outcome = "accepted"
        try:
            response = await self._accept(request, legacy=legacy)
        except HTTPFailure as failure:
            outcome = {400: "invalid", 413: "too_large", 415: "invalid", 429: "rate_limited"}.get(
                failure.status, "unavailable" if failure.status >= 500 else "rejected")
            response = failure_response(failure)
        except RelayctlError as exc:
            outcome = "unavailable" if exc.status >= 500 or exc.status == 404 else "rejected"
            status = 503 if outcome == "unavailable" else exc.status
            response = error_response(status, exc.message)
        finally:
            self._release(request)
        if not request.content.is_eof():
            response.force_close()  # refused before the body's end: the rest is not worth reading
        origin = request.headers.get("Origin")
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
            response.headers["Vary"] = "Origin"
        # (the time to answer is in gateway.requests, by route and status)
        metrics.incr("ingest.envelopes", tags={"outcome": outcome, "endpoint": "store" if legacy else "envelope"})
        return response

    async def _accept(self, request: web.Request, *, legacy: bool) -> web.Response:
        project_id = int(request.match_info["project_id"])
        body = await self.read_body(request)
        event_id: str | None
        if legacy:
            data, event_id, header = self._legacy_envelope(body)
            item_types = ["event"]
        else:
            try:
                # a large envelope is checked off the event loop, which keeps serving the others
                scanned = await asyncio.to_thread(check, body) if len(body) > LARGE_BODY else check(body)
            except MalformedEnvelope as exc:
                raise rejected(400, f"invalid envelope: {exc}") from None
            data, event_id, header, item_types = body, scanned.event_id, scanned.header, scanned.item_types
        public_key = auth_key(request) or dsn_key(header)
        if not public_key:
            raise rejected(401, "missing authorization information: no sentry_key in X-Sentry-Auth, "
                                "the query string or the envelope's dsn")
        if not PUBLIC_KEY_RE.fullmatch(public_key):
            raise rejected(401, "invalid sentry_key: not a public key")
        relay = await self.relay_of(request)
        info = await self.keys.resolve(public_key)
        if info is None:
            raise rejected(403, "the public key is unknown or disabled")
        if info.project_id != project_id:
            raise rejected(403, "the public key does not belong to this project")
        via_relay = relay is not None and (relay.internal or relay.public_key in info.trusted_relays)
        if not via_relay:
            origin = request.headers.get("Origin")
            if origin and not origin_allowed(origin, info.allowed_domains):
                raise rejected(403, f"origin {origin[:100]} is not allowed for this project")
            limited = await RateLimiter(self.app[REDIS]).check(info.quotas, envelope_categories(item_types))
            if limited is not None:
                self.refused.add(info, RATE_LIMITED, limited.quota.reason_code or "rate_limited", item_types)
                raise rejected(429, f"rate limited by the {limited.quota.scope} quota, retry later",
                               **{"Retry-After": str(limited.retry_after), "X-Sentry-Rate-Limits": limited.header})
        headers = {
            HEADER_MSG_ID: f"{project_id}:{event_id}" if event_id else uuid.uuid4().hex,
            HEADER_PROJECT_ID: str(project_id),
            HEADER_PUBLIC_KEY: public_key,
            HEADER_RECEIVED_AT: received_at(),
            HEADER_CLIENT_IP: self.client_ip(request, via_relay=relay is not None),
        }
        if event_id:
            headers[HEADER_EVENT_ID] = event_id
        if relay is not None:
            headers[HEADER_RELAY_ID] = relay.relay_id
        await self._append(lambda: self.store.append_envelope(project_id, data, headers))
        return json_response({"id": event_id})

    async def _append(self, append: Callable[[], Awaitable[int]]) -> int:
        nc = self.app[NC]
        if nc is None or not nc.is_connected:
            raise HTTPFailure(503, "cannot store the envelope now: NATS is unavailable; retry")
        try:
            return await append()
        except IngestCannotWrite as exc:
            log.warning("ingest.cannot_store", error=str(exc))
            raise HTTPFailure(503, f"cannot store the envelope now: {exc}; retry") from None

    def _legacy_envelope(self, body: bytes) -> tuple[bytes, str, dict[str, Any]]:
        """A store request's event (JSON, or base64 of zlib'd JSON as old SDKs send it)."""
        text = body.strip()
        if text[:1] not in (b"{", b"["):
            try:
                packed = b64decode(text, validate=False)
                inflate = zlib.decompressobj()
                text = inflate.decompress(packed, self.settings.max_envelope + 1)
                if len(text) > self.settings.max_envelope:
                    raise rejected(413, "event larger than the envelope size limit")
                if not inflate.eof:
                    raise rejected(400, "invalid event: the zlib'd body is truncated")
            except (ValueError, zlib.error):
                raise rejected(400, "invalid event: the body is neither JSON nor base64 of zlib'd JSON") from None
        try:
            event = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise rejected(400, "invalid event: the body is not valid JSON") from None
        if not isinstance(event, dict):
            raise rejected(400, "invalid event: the body is not a JSON object")
        given = event.get("event_id")
        event_id = normalize_event_id(given) if given is not None else uuid.uuid4().hex
        if event_id is None:
            raise rejected(400, "invalid event: event_id is not a UUID")
        event["event_id"] = event_id
        return wrap_event(event, event_id), event_id, {}

    async def read_body(self, request: web.Request) -> bytes:
        """The decoded body, at most `max_envelope` bytes, read as it arrives."""
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ENCODINGS:
            raise rejected(415, f"unsupported Content-Encoding {encoding[:40]!r}: "
                                "use zstd, gzip, deflate, br or identity")
        cap = self.settings.max_envelope
        if encoding in ("", "identity") and (request.content_length or 0) > cap:
            raise self._too_large(cap)
        buffer = bytearray()
        try:
            async with asyncio.timeout(self.settings.body_timeout):
                async for chunk in request.content.iter_any():
                    buffer += chunk
                    if len(buffer) > cap:
                        raise self._too_large(cap)
                    self._hold(request, len(chunk))
        except TimeoutError:
            failure = rejected(408, "request body not received in time")
            raise failure from None
        except RequestPayloadError as exc:
            detail = str(exc) or "malformed request body"
            what = f"the body could not be decoded as {encoding}" if encoding not in ("", "identity") else detail
            raise rejected(400, f"{what} ({detail[:120]})" if what != detail else what) from None
        return bytes(buffer)

    def _hold(self, request: web.Request, size: int) -> None:
        """Count `size` more bytes held for `request` (released by `_release`); 503 past the budget."""
        if self.in_flight + size > self.settings.max_in_flight:
            raise HTTPFailure(503, "the gateway holds as many envelopes as it may right now; retry")
        self.in_flight += size
        request[INGEST_HELD] = request.get(INGEST_HELD, 0) + size

    def _release(self, request: web.Request) -> None:
        self.in_flight -= request.pop(INGEST_HELD, 0)

    @staticmethod
    def _too_large(cap: int) -> HTTPFailure:
        return rejected(413, f"envelope larger than {cap} bytes (decompressed), the upstream's limit")

    async def relay_of(self, request: web.Request) -> RelayIdentity | None:
        """The relay that forwarded this envelope, when it proves it: `X-Sentry-Relay-Id` of a
        registered relay and its `X-Sentry-Relay-Signature` (over an empty body: it covers
        only its timestamp). Anything less - no signature (older Relays), a relay this
        system does not know (say, a proxy-mode Relay registered elsewhere), a signature
        that fails - proves nothing, and the envelope is taken as an SDK's: its key is
        checked and rate limited all the same, so nothing is gained by forging the headers,
        and refusing would make a Relay drop envelopes its SDKs sent. A relay the operator
        banned is refused."""
        relay_id = request.headers.get("X-Sentry-Relay-Id")
        signature = request.headers.get("X-Sentry-Relay-Signature")
        if not relay_id or not signature:
            return None
        info = await self.auth.relay_info(relay_id) if UUID_RE.fullmatch(relay_id) else None
        if info is None:
            metrics.incr("ingest.relay_unproven", tags={"reason": "unknown"})
            return None
        if info.get("banned"):
            raise rejected(403, "relay is banned")
        try:
            valid = sentry_relay.PublicKey.parse(info["publicKey"]).verify(b"", signature, max_age=SIGNED_MAX_AGE)
        except RELAY_INPUT_ERRORS:
            valid = False
        if not valid:
            log.info("ingest.relay_signature_invalid", relay_id=relay_id)
            metrics.incr("ingest.relay_unproven", tags={"reason": "signature"})
            return None
        return RelayIdentity(relay_id, info["publicKey"], bool(info.get("internal")), bool(info.get("trusted")))

    @staticmethod
    def client_ip(request: web.Request, *, via_relay: bool) -> str:
        """The client's address: from a relay, the first `X-Forwarded-For` entry (the SDK's, as
        the relay saw it); from anyone else the TCP peer (a header anyone can write)."""
        if via_relay:
            forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
            if forwarded:
                return forwarded[:64]
        return request.remote or ""

    # -- CORS -------------------------------------------------------------------------------

    async def preflight(self, request: web.Request) -> web.Response:
        """A browser's preflight: allowed when the origin is (the key, if the query names one,
        decides; else the POST itself is checked)."""
        origin = request.headers.get("Origin", "")
        public_key = auth_key(request)
        if origin and public_key and PUBLIC_KEY_RE.fullmatch(public_key):
            try:
                info = await self.keys.resolve(public_key)
            except RelayctlError:
                info = None
            if info is not None and not origin_allowed(origin, info.allowed_domains):
                return failure_response(rejected(403, f"origin {origin[:100]} is not allowed for this project"))
        headers = {"Access-Control-Allow-Methods": "POST, OPTIONS",
                   "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                   "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS, "Access-Control-Max-Age": "3600"}
        if origin:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Vary"] = "Origin"
        return web.Response(status=200, headers=headers)

    # -- relay outcomes and metrics ---------------------------------------------------------

    async def outcomes(self, request: web.Request) -> web.Response:
        return await self._relay_report(request, "outcomes", INGEST_OUTCOMES, list)

    async def metrics(self, request: web.Request) -> web.Response:
        return await self._relay_report(request, "buckets", INGEST_METRICS, dict)

    async def _relay_report(self, request: web.Request, field: str, subject: str, shape: type) -> web.Response:
        """Relay's own handlers: signed, internal relays only, `202 {}`; the body is stored
        as sent, so the consumers count what Relay reported."""
        body = await request.read()
        relay = await self.auth.authenticate(request, body)
        kind = "outcomes" if field == "outcomes" else "metrics"
        if not relay.internal:
            raise HTTPFailure(403, f"only internal relays may send {kind}")
        data = parse_json(body)
        if not isinstance(data, dict) or not isinstance(data.get(field), shape):
            raise HTTPFailure(400, f"{field} must be a JSON {'list' if shape is list else 'object'}")
        headers = {HEADER_MSG_ID: f"{kind}:{hashlib.blake2b(body, digest_size=16).hexdigest()}",
                   HEADER_KIND: kind, HEADER_RELAY_ID: relay.relay_id, HEADER_RECEIVED_AT: received_at()}
        await self._append(lambda: self.store.append(subject, body, headers))
        metrics.incr("ingest.relay_reports", tags={"kind": kind})
        return json_response({}, 202)


def add_ingest_routes(app: web.Application) -> None:
    """Register the data-plane routes, and the ingest stream's setup, on the gateway app."""
    ingest = IngestEndpoints(app)
    app[INGEST] = ingest
    app[INGEST_STORE] = None

    async def startup(app: web.Application) -> None:
        store = IngestStore(app[NC])
        try:
            await store.ensure()
        except STORE_ERRORS as exc:  # made on the first append instead; until then it answers 503
            log.warning("ingest.stream_unavailable", error=str(exc))
        app[INGEST_STORE] = store
        app[INGEST_OUTCOME_TASK] = asyncio.ensure_future(ingest.refused.run())

    async def cleanup(app: web.Application) -> None:
        task = app.get(INGEST_OUTCOME_TASK)
        if task is not None:
            task.cancel()
            await ingest.refused.flush()

    app.on_startup.append(startup)
    app.on_cleanup.insert(0, cleanup)  # before the NATS connection is drained
    for path in ("/api/{project_id:[0-9]{1,18}}/envelope/", "/api/{project_id:[0-9]{1,18}}/store/"):
        app.router.add_post(path, ingest.envelope if path.endswith("envelope/") else ingest.store_event)
        app.router.add_route("OPTIONS", path, ingest.preflight)
    app.router.add_post("/api/0/relays/outcomes/", ingest.outcomes)
    app.router.add_post("/api/0/relays/metrics/", ingest.metrics)
