"""The console's server side: its static files, the login session, and nothing else.

The console (gateway/console/static/) is plain ES modules calling the documented management
API (`/api/0/`). A person logs in with an API token: `POST /console/session` (the token as its bearer) checks it
through the API's own path (gateway/api/auth.py `principal`: the same `user.authenticate`
question, the same per-address limit on bad tokens) and answers with a session in an
HttpOnly, SameSite=Strict cookie and a CSRF token. The token never reaches the page again.

`session_middleware` turns a request to `/api/0/` that carries the session cookie (and no
`Authorization` of its own) into the same request with the session's bearer token, so every
API handler, its checks and the command side's authorization stay exactly as for any client;
the history records the token's user. A change (any method but GET/HEAD/OPTIONS) must also
carry the session's CSRF token in `X-CSRF-Token`, else 403 before anything is asked.

Sessions live in this gateway process (lost on restart: log in again; with several gateways,
sticky routing or one gateway for the console). The option editor reads the option
catalogue with each value's source from the API (`GET .../relayctl/options/`).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web
from multidict import CIMultiDict

from gateway.api.auth import bearer, principal
from gateway.errors import HTTPFailure, json_response
from gateway.keys import CONSOLE_SESSIONS

log = structlog.get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATIC = Path(__file__).parent / "static"
COOKIE = "relayctl_console"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
MAX_TOKEN = 512
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FILES = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@dataclass
class Session:
    token: str
    csrf: str
    username: str
    expires: float


class SessionStore:
    """Sessions by id; expired ones are dropped when seen and when the store is full."""

    def __init__(self, seconds: float = SESSION_SECONDS) -> None:
        self.seconds = seconds
        self._sessions: dict[str, Session] = {}

    def create(self, token: str, username: str) -> tuple[str, Session]:
        now = time.monotonic()
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
            while len(self._sessions) >= MAX_SESSIONS:  # still full: the oldest go
                self._sessions.pop(next(iter(self._sessions)))
        session_id = secrets.token_urlsafe(32)
        session = Session(token, secrets.token_urlsafe(32), username, now + self.seconds)
        self._sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is not None and session.expires <= time.monotonic():
            del self._sessions[session_id]
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)


def _csrf_ok(request: web.Request, session: Session) -> bool:
    sent = request.headers.get(CSRF_HEADER, "")
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf.encode())


def _with_token(request: web.Request, token: str) -> web.Request:
    headers = CIMultiDict(request.headers)
    headers["Authorization"] = f"Bearer {token}"
    return request.clone(headers=headers)


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A console session's API request, as a request with its bearer token (CSRF checked)."""
    if (not request.path.startswith("/api/0/") or request.path.startswith("/api/0/relays/")
            or "Authorization" in request.headers or COOKIE not in request.cookies):
        return await handler(request)
    session = request.app[CONSOLE_SESSIONS].get(request.cookies.get(COOKIE))
    if session is None:
        raise HTTPFailure(401, "The console session has ended; log in again.")
    if request.method not in SAFE_METHODS and not _csrf_ok(request, session):
        raise HTTPFailure(403, "CSRF token missing or wrong.")
    return await handler(_with_token(request, session.token))


def _set_cookie(request: web.Request, response: web.StreamResponse, value: str, max_age: int) -> None:
    response.set_cookie(COOKIE, value, max_age=max_age, path="/", httponly=True, samesite="Strict",
                        secure=request.secure)


async def login(request: web.Request) -> web.Response:
    """`POST /console/session` with `Authorization: Bearer <token>`: a session for a token
    the API accepts (checked by the API's `principal`, on this very request)."""
    token = bearer(request)
    if token is None:
        return json_response({"token": ["This field is required."]}, 400)
    if len(token) > MAX_TOKEN:
        return json_response({"token": ["Invalid token"]}, 400)
    try:
        who = await principal(request)
    except HTTPFailure as failure:
        if failure.status == 401:
            return json_response({"token": ["Invalid token"]}, 401)
        raise
    assert who is not None
    request.app[CONSOLE_SESSIONS].drop(request.cookies.get(COOKIE))
    session_id, session = request.app[CONSOLE_SESSIONS].create(token, who["username"])
    log.info("console.login", user=who["username"])
    response = json_response({"username": session.username, "csrf": session.csrf})
    _set_cookie(request, response, session_id, SESSION_SECONDS)
    return response


def _session_of(request: web.Request) -> Session:
    session = request.app[CONSOLE_SESSIONS].get(request.cookies.get(COOKIE))
    if session is None:
        raise HTTPFailure(401, "Not logged in.")
    return session


async def current(request: web.Request) -> web.Response:
    """`GET /console/session`: the session's user and CSRF token, both null when not logged
    in (a 200: the page asks this first, and a browser logs every 4xx as an error)."""
    session = request.app[CONSOLE_SESSIONS].get(request.cookies.get(COOKIE))
    if session is None:
        return json_response({"username": None, "csrf": None})
    return json_response({"username": session.username, "csrf": session.csrf})


async def logout(request: web.Request) -> web.Response:
    """`DELETE /console/session`: ends the session (CSRF token required)."""
    session = _session_of(request)
    if not _csrf_ok(request, session):
        raise HTTPFailure(403, "CSRF token missing or wrong.")
    request.app[CONSOLE_SESSIONS].drop(request.cookies.get(COOKIE))
    response = web.Response(status=204)
    _set_cookie(request, response, "", 0)
    return response


def _headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": f"{content_type}; charset=utf-8", "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name") or "index.html"
    if name not in FILES:
        raise HTTPFailure(404, "No such file")
    return web.Response(body=(STATIC / name).read_bytes(), headers=_headers(FILES[name]))


def add_console_routes(app: web.Application) -> None:
    """The console's routes and its session middleware: second, right after the error
    middleware (its refusals are the gateway's JSON errors) and before the limits middleware
    reads the body (a request is cloned with its bearer token only before that)."""
    app[CONSOLE_SESSIONS] = SessionStore()
    app.middlewares.insert(min(1, len(app.middlewares)), session_middleware)

    async def to_console(request: web.Request) -> web.Response:
        return web.Response(status=308, headers={"Location": "/console/"})

    app.router.add_get("/console", to_console)
    app.router.add_get("/console/", static_file)
    app.router.add_post("/console/session", login)
    app.router.add_get("/console/session", current)
    app.router.add_delete("/console/session", logout)
    app.router.add_get("/console/{name}", static_file)  # last: the routes above win
