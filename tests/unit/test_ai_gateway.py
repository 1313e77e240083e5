"""The gateway side of AI suggestions: the per-user rate limit, SSE framing, error statuses."""

from __future__ import annotations

import json

import pytest

from gateway.ai import sse_event, user_limiter
from gateway.errors import from_error
from messages.errors import Forbidden, NotFound, Overloaded, RelayctlError, Unavailable
from tests.ai_helpers import parse_sse


def test_a_user_gets_the_burst_then_waits_for_the_refill() -> None:
    """`burst` requests pass at once; the next is refused with the wait until a token is back."""
    now = [100.0]
    limiter = user_limiter(rate=0.5, burst=3, clock=lambda: now[0])
    assert [limiter.take("ann") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("ann") == pytest.approx(2.0)
    assert limiter.take("bob") == 0.0  # buckets are per user
    now[0] = 102.0
    assert limiter.take("ann") == 0.0


def test_the_limiter_forgets_users_whose_bucket_is_full_again() -> None:
    """Memory stays bounded: refilled buckets are dropped once there are too many."""
    now = [0.0]
    limiter = user_limiter(rate=1.0, burst=1, clock=lambda: now[0])
    limiter.max_keys = 10
    for index in range(11):
        limiter.take(f"user{index}")
    now[0] = 100.0
    limiter.take("late")
    assert len(limiter._buckets) <= 2


@pytest.mark.parametrize("text", ["plain", "two\nlines", "\n", " leading space", "trailing\n\n", "cr\r\nlf"])
def test_an_sse_event_carries_its_text_exactly(text: str) -> None:
    """A chunk split into `data:` lines comes back whole to an EventSource-style parser."""
    assert parse_sse(sse_event(text)) == [("message", text.replace("\r\n", "\n"))]


def test_a_named_sse_event() -> None:
    """`event:` names the event before its data."""
    assert sse_event("{}", event="done") == b"event: done\ndata: {}\n\n"


@pytest.mark.parametrize(("error", "status", "body"), [
    (Forbidden("no", {"restriction": "denied"}), 403, {"restriction": "denied"}),
    (NotFound("no AI backend configured"), 404, {"detail": "no AI backend configured"}),
    (Overloaded("slow down", {"status": 429}), 429, {"error": "slow down", "detail": "slow down"}),
    (Unavailable("backend failed", {"status": 502}), 502, {"detail": "backend failed"}),
    (Unavailable("backend down", {"status": 503}), 503, {"detail": "backend down"}),
    (RelayctlError("bug"), 503, {"detail": "bug"}),
    (Unavailable("odd", {"status": "429"}), 503, {"detail": "odd"}),
])
def test_wire_errors_become_the_promised_statuses(error: RelayctlError, status: int, body: dict[str, str]) -> None:
    """The details' status wins when it is a real HTTP error status; restrictions are 403."""
    response = from_error(error)
    assert response.status == status
    assert json.loads(response.body) == body  # type: ignore[arg-type]
