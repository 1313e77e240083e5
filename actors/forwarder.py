"""The forwarder: everything that consumes the ingest stream `RC_INGEST`.

Three durable pull consumers on the stream (bus/ingest_store.py), each shared by every
forwarder instance (one consumer, several pullers: JetStream hands each message to one of
them), each acking a message only once it is done with it - so delivery is at least once
and a forwarder killed mid-way loses nothing: what it held unacked is delivered again after
`ack_wait`.

- `forwarder` (envelopes, `rc.in.<project id>`): sends each envelope on to the project's
  downstream Sentry, when one is configured - project option `relayctl:forward_dsn`, else
  the org's (a project set to null opts out). The body is the stored envelope with its
  header `dsn` naming the target (domain/ingest.py `forward_body`), `X-Sentry-Auth` carries
  the target's key, `X-Forwarded-For` the SDK's address, `event_id` is kept so the target
  deduplicates our retries. 2xx: acked.
  429, 5xx, 408 and network errors: negatively acked with a delay (Retry-After when the
  target sent one, else exponential backoff by delivery count), so the stream redelivers it,
  to whichever instance pulls next; until that delay is over the instance sends nothing
  else to that target either (Relay applies a Retry-After to later envelopes too, and a
  target that is down is probed by one envelope, not all). Any other 4xx is permanent: counted
  (`forward.envelopes{result=dead_letter}`) and recorded in the KV bucket `rc_forward_dead`
  (key `<project id>.<stream sequence>`), then acked. `ingest.replay` sends dead letters
  again (the envelope is read back from the stream by its sequence, so a letter can be
  replayed while the stream still holds it: `RELAYCTL_INGEST_MAX_AGE`, 7 days). An envelope
  whose blob is gone is a dead letter at once (no retry could read it).
- `error-events` (envelopes): every `event` item that is an error is normalized and
  scrubbed with the project's own PII and datascrubbing settings (the ones its Relay config
  carries, domain/project_config.py) on a small thread pool (Relay's code; the actor thread
  stays free for queries), stored in `rc_error_events` for the AI flow and indexed for
  `relayctl event list/show` (actors/ingest_stats.py).
- `outcomes` (`rc.in.>`: envelopes and the outcome batches relays post): counted into the
  Prometheus counter `ingest.outcomes` (labels outcome, reason, category: never a project)
  and the per-project minute counts of actors/ingest_stats.py for `relayctl project stats`.

The actor is a projection (it needs projects, orgs and their options); the pull loops run
on the process's asyncio loop and ask the actor thread what needs the projection
(`_on_actor`), once it has caught up with the stream: its own deliveries of the event stream
may lag behind the command that made a project or set its DSN just before the envelope came.
Queries: `ingest.status`, `ingest.replay`, `events.list`, `events.show`, `ingest.stats`; for the
management API `api.ingest_status` (counts only), `api.events` and `api.event` (one project's).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pykka
import structlog
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError
from redis.exceptions import RedisError

from actors.base import DEFERRED, ProjectionActor
from actors.error_events import ErrorEventStore, JetStreamErrorEventStore, StoredEvent, prepare_event
from actors.ingest_stats import IngestStats, InMemoryIngestStats, RedisIngestStats, summarize
from bus import metrics
from bus.ingest_store import HEADER_CLIENT_IP, HEADER_EVENT_ID, HEADER_PROJECT_ID, HEADER_RECEIVED_AT, read_envelope
from bus.retry import Backoff
from bus.runtime import BUS_ERRORS, BusRuntime
from bus.seams import Bus
from bus.service import Call, settle
from bus.settings import InvalidSetting, Settings
from domain.ai_prompt import InvalidEvent
from domain.dsn import Dsn, InvalidDsn, parse_dsn
from domain.ingest import (
    InvalidEnvelope,
    Outcome,
    envelope_header,
    envelope_outcomes,
    error_events,
    event_title,
    forward_body,
    parse_items,
    relay_outcomes,
    scrub_configs,
)
from domain.management import MAX_PER_PAGE, parse_cursor, rfc3339
from domain.model import ACTIVE, DELETED, ProjectKey
from domain.options import get_option, get_org_option
from domain.project_config import build_project_config
from domain.projections import ORG_OPTIONS, PROJECT_OPTIONS, Projection
from messages.errors import BadRequest, NotFound, RelayctlError, Unavailable
from messages.subjects import (
    FORWARD_DEAD_LETTER_BUCKET,
    INGEST_ENVELOPES,
    INGEST_OUTCOMES,
    INGEST_STREAM,
    INGEST_SUBJECTS,
)

__all__ = [
    "DEAD_LETTER_BUCKET", "FORWARD_DSN_OPTION", "ForwardSettings", "ForwarderActor", "classify", "forwarder_factory",
]

log = structlog.get_logger(__name__)

FORWARD_DSN_OPTION = "relayctl:forward_dsn"
DEAD_LETTER_BUCKET = FORWARD_DEAD_LETTER_BUCKET
FORWARD_CONSUMER, EVENTS_CONSUMER, OUTCOMES_CONSUMER = "forwarder", "error-events", "outcomes"
CONSUMERS = (FORWARD_CONSUMER, EVENTS_CONSUMER, OUTCOMES_CONSUMER)
CLIENT = "relayctl-forwarder/0.1"
_ABSENT: Any = object()
MAX_LIST = 200
ON_ACTOR_TIMEOUT = 30.0
MAX_SCAN = 20_000


@dataclass(frozen=True)
class ForwardSettings:
    """How the forwarder forwards: RELAYCTL_FORWARD_ACK_WAIT, _TIMEOUT, _CONCURRENCY, _BACKOFF_BASE,
    _BACKOFF_MAX, _MAX_ACK_PENDING, _CONSUMERS (`from_settings`)."""

    ack_wait: float = 30.0  # an unacked delivery goes to another puller after this
    timeout: float = 10.0  # one HTTP request to the target
    concurrency: int = 32  # envelopes in flight per consumer and instance
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retry_after_max: float = 3600.0
    # Envelopes delivered and not yet acked, per consumer and for all instances: those of a
    # target that is down wait here, so past this many the other projects wait behind them.
    max_ack_pending: int = 10_000
    # which of the three consumers this instance pulls for (RELAYCTL_FORWARD_CONSUMERS, comma
    # separated): instances may be given one job each, e.g. to scale error events apart
    consumers: frozenset[str] = frozenset(CONSUMERS)
    dead_letter_ttl: float = 7 * 24 * 3600.0
    replicas: int = 1  # copies of the dead-letter bucket when this instance creates it

    @classmethod
    def from_settings(cls, settings: Settings) -> ForwardSettings:
        """From the process's settings (bus/settings.py); an unknown consumer name is refused."""
        raw = settings.value("RELAYCTL_FORWARD_CONSUMERS") or ",".join(CONSUMERS)
        names = frozenset(n.strip() for n in raw.split(",") if n.strip())
        unknown = sorted(names - set(CONSUMERS))
        if unknown or not names:
            given = ", ".join(unknown) or "(none given)"
            raise InvalidSetting(f"RELAYCTL_FORWARD_CONSUMERS: unknown consumer {given}; known: {', '.join(CONSUMERS)}",
                                 {"setting": "RELAYCTL_FORWARD_CONSUMERS"})
        return cls(consumers=names, ack_wait=settings.value("RELAYCTL_FORWARD_ACK_WAIT"),
                   timeout=settings.value("RELAYCTL_FORWARD_TIMEOUT"),
                   concurrency=settings.value("RELAYCTL_FORWARD_CONCURRENCY"),
                   backoff_base=settings.value("RELAYCTL_FORWARD_BACKOFF_BASE"),
                   backoff_max=settings.value("RELAYCTL_FORWARD_BACKOFF_MAX"),
                   max_ack_pending=settings.value("RELAYCTL_FORWARD_MAX_ACK_PENDING"),
                   replicas=settings.value("RELAYCTL_STREAM_REPLICAS"))

    def backoff(self, attempt: int) -> float:
        """The wait after delivery number `attempt` (1: the first) failed: bus/retry.py's."""
        return Backoff(self.backoff_base, 2.0, self.backoff_max).delay(min(attempt - 1, 20))


