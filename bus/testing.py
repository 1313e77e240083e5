"""Run one actor over the in-memory bus and feed it messages: the unit-test entry point.

In the spirit of nameko's entrypoint hook: a test gives an actor the events it has seen,
sends it one request exactly as a client would (envelope, schema validation, the
endpoint's accepted types, error replies - the path of `ActorService.answer`) and gets its
reply back, or the `RelayctlError` the reply carries. No NATS, no Redis, no threads of
its own beyond the actor's and the loop's.

    with ActorHarness() as h:
        h.given("OrgCreated", "acme", name="Acme", id=1)
        keys = h.start(KeyLookupActor)
        assert h.ask("keys.lookup", {"public_keys": ["..."]}) == {...}

`feed(actor_class, message_type, payload, events=...)` does all of that for one message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any

import pykka

from bus.cache import InMemoryConfigCache
from bus.eventstore import InMemoryEventStore
from bus.runtime import BusRuntime
from bus.seams import InMemoryBus
from bus.service import ActorService
from messages.endpoints import served_by
from messages.envelope import unpack
from messages.events import DomainEvent

__all__ = ["ActorHarness", "feed"]


class ActorHarness:
    """An event loop, an in-memory bus (with its event store) and config cache, and the
    actors started on them, each serving its endpoints from the endpoint table."""

    def __init__(self, name: str = "test", store: InMemoryEventStore | None = None) -> None:
        self.runtime = BusRuntime("memory://", name=name)  # a loop; never connected
        self.store = store if store is not None else InMemoryEventStore()
        self.bus = InMemoryBus(self.store)
        self.cache = InMemoryConfigCache()
        self.refs: list[pykka.ActorRef[Any]] = []

    def given(self, event_type: str, aggregate_id: str, *, actor: str = "test", **payload: Any) -> int:
        """Append one commit of one event; its stream sequence."""
        event = DomainEvent(event_type, aggregate_id, payload, actor=actor)
        return int(self.runtime.call(self.store.append([event], None)))

    def start(self, actor_class: Any, *args: Any, serve: bool = True, ready_timeout: float = 10.0,
              **kwargs: Any) -> pykka.ActorRef[Any]:
        """Start `actor_class(runtime, bus, *args, **kwargs)`, wait for its replay, and serve
        its endpoints on the bus (`serve=False`: a test tells it messages itself)."""
        ref = actor_class.start(self.runtime, self.bus, *args, **kwargs)
        self.refs.append(ref)
        _wait_replayed(ref, ready_timeout)
        if serve:
            name = actor_class.name
            self.runtime.call(self.bus.serve(ActorService(name, ref, served_by(name))))
        return ref

    def ask(self, message_type: str, payload: dict[str, Any], *, timeout: float = 5.0, actor: str = "test",
            after: int = 0, subject: str | None = None) -> Any:
        """Send one request as a client would (on `subject`, else the type's own endpoint);
        its result, or raise the error it carries."""
        return self.runtime.call(self.bus.request(message_type, payload, timeout=timeout, actor=actor, after=after,
                                                  subject=subject), timeout=timeout + 1)

    def send(self, message_type: str, payload: dict[str, Any], *, timeout: float = 5.0,
             actor: str = "test") -> Future[Any]:
        """Send one request without waiting: the future of its result."""
        return self.runtime.submit(self.bus.request(message_type, payload, timeout=timeout, actor=actor))

    def ask_streamed(self, message_type: str, payload: dict[str, Any], *,
                     timeout: float = 5.0) -> tuple[list[str], Any]:
        """A streamed request: the chunks sent before the result, and the result."""
        chunks: list[str] = []
        result = self.runtime.call(self.bus.request(message_type, payload, timeout=timeout,
                                                    stream=chunks.append), timeout=timeout + 1)
        return chunks, result

    def published(self, subject_prefix: str = "") -> list[tuple[str, bytes]]:
        """What actors published on the bus (subjects starting with `subject_prefix`)."""
        return [(s, d) for s, d in self.bus.published if s.startswith(subject_prefix)]

    def published_unpacked(self, subject_prefix: str = "") -> list[tuple[str, Any]]:
        return [(s, unpack(d)) for s, d in self.published(subject_prefix)]

    def close(self) -> None:
        for ref in reversed(self.refs):
            try:
                ref.stop(timeout=5)
            except (pykka.ActorDeadError, pykka.Timeout):
                pass
        self.refs.clear()
        self.runtime.close()

    def __enter__(self) -> ActorHarness:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _wait_replayed(ref: pykka.ActorRef[Any], timeout: float) -> None:
    """Until the actor has replayed what the store held when it started (bus/ imports no
    actors: this asks the actor what `actors.base.wait_ready` asks)."""
    deadline = time.monotonic() + timeout
    while not ref.proxy().is_replayed().get(timeout=timeout):
        if time.monotonic() > deadline:
            raise TimeoutError("the actor did not finish its replay in time")
        time.sleep(0.01)


def feed(actor_class: Any, message_type: str, payload: dict[str, Any], *,
         events: Sequence[tuple[str, str, dict[str, Any]]] = (), args: tuple[Any, ...] = (),
         **kwargs: Any) -> Any:
    """Start `actor_class` over `events` ((type, aggregate id, payload) each), feed it one
    request and return its reply (or raise the error it answered), then stop it."""
    with ActorHarness() as harness:
        for event_type, aggregate_id, event_payload in events:
            harness.given(event_type, aggregate_id, **event_payload)
        harness.start(actor_class, *args, **kwargs)
        return harness.ask(message_type, payload)
