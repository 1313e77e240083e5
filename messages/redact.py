"""Credentials out of every message and log line: `redact_url(text)`.

NATS and Redis URLs carry their role's password in the userinfo
(``nats://operator:<password>@127.0.0.1:4222``). Whatever text may end up on a terminal, in a
log file or in an error reply goes through `redact_url` first: the CLI's error output, the
connect errors, `up`'s messages and, as a structlog processor (`redact_processor`, installed
by cli/logging.py, which routes libraries' stdlib records through it too), every log line.

`redact_url` keeps the user name and masks the password (``nats://operator:***@...``); a
userinfo with no password is masked whole (``nats://***@...``), since that is where a token
goes. Anything else in the text is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["MASK", "redact", "redact_processor", "redact_url"]

MASK = "***"

# scheme://user[:password]@ - the userinfo ends at the first "@"; it never holds "/", "?",
# "#", whitespace or quotes (a URL quoted in a message keeps its quotes).
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?P<user>[^\s/?#@:'\"<>]*)(?::(?P<password>[^\s/?#@'\"<>]*))?@"
)


def _mask(match: re.Match[str]) -> str:
    if match.group("password") is None:
        return f"{match.group('scheme')}{MASK}@"
    return f"{match.group('scheme')}{match.group('user')}:{MASK}@"


def redact_url(text: str) -> str:
    """`text` with the password (or token) of every URL in it replaced by ``***``."""
    if "@" not in text or "://" not in text:
        return text
    return _USERINFO.sub(_mask, text)


def redact(value: Any) -> Any:
    """`redact_url` applied to every string in `value` (maps, lists, tuples walked); any
    other object that would print a credential is replaced by its redacted repr."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, bytes)):
        return value
    text = repr(value)
    redacted = redact_url(text)
    return value if redacted == text else redacted


def redact_processor(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no value of a log event carries a credential. Runs after
    `format_exc_info`, so tracebacks are covered too."""
    for key, value in list(event_dict.items()):
        event_dict[key] = redact(value)
    return event_dict
