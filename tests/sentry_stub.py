"""A downstream Sentry for forwarder tests: an aiohttp server on a free loopback port, in a
thread with its own loop, that records every envelope POSTed to `/api/<id>/envelope/`.

What it answers is set per test: `mode` "ok" (200), "down" (503), "429" (with
`Retry-After: retry_after`), "400" (a permanent refusal), or "hold" (the request waits until
`release()`, to catch a forwarder mid-delivery). `refuse` maps event ids to a status to
answer for those envelopes only. Envelopes are parsed with sentry-sdk's parser, so tests do
not check relayctl's parser against itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from sentry_sdk.envelope import Envelope

from bus.embedded import free_port


@dataclass(frozen=True)
class Received:
    project_id: int
    auth: str
    header: dict[str, Any]
    body: bytes
    at: float  # time.monotonic()
    forwarded_for: str | None = None

    @property
    def event_id(self) -> str | None:
        value = self.header.get("event_id")
        return str(value) if value else None

    @property
    def envelope(self) -> Envelope:
        return Envelope.deserialize(self.body)


class SentryStub:
    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "ok"
        self.retry_after = 1
        self.refuse: dict[str, int] = {}
        self.attempts: list[Received] = []  # every envelope request, whatever was answered
        self.accepted: list[Received] = []  # those answered 200
        self.held = 0  # requests waiting in "hold" mode right now
        self.max_held = 0
        self._changed = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self._release: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        app = web.Application(client_max_size=256 * 1024 * 1024)  # as large as Sentry takes
        app.router.add_post(r"/api/{project_id:\d+}/envelope/", self._envelope)
        self._runner = web.AppRunner(app, access_log=None)

    def dsn(self, project_id: int = 42, public_key: str = "f" * 32) -> str:
        return f"http://{public_key}@127.0.0.1:{self.port}/{project_id}"

    def start(self) -> SentryStub:
        self._thread.start()

        async def go() -> None:
            self._release = asyncio.Event()
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(10)
        return self

    def stop(self) -> None:
        self.release()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def release(self) -> None:
        """Let every held request go on (answered as the mode then says)."""
        def go() -> None:
            assert self._release is not None
            self._release.set()
            self._release = asyncio.Event()

        self.loop.call_soon_threadsafe(go)

    def reset(self, mode: str = "ok") -> None:
        with self._changed:
            self.mode = mode
            self.refuse = {}
            self.attempts.clear()
            self.accepted.clear()
            self.max_held = 0

    async def _envelope(self, request: web.Request) -> web.Response:
        body = await request.read()
        line = body.split(b"\n", 1)[0]
        received = Received(int(request.match_info["project_id"]), request.headers.get("X-Sentry-Auth", ""),
                            json.loads(line) if line.strip() else {}, body, time.monotonic(),
                            request.headers.get("X-Forwarded-For"))
        # The answer is decided before the attempt is seen (a test may change the mode as soon
        # as it sees it), except in "hold" mode, where it is decided once released.
        status = None if self.mode == "hold" else self._status(received)
        self._note(self.attempts, received)
        if status is None:
            assert self._release is not None
            release = self._release
            with self._changed:
                self.held += 1
                self.max_held = max(self.max_held, self.held)
                self._changed.notify_all()
            try:
                await release.wait()
            finally:
                with self._changed:
                    self.held -= 1
            if request.transport is None or request.transport.is_closing():
                return web.Response(status=499)  # the client went away: nothing was answered
            status = self._status(received)
        if status == 200:
            self._note(self.accepted, received)
            return web.json_response({"id": received.event_id})
        headers = {"Retry-After": str(self.retry_after)} if status == 429 else {}
        return web.json_response({"detail": f"stub answers {status}"}, status=status, headers=headers)

    def _status(self, received: Received) -> int:
        status = self.refuse.get(received.event_id or "")
        return status if status is not None else {"ok": 200, "hold": 200, "down": 503, "429": 429, "400": 400}[self.mode]

    def _note(self, where: list[Received], received: Received) -> None:
        with self._changed:
            where.append(received)
            self._changed.notify_all()

    def wait(self, condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{what} not met within {timeout}s: {len(self.attempts)} attempts, "
                                         f"{len(self.accepted)} accepted, {self.held} held")
                self._changed.wait(min(remaining, 0.2))

    def accepted_ids(self) -> set[str]:
        with self._changed:
            return {r.event_id for r in self.accepted if r.event_id}
