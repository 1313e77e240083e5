"""The base of every actor that owns a projection of the domain events.

A `ProjectionActor` follows the event stream from its last snapshot (bus/snapshots.py;
one actor class per deployment writes them, signed: the command handlers; every start
checks the snapshot against the stream and replays from the start when it fails) or the
start: the bus delivers commits on the asyncio loop, which batches them into `Commits`
messages for the actor; the actor folds them into its `DomainState` and calls
`on_changes`. Replay after a (re)start and live processing are the same path. A commit
that does not decode is folded as skipped (`UndecodableCommit`), logged at error level
and counted (`events.undecodable`), so a projection always reaches the stream's end.

Requests arrive as `Call`s (bus/service.py) and are dispatched to `handle_<type>` methods
(dots become underscores). A handler returns the result, raises a `RelayctlError`, or
returns `DEFERRED` after parking the call with `self.after(sequence, fn)`. `catch_up()`
gives read-your-writes: it parks work until the projection has folded everything the
stream held when it was called. A query the endpoint table marks CAUGHT_UP is parked so
before its handler runs (at the request's `after` sequence when it names one).
"""

from __future__ import annotations

import contextvars
import queue
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pykka
import structlog

from bus import metrics, otel
from bus.runtime import BUS_ERRORS, BusRuntime
from bus.seams import Bus, Message
from bus.service import Call
from bus.snapshots import PackedSnapshot, SnapshotSigner
from domain.projections import EVERYTHING, Projection
from domain.state import Changes, DomainState
from messages import tracing
from messages.endpoints import CAUGHT_UP, consistency
from messages.errors import RelayctlError, Unavailable
from messages.events import DomainEvent, UndecodableCommit

log = structlog.get_logger(__name__)
DEFERRED = object()


@dataclass
class Commits:
    batch: list[tuple[int, list[DomainEvent]]]


@dataclass
class Resume:
    """Run `fn` on the actor: the continuation of an asynchronous wait (`when_done`)."""

    fn: Callable[[], None]


@dataclass
class _Waiter:
    sequence: int
    fn: Callable[[], None]
    call: Call | None


