"""HTTP limits of the gateway: header sizes, slow headers and bodies, connections and
registration per client IP.

- Headers: aiohttp's parser refuses a request line or header field over `max_line_size` /
  `max_field_size` bytes and more than `max_headers` headers (400/431, before any handler).
- Bodies: the middleware reads a request body before the handler, within `body_timeout`
  seconds in total. A client that sends its headers and then stalls (or trickles) the body
  gets 408 and the connection is closed, instead of holding a handler forever. The body
  size limit (413) is the application's `client_max_size`, enforced by the same read.
- Slow headers: every request head (request line and headers) must be complete within
  `header_timeout` seconds: of connecting, for a connection's first request, and of the
  first byte of the next head, for each later request on a keep-alive connection (an idle
  keep-alive connection that sends nothing is closed by aiohttp's keep-alive timeout,
  75 s). aiohttp has no such timer, so `HeaderDeadline` wraps the server's protocol
  factory (`serve()` installs it).
- Connections per client address: at most `max_connections_per_ip` open at once (0: no
  cap). A connection past it is answered 429 with a JSON `detail` and closed before
  anything it sends is read, so one address cannot exhaust the gateway's sockets.
- Registration (`register/challenge/`, `register/response/`): a token bucket per client
  IP, `register_rate` tokens per second up to `register_burst`; an empty bucket answers 429
  with `Retry-After`. The IP is the TCP peer: `X-Forwarded-For` is never trusted (any
  client can write it), so behind a proxy the limit applies to the proxy's address.
  A real Relay registers once at start and every 10 minutes: the defaults leave room for
  a fleet behind one NAT address restarting at once.

Every value can be set in the environment (`RELAYCTL_HTTP_*`, bus/settings.py), see
`HttpLimits.from_settings`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from bus.settings import Settings
from gateway.errors import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REGISTRATION_PATHS = ("/api/0/relays/register/challenge/", "/api/0/relays/register/response/")
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class HttpLimits:
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64
    body_timeout: float = 10.0  # Relay itself gives a request 5 s
    header_timeout: float = 10.0
    register_rate: float = 5.0
    register_burst: int = 100
    # A Relay keeps a small pool of upstream connections; a fleet behind one NAT address
    # still stays far below this.
    max_connections_per_ip: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        """The limits of the process's settings (bus/settings.py: `RELAYCTL_HTTP_*`)."""
        d = cls()

        def value(name: str, default: float) -> float:
            return float(settings.value(f"RELAYCTL_HTTP_{name}", default))

        return cls(max_line_size=int(value("MAX_LINE_SIZE", d.max_line_size)),
                   max_field_size=int(value("MAX_FIELD_SIZE", d.max_field_size)),
                   max_headers=int(value("MAX_HEADERS", d.max_headers)),
                   body_timeout=value("BODY_TIMEOUT", d.body_timeout),
                   header_timeout=value("HEADER_TIMEOUT", d.header_timeout),
                   register_rate=value("REGISTER_RATE", d.register_rate),
                   register_burst=int(value("REGISTER_BURST", d.register_burst)),
                   max_connections_per_ip=int(value("MAX_CONNECTIONS_PER_IP", d.max_connections_per_ip)))

    def handler_args(self) -> dict[str, Any]:
        """Keyword arguments of aiohttp's request handler (the HTTP parser's limits)."""
        return {"max_line_size": self.max_line_size, "max_field_size": self.max_field_size,
                "max_headers": self.max_headers,
                # An idle keep-alive connection is closed after this (aiohttp's default is an hour).
                "keepalive_timeout": 75.0}


