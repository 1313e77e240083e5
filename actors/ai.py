"""The AI suggestion actor: fix suggestions for stored error events, streamed or whole.

It is a `ProjectionActor`, so it knows orgs (their `ai:policy` option) and projects (slug
-> id) from the domain events, and it owns the error events (actors/error_events.py):
`events.store` / `events.get` requests and the `rc.events.ingest.<project_id>` feed.

`ai.suggest` {org, project, event_id, stream, consent, pii_certified, model?} runs, in
this order:

1. read-your-writes: the projection catches up first, so a policy set just before is seen;
2. the project, then the stored event (`NotFound` for either: as Sentry, an unknown event
   is 404 before the org's policy is consulted);
3. the policy (`effective_policy`, then `check_policy`, decided on the actor thread): a
   refusal is `Forbidden` with details `{"restriction": <policy>}`, before the cache;
4. the cache: Redis key `ai:suggestion:<project_id>:<grouping_hash>` (plus `:<model>`
   when the request names a model other than the configured one), 300 s TTL. A hit
   answers at once, with no chunks and `"cached": true`;
5. the model (`ModelClient`, actors/ai_model.py), configured by `AIConfig`. A streamed
   request sends each chunk with `call.stream(text)` as it arrives; the answer is cached
   only once it is complete, so a stream that fails half-way caches nothing.

Steps 3-5 block (KV, Redis, HTTP to the model), so they run on a small thread pool
(`max_concurrent` workers), never on the actor thread: one slow model call does not
hold up other requests, the projection keeps folding events, and more than
`max_pending` suggestions in progress is a fast `Overloaded`. Every model call is bounded
by `AIConfig.timeout` and by what is left of the caller's deadline, and a stream stops as
soon as the caller's deadline passes, so nothing hangs.

The reply is `{"suggestion": str, "cached": bool, "model": str, "eventId": str,
"groupingHash": str}`. Model failures are wire errors (actors/ai_model.py), which the
gateway turns into statuses:

    AINotConfigured -> NotFound "no AI backend configured"   (404)
    AIRateLimited   -> Overloaded, details {"status": 429}   (429)
    AIUnavailable   -> Unavailable, details {"status": 503 or 502}; when the backend is the
                       local model `up` runs and it is down, the message says why
    AIError         -> Unavailable, details {"status": 502}

Policy (org option `ai:policy`, default `allowed`): `allowed` goes; `individual_consent`
goes when the caller passes `consent`; `pii_certification_required` goes when the caller
passes `pii_certified` - the caller certifies that the event holds no personal data the
org forbids sending out, which is exactly what the policy asks for; `subprocessor` (the
org has not accepted the model provider as a subprocessor) and `denied` never go, whatever
the caller says: only an admin changing the option unlocks them. An unknown value fails
closed, as `denied`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import pykka
import redis
import structlog

from actors.ai_model import (
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    MAX_TOKENS,
    AIError,
    AIUnavailable,
    ModelClient,
)
from actors.base import DEFERRED, ProjectionActor
from actors.error_events import (
    ErrorEventStore,
    JetStreamErrorEventStore,
    StoredEvent,
    decode_ingest,
    prepare_event,
)
from bus import local_model, metrics, redis_clients
from bus.runtime import BusRuntime
from bus.seams import Bus
from bus.service import Call
from bus.settings import Settings
from domain.ai_prompt import InvalidEvent, describe_event_for_ai
from domain.projections import ORG_OPTIONS, PROJECT_OPTIONS, Projection
from messages.errors import (
    DeadlineExceeded,
    Forbidden,
    NotFound,
    Overloaded,
    RelayctlError,
    Unavailable,
)
from messages.subjects import EVENTS_INGEST

__all__ = [
    "AI_POLICY_OPTION",
    "CACHE_TTL",
    "AIConfig",
    "AISuggestionActor",
    "InMemorySuggestionCache",
    "IngestEvent",
    "RedisSuggestionCache",
    "SuggestionCache",
    "ai_actor_factory",
    "cache_key",
    "check_policy",
    "effective_policy",
]

log = structlog.get_logger(__name__)

AI_POLICY_OPTION = "ai:policy"
DEFAULT_POLICY = "allowed"
CACHE_TTL = 300
CACHE_PREFIX = "ai:suggestion:"
# Left for the reply to travel back after a model call that used up the rest.
DEADLINE_MARGIN = 0.5
# Bounds on the blocking lookups around the model call.
LOOKUP_TIMEOUT = 5.0


# -- configuration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class AIConfig:
    """Where the model is: passed to the actor explicitly, so tests can point it anywhere."""

    base_url: str | None = None
    api_key: str | None = None
    model: str = DEFAULT_MODEL
    timeout: float = DEFAULT_TIMEOUT
    max_tokens: int = MAX_TOKENS
    # Set when the backend is the local model `up` runs: where it writes why it stopped.
    local_failure_file: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.base_url or self.api_key)

    def explain(self, error: AIError) -> AIError:
        """A local model that cannot be reached says why it is not running, if it is known."""
        if not isinstance(error, AIUnavailable) or error.timed_out:
            return error
        reason = local_model.failure_reason(self.local_failure_file)
        if reason is None:
            return error
        return AIUnavailable(f"the local AI model (service `llm`) is not running: {reason}")

    @classmethod
    def from_settings(cls, settings: Settings) -> AIConfig:
        """OPENAI_BASE_URL, OPENAI_API_KEY, RELAYCTL_AI_MODEL, RELAYCTL_AI_TIMEOUT,
        RELAYCTL_AI_MAX_TOKENS and RELAYCTL_LOCAL_MODEL_FAILURE, from the process's settings."""
        timeout = settings.value("RELAYCTL_AI_TIMEOUT")
        return cls(base_url=settings.value("OPENAI_BASE_URL") or None,
                   api_key=settings.value("OPENAI_API_KEY") or None,
                   model=settings.value("RELAYCTL_AI_MODEL") or DEFAULT_MODEL,
                   timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                   max_tokens=settings.value("RELAYCTL_AI_MAX_TOKENS"),
                   local_failure_file=settings.value(local_model.FAILURE_ENV) or None)

    def client(self, model: str | None = None, timeout: float | None = None) -> ModelClient:
        """A model client for one request; raises `AINotConfigured`."""
        return ModelClient(base_url=self.base_url, api_key=self.api_key, model=model or self.model,
                           timeout=self.timeout if timeout is None else timeout, max_tokens=self.max_tokens)


