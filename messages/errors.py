"""The error hierarchy shared by every package, and its wire form.

    RelayctlError            code "internal", status 500
    ├── BadRequest           code "bad_request", 400 - the input is wrong; fix it and retry
    │   └── BadMessage       code "bad_message", 400 - not a valid envelope / msgpack
    ├── Unauthorized         code "unauthorized", 401
    ├── Forbidden            code "forbidden", 403
    ├── NotFound             code "not_found", 404
    ├── Conflict             code "conflict", 409 - already exists, or lost a concurrent race
    ├── Overloaded           code "overloaded", 429/503 - too much in flight; retry later
    ├── Unavailable          code "unavailable", 503 - a dependency is down
    └── DeadlineExceeded     code "deadline_exceeded", 504

Errors are exceptions in code and values on the wire: `to_wire()` gives the map carried in
an error reply, `from_wire()` rebuilds the matching exception on the caller's side.
"""

from __future__ import annotations

from typing import Any


class RelayctlError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class BadRequest(RelayctlError):
    code = "bad_request"
    status = 400


class BadMessage(BadRequest):
    code = "bad_message"


class Unauthorized(RelayctlError):
    code = "unauthorized"
    status = 401


class Forbidden(RelayctlError):
    code = "forbidden"
    status = 403


class NotFound(RelayctlError):
    code = "not_found"
    status = 404


class Conflict(RelayctlError):
    code = "conflict"
    status = 409


class Overloaded(RelayctlError):
    code = "overloaded"
    status = 503


class Unavailable(RelayctlError):
    code = "unavailable"
    status = 503


class DeadlineExceeded(RelayctlError):
    code = "deadline_exceeded"
    status = 504


_BY_CODE: dict[str, type[RelayctlError]] = {
    cls.code: cls
    for cls in (
        RelayctlError,
        BadRequest,
        BadMessage,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        Overloaded,
        Unavailable,
        DeadlineExceeded,
    )
}


def from_wire(error: Any) -> RelayctlError:
    """Rebuild the exception an error reply describes (unknown codes become the base class)."""
    if not isinstance(error, dict):
        return RelayctlError(f"malformed error reply: {error!r}")
    cls = _BY_CODE.get(str(error.get("code")), RelayctlError)
    details = error.get("details")
    return cls(str(error.get("message", "")), details if isinstance(details, dict) else None)
