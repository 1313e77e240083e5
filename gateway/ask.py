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

from bus.client import request_sequence
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
              retries: int = 0, actor: str = "gateway", after: int = 0,
              attempt_timeout: float | None = None) -> Any:
    """One request from the gateway (every route asks through here): `retries` tries share
    `timeout`, each bounded by `attempt_timeout` (default: an equal share); `after` serves a
    read at or after that stream sequence. Unavailable at once when NATS is down or drops."""
    result, _sequence = await ask_sequence(app, message_type, payload, timeout=timeout, retries=retries,
                                           actor=actor, after=after, attempt_timeout=attempt_timeout)
    return result


async def ask_sequence(app: web.Application, message_type: str, payload: dict[str, Any], *, timeout: float,
                       retries: int = 0, actor: str = "gateway", after: int = 0,
                       attempt_timeout: float | None = None, subject: str | None = None) -> tuple[Any, int]:
    """`ask`, with the stream sequence the reply names (a stored write's; else 0); `subject`
    for a request not sent on its type's own subject (the management API's writes)."""
    nc = app.get(NC)
    if nc is None or not nc.is_connected:
        raise Unavailable(NATS_DOWN)
    if attempt_timeout is None and retries:
        attempt_timeout = timeout / (retries + 1)
    asked = asyncio.ensure_future(request_sequence(
        nc, message_type, payload, timeout=timeout, retries=retries, actor=actor,
        attempt_timeout=attempt_timeout, after=after, subject=subject,
        correlation_id=structlog.contextvars.get_contextvars().get("correlation_id")))
    watch = app.get(NATS_WATCH)
    lost = watch.lost if watch is not None else None
    if lost is None:  # an app whose startup (the connection watch) has not run
        return await asked
    try:
        waited: set[asyncio.Future[Any]] = {asked, lost}
        done, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
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
