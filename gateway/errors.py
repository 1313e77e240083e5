"""HTTP error answers: every failure is JSON with a `detail`, never a stack trace.

`from_error` is the one translation of a wire error (messages/errors.py) into HTTP, for
every route: the error's status (an internal error is a 503: retry), or the HTTP status
its details carry (`status`, as the AI backend answered it); a 429 carries `Retry-After`
and `error` besides `detail`; a refusal by an org's policy is 403 `{"restriction"}`.
`HTTPFailure` is what a handler raises for an answer the protocol fixes itself.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from aiohttp import web
from redis.exceptions import RedisClusterException

from messages.errors import Forbidden, RelayctlError

# What a gateway's Redis call fails with when Redis is down, slow or refuses: redis-py's
# errors, a cluster's own (RedisClusterException is not a RedisError: a slot no node
# covers) and the socket's (OSError, TimeoutError). A route that reads the cache without
# Redis goes on without it; anything else is a bug, answered by the errors middleware.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException, OSError)


def parse_json(body: bytes) -> Any:
    """A request's JSON body, or 400 with the text Sentry answers."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
        raise HTTPFailure(400, "No valid json body") from None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data, separators=(",", ":")).encode(), status=status,
                        content_type="application/json", headers=headers)


def error_response(status: int, detail: Any, **extra: Any) -> web.Response:
    headers = {"Retry-After": "1"} if status in (502, 503, 504) else None
    body: Any = {"detail": detail, **extra} if not isinstance(detail, (list,)) else detail
    return json_response(body, status, headers)


def from_error(error: RelayctlError) -> web.Response:
    restriction = error.details.get("restriction")
    if isinstance(error, Forbidden) and isinstance(restriction, str):
        return json_response({"restriction": restriction}, 403)
    status = error.details.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
        status = error.status if error.status != 500 else 503
    if status == 429:
        return json_response({"error": error.message, "detail": error.message}, 429, headers={"Retry-After": "1"})
    return error_response(status, error.message)


class HTTPFailure(Exception):
    """Raised by handlers to answer with a given status and body."""

    def __init__(self, status: int, detail: Any, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail, self.extra, self.headers = status, detail, extra, headers

    def response(self) -> web.Response:
        if isinstance(self.detail, str) and self.extra.get("raw"):
            response = json_response(self.detail, self.status)
        else:
            response = error_response(self.status, self.detail, **{k: v for k, v in self.extra.items() if k != "raw"})
        response.headers.update(self.headers or {})
        return response
