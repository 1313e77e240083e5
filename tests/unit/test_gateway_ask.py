"""gateway/ask.py: the one way every gateway route asks over NATS fails the same way."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.ask import ask
from gateway.keys import NATS_LOST, NC
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
        lost = asyncio.get_running_loop().create_future()
        app: dict[Any, Any] = {NC: nc, NATS_LOST: lost}
        asked = asyncio.ensure_future(ask(app, "ai.suggest", {}, timeout=3600))  # type: ignore[arg-type]
        while not nc.sent:
            await asyncio.sleep(0.001)
        lost.set_result(None)
        with pytest.raises(Unavailable, match="control plane"):
            await asyncio.wait_for(asked, 5)

    asyncio.run(run())
