"""gateway/ask.py: the one way every gateway route asks over NATS fails the same way."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from aiohttp import web

from gateway.ask import NatsWatch, ask
from gateway.keys import NATS_WATCH, NC
from messages.errors import Unavailable


class HangingNats:
    """A connected client whose requests are never answered (the connection is about to drop)."""

    is_connected = True

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def request(self, subject: str, data: bytes, timeout: float = 0) -> Any:
        self.sent.append(subject)
        await asyncio.sleep(3600)


def test_no_connection_is_unavailable_at_once() -> None:
    async def run() -> None:
        with pytest.raises(Unavailable, match="control plane"):
            await ask({NC: None}, "keys.lookup", {"public_keys": []}, timeout=5)  # type: ignore[arg-type]

    asyncio.run(run())


def test_a_dropped_connection_ends_the_wait_at_once_not_at_the_deadline() -> None:
    """A request in flight when NATS drops is answered Unavailable when the drop is seen."""

    async def run() -> None:
        nc = HangingNats()
        watch = NatsWatch()
        watch.start()
        app: dict[Any, Any] = {NC: nc, NATS_WATCH: watch}
        asked = asyncio.ensure_future(ask(app, "ai.suggest", {}, timeout=3600))  # type: ignore[arg-type]
        while not nc.sent:
            await asyncio.sleep(0.001)
        watch.dropped()
        with pytest.raises(Unavailable, match="control plane"):
            await asyncio.wait_for(asked, 5)

    asyncio.run(run())


def test_after_a_reconnect_requests_wait_for_their_answer_and_the_running_app_is_not_changed() -> None:
    """A drop, then a reconnect: a new request waits again (a fresh `lost`), and the watch
    changes its own state, never the app's - aiohttp deprecates changing a started app."""

    async def run() -> None:
        nc = HangingNats()
        app = web.Application()
        app[NC] = nc
        app[NATS_WATCH] = watch = NatsWatch()
        watch.start()
        app.freeze()  # as it is once it serves
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            watch.dropped()
            watch.restored()
        asked = asyncio.ensure_future(ask(app, "ai.suggest", {}, timeout=3600))
        while not nc.sent:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        assert not asked.done()
        watch.dropped()
        with pytest.raises(Unavailable, match="control plane"):
            await asyncio.wait_for(asked, 5)

    asyncio.run(run())
