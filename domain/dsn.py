"""Sentry DSNs: where a forwarded envelope goes and which key it is sent with.

A DSN is `<scheme>://<public key>[:<secret key>]@<host>[:<port>][/<path>]/<project id>`
(Sentry's own format). The forwarder (actors/forwarder.py) posts to
`<scheme>://<host>[:<port>][/<path>]/api/<project id>/envelope/` with
`X-Sentry-Auth: Sentry sentry_key=<public key>, ...`, and puts the DSN (without a secret)
into the envelope header `dsn`: Sentry refuses an envelope whose `dsn` names another key.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Dsn", "InvalidDsn", "parse_dsn"]

MAX_DSN_LENGTH = 2048


class InvalidDsn(ValueError):
    """Not a DSN a forwarder can send to; the message says what is wrong."""


@dataclass(frozen=True)
class Dsn:
    scheme: str
    public_key: str
    secret_key: str | None
    host: str  # host[:port]
    path: str  # "" or "/prefix"
    project_id: int

    @property
    def envelope_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}/api/{self.project_id}/envelope/"

    @property
    def public_dsn(self) -> str:
        """The DSN without its secret: what goes into the envelope header `dsn`."""
        return f"{self.scheme}://{self.public_key}@{self.host}{self.path}/{self.project_id}"

    def auth_header(self, client: str) -> str:
        parts = [f"sentry_key={self.public_key}", "sentry_version=7", f"sentry_client={client}"]
        if self.secret_key:
            parts.append(f"sentry_secret={self.secret_key}")
        return "Sentry " + ", ".join(parts)


def parse_dsn(value: object) -> Dsn:
    """The DSN `value` names; raises `InvalidDsn`."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidDsn("a DSN must be a non-empty string")
    text = value.strip()
    if len(text) > MAX_DSN_LENGTH:
        raise InvalidDsn(f"a DSN is at most {MAX_DSN_LENGTH} characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidDsn(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidDsn("the scheme must be http or https")
    if not parts.username:
        raise InvalidDsn("the DSN names no public key (expected <scheme>://<key>@<host>/<project id>)")
    if not parts.hostname:
        raise InvalidDsn("the DSN names no host")
    if parts.query or parts.fragment:
        raise InvalidDsn("a DSN has no query or fragment")
    path, _, project = parts.path.rstrip("/").rpartition("/")
    if not project.isdigit() or int(project) <= 0:
        raise InvalidDsn("the DSN must end with a numeric project id")
    host = parts.hostname if port is None else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:  # an IPv6 literal
        host = f"[{parts.hostname}]" if port is None else f"[{parts.hostname}]:{port}"
    return Dsn(parts.scheme, parts.username, parts.password or None, host, path, int(project))
