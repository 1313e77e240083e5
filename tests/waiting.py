"""One way for a test to wait for something that happens in another thread or process:
poll a check until it gives a truthy value, or fail saying what did not happen and what the
check last gave. Tests never sleep a fixed time and then assert."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(check: Callable[[], Any], what: str = "condition", timeout: float = 20.0,
               interval: float = 0.02) -> Any:
    """The first truthy result of `check()`, polled every `interval` seconds for up to
    `timeout` seconds; AssertionError naming `what` (and the last result) after that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {result!r})")
        time.sleep(interval)


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
             interval: float = 0.02) -> None:
    """`eventually` for a check whose result does not matter, timeout first."""
    eventually(check, what, timeout, interval)
