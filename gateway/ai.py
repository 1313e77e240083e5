"""The AI fix suggestion endpoint of the user API.

    GET /api/0/projects/{org}/{project}/events/{event_id}/ai-fix-suggest/
        ?stream=yes  ?consent=yes  ?pii_certified=yes
    Authorization: Bearer <user token>

In order: the token is checked with the `user.authenticate` control message (missing ->
401 with `WWW-Authenticate: Bearer`, unknown -> 401); the user must be a member of the
event's org or a superuser (else 404, as for any org it may not see); the user's token bucket in this
gateway process is charged (`user_limiter`: `USER_BURST` requests at once, refilled
at `USER_RATE` per second; empty -> 429 with `Retry-After`); then `ai.suggest` goes to
the AI actor (actors/ai.py), which checks the org's policy before its cache.

Answers:

- not streamed: 200 `{"suggestion": "..."}`;
- streamed, fresh: 200 `text/event-stream`. Each chunk is one server-sent event whose
  `data:` lines are the chunk's lines, so an EventSource client's `event.data` is the
  chunk exactly; the answer ends with `event: done` (`data: {}`). A failure after the
  first chunk cannot change the status any more: it is sent as `event: error` with
  `data: {"error": ..., "status": ...}`;
- streamed, cached (the first reply is already the whole answer): 200 `text/plain`;
- refused by policy: 403 `{"restriction": "<policy>"}`;
- unknown org, project or event, or no AI backend configured: 404 `{"detail": ...}`;
- the backend's rate limit or the user's: 429 `{"error": ..., "detail": ...}`;
- backend down: 502/503 `{"detail": ...}` once the model client gives up (its timeout),
  and never later than the request's deadline (504).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from bus.streaming import Chunk, Final, stream_request
from domain.access import org_scopes
from gateway.ask import ask
from gateway.errors import HTTPFailure, from_error, json_response
from gateway.keys import AI_LIMITER, NC
from gateway.limits import TokenBuckets
from messages.errors import RelayctlError, Unauthorized

__all__ = ["AI_PATH", "add_ai_routes", "user_limiter"]
BEARER = {"WWW-Authenticate": "Bearer"}

log = structlog.get_logger(__name__)

AI_PATH = "/api/0/projects/{org}/{project}/events/{event_id}/ai-fix-suggest/"
# A whole answer, and a streamed one, must fit in these; the model client's own timeout
# (30 s per read by default) fails first when the backend is down.
SUGGEST_TIMEOUT = 90.0
STREAM_TIMEOUT = 180.0
# The actor sends something at least every model read timeout (30 s) once the model
# answers; a longer silence means the instance serving the stream is gone.
STREAM_IDLE_TIMEOUT = 60.0
AUTH_TIMEOUT = 4.0
# Per user and gateway process: a burst of 10, then one request every 2 s. Cached
# answers count too: the limit protects the model budget and the actors alike.
USER_BURST = 10
USER_RATE = 0.5
MAX_USERS = 10_000  # buckets held before the full ones are dropped (gateway/limits.py)


def user_limiter(rate: float = USER_RATE, burst: int = USER_BURST,
                 clock: Callable[[], float] = time.monotonic) -> TokenBuckets:
    """The per-user token buckets: `burst` requests at once, refilled at `rate` per second."""
    return TokenBuckets(rate, burst, max_keys=MAX_USERS, clock=clock)


def add_ai_routes(app: web.Application, limiter: TokenBuckets | None = None) -> None:
    app[AI_LIMITER] = limiter or user_limiter()
    app.router.add_get(AI_PATH, ai_fix_suggest)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name) == "yes"


async def _authenticate(request: web.Request) -> dict[str, Any]:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPFailure(401, "Authentication credentials were not provided.", headers=BEARER)
    try:
        user = await _ask(request, "user.authenticate", {"token": token}, AUTH_TIMEOUT, retries=1)
    except Unauthorized:
        raise HTTPFailure(401, "Invalid token", headers=BEARER) from None
    return dict(user)


async def _ask(request: web.Request, message_type: str, payload: dict[str, Any], timeout: float, *,
               retries: int = 0, actor: str = "gateway") -> Any:
    return await ask(request.app, message_type, payload, timeout=timeout, retries=retries, actor=actor)


def _correlation_id() -> str | None:
    return structlog.contextvars.get_contextvars().get("correlation_id")


async def ai_fix_suggest(request: web.Request) -> web.StreamResponse:
    principal = await _authenticate(request)
    username = str(principal["username"])
    # Only members of the event's org (or superusers) may ask; to anyone else the org does
    # not exist (404, as the management API answers: domain/access.py)
    scopes = org_scopes(principal, request.match_info["org"])
    if scopes is None or "event:read" not in scopes:
        raise HTTPFailure(404, "The requested resource does not exist")
    wait = request.app[AI_LIMITER].take(username)
    if wait > 0:
        message = "You are making too many AI suggestion requests; slow down"
        retry = 60 if math.isinf(wait) else max(1, round(wait))  # rate 0: ask again in a minute
        return json_response({"error": message, "detail": message}, 429, headers={"Retry-After": str(retry)})
    info = request.match_info
    payload = {"org": info["org"], "project": info["project"], "event_id": info["event_id"],
               "stream": _flag(request, "stream"), "consent": _flag(request, "consent"),
               "pii_certified": _flag(request, "pii_certified")}
    actor = f"user:{username}"
    if not payload["stream"]:
        # A wire error goes to the one translation into HTTP (gateway/errors.py from_error).
        result = await _ask(request, "ai.suggest", payload, SUGGEST_TIMEOUT, actor=actor)
        return json_response({"suggestion": result["suggestion"]})
    return await _stream(request, payload, actor)


async def _stream(request: web.Request, payload: dict[str, Any], actor: str) -> web.StreamResponse:
    replies = stream_request(request.app[NC], "ai.suggest", payload, timeout=STREAM_TIMEOUT,
                             idle_timeout=STREAM_IDLE_TIMEOUT, correlation_id=_correlation_id(), actor=actor)
    async with replies:
        try:
            first = await replies.next()
        except RelayctlError as exc:
            return from_error(exc)
        if isinstance(first, Final):
            # Cached (or empty): the whole answer is here, there is nothing to stream.
            return web.Response(text=str(first.result["suggestion"]), content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                               "X-Request-Id": _correlation_id() or ""})
        await response.prepare(request)
        try:
            await response.write(sse_event(first.text))
            async for item in replies:
                if isinstance(item, Chunk):
                    await response.write(sse_event(item.text))
                else:
                    await response.write(sse_event("{}", event="done"))
        except RelayctlError as exc:
            log.warning("gateway.ai_stream_failed", error=exc.message)
            status = from_error(exc).status
            await response.write(sse_event(json.dumps({"error": exc.message, "status": status}),
                                           event="error"))
        except (ConnectionResetError, OSError):
            # The client went away; the actor still finishes and caches the answer.
            return response
        await response.write_eof()
        return response


def sse_event(data: str, event: str | None = None) -> bytes:
    """One server-sent event; each line of `data` becomes a `data:` line, so it survives whole."""
    lines = [f"event: {event}"] if event else []
    lines += [f"data: {line}" for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return ("\n".join(lines) + "\n\n").encode("utf-8")
