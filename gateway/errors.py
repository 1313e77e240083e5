"""HTTP error answers: every failure is JSON with a `detail`, never a stack trace."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from messages.errors import RelayctlError


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(data, separators=(",", ":")).encode(), status=status,
                        content_type="application/json", headers=headers)


def error_response(status: int, detail: Any, **extra: Any) -> web.Response:
    headers = {"Retry-After": "1"} if status in (502, 503, 504) else None
    body: Any = {"detail": detail, **extra} if not isinstance(detail, (list,)) else detail
    return json_response(body, status, headers)


def from_error(error: RelayctlError) -> web.Response:
    status = error.status if error.status != 500 else 503
    return error_response(status, error.message)


class HTTPFailure(Exception):
    """Raised by handlers to answer with a given status and body."""

    def __init__(self, status: int, detail: Any, **extra: Any) -> None:
        super().__init__(str(detail))
        self.status, self.detail, self.extra = status, detail, extra

    def response(self) -> web.Response:
        if isinstance(self.detail, str) and self.extra.get("raw"):
            return json_response(self.detail, self.status)
        return error_response(self.status, self.detail, **{k: v for k, v in self.extra.items() if k != "raw"})