class ServiceActor(pykka.ThreadingActor):
    """An actor that answers `Call`s with `handle_<type>` methods."""

    name = "service"
    # A leaked actor must never keep a process from exiting.
    use_daemon_thread = True
    runtime: BusRuntime  # the event loop the bus runs on
    bus: Bus

    def listen(self, subject: str, wrap: Callable[[Message], Any], queue: str = "") -> None:
        """Tell this actor `wrap(msg)` for every message on `subject`, until it stops."""
        ref = self.actor_ref

        def deliver(msg: Message) -> None:
            try:
                ref.tell(wrap(msg))
            except pykka.ActorDeadError:
                pass

        subscription = self.runtime.call(self.bus.subscribe(subject, deliver, queue))
        self.__dict__.setdefault("_listening", []).append(subscription)

    def on_stop(self) -> None:
        for subscription in self.__dict__.pop("_listening", []):
            try:
                self.runtime.call(subscription.unsubscribe(), timeout=5)
            except BUS_ERRORS:
                pass  # the connection is going: so is the subscription

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Call):
            self._dispatch(message)
            return None
        if isinstance(message, Resume):
            message.fn()
            return None
        return self.on_other(message)

    def when_done(self, coro: Coroutine[Any, Any, Any], then: Callable[[BaseException | None, Any], None]) -> None:
        """Run `coro` on the loop and `then(error, result)` on this actor once it is done;
        meanwhile the actor serves other messages (an actor never blocks on another's reply)."""
        ref = self.actor_ref

        def done(future: Future[Any]) -> None:
            error = Unavailable("cancelled") if future.cancelled() else future.exception()
            result = None if error is not None else future.result()
            try:
                ref.tell(Resume(lambda: then(error, result)))
            except pykka.ActorDeadError:
                pass

        # In this actor's log context: the request it makes carries the trace being served.
        self.runtime.submit(_in_context(contextvars.copy_context(), coro)).add_done_callback(done)

    def on_other(self, message: Any) -> Any:
        raise TypeError(f"{self.name} got an unexpected message {type(message).__name__}")

    def is_replayed(self) -> bool:
        """Ready to serve (projections override this: ready once replay is done)."""
        return True

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        log.error("actor.crashed", actor=self.name, error=repr(exception_value))
        self.fail_queued(f"{self.name} crashed; retry")

    def fail_queued(self, reason: str) -> None:
        """Answer the calls still in the inbox now, instead of at their deadlines."""
        while True:
            try:
                envelope = self.actor_inbox.get_nowait()  # type: ignore[attr-defined]  # a queue.Queue
            except queue.Empty:
                return
            message = getattr(envelope, "message", envelope)
            if isinstance(message, Call):
                message.fail(reason)

    def _dispatch(self, call: Call) -> None:
        handler = getattr(self, "handle_" + call.request.type.replace(".", "_"), None)
        self.run_handler(call, handler)

    def run_handler(self, call: Call, handler: Callable[[Call], Any] | None) -> None:
        if call.expired:
            return  # the caller has already given up; its loop side answered
        # Every log line made while serving this call carries the caller's correlation id
        # and its trace (a span of its own, child of the caller's: messages/tracing.py);
        # requests made from here carry the trace on.
        with call_log_context(call, f"{self.name} {call.request.type}"):
            self._run_handler(call, handler)

    def _run_handler(self, call: Call, handler: Callable[[Call], Any] | None) -> None:
        try:
            if handler is None:
                raise RelayctlError(f"{self.name} cannot handle {call.request.type}")
            result = handler(call)
        except RelayctlError as exc:
            call.error(exc)
        except Exception as exc:  # a bug in one request must not take the actor down
            log.exception("actor.handler_failed", actor=self.name, type=call.request.type,
                          correlation_id=call.request.id)
            call.error(RelayctlError(f"internal error in {self.name}: {type(exc).__name__}"))
        else:
            if result is not DEFERRED:
                call.reply(result)