ClientFactory = Callable[[str | None, float], ModelClient]


# -- policy ------------------------------------------------------------------------------------

def effective_policy(org_policy: Any, *, pii_certified: bool) -> str:
    """The org's policy as it applies to this caller (see the module docstring)."""
    if org_policy == "pii_certification_required" and pii_certified:
        return "allowed"
    return org_policy if isinstance(org_policy, str) else "denied"


def check_policy(policy: str, *, consent: bool) -> None:
    """Raise `Forbidden` (details `{"restriction": policy}`) unless the policy lets this go."""
    if policy == "allowed" or (policy == "individual_consent" and consent):
        return
    reasons = {
        "individual_consent": "this organization requires your consent to send the event to the AI backend",
        "subprocessor": "this organization has not accepted the AI backend as a subprocessor",
        "pii_certification_required": "this organization requires certifying that the event holds no PII",
        "denied": "this organization does not allow AI suggestions",
    }
    restriction = policy if policy in reasons else "denied"
    raise Forbidden(reasons[restriction], {"restriction": restriction})


# -- the suggestion cache ----------------------------------------------------------------------

def cache_key(project_id: int, grouping_hash: str, model: str | None = None) -> str:
    """Events of one group in one project share a suggestion; another model gets its own."""
    key = f"{CACHE_PREFIX}{project_id}:{grouping_hash}"
    return f"{key}:{model}" if model else key


class SuggestionCache(Protocol):
    def get(self, key: str) -> str | None: ...
    def set(self, key: str, value: str, ttl: int) -> None: ...