# -- one delivery ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Delivered:
    status: int


@dataclass(frozen=True)
class Retry:
    delay: float
    reason: str


@dataclass(frozen=True)
class Permanent:
    status: int
    detail: str


Result = Delivered | Retry | Permanent


def _retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds from `Retry-After` (seconds or an HTTP date), else the longest limit of
    `X-Sentry-Rate-Limits` (`<seconds>:<categories>:...`), else None."""
    value = headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - (now or time.time()))
            except (TypeError, ValueError):
                pass
    limits = headers.get("X-Sentry-Rate-Limits")
    if limits:
        seconds = []
        for limit in limits.split(","):
            head = limit.strip().split(":", 1)[0]
            try:
                seconds.append(float(head))
            except ValueError:
                continue
        if seconds:
            return max(seconds)
    return None


def classify(status: int, headers: Any, attempt: int, settings: ForwardSettings, detail: str = "") -> Result:
    """What an answer of the target means for the envelope (see the module docstring)."""
    if 200 <= status < 300:
        return Delivered(status)
    if status == 429 or status == 408 or status >= 500:
        after = _retry_after(headers)
        delay = min(after, settings.retry_after_max) if after is not None else settings.backoff(attempt)
        return Retry(delay, f"HTTP {status}")
    return Permanent(status, detail[:500])


async def deliver(session: aiohttp.ClientSession, target: Dsn, body: bytes, attempt: int,
                  settings: ForwardSettings, client_ip: str | None = None) -> Result:
    headers = {"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": target.auth_header(CLIENT),
               "User-Agent": CLIENT}
    if client_ip:
        # as Relay does: the target infers user IPs (`{{auto}}`) from the SDK's address, not ours
        headers["X-Forwarded-For"] = client_ip
    try:
        async with session.post(target.envelope_url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=settings.timeout)) as response:
            text = (await response.content.read(2000)).decode("utf-8", "replace")
            return classify(response.status, response.headers, attempt, settings, text)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Retry(settings.backoff(attempt), f"network error: {type(exc).__name__}")


# -- the actor ---------------------------------------------------------------------------------

@dataclass
class _OnActor:
    """Work for the actor thread from a pull loop: `fn()`'s result resolves `future`."""

    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    caught_up: bool = True


@dataclass(frozen=True)
class _Consumer:
    name: str
    filter: str
    handle: Callable[[Any], Awaitable[None]]


def _project_id(msg: Any) -> int | None:
    token = (msg.headers or {}).get(HEADER_PROJECT_ID) or msg.subject.rsplit(".", 1)[-1]
    return int(token) if token.isdigit() else None