class ProjectionActor(ServiceActor):
    name = "projection"
    # What this actor folds (domain/projections.py): everything, unless its class declares less.
    projection: Projection = EVERYTHING

    def __init__(self, runtime: BusRuntime, bus: Bus) -> None:
        super().__init__()
        self.runtime = runtime
        self.bus = bus
        self.store = bus.events
        self.state = DomainState(self.projection)
        self.live_from = 0  # sequence of the stream's end at start: replay is done past it
        self.snapshot_sequence = 0
        self._waiters: list[_Waiter] = []
        # Work waiting for the stream's last sequence (`catch_up`): asked once for all of it.
        self._catching_up: list[tuple[Callable[[], None], Call | None]] = []
        self._asking_last_sequence = False
        self._subscription: Any = None
        self._signer: SnapshotSigner | None = None  # made on the first snapshot this actor writes

    # -- lifecycle -------------------------------------------------------------------------

    # Write a snapshot after this many commits folded since the last one (0: never).
    snapshot_every = 0
    SNAPSHOT_NAME = "domain-state"

    def on_start(self) -> None:
        self.live_from = self.runtime.call(self.store.last_sequence())
        self._load_snapshot()
        ref = self.actor_ref
        pending: list[tuple[int, list[DomainEvent]]] = []
        loop = self.runtime.loop

        def flush() -> None:
            batch = pending[:]
            pending.clear()
            try:
                ref.tell(Commits(batch))
            except pykka.ActorDeadError:
                pass

        def deliver(sequence: int, events: list[DomainEvent]) -> None:
            # Runs on the loop: gather what arrives in one loop turn into one actor message.
            if not pending:
                loop.call_soon(flush)
            pending.append((sequence, events))

        self._subscription = self.runtime.call(self.store.follow(deliver, self.state.sequence + 1))
        log.info("projection.started", actor=self.name, replay_to=self.live_from)

    def _load_snapshot(self) -> None:
        started = time.monotonic()
        # Unpacked as it is restored (projects and keys one row at a time): never whole in
        # memory beside the state made of it.
        data = self.runtime.call(self.bus.snapshots.load_streamed(self.SNAPSHOT_NAME))
        if not data:
            return
        loaded = time.monotonic()
        try:
            state = DomainState.from_snapshot(data, self.projection, consume=True)
        except Exception as exc:
            # Signed, so written by a command handler: of another version (another format).
            log.warning("snapshot.ignored", actor=self.name, error=str(exc))
            return
        if state.sequence > self.live_from:
            log.error("snapshot.ahead_of_stream", actor=self.name, snapshot=state.sequence, stream=self.live_from)
            return
        del data
        self.state = state
        self.snapshot_sequence = state.sequence
        log.info("snapshot.loaded", actor=self.name, sequence=state.sequence, load_s=round(loaded - started, 3),
                 restore_s=round(time.monotonic() - loaded, 3), projects=len(state.projects), keys=len(state.keys))

    def _maybe_snapshot(self) -> None:
        if not self.snapshot_every or self.state.sequence - self.snapshot_sequence < self.snapshot_every:
            return
        self._signer = self._signer or SnapshotSigner()
        started = time.monotonic()
        # Packed here, row by row as the state is read (no copy of it), not on the event loop.
        try:
            packed = PackedSnapshot.of(self.state.to_snapshot(streamed=True))
        except (ValueError, TypeError, OverflowError) as exc:  # a value msgpack cannot carry: no snapshot
            log.warning("snapshot.save_failed", name=self.SNAPSHOT_NAME, error=f"{type(exc).__name__}: {exc}")
            self.snapshot_sequence = self.state.sequence  # tried again snapshot_every commits later
            return
        pack_s = time.monotonic() - started
        if self.runtime.call(self.bus.snapshots.save(self.SNAPSHOT_NAME, packed, self._signer, f"system:{self.name}")):
            self.snapshot_sequence = self.state.sequence
            log.info("snapshot.saved", actor=self.name, sequence=self.state.sequence, bytes=len(packed.body),
                     pack_s=round(pack_s, 3), seconds=round(time.monotonic() - started, 3))

    def on_stop(self) -> None:
        super().on_stop()
        if self._subscription is not None:
            try:
                self.runtime.call(self._subscription.unsubscribe(), timeout=5)
            except BUS_ERRORS:
                pass  # the connection is going: so is the subscription
        for waiter in self._waiters:
            if waiter.call:
                waiter.call.fail(f"{self.name} stopped")
        self._waiters.clear()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        super().on_failure(exception_type, exception_value, traceback)
        self.on_stop()

    # -- messages --------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Commits):
            self._fold(message.batch)
            return None
        return super().on_receive(message)

    def _fold(self, batch: list[tuple[int, list[DomainEvent]]]) -> None:
        changes = Changes()
        for sequence, events in batch:
            if isinstance(events, UndecodableCommit) and sequence > self.state.sequence:
                log.error("events.undecodable_commit_skipped", actor=self.name, sequence=sequence,
                          subject=events.subject, error=events.error)
                metrics.incr("events.undecodable", tags={"actor": self.name})
            changes.update(self.state.apply(sequence, events))
        for problem in changes.problems:  # the fold does no I/O: it says what to log
            log.error(problem["event"], actor=self.name, **{k: v for k, v in problem.items() if k != "event"})
        metrics.incr("events.folded", len(batch), tags={"actor": self.name,
                                                       "phase": "live" if self.is_replayed() else "replay"})
        metrics.gauge("actor.inbox_depth", self.actor_inbox.qsize(),  # type: ignore[attr-defined]
                      tags={"actor": self.name})
        self.on_changes(changes, batch)
        self._release_waiters()
        self._maybe_snapshot()

    def on_changes(self, changes: Changes, batch: list[tuple[int, list[DomainEvent]]]) -> None:
        """Hook: called after each folded batch with everything it touched."""

    def _dispatch(self, call: Call) -> None:
        if not self.is_replayed():
            # Answering from a half-replayed projection would be wrong (a known key would
            # look unknown); park the call until the replay reaches where the stream was.
            self.after(self.live_from, lambda: self._dispatch(call), call)
            return
        if consistency(call.request.type) == CAUGHT_UP:  # the endpoint table says so
            self.read_after(call, lambda: ServiceActor._dispatch(self, call))
            return
        super()._dispatch(call)

    def is_replayed(self) -> bool:
        return self.state.sequence >= self.live_from

    # -- waiting for the projection ------------------------------------------------------

    def after(self, sequence: int, fn: Callable[[], None], call: Call | None = None) -> None:
        """Run `fn` on this actor once the projection has folded `sequence`."""
        if self.state.sequence >= sequence:
            fn()
        else:
            self._waiters.append(_Waiter(sequence, fn, call))

    def catch_up(self, fn: Callable[[], None], call: Call | None = None) -> None:
        """Run `fn` once every commit stored before now has been folded.

        The stream's last sequence is asked without blocking this actor, and once for all
        the work that arrives while an earlier question is out: each waits for an answer
        to a question asked after it arrived, so nothing stored before it is missed."""
        self._catching_up.append((fn, call))
        if not self._asking_last_sequence:
            self._ask_last_sequence()

    def _ask_last_sequence(self) -> None:
        batch, self._catching_up = self._catching_up, []
        self._asking_last_sequence = True

        def answered(error: BaseException | None, last: Any) -> None:
            self._asking_last_sequence = False
            if error is not None:
                log.warning("projection.last_sequence_failed", actor=self.name, error=str(error))
            for fn, call in batch:
                if error is None:
                    self.after(int(last), fn, call)
                elif call is not None:
                    call.error(error if isinstance(error, RelayctlError) else
                               Unavailable("the event store did not say how far it reaches; retry"))
            if self._catching_up:
                self._ask_last_sequence()

        self.when_done(self.store.last_sequence(), answered)

    def read_after(self, call: Call, fn: Callable[[], None]) -> None:
        """Run `fn` once this projection may answer `call` as CAUGHT_UP: folded up to the
        sequence the request names (`after`: no question to the store), else caught up."""
        if call.request.after:
            self.after(call.request.after, fn, call)
        else:
            self.catch_up(fn, call)

    def _release_waiters(self) -> None:
        if not self._waiters:
            return
        ready = [w for w in self._waiters if w.sequence <= self.state.sequence]
        self._waiters = [w for w in self._waiters if w.sequence > self.state.sequence
                         and not (w.call and w.call.expired)]
        for waiter in ready:
            waiter.fn()

    def serve_caught_up(self, call: Call, fn: Callable[[], Any]) -> Any:
        """Answer `call` with `fn()` once caught up: the read side of read-your-writes."""

        def run() -> None:
            self.run_handler(call, lambda _call: fn())

        self.read_after(call, run)
        return DEFERRED


