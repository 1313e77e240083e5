"""Request/reply with deadlines: how the CLI, the gateway and actors ask each other.

`request()` wraps a payload in the envelope, sends it, and returns the result or raises
the error the reply carries. The deadline travels in the envelope, so the server side
stops waiting when the caller does. A request nobody answers (no responders, or a timeout)
becomes `Unavailable` / `DeadlineExceeded`, never a hang. Idempotent queries may pass
`retries` to be tried again on another instance of the queue group within the deadline,
and `attempt_timeout` to bound each try: a request in flight to an instance that dies is
never answered, so without it the first try would use up the whole deadline.
"""

from __future__ import annotations

import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from bus.retry import Backoff, retry
from messages import tracing
from messages.endpoints import endpoint_for
from messages.envelope import Request, decode_reply_sequence
from messages.errors import BadRequest, DeadlineExceeded, Unavailable

REQUEST_BACKOFF = Backoff(initial=0.05, factor=2.0, maximum=0.5)


def subject_for(message_type: str) -> str:
    """The subject that serves `message_type` (messages/endpoints.py)."""
    try:
        return endpoint_for(message_type).subject
    except KeyError:
        raise BadRequest(f"unknown message type {message_type!r}") from None


async def request(nc: NATS, message_type: str, payload: dict[str, Any], *, timeout: float = 5.0,
                  subject: str | None = None, correlation_id: str | None = None,
                  retries: int = 0, actor: str = "", attempt_timeout: float | None = None,
                  after: int = 0) -> Any:
    """The result of one request (`after`: serve a read at or after that stream sequence)."""
    result, _sequence = await request_sequence(
        nc, message_type, payload, timeout=timeout, subject=subject, correlation_id=correlation_id,
        retries=retries, actor=actor, attempt_timeout=attempt_timeout, after=after)
    return result


async def request_sequence(nc: NATS, message_type: str, payload: dict[str, Any], *, timeout: float = 5.0,
                           subject: str | None = None, correlation_id: str | None = None,
                           retries: int = 0, actor: str = "", attempt_timeout: float | None = None,
                           after: int = 0) -> tuple[Any, int]:
    """`request`, with the stream sequence the reply names (a stored write's; else 0)."""
    deadline = time.time() + timeout
    envelope = Request(type=message_type, payload=payload, deadline=deadline, actor=actor, after=after,
                       traceparent=tracing.outgoing())
    if correlation_id:
        envelope.id = correlation_id
    data = envelope.encode()
    target = subject or subject_for(message_type)
    ends = time.monotonic() + timeout

    async def attempt(n: int) -> tuple[Any, int]:
        remaining = ends - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"no answer on {target} within {timeout:.1f}s")
        # The last try may use all that is left; earlier ones are bounded, so a try sent to
        # an instance that died does not use up the deadline.
        wait = remaining if n >= retries or attempt_timeout is None else min(remaining, attempt_timeout)
        msg = await nc.request(target, data, timeout=wait)
        return decode_reply_sequence(msg.data)

    try:
        return await retry(attempt, retry_on=(NoRespondersError, TimeoutError, NatsTimeout, Unavailable),
                           backoff=REQUEST_BACKOFF, attempts=retries + 1, deadline=ends)
    except NoRespondersError:
        raise Unavailable(f"no service is answering on {target}") from None
    except (TimeoutError, NatsTimeout):
        raise DeadlineExceeded(f"no answer on {target} within {timeout:.1f}s") from None
