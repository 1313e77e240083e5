"""The gateway's one way to ask the system over NATS.

Every route asks through `ask`: it fails at once with `Unavailable` when the gateway has
no NATS connection, and as soon as the connection drops while it waits (the app's
`NatsWatch`, told by gateway/app.py's connection callbacks) instead of at the deadline;
a retry-safe request (`retries` > 0) gets an equal share of the timeout per try, so a try
lost with an instance that died is retried on another within the caller's deadline. Its
errors are wire errors, which the errors middleware answers (gateway/errors.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web

from bus.client import request as bus_request
from gateway.keys import NATS_WATCH, NC
from messages.errors import Unavailable

NATS_DOWN = "the control plane (NATS) is unavailable"
# Relay gives a request 5 s; what the gateway waits for actors stays below, with room to answer.
RELAY_TIMEOUT = 4.0


class NatsWatch:
    """Whether the gateway's NATS connection is up: `lost` is resolved when it drops, so
    requests in flight fail at once (503) instead of at their deadline, and a new one is
    made on reconnect. One per app, made before the app starts: its state must not change
    once it runs (aiohttp), this object's does."""

    def __init__(self) -> None:
        self.lost: asyncio.Future[None] | None = None  # None until `start`

    def start(self) -> None:
        """On the app's loop, before the connection is made."""
        self._loop = asyncio.get_running_loop()
        self.lost = self._loop.create_future()

    def dropped(self) -> None:
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    def restored(self) -> None:
        if self.lost is not None and self.lost.done():
            self.lost = self._loop.create_future()


async def ask(app: web.Application, message_type: str, payload: dict[str, Any], *, timeout: float,
              retries: int = 0, actor: str = "gateway") -> Any:
    nc = app.get(NC)
    if nc is None or not nc.is_connected:
        raise Unavailable(NATS_DOWN)
    asked = asyncio.ensure_future(bus_request(
        nc, message_type, payload, timeout=timeout, retries=retries, actor=actor,
        attempt_timeout=timeout / (retries + 1) if retries else None,
        correlation_id=structlog.contextvars.get_contextvars().get("correlation_id")))
    watch = app.get(NATS_WATCH)
    lost = watch.lost if watch is not None else None
    if lost is None:  # an app whose startup (the connection watch) has not run
        return await asked
    try:
        done, _ = await asyncio.wait({asked, lost}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        asked.cancel()
        raise
    if asked in done:
        return asked.result()
    asked.cancel()  # the connection dropped: no answer can come on it
    raise Unavailable(NATS_DOWN)


async def ask_for_relay(app: web.Application, message_type: str, payload: dict[str, Any], *,
                        timeout: float = RELAY_TIMEOUT, retries: int = 1) -> Any:
    """`ask` for a relay route, within Relay's 5 s: a query retries once by default."""
    return await ask(app, message_type, payload, timeout=timeout, retries=retries)
