"""gateway/api/auth.py: failed token checks are limited per client address, with the one
token bucket (gateway/limits.py) on an injected clock - no test waits for a refill."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bus.settings import Settings
from gateway.api import auth
from gateway.errors import HTTPFailure
from gateway.keys import API_AUTH_FAILURES
from messages.errors import Unauthorized


async def whoami(request: web.Request) -> web.Response:
    try:
        who = await auth.principal(request)
    except HTTPFailure as failure:
        return failure.response()
    return web.json_response(who)


def test_bad_tokens_past_the_burst_wait_for_the_refill(monkeypatch: pytest.MonkeyPatch) -> None:
    """`burst` bad tokens answer 401; the next is 429 with the seconds until one more try
    (one every 5 s), a good token is not charged, and the refill lets one more bad one in."""
    async def authenticate(request: web.Request, message_type: str, payload: dict[str, Any],
                           **_: Any) -> dict[str, Any]:
        if payload["token"] != "good":
            raise Unauthorized("unknown token")
        return {"username": "ann"}

    monkeypatch.setattr(auth, "ask", authenticate)
    now = [1000.0]

    async def run() -> None:
        app = web.Application()
        app[API_AUTH_FAILURES] = auth.failure_limiter(Settings.load({"RELAYCTL_API_AUTH_FAILURES": "3"}),
                                                      clock=lambda: now[0])
        app.router.add_get("/whoami/", whoami)
        async with TestClient(TestServer(app)) as http:
            async def status(token: str) -> tuple[int, str | None]:
                response = await http.get("/whoami/", headers={"Authorization": f"Bearer {token}"})
                return response.status, response.headers.get("Retry-After")

            assert [await status("good") for _ in range(5)] == [(200, None)] * 5
            assert [(await status("bad"))[0] for _ in range(3)] == [401, 401, 401]
            assert await status("bad") == (429, "5")
            assert await status("good") == (429, "5")  # the address waits, whatever it sends
            now[0] += 2.0
            assert await status("bad") == (429, "3")
            now[0] += 3.0
            assert await status("bad") == (401, None)
            assert await status("good") == (429, "5")

    asyncio.run(run())
