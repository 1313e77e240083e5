"""Serve an actor over NATS as a micro service: the asyncio <-> pykka bridge.

Each endpoint subscribes in a queue group, so any number of instances share the work.
For every request the loop decodes and validates the envelope (a bad one gets an error
reply at once), checks the in-flight cap (overload is a fast `Overloaded` error, never an
unbounded queue), then `tell`s the actor a `Call` and awaits an asyncio future that the
actor resolves through `loop.call_soon_threadsafe`. The loop never blocks on an actor, and
a caller never waits past its own deadline.

Registering through `nats.micro` makes `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answer
for every actor service.

An endpoint accepts only its own message types (messages/endpoints.py): a request of
another type gets a `bad_request` reply naming what the subject accepts. A request must
come with an inbox as its reply subject (`_INBOX.…`, where every NATS client gets its
replies). Anything else that arrives on a service subject - a JetStream push consumer
whose deliveries someone pointed at it, replying to `$JS.ACK.…` - was not sent as a
request by any client: it is dropped unanswered, so a stored message (written by a role
that may write some bucket) can never be replayed as a command.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats import micro
from nats.micro.request import Request as MicroRequest

from bus.runtime import BUS_ERRORS
from messages.endpoints import endpoint_for
from messages.envelope import Request, decode_request, encode_error, encode_result
from messages.errors import BadRequest, DeadlineExceeded, Overloaded, RelayctlError, Unavailable
from messages.schema import Schema, validate
from messages.subjects import INBOX_ROOT

log = structlog.get_logger(__name__)


@dataclass
class Call:
    """One request handed to an actor; the actor answers through `reply` or `fail`."""

    request: Request
    respond: Callable[[RelayctlError | None, Any], None]
    stream: Callable[[str], None] | None = None
    received: float = field(default_factory=time.monotonic)
    sequence: int = 0  # set by a write before it replies: where the stream holds its commit
    subject: str = ""  # where it arrived (an actor serving several endpoints tells them apart)

    @property
    def payload(self) -> dict[str, Any]:
        return self.request.payload

    @property
    def expired(self) -> bool:
        return self.request.remaining() <= 0

    def reply(self, result: Any) -> None:
        self.respond(None, result)

    def error(self, error: RelayctlError) -> None:
        self.respond(error, None)

    def fail(self, message: str) -> None:
        self.respond(Unavailable(message), None)


class ActorService:
    """Binds subjects to an actor (anything with `tell`): one NATS micro service, or the
    same endpoints on an in-memory bus (bus/seams.py), both answered by `answer`."""

    def __init__(self, name: str, target: Any, endpoints: dict[str, dict[str, Schema]], *,
                 version: str = "0.1.0", max_in_flight: int = 1000,
                 description: str = "", metadata: dict[str, str] | None = None) -> None:
        """`endpoints` maps a subject to the message types (and schemas) it accepts."""
        self.name = name
        self.target = target
        self.endpoints = endpoints
        self.version = version
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.description = description
        self.metadata = metadata or {}
        self.service: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, nc: Any) -> None:
        """Register as a micro service on the NATS connection `nc`."""
        self.service = await micro.add_service(nc, name=self.name, version=self.version,
                                               description=self.description, metadata=self.metadata)
        for subject in self.endpoints:
            await self.service.add_endpoint(
                name=subject.replace(".", "-").replace("*", "any").replace(">", "all"),
                subject=subject, queue_group=f"rc-{self.name}", handler=self._make_handler(subject))

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()

    def _make_handler(self, subject: str) -> Callable[[MicroRequest], Any]:
        async def handler(msg: MicroRequest) -> None:
            task = asyncio.ensure_future(self._serve(msg, subject))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return handler

    async def _serve(self, msg: MicroRequest, subject: str) -> None:
        reply = msg._msg.reply  # nats.micro's Request does not expose the reply subject
        if not _is_inbox(reply):
            log.warning("service.not_a_request", service=self.name, subject=msg.subject, reply=reply)
            return

        def stream(chunk: str) -> None:
            _publish_chunk(msg, chunk)

        data, headers = await self.answer(msg.data, subject, stream)
        limit = int(getattr(getattr(msg._msg, "_client", None), "max_payload", 0) or 0)
        if limit and len(data) + REPLY_HEADER_RESERVE > limit:
            # Unsent, the caller would wait out its deadline and hear nothing: say why instead.
            log.warning("service.reply_too_large", service=self.name, subject=subject, size=len(data), limit=limit)
            data, headers = encode_error(BadRequest(
                f"the answer is {len(data):,} bytes, over the NATS message size limit (max_payload) of "
                f"{limit:,} bytes: ask for less at a time, or raise max_payload", {"size": len(data), "limit": limit}))
        try:
            await msg.respond(data, headers=headers)
        except BUS_ERRORS as exc:  # the caller went away: nobody to tell
            log.warning("service.reply_failed", error=str(exc))

    async def answer(self, data: bytes, subject: str,
                     stream: Callable[[str], None]) -> tuple[bytes, dict[str, str] | None]:
        """The reply to the request `data` sent on `subject` (runs on the loop; `stream`
        sends a chunk reply ahead of it)."""
        schemas = self.endpoints[subject]
        try:
            request = decode_request(data)
            schema = schemas.get(request.type)
            if schema is None:
                raise BadRequest(_wrong_type(request.type, subject, schemas))
            request.payload = validate(schema, request.payload)
            if request.remaining() <= 0:
                raise DeadlineExceeded("the request's deadline passed before it was served")
            if self.in_flight >= self.max_in_flight:
                raise Overloaded(f"{self.name} is overloaded; retry later")
        except RelayctlError as exc:
            return encode_error(exc)
        self.in_flight += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def resolve(error: RelayctlError | None, result: Any) -> None:
            loop.call_soon_threadsafe(settle, future, error, result)

        def send_chunk(chunk: str) -> None:
            loop.call_soon_threadsafe(stream, chunk)

        call = Call(request, resolve, send_chunk, subject=subject)
        try:
            self.target.tell(call)
            result = await asyncio.wait_for(future, request.remaining())
            return encode_result(result, call.sequence), None
        except RelayctlError as exc:
            return encode_error(exc)
        except TimeoutError:
            return encode_error(DeadlineExceeded(f"{self.name} did not answer before the deadline"))
        except Exception as exc:  # a request boundary: never let one request take the endpoint down
            log.exception("service.request_failed", service=self.name, error=str(exc))
            return encode_error(RelayctlError("internal error"))
        finally:
            self.in_flight -= 1


REPLY_HEADER_RESERVE = 512  # what a reply's headers may take of max_payload (an error's are the largest)


def _is_inbox(reply: str) -> bool:
    return reply.startswith(INBOX_ROOT + ".")


def _wrong_type(message_type: str, subject: str, schemas: dict[str, Schema]) -> str:
    accepted = ", ".join(schemas)
    try:
        served_on = endpoint_for(message_type).subject
    except KeyError:
        return f"unknown message type {message_type!r} on {subject} (it accepts {accepted})"
    return (f"message type {message_type!r} is not accepted on {subject} (it accepts {accepted}); "
            f"it is sent on {served_on}")


def settle(future: asyncio.Future[Any], error: BaseException | None, result: Any) -> None:
    """Complete `future` (on its loop's thread) with `error` or `result`, unless it is done
    already (its caller gave up): how an actor thread hands an answer back to asyncio."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _publish_chunk(msg: MicroRequest, chunk: str) -> None:
    from messages.envelope import encode_chunk

    asyncio.ensure_future(msg.respond(encode_chunk(chunk)))
