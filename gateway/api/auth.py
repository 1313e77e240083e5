"""Who is asking: the bearer token of a management API request, checked on the read side.

`principal(request)` answers what `user.authenticate` (the key lookup actor) says of the
token - user, superuser, permissions, the token's scopes and org, the user's org roles -
or refuses with 401. Nothing is cached: a revoked token is refused by the next request
(`user.authenticate` is CAUGHT_UP, so it sees a revocation stored before it).

Failed checks are limited per client address (`failure_limiter`, gateway/limits.py): a client that sent
`burst` bad tokens waits (429 with `Retry-After`) before it may try again, so tokens
cannot be guessed at network speed. The address is the TCP peer, as for registration
(gateway/limits.py): `X-Forwarded-For` is never trusted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bus.settings import Settings
from gateway.ask import ask as gateway_ask
from gateway.errors import HTTPFailure, json_response
from gateway.keys import API_AUTH_FAILURES
from gateway.limits import TokenBuckets
from messages.errors import Unauthorized

AUTH_TIMEOUT = 4.0
FAILURE_BURST = 10  # bad tokens a client address may send at once
FAILURE_RATE = 0.2  # then one more every 5 s
MAX_CLIENTS = 10_000  # buckets held before the full ones are dropped (gateway/limits.py)


def failure_limiter(settings: Settings, clock: Callable[[], float] = time.monotonic) -> TokenBuckets:
    """A token bucket per client address, spent only by failed token checks.
    `RELAYCTL_API_AUTH_FAILURES`: bad tokens a client address may send at once (default 10)."""
    burst = settings.value("RELAYCTL_API_AUTH_FAILURES")
    return TokenBuckets(FAILURE_RATE, max(1, FAILURE_BURST if burst is None else burst), max_keys=MAX_CLIENTS,
                        clock=clock)


def bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class FieldErrors(HTTPFailure):
    """400 with Sentry's body for invalid input: `{"field": ["message", ...]}`."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__(400, fields)

    def response(self) -> web.Response:
        return json_response(self.detail, 400)


def unauthorized(detail: str) -> HTTPFailure:
    return HTTPFailure(401, detail, headers={"WWW-Authenticate": "Bearer"})


async def ask(request: web.Request, message_type: str, payload: dict[str, Any], *, timeout: float = 5.0,
              actor: str = "gateway", after: int = 0, retries: int = 1) -> Any:
    """The management API's request: the gateway's one `ask`, each try given the whole budget."""
    return await gateway_ask(request.app, message_type, payload, timeout=timeout, retries=retries, actor=actor,
                             after=after, attempt_timeout=timeout)


async def principal(request: web.Request, *, required: bool = True) -> dict[str, Any] | None:
    """The `user.authenticate` answer for the request's token (None: no token, when not
    `required`); 401 for a missing or unknown token, 429 past the failure limit."""
    token = bearer(request)
    if token is None:
        if not required:
            return None
        raise unauthorized("Authentication credentials were not provided.")
    limiter = request.app[API_AUTH_FAILURES]
    client = request.remote or "unknown"
    wait = limiter.wait(client)
    if wait > 0:
        raise HTTPFailure(429, "Too many failed authentication attempts; slow down",
                          headers={"Retry-After": str(max(1, round(wait)))})
    try:
        answer: dict[str, Any] = await ask(request, "user.authenticate", {"token": token}, timeout=AUTH_TIMEOUT)
    except Unauthorized:
        limiter.spend(client)
        raise unauthorized("Invalid token") from None
    return answer
