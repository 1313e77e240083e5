"""Request with streamed replies: several messages come back on one reply subject.

`bus.client.request` reads exactly one reply. A streamed request (AI suggestions) gets a
series of `{"ok": true, "chunk": str}` messages closed by a final result (`{"ok": true,
"result": ...}`, with or without `"done": true`) or an error reply (messages/envelope.py).

`stream_request` subscribes to a fresh inbox (under the connection's role prefix, so only
the asker can read it; the responder may answer it many times: `allow_responses` in
bus/embedded.py), publishes the envelope with that inbox as the reply subject, and yields
`Chunk`s then one `Final`, or raises the error the stream ends with. The deadline travels
in the envelope and bounds the whole stream here too: past it, or past an optional idle
timeout between two replies, the iteration raises `DeadlineExceeded`, never hangs. Nobody
listening on the subject is `Unavailable` at once (NATS' no-responders status).

    async with stream_request(nc, "ai.suggest", payload, timeout=60) as replies:
        async for item in replies:
            if isinstance(item, Chunk): ...
            else: item.result
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Self

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout

from bus.client import subject_for
from messages import tracing
from messages.envelope import Request, unpack
from messages.errors import BadMessage, DeadlineExceeded, Unavailable, from_wire

__all__ = ["Chunk", "Final", "ReplyStream", "stream_request"]

NO_RESPONDERS = "503"


@dataclass(frozen=True)
class Chunk:
    """A piece of the answer, in order."""

    text: str


@dataclass(frozen=True)
class Final:
    """The closing reply: the whole result. Nothing follows it."""

    result: Any


class ReplyStream:
    """The replies to one streamed request; an async iterator and async context manager."""

    def __init__(self, nc: NATS, subject: str, request: Request, idle_timeout: float | None = None) -> None:
        self.nc = nc
        self.idle_timeout = idle_timeout
        self.subject = subject
        self.request = request
        self._sub: Any = None
        self._finished = False

    async def start(self) -> Self:
        """Subscribe to a fresh inbox and publish the request (`async with` does this)."""
        inbox = self.nc.new_inbox()
        # Subscribe before publishing: the server sees both in order on one connection.
        self._sub = await self.nc.subscribe(inbox)
        try:
            await self.nc.publish(self.subject, self.request.encode(), reply=inbox)
        except Exception:
            await self.close()
            raise
        return self

    def remaining(self) -> float:
        return self.request.remaining()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Chunk | Final:
        if self._finished:
            raise StopAsyncIteration
        item = await self.next()
        return item

    async def next(self) -> Chunk | Final:
        """The next reply; raises the stream's error, `DeadlineExceeded` past the deadline."""
        if self._finished:
            raise RuntimeError("the stream has finished")
        remaining = self.remaining()
        if remaining <= 0:
            self._finished = True
            raise DeadlineExceeded(f"no complete answer on {self.subject} before the deadline")
        idle = self.idle_timeout is not None and self.idle_timeout < remaining
        try:
            msg = await self._sub.next_msg(timeout=self.idle_timeout if idle else remaining)
        except NatsTimeout:
            self._finished = True
            if idle:
                raise DeadlineExceeded(f"the answer on {self.subject} stopped for {self.idle_timeout:.0f}s") from None
            raise DeadlineExceeded(f"no complete answer on {self.subject} before the deadline") from None
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS and not msg.data:
            self._finished = True
            raise Unavailable(f"no service is answering on {self.subject}")
        try:
            raw = unpack(msg.data)
            if not isinstance(raw, dict) or "ok" not in raw:
                raise BadMessage("reply is not a relayctl reply map")
        except BadMessage:
            self._finished = True
            raise
        if not raw["ok"]:
            self._finished = True
            raise from_wire(raw.get("error"))
        if "chunk" in raw and not raw.get("done"):
            return Chunk(str(raw["chunk"]))
        self._finished = True
        return Final(raw.get("result"))

    async def close(self) -> None:
        self._finished = True
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(NatsError):
                # Fails only when the connection is closing; the subscription goes with it.
                await sub.unsubscribe()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def stream_request(nc: NATS, message_type: str, payload: dict[str, Any], *, timeout: float,
                   idle_timeout: float | None = None, subject: str | None = None,
                   correlation_id: str | None = None, actor: str = "") -> ReplyStream:
    """A request whose answer streams back, sent when the `async with` block is entered.

    `timeout` bounds the whole answer; `idle_timeout`, if given, the wait for each reply,
    so a responder that died mid-stream is noticed long before the deadline.
    """
    if nc is None or not nc.is_connected:
        raise Unavailable("the control plane (NATS) is unavailable")
    envelope = Request(type=message_type, payload=payload, deadline=time.time() + timeout, actor=actor,
                       traceparent=tracing.outgoing())
    if correlation_id:
        envelope.id = correlation_id
    return ReplyStream(nc, subject or subject_for(message_type), envelope, idle_timeout)
