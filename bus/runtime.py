"""The asyncio side of a process: one event loop in a thread, holding the NATS connection.

pykka actors run on their own threads; NATS runs on asyncio. `BusRuntime` owns the loop
thread and the connection. Actor threads call `runtime.call(coro)` to run a coroutine on
the loop and wait for it (an actor may block; the loop never does). Loop code hands work to
actors with `tell` and gets answers back through `loop.call_soon_threadsafe`.

A connection's replies and JetStream deliveries arrive on inboxes under the prefix of the
NATS role it connects as (`_INBOX.<role>`, messages/subjects.py), the only inboxes that
role may subscribe to. The role is the URL's user name when it names one (the URLs `up`
hands its processes do); any other URL - an external NATS - uses the plain `_INBOX`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from messages.endpoints import ROLES
from messages.errors import RelayctlError, Unavailable
from messages.redact import redact_url
from messages.subjects import inbox_prefix

T = TypeVar("T")
log = structlog.get_logger(__name__)
# What talking to NATS may raise besides our own errors: the client's and JetStream's
# errors, timeouts (nats' own TimeoutError is one) and a dropped connection. Code that goes
# on after a failed bus call catches these, never a bare Exception, so a bug still surfaces.
BUS_ERRORS: tuple[type[Exception], ...] = (NatsError, TimeoutError, ConnectionError, RelayctlError)
_CONNECT_ERRORS: tuple[type[Exception], ...] = (*BUS_ERRORS, OSError, ValueError)  # ValueError: a bad URL


def role_of(url: str) -> str | None:
    """The NATS role a URL connects as: its (first) user name, if that is a role."""
    try:
        user = urlsplit(url.split(",")[0].strip()).username
    except ValueError:
        return None
    return user if user in ROLES else None


async def connect(url: str, *, name: str = "relayctl", on_reconnect: Callable[[], Any] | None = None,
                  on_disconnect: Callable[[], Any] | None = None,
                  connect_timeout: float = 2.0, max_reconnect_attempts: int = -1,
                  allow_reconnect: bool = True, quiet: bool = False, role: str | None = None) -> NATS:
    """Connect with reconnects forever: a NATS restart must never need a process restart.
    Replies come to the inbox prefix of `role` (default: the URL's, `role_of`)."""

    holder: list[NATS] = []

    async def disconnected() -> None:
        closing = bool(holder) and (holder[0].is_closed or holder[0].is_draining)
        if not quiet and not closing:
            log.warning("nats.disconnected", name=name)
        if on_disconnect:
            on_disconnect()

    async def reconnected() -> None:
        log.info("nats.reconnected", name=name)
        if on_reconnect:
            on_reconnect()

    async def error(exc: Exception) -> None:
        log.debug("nats.error", name=name, error=str(exc))

    # A cluster is given as comma-separated URLs; nats-py wants a list for a server pool.
    servers: str | list[str] = [u.strip() for u in url.split(",") if u.strip()] if "," in url else url
    try:
        nc = await nats.connect(
            servers, name=name, connect_timeout=connect_timeout, reconnect_time_wait=0.5,
            max_reconnect_attempts=max_reconnect_attempts, allow_reconnect=allow_reconnect,
            disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error,
            max_outstanding_pings=3, ping_interval=5, inbox_prefix=inbox_prefix(role or role_of(url)),
        )
        holder.append(nc)
        return nc
    except _CONNECT_ERRORS as exc:
        # The URL holds the role's password: the message goes to terminals and log files.
        raise Unavailable(redact_url(f"cannot connect to NATS at {url}: {exc or type(exc).__name__}")) from None


class BusRuntime:
    """An event loop on a daemon thread, plus the process's NATS connection."""

    def __init__(self, nats_url: str, *, name: str = "relayctl") -> None:
        self.nats_url = nats_url
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"{name}-bus", daemon=True)
        self._thread.start()
        self.nc: NATS | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self, timeout: float = 10.0) -> BusRuntime:
        def count_reconnect() -> None:
            from bus import metrics

            metrics.incr("nats.reconnects")

        self.nc = self.call(connect(self.nats_url, name=self.name, on_reconnect=count_reconnect), timeout=timeout)
        return self

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T] | Awaitable[T], timeout: float | None = 30.0) -> T:
        """Run `coro` on the loop and wait for its result. Never call this from the loop."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("BusRuntime.call from the event loop would deadlock")
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                self.call(self.nc.drain(), timeout=5)
            except BUS_ERRORS:
                pass  # closing anyway
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