def wait_ready(ref: pykka.ActorRef[Any], timeout: float = 30.0) -> None:
    """Block until the actor has replayed the stream as it was when the actor started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proxy = ref.proxy()
        if proxy.is_replayed().get(timeout=timeout):
            return
        time.sleep(0.02)
    raise TimeoutError("actor did not finish replay in time")


async def _in_context(context: contextvars.Context, coro: Coroutine[Any, Any, Any]) -> Any:
    """Await `coro` with the context variables of `context` (another thread's, say) set."""
    for var, value in context.items():
        var.set(value)
    return await coro


@contextmanager
def call_log_context(call: Call, span_name: str | None = None) -> Iterator[None]:
    """The log context of serving `call`: its correlation id and its span of the caller's
    trace (messages/tracing.py). Requests made inside carry the trace on. With `span_name`
    the span is also exported (bus/otel.py: only with the `otel` extra and an endpoint)."""
    fields = tracing.serving(call.request.id, call.request.traceparent)
    with structlog.contextvars.bound_contextvars(correlation_id=call.request.id, **fields):
        if span_name is None or not otel.enabled():
            yield
            return
        with otel.span(span_name, fields["trace_id"], fields["span_id"], fields.get("parent_span_id"),
                       {"relayctl.message_type": call.request.type}):
            yield