class TokenBuckets:
    """One token bucket per key - a client IP (registration, failed API tokens), a user (AI
    suggestions) - refilled `rate` tokens per second up to `burst`. `clock` is what time it
    is (seconds; a test passes its own instead of waiting for a refill). Bounded: when
    `max_keys` buckets exist, the full ones (keys quiet long enough to be back at `burst`,
    which hold nothing a new bucket would not) are dropped, then all if none is full.
    `rate` and `burst` may be changed while in use."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - at) * self.rate)

    def _until_one(self, tokens: float) -> float:
        return (1.0 - tokens) / self.rate if self.rate > 0 else math.inf

    def take(self, key: str) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is available (inf at
        rate 0)."""
        now = self.clock()
        tokens = self._tokens(key, now)
        if tokens >= 1.0:
            self._put(key, tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return self._until_one(tokens)

    def wait(self, key: str) -> float:
        """0.0 when a token is there now (none is taken), else the seconds until one is."""
        tokens = self._tokens(key, self.clock())
        return 0.0 if tokens >= 1.0 else self._until_one(tokens)

    def spend(self, key: str) -> None:
        """Take a token if there is one (a failure that was let through: counted, never refused)."""
        now = self.clock()
        self._put(key, max(0.0, self._tokens(key, now) - 1.0), now)

    def _put(self, key: str, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self._evict(now)
        self._buckets[key] = (tokens, now)

    def _evict(self, now: float) -> None:
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


def registration_buckets(limits: HttpLimits) -> TokenBuckets:
    """The registration rate limit's buckets, one per client IP."""
    return TokenBuckets(limits.register_rate, limits.register_burst)


def limits_middleware(limits: HttpLimits, registrations: TokenBuckets | None = None) -> Any:
    """The middleware enforcing the body timeout and the registration rate limit
    (`registrations`: its buckets, by default new ones)."""
    buckets = registrations if registrations is not None else registration_buckets(limits)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in REGISTRATION_PATHS:
            wait = buckets.take(request.remote or "unknown")
            if wait > 0:
                response = error_response(429, "Too many registration requests; retry later")
                response.headers["Retry-After"] = str(max(1, math.ceil(min(wait, 3600.0))))
                return response
        # A handler marked `reads_own_body` (the envelope endpoints, gateway/ingest.py) streams
        # its body itself, under its own size cap and deadline.
        if request.method in BODY_METHODS and request.body_exists and not getattr(
                request.match_info.handler, "reads_own_body", False):
            try:
                # read() keeps the body, so the handler's own read() returns it at once.
                # asyncio.timeout, not wait_for: no task made per request; no timer at all for
                # a body received whole already (a relay's usual request: one packet or a few).
                async with asyncio.timeout(None if request.content.is_eof() else limits.body_timeout):
                    await request.read()
            except TimeoutError:
                response = error_response(408, "Request body not received in time")
                response.force_close()
                return response
            except RequestPayloadError:  # e.g. broken chunked encoding, a truncated gzip body
                response = error_response(400, "Malformed request body")
                response.force_close()
                return response
        return await handler(request)

    return middleware


TOO_MANY_CONNECTIONS = json.dumps({"detail": "Too many connections from your address; retry later"}).encode()
REFUSAL = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\n"
           b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n" % len(TOO_MANY_CONNECTIONS)) + TOO_MANY_CONNECTIONS


# How long a refused connection may still send (its bytes are discarded) before it is closed.
REFUSAL_LINGER = 1.0


class ConnectionCounts:
    """Open connections per client address, for the cap (`max_connections_per_ip`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        count = self._open.get(address, 0)
        if self.limit > 0 and count >= self.limit:
            return False
        self._open[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._open.get(address, 0) - 1
        if count > 0:
            self._open[address] = count
        else:
            self._open.pop(address, None)


class _Watched(asyncio.Protocol):
    """Forwards every protocol call to aiohttp's request handler, with a header deadline
    armed for each request head and the connection counted against its address."""

    def __init__(self, handler: Any, timeout: float, counts: ConnectionCounts) -> None:
        self._handler = handler
        self._timeout = timeout
        self._counts = counts
        self._address: str | None = None  # set once admitted
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self._counts.admit(address):
            # Answered before reading anything: the client sees the refusal as the reply to
            # whatever it sends, and aiohttp never holds a handler for this connection. A
            # half-close, then a close a moment later: closing a socket with the client's
            # request unread would reset the connection and lose the answer.
            transport.write(REFUSAL)  # type: ignore[attr-defined]
            if transport.can_write_eof():  # type: ignore[attr-defined]
                transport.write_eof()  # type: ignore[attr-defined]
            asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)
            return
        self._address = address
        self._transport = transport
        self._handler.connection_made(transport)
        self._arm()

    def _requests(self) -> int:
        # `_request_count` counts the request heads aiohttp has parsed on this connection.
        return int(getattr(self._handler, "_request_count", 0))

    def _waiting_for_a_request(self) -> bool:
        # aiohttp's handler awaits `_waiter` while it has no request to serve.
        waiter = getattr(self._handler, "_waiter", None)
        return waiter is not None and not waiter.done()

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire, self._requests())

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, requests_before: int) -> None:
        self._timer = None
        transport = self._transport
        if transport is not None and self._requests() == requests_before and not transport.is_closing():
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return
        self._disarm()
        self._counts.release(self._address)
        self._address = None
        self._handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._address is None:
            return
        before = self._requests()
        self._handler.data_received(data)
        if self._requests() > before:
            self._disarm()  # a head is complete: the next one gets a deadline of its own
        elif self._timer is None and self._waiting_for_a_request():
            # Bytes while the handler waits for a request are the start of the next head
            # (body bytes arrive while a request is being handled): its deadline starts now.
            self._arm()

    def eof_received(self) -> bool | None:
        if self._address is None:
            return None
        return self._handler.eof_received()  # type: ignore[no-any-return]

    def pause_writing(self) -> None:
        if self._address is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self._address is not None:
            self._handler.resume_writing()


class HeaderDeadline:
    """aiohttp's protocol factory, with every connection watched by `_Watched`."""

    def __init__(self, server: Any, timeout: float, max_connections_per_ip: int = 0) -> None:
        self._server = server
        self._timeout = timeout
        self._counts = ConnectionCounts(max_connections_per_ip)

    def __call__(self) -> asyncio.Protocol:
        return _Watched(self._server(), self._timeout, self._counts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)  # shutdown(), connections, ... of the real server


async def serve(runner: web.AppRunner, host: str, port: int, limits: HttpLimits, *,
                reuse_port: bool = False) -> web.TCPSite:
    """Start `runner` on host:port with the header deadline and the connection cap in place."""
    await runner.setup()
    # AppRunner has no hook for its protocol factory; wrapping the one it made is the
    # smallest change that gives aiohttp a header timeout.
    runner._server = HeaderDeadline(runner._server, limits.header_timeout,  # type: ignore[assignment]
                                    limits.max_connections_per_ip)
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
    await site.start()
    return site