class RedisSuggestionCache:
    """Finished suggestions in Redis; a Redis outage only costs the cache, never the answer."""

    def __init__(self, url: str, *, cluster: bool = False) -> None:
        self.redis = redis_clients.sync_client(url, cluster=cluster, timeout=1.0)

    def get(self, key: str) -> str | None:
        try:
            value = self.redis.get(key)
        except redis.RedisError as exc:
            log.warning("ai.cache_unavailable", error=str(exc))
            return None
        return value.decode("utf-8") if isinstance(value, bytes) else None

    def set(self, key: str, value: str, ttl: int) -> None:
        try:
            self.redis.set(key, value.encode("utf-8"), ex=ttl)
        except redis.RedisError as exc:
            log.warning("ai.cache_unavailable", error=str(exc))

    def close(self) -> None:
        self.redis.close()


class InMemorySuggestionCache:
    """The same contract in memory, with expiry (unit tests, and a system without Redis)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.entries: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            entry = self.entries.get(key)
            if entry is None or entry[0] <= self.clock():
                self.entries.pop(key, None)
                return None
            return entry[1]

    def set(self, key: str, value: str, ttl: int) -> None:
        with self._lock:
            self.entries[key] = (self.clock() + ttl, value)


# -- the actor ---------------------------------------------------------------------------------

@dataclass
class IngestEvent:
    """An event published on `rc.events.ingest.<project_id>`, handed to the actor."""

    subject: str
    data: bytes


@dataclass
class _Suggestion:
    """What the pool thread needs; resolved from the projection on the actor thread."""

    call: Call
    project_id: int
    event_id: str
    stream: bool
    model: str | None
    # the org's policy refusal, decided on the actor thread; raised once the event is found
    refusal: Forbidden | None = None


class AISuggestionActor(ProjectionActor):
    name = "ai"
    # consent and scrubbing settings: orgs and projects with their options (no keys, relays, users)
    projection = Projection("ai", {ORG_OPTIONS, PROJECT_OPTIONS})

    def __init__(self, runtime: BusRuntime, bus: Bus, *, ai_config: AIConfig, events: ErrorEventStore,
                 cache: SuggestionCache | None = None, client_factory: ClientFactory | None = None,
                 max_concurrent: int = 4, max_pending: int = 64) -> None:
        super().__init__(runtime, bus)
        self.ai_config = ai_config
        self.cache: SuggestionCache = cache if cache is not None else InMemorySuggestionCache()
        self.events = events
        self.client_factory: ClientFactory = client_factory or (
            lambda model, timeout: ai_config.client(model, timeout))
        self.max_pending = max_pending
        self.pool = ThreadPoolExecutor(max_concurrent, thread_name_prefix="ai-model")
        self.ingest_stats: dict[str, int] = {}
        self._in_flight: dict[int, Call] = {}  # by id(call); also guarded by the lock
        self._pending = 0
        self._pending_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------

    def on_start(self) -> None:
        self.runtime.call(self.events.ensure())
        super().on_start()
        # One queue group, so each published event is stored by one instance (fire-and-forget:
        # an instance going down drops what it had).
        self.listen(EVENTS_INGEST, lambda msg: IngestEvent(msg.subject, msg.data), queue="rc-ai-ingest")

    def on_stop(self) -> None:
        super().on_stop()
        # A model call cannot be interrupted; its caller is told now rather than left
        # waiting for a reply this instance may no longer be able to send.
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._pending_lock:
            in_flight, self._in_flight = list(self._in_flight.values()), {}
        for call in in_flight:
            try:
                call.fail(f"{self.name} stopped while answering; retry")
            except RuntimeError:
                pass  # the bus is already closed
        close = getattr(self.cache, "close", None)
        if close is not None:
            close()

    def on_other(self, message: Any) -> Any:
        if isinstance(message, IngestEvent):
            # An event for a project created just before must not be dropped as unknown.
            self.after(self.live_from, lambda: self._ingest(message))
            return None
        return super().on_other(message)

    # -- error events --------------------------------------------------------------------------

    def _project_id(self, org: str, project: str) -> int:
        if self.state.org(org) is None:
            raise NotFound(f"No organization matching `{org}`")
        found = self.state.project(org, project)
        if found is None:
            raise NotFound(f"No project matching `{org}/{project}`")
        return found.id

    def handle_events_store(self, call: Call) -> Any:
        def store() -> Any:
            project_id = self._project_id(call.payload["org"], call.payload["project"])
            stored = prepare_event(project_id, call.payload["event"])  # InvalidEvent: a bad_request
            self._write(stored, call)
            return DEFERRED

        return self.serve_caught_up(call, store)

    def handle_events_get(self, call: Call) -> Any:  # CAUGHT_UP (messages/endpoints.py)
        project_id = self._project_id(call.payload["org"], call.payload["project"])
        self._submit(call, lambda: self._stored_event(project_id, call.payload["event_id"], call).to_map())
        return DEFERRED

    def _write(self, stored: StoredEvent, call: Call | None) -> None:
        """Store without blocking the actor: the write runs on the loop, the reply follows it."""
        future = self.runtime.submit(self.events.put(stored))

        def done(_: Any) -> None:
            error = future.exception()
            if error is not None:
                log.warning("ai.event_store_failed", event_id=stored.event_id, error=str(error))
                if call is None:
                    self._count_ingest("dropped", "storage_failed")
                else:
                    call.error(Unavailable(f"the error event store is unavailable: {error}"))
                return
            if call is None:
                self._count_ingest("stored")
            else:
                call.reply({"eventId": stored.event_id, "projectId": stored.project_id,
                            "groupingHash": stored.grouping_hash})

        future.add_done_callback(done)

    def _ingest(self, message: IngestEvent) -> None:
        project_token = message.subject.rsplit(".", 1)[-1]
        project = self.state.projects.get(int(project_token)) if project_token.isdigit() else None
        reason = None
        if project is None:
            reason = f"no project with id {project_token!r}"
        else:
            try:
                stored = prepare_event(project.id, decode_ingest(message.data))
            except InvalidEvent as exc:
                reason = exc.reason
        if reason is not None:
            log.warning("ai.event_dropped", subject=message.subject, reason=reason)
            self._count_ingest("dropped", "unknown_project" if project is None else "invalid")
            return
        self._write(stored, None)

    def _count_ingest(self, result: str, reason: str = "") -> None:
        name = f"{result}:{reason}" if reason else result
        self.ingest_stats[name] = self.ingest_stats.get(name, 0) + 1
        metrics.incr("ai.events.ingested", tags={"result": result, "reason": reason or "none"})

    def _stored_event(self, project_id: int, event_id: str, call: Call) -> StoredEvent:
        """Blocking: call from a pool thread."""
        wanted = event_id.replace("-", "").lower()
        timeout = max(0.1, min(LOOKUP_TIMEOUT, call.request.remaining()))
        stored = self.runtime.call(self.events.get(project_id, wanted), timeout=timeout) \
            if _looks_like_event_id(wanted) else None
        if stored is None:
            raise NotFound(f"No event matching `{event_id}`")
        return stored

    # -- suggestions ---------------------------------------------------------------------------

    def handle_ai_suggest(self, call: Call) -> Any:  # CAUGHT_UP (messages/endpoints.py)
        payload = call.payload
        org = self.state.org(payload["org"])
        if org is None:
            raise NotFound(f"No organization matching `{payload['org']}`")
        policy = effective_policy(org.options.get(AI_POLICY_OPTION, DEFAULT_POLICY),
                                  pii_certified=payload["pii_certified"])
        refusal = None
        try:
            check_policy(policy, consent=payload["consent"])
        except Forbidden as exc:
            refusal = exc  # Sentry's order: an unknown project or event is 404 before the policy
        project_id = self._project_id(payload["org"], payload["project"])
        job = _Suggestion(call, project_id, payload["event_id"], payload["stream"], payload.get("model"), refusal)
        self._submit(call, lambda: self._suggest(job))
        return DEFERRED

    def _submit(self, call: Call, work: Callable[[], Any]) -> None:
        """Run blocking `work` on the pool and answer `call` with its result or error."""
        with self._pending_lock:
            if self._pending >= self.max_pending:
                raise Overloaded(f"{self._pending} AI requests are in progress; retry later")
            self._pending += 1
            self._in_flight[id(call)] = call

        def done() -> None:
            with self._pending_lock:
                self._pending -= 1
                self._in_flight.pop(id(call), None)

        def run() -> None:
            try:
                if call.expired:
                    return  # the caller gave up while this waited for a thread
                _answer(call, None, work())
            except RelayctlError as exc:
                _answer(call, exc, None)
            except Exception as exc:  # a bug in one request must not go unanswered
                log.exception("ai.request_failed", correlation_id=call.request.id)
                _answer(call, RelayctlError(f"internal error in {self.name}: {type(exc).__name__}"), None)
            finally:
                done()

        try:
            self.pool.submit(run)
        except RuntimeError:  # the pool is shut down: this instance is stopping
            done()
            raise Unavailable(f"{self.name} is stopping; retry") from None

    def _suggest(self, job: _Suggestion) -> dict[str, Any]:
        """Blocking: the event, the cache, then the model. Runs on a pool thread."""
        stored = self._stored_event(job.project_id, job.event_id, job.call)
        if job.refusal is not None:
            raise job.refusal
        model = job.model or self.ai_config.model
        key = cache_key(job.project_id, stored.grouping_hash,
                        model if model != self.ai_config.model else None)
        answer = {"cached": False, "model": model, "eventId": stored.event_id,
                  "groupingHash": stored.grouping_hash}
        cached = self.cache.get(key)
        if cached is not None:
            metrics.incr("ai.suggestions", tags={"result": "cached"})
            return {"suggestion": cached, **answer, "cached": True}

        timeout = min(self.ai_config.timeout, job.call.request.remaining() - DEADLINE_MARGIN)
        if timeout <= 0:
            raise DeadlineExceeded("no time left for the AI backend before the deadline")
        try:
            with metrics.timer("ai.model_call", tags={"stream": str(job.stream).lower()}):
                text = self._ask_model(job, stored, model, timeout)
        except AIError as exc:
            metrics.incr("ai.suggestions", tags={"result": type(exc).__name__})
            raise self.ai_config.explain(exc) from None  # a wire error as it is
        self.cache.set(key, text, CACHE_TTL)
        metrics.incr("ai.suggestions", tags={"result": "answered"})
        return {"suggestion": text, **answer}

    def _ask_model(self, job: _Suggestion, stored: StoredEvent, model: str, timeout: float) -> str:
        client = self.client_factory(job.model, timeout)
        try:
            description = describe_event_for_ai(stored.event, model)
            if not job.stream:
                return client.suggestion(description)
            parts: list[str] = []
            chunks = client.stream_suggestion(description)
            try:
                for chunk in chunks:
                    if job.call.expired:
                        raise DeadlineExceeded("the caller's deadline passed while the answer streamed")
                    parts.append(chunk)
                    if job.call.stream is not None:
                        job.call.stream(chunk)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # release the connection when the stream stops early
            return "".join(parts)
        finally:
            client.close()


def _answer(call: Call, error: RelayctlError | None, result: Any) -> None:
    try:
        call.respond(error, result)
    except RuntimeError:
        pass  # the process's bus closed while the model answered: nobody is listening


def _looks_like_event_id(event_id: str) -> bool:
    return len(event_id) == 32 and all(c in "0123456789abcdef" for c in event_id)


def ai_actor_factory(ai_config: AIConfig | None = None, **options: Any) -> Callable[[Any], pykka.ActorRef[Any]]:
    """How a worker starts the AI actor: `deps` gives the runtime, the bus, NATS and Redis.

    Without `ai_config` the configuration is read from the environment when the actor
    starts (each restart reads it again).
    """

    def start(deps: Any) -> pykka.ActorRef[Any]:
        cache = RedisSuggestionCache(deps.redis_url, cluster=deps.redis_cluster) if deps.redis_url else None
        config = ai_config or AIConfig.from_settings(deps.settings)
        return AISuggestionActor.start(deps.runtime, deps.bus, ai_config=config,
                                       events=JetStreamErrorEventStore(deps.nc), cache=cache, **options)

    return start
