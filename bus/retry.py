"""One way to try again: `Backoff` says how long to wait before each new try, `retry`
(coroutines) and `retry_blocking` (threads) run the tries.

A try is retried only for the exceptions the caller names (`retry_on`), never for any
other (a bug, or an answer that will not change by asking again); it stops after
`attempts` tries or when the next wait would pass `deadline` (`time.monotonic()`), and
then the last exception is raised as it was, for the caller to translate. `attempt`
(0, 1, ...) is passed to the try, which may use it to size its own timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Waits of `initial`, then `factor` times longer each try, at most `maximum`."""

    initial: float = 0.05
    factor: float = 2.0
    maximum: float = 5.0

    def delay(self, attempt: int) -> float:
        """The wait after try number `attempt` (0: the first) failed."""
        return float(min(self.maximum, self.initial * self.factor ** max(0, attempt)))


def _give_up(attempt: int, attempts: int | None, deadline: float | None, wait: float) -> bool:
    if attempts is not None and attempt + 1 >= attempts:
        return True
    return deadline is not None and time.monotonic() + wait >= deadline


async def retry(attempt_fn: Callable[[int], Awaitable[T]], *, retry_on: tuple[type[BaseException], ...],
                backoff: Backoff = Backoff(), attempts: int | None = None, deadline: float | None = None,
                on_retry: Callable[[int, BaseException, float], None] | None = None) -> T:
    """`await attempt_fn(attempt)` until it returns (see the module docstring)."""
    attempt = 0
    while True:
        try:
            return await attempt_fn(attempt)
        except retry_on as exc:
            wait = backoff.delay(attempt)
            if _give_up(attempt, attempts, deadline, wait):
                raise
            if on_retry is not None:
                on_retry(attempt, exc, wait)
        await asyncio.sleep(wait)
        attempt += 1


def retry_blocking(attempt_fn: Callable[[int], T], *, retry_on: tuple[type[BaseException], ...],
                   backoff: Backoff = Backoff(), attempts: int | None = None, deadline: float | None = None,
                   stop: threading.Event | None = None,
                   on_retry: Callable[[int, BaseException, float], None] | None = None) -> T:
    """`attempt_fn(attempt)` until it returns, on a thread; a set `stop` ends the waiting
    early and raises the last exception."""
    attempt = 0
    while True:
        try:
            return attempt_fn(attempt)
        except retry_on as exc:
            wait = backoff.delay(attempt)
            if _give_up(attempt, attempts, deadline, wait) or (stop is not None and stop.is_set()):
                raise
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            if stop is not None:
                if stop.wait(wait):
                    raise
            else:
                time.sleep(wait)
        attempt += 1