def _received_at(msg: Any) -> float:
    text = (msg.headers or {}).get(HEADER_RECEIVED_AT)
    if text:
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return time.time()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# What a JetStream call may meet (nats.js.errors are NatsErrors); stopping, also the stats' Redis gone.
_NATS_FAILURES: tuple[type[Exception], ...] = (*BUS_ERRORS, OSError)
_CLOSE_ERRORS: tuple[type[Exception], ...] = (*_NATS_FAILURES, RedisError)


class ForwarderActor(ProjectionActor):
    name = "forwarder"
    # where and how to forward: orgs and projects with their options (no keys, relays, users)
    projection = Projection("forwarder", {ORG_OPTIONS, PROJECT_OPTIONS})

    def __init__(self, runtime: BusRuntime, bus: Bus, *, jetstream: JetStreamContext, events: ErrorEventStore,
                 settings: ForwardSettings | None = None, stats: IngestStats | None = None) -> None:
        super().__init__(runtime, bus)
        # The ingest stream's durable consumers, its blobs and the dead letters are JetStream's
        # own (the bus's seam has none of them): given where the worker puts the actor
        # together (`forwarder_factory`), like the error-event store, as the AI actor's is.
        self.js = jetstream
        self.events = events
        self.settings = settings or ForwardSettings()
        self.stats: IngestStats = stats or InMemoryIngestStats()
        self._closed = False
        self._tasks: list[Any] = []
        self._session: aiohttp.ClientSession | None = None
        self._scrub_cache: dict[int, tuple[tuple[float, float], list[dict[str, Any]]]] = {}
        # target URL -> monotonic time before which nothing is sent there (its Retry-After,
        # or the backoff after it failed): per instance, so each probes on its own
        self._held_back: dict[str, float] = {}
        self._pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="forwarder-scrub")

    # -- lifecycle -----------------------------------------------------------------------------

    def on_start(self) -> None:
        super().on_start()
        consumers = (
            _Consumer(FORWARD_CONSUMER, INGEST_ENVELOPES, self._forward),
            _Consumer(EVENTS_CONSUMER, INGEST_ENVELOPES, self._store_events),
            _Consumer(OUTCOMES_CONSUMER, INGEST_SUBJECTS, self._count),
        )
        self._tasks = [self.runtime.submit(self._consume(c)) for c in consumers if c.name in self.settings.consumers]

    def on_stop(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.runtime.call(self._close(), timeout=5)
        except _CLOSE_ERRORS:
            pass  # stopping anyway: the session and the stats' client go with the process
        super().on_stop()

    async def _close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.stats.close()

    def on_other(self, message: Any) -> Any:
        if isinstance(message, _OnActor):
            if message.caught_up:
                # The projection follows the stream on its own and may lag behind the command
                # that made a project (or set its DSN) just before the envelope came: catch up
                # first (one question to the store for all that arrive meanwhile).
                self.catch_up(lambda: self._run_on_actor(message))
            else:
                self.after(self.live_from, lambda: self._run_on_actor(message))
            return None
        return super().on_other(message)

    def _run_on_actor(self, work: _OnActor) -> None:
        try:
            result, error = work.fn(), None
        except BaseException as exc:  # handed back to the pull loop that asked
            result, error = None, exc
        work.loop.call_soon_threadsafe(settle, work.future, error, result)

    async def _on_actor(self, fn: Callable[[], Any], *, caught_up: bool = True) -> Any:
        """`fn()` on the actor thread, once the projection has caught up with the stream
        (`caught_up`) or at least replayed it. Unavailable when that takes too long (the
        store does not answer): the message it is for is retried."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        try:
            self.actor_ref.tell(_OnActor(fn, future, loop, caught_up))
        except pykka.ActorDeadError:
            raise Unavailable("the forwarder stopped") from None
        try:
            return await asyncio.wait_for(future, ON_ACTOR_TIMEOUT)
        except TimeoutError:
            raise Unavailable("the forwarder's projection did not catch up in time") from None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        return self._session

    # -- pull loops ----------------------------------------------------------------------------

    async def _subscribe(self, consumer: _Consumer) -> Any:
        config = api.ConsumerConfig(
            durable_name=consumer.name, name=consumer.name, filter_subject=consumer.filter,
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self.settings.ack_wait, max_deliver=-1,
            max_ack_pending=max(self.settings.max_ack_pending, self.settings.concurrency * 8),
            deliver_policy=api.DeliverPolicy.ALL)
        # Create, or update one made with other settings (ack_wait is editable).
        await self.js.add_consumer(INGEST_STREAM, config=config)
        return await self.js.pull_subscribe_bind(durable=consumer.name, stream=INGEST_STREAM)

    async def _consume(self, consumer: _Consumer) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        room = asyncio.Condition()
        waiting_logged = False
        while not self._closed:
            try:
                subscription = await self._subscribe(consumer)
            except asyncio.CancelledError:
                raise
            except _NATS_FAILURES as exc:
                # The stream is made by the gateway (or `up`); until then, wait for it.
                if not waiting_logged:
                    log.info("forwarder.waiting_for_stream", consumer=consumer.name,
                             error=str(exc) or type(exc).__name__)
                    waiting_logged = True
                await asyncio.sleep(1.0)
                continue
            waiting_logged = False
            try:
                while not self._closed:
                    async with room:
                        await room.wait_for(lambda: len(in_flight) < self.settings.concurrency)
                    try:
                        msgs = await subscription.fetch(self.settings.concurrency - len(in_flight), timeout=1.0)
                    except (NatsTimeout, TimeoutError):
                        continue
                    for msg in msgs:
                        task = asyncio.create_task(self._handle(consumer, msg))
                        in_flight.add(task)

                        def done(t: asyncio.Task[None]) -> None:
                            in_flight.discard(t)

                            async def notify() -> None:
                                async with room:
                                    room.notify_all()

                            if not self._closed:
                                asyncio.ensure_future(notify())

                        task.add_done_callback(done)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the boundary of one consumer's loop: it pulls again after a second
                log.warning("forwarder.pull_failed", consumer=consumer.name, error=str(exc) or type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                try:
                    await subscription.unsubscribe()
                except _NATS_FAILURES:
                    pass  # gone with the connection

    async def _handle(self, consumer: _Consumer, msg: Any) -> None:
        try:
            await consumer.handle(msg)
        except Exception as exc:  # never ack what failed: it comes back after a delay
            log.warning("forwarder.message_failed", consumer=consumer.name, error=str(exc) or type(exc).__name__)
            metrics.incr("ingest.consumer_errors", tags={"consumer": consumer.name})
            try:
                await msg.nak(delay=self.settings.backoff(msg.metadata.num_delivered))
            except _NATS_FAILURES:
                pass  # unacked all the same: delivered again after ack_wait

    # -- forwarding ----------------------------------------------------------------------------

    def _target(self, project_id: int) -> Dsn | None:
        """The DSN a project's envelopes go to (actor thread), None when it forwards nowhere."""
        project = self.state.projects.get(project_id)
        if project is None or project.status == DELETED:
            return None
        org = self.state.orgs.get(project.org_id)
        value = get_option(project, FORWARD_DSN_OPTION, _ABSENT, org=org)
        if value is _ABSENT:
            value = get_org_option(org, FORWARD_DSN_OPTION, None) if org is not None else None
        if not value:
            return None
        try:
            return parse_dsn(value)
        except InvalidDsn as exc:  # stored before validation existed: forward nowhere, say so
            log.warning("forwarder.invalid_dsn", project_id=project_id, error=str(exc))
            return None

    async def _forward(self, msg: Any) -> None:
        project_id = _project_id(msg)
        if project_id is None:
            await msg.ack()
            return
        # What the projection holds now, and only when that says "nowhere" once caught up with
        # the stream (a DSN set just before): the common case costs no question to the store.
        target = await self._on_actor(lambda: self._target(project_id), caught_up=False)
        if target is None:
            target = await self._on_actor(lambda: self._target(project_id))
        if target is None:
            await msg.ack()
            return
        attempt = msg.metadata.num_delivered
        wait = self._held_back.get(target.envelope_url, 0.0) - time.monotonic()
        if wait > 0:
            # The target said wait (or is down): this envelope waits too, untried, as Relay
            # applies a Retry-After to every later envelope.
            metrics.incr("forward.envelopes", tags={"result": "held_back"})
            await msg.nak(delay=wait)
            return
        data = await self._envelope(msg)
        keepalive = asyncio.create_task(self._keep_alive(msg))
        try:
            result = (Permanent(0, "the envelope is gone from the blob bucket") if data is None
                      else await self._send(data, target, attempt, msg.headers))
        finally:
            keepalive.cancel()
        sequence = msg.metadata.sequence.stream
        if isinstance(result, Delivered):
            self._held_back.pop(target.envelope_url, None)
            await msg.ack()
            metrics.incr("forward.envelopes", tags={"result": "delivered"})
        elif isinstance(result, Retry):
            until = time.monotonic() + result.delay
            self._held_back[target.envelope_url] = max(self._held_back.get(target.envelope_url, 0.0), until)
            metrics.incr("forward.envelopes", tags={"result": "retried"})
            log.info("forwarder.retry", sequence=sequence, attempt=attempt, delay=result.delay, reason=result.reason)
            await msg.nak(delay=result.delay)
        else:
            await self._dead_letter(project_id, sequence, msg, target, result, attempt)
            await msg.ack()
            metrics.incr("forward.envelopes", tags={"result": "dead_letter"})

    async def _envelope(self, msg: Any) -> bytes | None:
        """The stored envelope; None when its blob is gone (aged out or deleted): retrying
        could never read it, so each consumer settles it at once."""
        try:
            return await read_envelope(self.js, msg)
        except NotFoundError:
            log.warning("forwarder.blob_missing", subject=msg.subject, sequence=msg.metadata.sequence.stream)
            metrics.incr("ingest.blob_missing")
            return None

    async def _send(self, data: bytes, target: Dsn, attempt: int, headers: Any) -> Result:
        try:
            body = forward_body(data, target)
        except InvalidEnvelope as exc:
            return Permanent(0, str(exc))
        return await deliver(self._http(), target, body, attempt, self.settings,
                             (headers or {}).get(HEADER_CLIENT_IP))

    async def _keep_alive(self, msg: Any) -> None:
        """A slow target must not make the stream hand the envelope to another puller."""
        while True:
            await asyncio.sleep(max(0.5, self.settings.ack_wait / 3))
            try:
                await msg.in_progress()
            except _NATS_FAILURES:
                return

    async def _dead_letters(self) -> Any:
        try:
            return await self.js.key_value(DEAD_LETTER_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            return await self.js.create_key_value(api.KeyValueConfig(
                bucket=DEAD_LETTER_BUCKET, history=1, ttl=self.settings.dead_letter_ttl,
                replicas=self.settings.replicas,
                description="relayctl: envelopes a downstream Sentry refused for good"))

    async def _dead_letter(self, project_id: int, sequence: int, msg: Any, target: Dsn, result: Permanent,
                           attempt: int) -> None:
        headers = msg.headers or {}
        letter = {"projectId": project_id, "sequence": sequence, "eventId": headers.get(HEADER_EVENT_ID),
                  "status": result.status, "detail": result.detail, "attempts": attempt,
                  "target": target.envelope_url, "failedAt": _iso(time.time()),
                  "receivedAt": headers.get(HEADER_RECEIVED_AT)}
        kv = await self._dead_letters()
        await kv.put(f"{project_id}.{sequence}", json.dumps(letter).encode())
        log.warning("forwarder.dead_letter", project_id=project_id, sequence=sequence, status=result.status)

    async def _letters(self, project_id: int | None = None) -> list[dict[str, Any]]:
        """Every dead letter (of one project): read in stream order by direct gets, not a
        consumer (the forwarder writes the bucket, so it may create no consumer on it)."""
        await self._dead_letters()
        stream = f"KV_{DEAD_LETTER_BUCKET}"
        subject = f"$KV.{DEAD_LETTER_BUCKET}." + (f"{project_id}.*" if project_id is not None else ">")
        letters: list[dict[str, Any]] = []
        sequence = 1
        while len(letters) < MAX_SCAN:
            try:
                raw = await self.js.get_msg(stream, sequence, subject=subject, next=True)
            except NotFoundError:
                break
            sequence = int(raw.seq or sequence) + 1
            if (raw.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not raw.data:
                continue
            try:
                letters.append(json.loads(raw.data))
            except ValueError:
                continue
        return letters

    # -- error events --------------------------------------------------------------------------

    def _scrub_settings(self, project_id: int) -> list[dict[str, Any]] | None:
        """Actor thread: the PII configs of the project's piiConfig and datascrubbingSettings as
        its Relay config carries them (domain/ingest.py `scrub_configs`), None for no project.
        Made again only when the project or its org changed."""
        project = self.state.projects.get(project_id)
        org = self.state.orgs.get(project.org_id) if project is not None else None
        if project is None or org is None:
            return None
        version = (project.last_change, org.last_change)
        cached = self._scrub_cache.get(project_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        key = ProjectKey("0" * 32, 0, project.id)
        config = build_project_config(org, replace(project, status=ACTIVE), key)["config"]
        configs = scrub_configs(config.get("piiConfig"), config.get("datascrubbingSettings"))
        self._scrub_cache[project_id] = (version, configs)
        return configs

    @staticmethod
    def _prepare(project_id: int, data: bytes, headers: dict[str, str], received: float,
                 scrubbing: list[dict[str, Any]]) -> list[StoredEvent]:
        """The envelope's error events, normalized, scrubbed and validated. Pure and mostly in
        Relay's code (which releases the GIL), so it runs on the pool, not the actor thread."""
        items = parse_items(data)
        if not any(item.type == "event" for item in items):
            return []
        event_id = headers.get(HEADER_EVENT_ID) or envelope_header(data).get("event_id")
        stored: list[StoredEvent] = []
        for event in error_events(items, project_id, client_ip=headers.get(HEADER_CLIENT_IP), scrubbing=scrubbing,
                                  event_id=event_id if isinstance(event_id, str) else None):
            try:
                stored.append(prepare_event(project_id, event, received=received))
            except InvalidEvent as exc:
                log.warning("forwarder.event_refused", project_id=project_id, reason=exc.reason)
                metrics.incr("ingest.error_events", tags={"result": "invalid"})
        return stored

    async def _store_events(self, msg: Any) -> None:
        project_id = _project_id(msg)
        if project_id is None:
            await msg.ack()
            return
        data = await self._envelope(msg)
        headers = dict(msg.headers or {})
        # Always caught up: a sensitive field set just before must scrub this event already.
        scrubbing = await self._on_actor(lambda: self._scrub_settings(project_id))
        if scrubbing is None or data is None:
            metrics.incr("ingest.error_events", tags={"result": "unknown_project"})
            await msg.ack()
            return
        try:
            stored = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._prepare, project_id, data, headers, _received_at(msg), scrubbing)
        except InvalidEnvelope as exc:
            log.warning("forwarder.envelope_unreadable", project_id=project_id, error=str(exc))
            metrics.incr("ingest.error_events", tags={"result": "invalid"})
            await msg.ack()
            return
        for event in stored:
            await self.events.put(event)
            await self.stats.index_event(project_id, event.event_id, event.received)
            metrics.incr("ingest.error_events", tags={"result": "stored"})
        await msg.ack()

    # -- outcomes ------------------------------------------------------------------------------

    async def _count(self, msg: Any) -> None:
        project_id = _project_id(msg)
        if msg.subject != INGEST_OUTCOMES and (project_id is None or msg.subject.count(".") != 2):
            await msg.ack()  # relay metrics and anything else not counted here
            return
        data = await self._envelope(msg)
        if data is None:
            outcomes: list[Outcome] = []
        elif msg.subject == INGEST_OUTCOMES:
            outcomes = relay_outcomes(data)
        else:
            assert project_id is not None
            try:
                outcomes = envelope_outcomes(parse_items(data), project_id)
            except InvalidEnvelope:
                outcomes = [Outcome("accepted", "unknown", "none", 1, project_id)]
        for outcome in outcomes:
            metrics.incr("ingest.outcomes", outcome.quantity, tags={
                "outcome": outcome.outcome, "reason": outcome.reason, "category": outcome.category})
        await self.stats.add(outcomes, _received_at(msg))
        await msg.ack()

    # -- queries -------------------------------------------------------------------------------

    def _project(self, org: str, project: str) -> Any:
        if self.state.org(org) is None:
            raise NotFound(f"No organization matching `{org}`")
        found = self.state.project(org, project)
        if found is None or found.status == DELETED:
            raise NotFound(f"No project matching `{org}/{project}`")
        return found

    def _slugs(self, project_id: int) -> dict[str, Any]:
        project = self.state.projects.get(project_id)
        org = self.state.orgs.get(project.org_id) if project is not None else None
        return {"projectId": project_id, "org": org.slug if org else None,
                "project": project.slug if project else None}

    def _answer_async(self, call: Call, work: Awaitable[Any]) -> Any:
        """Run `work` on the loop and answer `call` with its result (the actor stays free)."""
        future = self.runtime.submit(_bounded(work, max(0.5, call.request.remaining() - 0.2)))

        def done(_: Any) -> None:
            error = future.exception()
            if isinstance(error, RelayctlError):
                call.error(error)
            elif isinstance(error, TimeoutError):
                call.error(Unavailable("the stream did not answer in time"))
            elif error is not None:
                call.error(Unavailable(f"the ingest stream is unavailable: {error or type(error).__name__}"))
            else:
                call.reply(future.result())

        future.add_done_callback(done)
        return DEFERRED

    def handle_ingest_stats(self, call: Call) -> Any:
        def stats() -> Any:
            project = self._project(call.payload["org"], call.payload["project"])
            slugs = self._slugs(project.id)

            async def run() -> Any:
                now = time.time()
                return {**slugs, **summarize(await self.stats.minutes(project.id, now), now)}

            return self._answer_async(call, run())

        return self.serve_caught_up(call, stats)

    def handle_events_list(self, call: Call) -> Any:
        def listing() -> Any:
            project = self._project(call.payload["org"], call.payload["project"])
            limit = max(1, min(int(call.payload.get("limit") or 20), MAX_LIST))
            return self._answer_async(call, self._list_events(project.id, limit))

        return self.serve_caught_up(call, listing)

    async def _list_events(self, project_id: int, limit: int) -> dict[str, Any]:
        events = []
        for event_id in await self.stats.recent_events(project_id, limit):
            stored = await self.events.get(project_id, event_id)
            if stored is not None:
                events.append(_summary(stored))
        return {"events": events}

    def handle_events_show(self, call: Call) -> Any:
        event_id = str(call.payload["event_id"]).replace("-", "").lower()
        if len(event_id) != 32 or any(c not in "0123456789abcdef" for c in event_id):
            raise BadRequest(f"not an event id (32 hex digits): {call.payload['event_id']!r}")

        async def run() -> Any:
            project_id = await self.stats.event_project(event_id)
            stored = await self.events.get(project_id, event_id) if project_id is not None else None
            if stored is None:
                raise NotFound(f"No event matching `{event_id}`")
            slugs = await self._on_actor(lambda: self._slugs(stored.project_id), caught_up=False)
            return {**slugs, **_summary(stored), "event": stored.event}

        return self.serve_caught_up(call, lambda: self._answer_async(call, run()))

    def handle_ingest_status(self, call: Call) -> Any:
        return self._answer_async(call, self._status())

    async def _status(self) -> dict[str, Any]:
        stream, consumers = await self._stream_view()
        floor = consumers.get(FORWARD_CONSUMER, {}).get("ackFloor", 0)
        backlog, scanned_all = await self._backlog(floor, stream["lastSeq"])
        rows = await self._backlog_rows(backlog)
        letters = await self._letters()
        return {"stream": stream, "consumers": consumers,
                "backlog": rows, "backlogComplete": scanned_all,
                "deadLetters": {"count": len(letters), "letters": sorted(
                    letters, key=lambda x: x.get("sequence", 0))[:MAX_LIST]}}

    async def _stream_view(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ingest stream's size and oldest envelope, and each consumer's backlog."""
        try:
            info = await self.js.stream_info(INGEST_STREAM)
        except NotFoundError:
            raise Unavailable(f"the ingest stream {INGEST_STREAM} does not exist yet (no gateway ran)") from None
        state = info.state
        oldest = None
        if state.messages:
            first = await self.js.get_msg(INGEST_STREAM, state.first_seq)
            oldest = (first.headers or {}).get(HEADER_RECEIVED_AT)
        consumers: dict[str, Any] = {}
        for name in (FORWARD_CONSUMER, EVENTS_CONSUMER, OUTCOMES_CONSUMER):
            try:
                c = await self.js.consumer_info(INGEST_STREAM, name)
            except NotFoundError:
                continue
            consumers[name] = {"pending": c.num_pending, "ackPending": c.num_ack_pending,
                               "redelivered": c.num_redelivered,
                               "ackFloor": c.ack_floor.stream_seq if c.ack_floor else 0}
        return ({"name": INGEST_STREAM, "messages": state.messages, "bytes": state.bytes,
                 "firstSeq": state.first_seq, "lastSeq": state.last_seq, "oldest": oldest}, consumers)

    async def _backlog_rows(self, backlog: dict[int, int]) -> list[dict[str, Any]]:
        """The forward backlog of the projects that forward somewhere, with their slugs."""
        rows = await self._on_actor(caught_up=False, fn=lambda: [
            {**self._slugs(pid), "envelopes": n, "forwarding": self._target(pid) is not None}
            for pid, n in sorted(backlog.items())])
        return [r for r in rows if r["forwarding"]]

    # -- the management API's reads (gateway/api/ingest.py checks the caller's scope) ----------

    def handle_api_ingest_status(self, call: Call) -> Any:
        """`ingest status` as counts only - no event, no dead letter's detail or target - of
        the whole (no project named) or of one project."""
        def status() -> Any:
            org, project = call.payload.get("org"), call.payload.get("project")
            if not org and not project:
                return self._answer_async(call, self._counts())
            if not (org and project):
                raise BadRequest("give both org and project, or neither")
            found = self._project(org, project)
            return self._answer_async(call, self._project_counts(found.id))

        return self.serve_caught_up(call, status)

    async def _counts(self) -> dict[str, Any]:
        stream, consumers = await self._stream_view()
        floor = consumers.get(FORWARD_CONSUMER, {}).get("ackFloor", 0)
        backlog, scanned_all = await self._backlog(floor, stream["lastSeq"])
        rows = await self._backlog_rows(backlog)
        by_project: dict[int, int] = {}
        for letter in await self._letters():
            pid = int(letter.get("projectId") or 0)
            by_project[pid] = by_project.get(pid, 0) + 1
        letter_rows = await self._on_actor(caught_up=False, fn=lambda: [
            {**self._slugs(pid), "count": n} for pid, n in sorted(by_project.items())])
        return {"stream": stream, "consumers": consumers,
                "backlog": [{k: r[k] for k in ("projectId", "org", "project", "envelopes")} for r in rows],
                "backlogComplete": scanned_all,
                "deadLetters": {"count": sum(by_project.values()), "byProject": letter_rows}}

    async def _project_counts(self, project_id: int) -> dict[str, Any]:
        forwarding, slugs = await self._on_actor(caught_up=False, fn=lambda: (
            self._target(project_id) is not None, self._slugs(project_id)))
        backlog: dict[int, int] = {}
        scanned_all = True
        if forwarding:  # a project that forwards nowhere has no backlog: no scan of the stream
            stream, consumers = await self._stream_view()
            floor = consumers.get(FORWARD_CONSUMER, {}).get("ackFloor", 0)
            backlog, scanned_all = await self._backlog(floor, stream["lastSeq"])
        now = time.time()
        return {**slugs, "forwarding": forwarding,
                "backlog": {"envelopes": backlog.get(project_id, 0), "complete": scanned_all},
                "deadLetters": {"count": len(await self._letters(project_id))},
                "outcomes": summarize(await self.stats.minutes(project_id, now), now)}

    def handle_api_events(self, call: Call) -> Any:
        """A page of one project's newest stored error events: ids, titles, times."""
        def listing() -> Any:
            project = self._project(call.payload["org"], call.payload["project"])
            per_page = max(1, min(int(call.payload.get("per_page") or MAX_PER_PAGE), MAX_PER_PAGE))
            offset = parse_cursor(call.payload.get("cursor"))
            return self._answer_async(call, self._event_page(project.id, offset, per_page))

        return self.serve_caught_up(call, listing)

    async def _event_page(self, project_id: int, offset: int, per_page: int) -> dict[str, Any]:
        ids = await self.stats.recent_events(project_id, offset + per_page + 1)
        items = []
        for event_id in ids[offset:offset + per_page]:
            stored = await self.events.get(project_id, event_id)
            if stored is not None:
                items.append(_api_summary(stored))
        return {"items": items, "offset": offset, "perPage": per_page,
                "next": f"0:{offset + per_page}:0" if len(ids) > offset + per_page else None,
                "prev": f"0:{max(0, offset - per_page)}:1" if offset > 0 else None}

    def handle_api_event(self, call: Call) -> Any:
        """One stored (scrubbed) error event of the project named; NotFound for an event of
        any other project, so a caller learns nothing of events it may not see."""
        event_id = str(call.payload["event_id"]).replace("-", "").lower()
        if len(event_id) != 32 or any(c not in "0123456789abcdef" for c in event_id):
            raise NotFound(f"No event matching `{call.payload['event_id']}`")

        def show() -> Any:
            project = self._project(call.payload["org"], call.payload["project"])

            async def run() -> Any:
                stored = await self.events.get(project.id, event_id)
                if stored is None or stored.project_id != project.id:
                    raise NotFound(f"No event matching `{event_id}`")
                return _api_detail(stored)

            return self._answer_async(call, run())

        return self.serve_caught_up(call, show)

    async def _backlog(self, floor: int, last: int) -> tuple[dict[int, int], bool]:
        """Envelopes past the forwarder's ack floor, by project (headers only, bounded)."""
        counts: dict[int, int] = {}
        if last <= floor:
            return counts, True
        config = api.ConsumerConfig(headers_only=True, ack_policy=api.AckPolicy.NONE, inactive_threshold=10.0,
                                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=floor + 1)
        subscription = await self.js.pull_subscribe(INGEST_ENVELOPES, stream=INGEST_STREAM, config=config)
        seen = 0
        try:
            while seen < MAX_SCAN:
                try:
                    msgs = await subscription.fetch(min(1000, MAX_SCAN - seen), timeout=0.5)
                except (NatsTimeout, TimeoutError):
                    break
                for msg in msgs:
                    seen += 1
                    pid = _project_id(msg)
                    if pid is not None:
                        counts[pid] = counts.get(pid, 0) + 1
                if msgs and msgs[-1].metadata.sequence.stream >= last:
                    break
        finally:
            try:
                await subscription.unsubscribe()
            except _NATS_FAILURES:
                pass  # an ephemeral consumer: the server drops it
        return counts, seen < MAX_SCAN

    def handle_ingest_replay(self, call: Call) -> Any:
        def replay() -> Any:
            project_id = None
            if call.payload.get("org") or call.payload.get("project"):
                if not (call.payload.get("org") and call.payload.get("project")):
                    raise BadRequest("give both org and project, or neither")
                project_id = self._project(call.payload["org"], call.payload["project"]).id
            return self._answer_async(call, self._replay(project_id, call.payload.get("sequence")))

        return self.serve_caught_up(call, replay)

    async def _replay(self, project_id: int | None, sequence: int | None) -> dict[str, Any]:
        letters = await self._letters(project_id)
        if sequence is not None:
            letters = [x for x in letters if x.get("sequence") == sequence]
        kv = await self._dead_letters()
        replayed, failed, gone = [], [], []
        for letter in letters:
            pid, seq = int(letter["projectId"]), int(letter["sequence"])
            key = f"{pid}.{seq}"
            try:
                msg = await self.js.get_msg(INGEST_STREAM, seq)
                data = await read_envelope(self.js, msg)
            except _NATS_FAILURES:  # aged out of the stream, its blob gone, or NATS away
                gone.append({"projectId": pid, "sequence": seq})
                continue
            target = await self._on_actor(functools.partial(self._target, pid))
            if target is None:
                failed.append({"projectId": pid, "sequence": seq, "detail": "the project forwards nowhere now"})
                continue
            result = await self._send(data, target, int(letter.get("attempts") or 1) + 1, msg.headers)
            if isinstance(result, Delivered):
                await kv.delete(key)
                replayed.append({"projectId": pid, "sequence": seq, "eventId": letter.get("eventId")})
                metrics.incr("forward.envelopes", tags={"result": "replayed"})
                continue
            detail = result.reason if isinstance(result, Retry) else f"HTTP {result.status}: {result.detail}"
            letter.update(attempts=int(letter.get("attempts") or 1) + 1, failedAt=_iso(time.time()),
                          detail=detail, status=result.status if isinstance(result, Permanent) else letter["status"])
            await kv.put(key, json.dumps(letter).encode())
            failed.append({"projectId": pid, "sequence": seq, "detail": detail})
        return {"replayed": replayed, "failed": failed, "gone": gone}


async def _bounded(work: Awaitable[Any], timeout: float) -> Any:
    return await asyncio.wait_for(work, timeout)


def _summary(stored: StoredEvent) -> dict[str, Any]:
    event = stored.event
    return {"eventId": stored.event_id, "projectId": stored.project_id, "received": _iso(stored.received),
            "timestamp": event.get("timestamp"), "title": event_title(event), "level": event.get("level"),
            "platform": event.get("platform")}


def _api_summary(stored: StoredEvent) -> dict[str, Any]:
    """An event as Sentry's project event list names its fields."""
    event = stored.event
    received = rfc3339(stored.received) if stored.received else None
    created = event.get("timestamp")
    return {"id": stored.event_id, "eventID": stored.event_id, "projectID": str(stored.project_id),
            "title": event_title(event), "message": event.get("logentry", {}).get("formatted")
            if isinstance(event.get("logentry"), dict) else None,
            "dateCreated": rfc3339(float(created)) if isinstance(created, (int, float)) else received,
            "dateReceived": received, "platform": event.get("platform"), "level": event.get("level")}


def _api_detail(stored: StoredEvent) -> dict[str, Any]:
    """The event as Sentry's event details name their fields, and the whole stored event
    (scrubbed as the forwarder stored it) as `event`."""
    event = stored.event
    tags = event.get("tags") or []
    if isinstance(tags, dict):
        tags = list(tags.items())
    return {**_api_summary(stored), "culprit": event.get("culprit"), "release": event.get("release"),
            "environment": event.get("environment"), "contexts": event.get("contexts") or {},
            "sdk": event.get("sdk"), "user": event.get("user"),
            "tags": [{"key": str(t[0]), "value": str(t[1])} for t in tags
                     if isinstance(t, (list, tuple)) and len(t) == 2],
            "event": event}


def forwarder_factory(settings: ForwardSettings | None = None) -> Callable[[Any], pykka.ActorRef[Any]]:
    """How a worker starts the forwarder: per-project counts in Redis when it has one."""

    def start(deps: Any) -> pykka.ActorRef[Any]:
        stats = RedisIngestStats(deps.redis_url, cluster=deps.redis_cluster) if deps.redis_url else None
        replicas = deps.settings.value("RELAYCTL_STREAM_REPLICAS")
        return ForwarderActor.start(deps.runtime, deps.bus, jetstream=deps.nc.jetstream(timeout=5.0),
                                    events=JetStreamErrorEventStore(deps.nc, replicas=replicas),
                                    settings=settings or ForwardSettings.from_settings(deps.settings), stats=stats)

    return start

