"""The building blocks of every decision: what a command decides (`Decision`), the integer
ids it may hand out (`IdPool`, `IdDraw`) and the checks a decision shares with the import.

Integer ids are decided by the command handler, not by the fold: the decider takes them from
an `IdDraw` on the handler's `IdPool`, blocks of ids the handler claimed on the global
`ids.<kind>` aggregate (`IdsClaimed`). See domain/decider.py for the whole protocol.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domain import options as option_catalogue
from domain.state import DomainState
from messages.errors import BadRequest
from messages.events import DomainEvent

MAX_RATE_LIMIT_WINDOW = 365 * 24 * 3600  # seconds
MAX_RATE_LIMIT_COUNT = 10 ** 12


def checked_rate_limit(count: int | None, window: int | None, clear: bool) -> dict[str, int] | None:
    """A key rate limit as stored (`{"count", "window"}`), None with `clear`."""
    if clear:
        if count is not None or window is not None:
            raise BadRequest("give either COUNT and WINDOW or --clear, not both")
        return None
    if count is None or window is None:
        raise BadRequest("a rate limit needs both a count and a window (seconds); --clear removes it")
    if not 0 <= count <= MAX_RATE_LIMIT_COUNT:
        raise BadRequest(f"count must be between 0 and {MAX_RATE_LIMIT_COUNT}")
    if not 1 <= window <= MAX_RATE_LIMIT_WINDOW:
        raise BadRequest(f"window must be between 1 and {MAX_RATE_LIMIT_WINDOW} seconds")
    return {"count": count, "window": window}


@dataclass
class Decision:
    aggregate: str
    aggregate_id: str
    events: list[DomainEvent] = field(default_factory=list)
    result: Callable[[DomainState], Any] = lambda state: None
    # project keys the command names explicitly: claimed before the org commit (`claims_for`)
    explicit_keys: list[str] = field(default_factory=list)


class IdPool:
    """The integer ids one command handler may hand out: the rest of the blocks it claimed."""

    def __init__(self) -> None:
        self._free: dict[str, list[range]] = {}
        self.handed_out = 0  # ids consumed so far: a decision holding ids is stale once it moves

    def add(self, kind: str, first: int, count: int) -> None:
        self._free.setdefault(kind, []).append(range(first, first + count))

    def peek(self, kind: str, n: int) -> int | None:
        """The n-th (from 0) free id of `kind`, or None when the pool holds fewer."""
        for block in self._free.get(kind, []):
            if n < len(block):
                return block[n]
            n -= len(block)
        return None

    def consume(self, kind: str, n: int) -> None:
        self.handed_out += n
        blocks = self._free.get(kind, [])
        while n and blocks:
            used = min(n, len(blocks[0]))
            blocks[0] = blocks[0][used:]
            n -= used
            if not blocks[0]:
                blocks.pop(0)

    def available(self, kind: str) -> int:
        return sum(len(b) for b in self._free.get(kind, []))


class IdDraw:
    """The ids one decision takes from a pool: they leave the pool only with `commit()`
    (when the decision is appended), so a decision that is refused or decided again takes
    the same ones. Past the pool's end `take` counts the shortage and returns 0: such a
    decision is never stored; the handler claims more ids and decides again."""

    def __init__(self, pool: IdPool | None = None) -> None:
        self.pool = pool or IdPool()
        self.taken: dict[str, int] = {}
        self.short: dict[str, int] = {}

    def take(self, kind: str) -> int:
        n = self.taken.get(kind, 0)
        self.taken[kind] = n + 1
        value = self.pool.peek(kind, n)
        if value is None:
            self.short[kind] = self.short.get(kind, 0) + 1
            return 0
        return value

    def commit(self) -> None:
        for kind, n in self.taken.items():
            self.pool.consume(kind, n)
        self.taken.clear()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_public_key() -> str:
    return uuid.uuid4().hex


def new_token() -> str:
    """An API token: shown once to its user, stored only as its `token_hash`. A user token in
    the format sentry-cli recognizes (`sntryu_` and 64 hex characters, domain/access.py); it
    is also the random secret `token.create` makes its tokens from."""
    return "sntryu_" + secrets.token_hex(32)


def checked_option(scope: str, key: str, value: Any) -> Any:
    """The normalized value, or the catalogue's `InvalidOption` (a `bad_request`) naming the
    key. Only that: any other error of a validator is a bug, answered as internal."""
    try:
        return option_catalogue.validate_option(scope, key, value)
    except option_catalogue.InvalidOption as exc:
        raise BadRequest(exc.message, {"key": key}) from None


def checked_key(scope: str, key: str, stored: dict[str, Any]) -> None:
    """Refuse reading or unsetting a key the catalogue does not know for `scope`, as setting
    it is refused - unless it is among the `stored` options (set before the catalogue
    refused it): such a value can still be read and removed."""
    if isinstance(key, str) and key in stored:
        return
    try:
        option_catalogue.check_option_key(scope, key)
    except option_catalogue.InvalidOption as exc:
        raise BadRequest(exc.message, {"key": key}) from None
