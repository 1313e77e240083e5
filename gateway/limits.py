"""HTTP limits of the gateway: header sizes, slow bodies, and registration per client IP.

- Headers: aiohttp's parser refuses a request line or header field over `max_line_size` /
  `max_field_size` bytes and more than `max_headers` headers (400/431, before any handler).
- Bodies: the middleware reads a request body before the handler, within `body_timeout`
  seconds in total. A client that sends its headers and then stalls (or trickles) the body
  gets 408 and the connection is closed, instead of holding a handler forever. The body
  size limit (413) is the application's `client_max_size`, enforced by the same read.
- Registration (`register/challenge/`, `register/response/`): a token bucket per client
  IP, `register_rate` tokens per second up to `register_burst`; an empty bucket answers 429
  with `Retry-After`. The IP is the TCP peer: `X-Forwarded-For` is never trusted (any
  client can write it), so behind a proxy the limit applies to the proxy's address.
  A real Relay registers once at start and every 10 minutes: the defaults leave room for
  a fleet behind one NAT address restarting at once.

Every value can be set in the environment (`RELAYCTL_HTTP_*`), see `HttpLimits.from_env`.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

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
    register_rate: float = 5.0
    register_burst: int = 100

    @classmethod
    def from_env(cls) -> HttpLimits:
        def number(name: str, default: float) -> float:
            raw = os.environ.get(f"RELAYCTL_HTTP_{name}")
            try:
                return float(raw) if raw else default
            except ValueError:
                return default

        d = cls()
        return cls(max_line_size=int(number("MAX_LINE_SIZE", d.max_line_size)),
                   max_field_size=int(number("MAX_FIELD_SIZE", d.max_field_size)),
                   max_headers=int(number("MAX_HEADERS", d.max_headers)),
                   body_timeout=number("BODY_TIMEOUT", d.body_timeout),
                   register_rate=number("REGISTER_RATE", d.register_rate),
                   register_burst=int(number("REGISTER_BURST", d.register_burst)))

    def handler_args(self) -> dict[str, Any]:
        """Keyword arguments of aiohttp's request handler (the HTTP parser's limits)."""
        return {"max_line_size": self.max_line_size, "max_field_size": self.max_field_size,
                "max_headers": self.max_headers}


class TokenBuckets:
    """One token bucket per key (a client IP), refilled `rate` tokens per second up to
    `burst`. Bounded: when `max_keys` buckets exist, the full ones (clients that have been
    quiet long enough to be back at `burst`) are dropped, then all if none is full."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is available."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            if key not in self._buckets and len(self._buckets) >= self.max_keys:
                self._evict(now)
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate if self.rate > 0 else math.inf

    def _evict(self, now: float) -> None:
        full = [k for k, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            self._buckets.clear()


def limits_middleware(limits: HttpLimits) -> Any:
    """The middleware enforcing the body timeout and the registration rate limit."""
    buckets = TokenBuckets(limits.register_rate, limits.register_burst)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in REGISTRATION_PATHS:
            wait = buckets.take(request.remote or "unknown")
            if wait > 0:
                response = error_response(429, "Too many registration requests; retry later")
                response.headers["Retry-After"] = str(max(1, math.ceil(min(wait, 3600.0))))
                return response
        if request.method in BODY_METHODS and request.body_exists:
            try:
                # read() keeps the body, so the handler's own read() returns it at once.
                await asyncio.wait_for(request.read(), limits.body_timeout)
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
