"""bus/retry.py: what is retried, how often, and what is raised at the end."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bus.retry import Backoff, retry, retry_blocking

FAST = Backoff(initial=0.001, factor=2.0, maximum=0.004)


def test_backoff_grows_to_its_maximum() -> None:
    assert [Backoff(0.1, 2.0, 0.5).delay(n) for n in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert Backoff(0.25, 1.0, 0.25).delay(7) == 0.25


def test_a_named_error_is_retried_until_it_passes() -> None:
    tries: list[int] = []

    async def flaky(attempt: int) -> str:
        tries.append(attempt)
        if attempt < 2:
            raise TimeoutError("not yet")
        return "ok"

    assert asyncio.run(retry(flaky, retry_on=(TimeoutError,), backoff=FAST, attempts=5)) == "ok"
    assert tries == [0, 1, 2]


def test_the_last_error_is_raised_when_attempts_run_out() -> None:
    async def down(attempt: int) -> None:
        raise ConnectionError(f"try {attempt}")

    with pytest.raises(ConnectionError, match="try 2"):
        asyncio.run(retry(down, retry_on=(ConnectionError,), backoff=FAST, attempts=3))


def test_another_error_is_never_retried() -> None:
    tries: list[int] = []

    def bug(attempt: int) -> None:
        tries.append(attempt)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        retry_blocking(bug, retry_on=(TimeoutError,), backoff=FAST, attempts=5)
    assert tries == [0]


def test_a_deadline_that_the_next_wait_would_pass_ends_the_tries() -> None:
    import time

    tries: list[int] = []

    def slow(attempt: int) -> None:
        tries.append(attempt)
        raise TimeoutError

    with pytest.raises(TimeoutError):
        retry_blocking(slow, retry_on=(TimeoutError,), backoff=Backoff(10.0, 1.0, 10.0),
                       deadline=time.monotonic() + 1.0)
    assert tries == [0]


def test_a_stop_event_ends_the_waiting() -> None:
    stop = threading.Event()
    stop.set()

    def down(attempt: int) -> None:
        raise TimeoutError

    with pytest.raises(TimeoutError):
        retry_blocking(down, retry_on=(TimeoutError,), backoff=Backoff(10.0, 1.0, 10.0), stop=stop)
