"""The AI suggestion actor with plain fakes: in-memory event stores, cache and model."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pykka
import pytest

from actors.ai import (
    AIConfig,
    AISuggestionActor,
    IngestEvent,
    InMemorySuggestionCache,
    cache_key,
    check_policy,
    effective_policy,
)
from actors.ai_model import AINotConfigured, AIRateLimited, AIUnavailable
from actors.base import wait_ready
from actors.error_events import InMemoryErrorEventStore, decode_ingest
from bus.eventstore import InMemoryEventStore
from bus.runtime import BusRuntime
from bus.seams import InMemoryBus
from bus.service import Call
from domain.ai_prompt import InvalidEvent, describe_event_for_ai
from messages.commands import QUERIES
from messages.envelope import Request, pack
from messages.errors import BadRequest, Forbidden, NotFound, Overloaded, RelayctlError, Unavailable
from messages.events import DomainEvent
from messages.schema import validate
from tests.ai_helpers import error_event

ORG, PROJECT = "acme", "web"
REPLY_CHUNKS = ["Use ", "`rates.get`", " instead."]


class FakeModel:
    """A model client that answers from a script, and can be held at a gate."""

    def __init__(self) -> None:
        self.chunks = list(REPLY_CHUNKS)
        self.error: Exception | None = None  # raised when the call starts
        self.fail_after: int | None = None  # raise AIUnavailable after this many chunks
        self.gate: threading.Event | None = None
        self.calls: list[tuple[str | None, float]] = []
        self.descriptions: list[dict[str, Any]] = []

    def factory(self, model: str | None, timeout: float) -> FakeModel:
        self.calls.append((model, timeout))
        return self

    def _start(self, description: dict[str, Any]) -> None:
        self.descriptions.append(description)
        if self.gate is not None:
            self.gate.wait(10)
        if self.error is not None:
            raise self.error

    def suggestion(self, description: dict[str, Any]) -> str:
        self._start(description)
        return "".join(self.chunks)

    def stream_suggestion(self, description: dict[str, Any]) -> Iterator[str]:
        self._start(description)

        def chunks() -> Iterator[str]:
            for index, chunk in enumerate(self.chunks):
                if self.fail_after is not None and index >= self.fail_after:
                    raise AIUnavailable("the AI backend connection failed: ReadError")
                yield chunk

        return chunks()

    def close(self) -> None:
        pass


@dataclass
class Answer:
    """What a caller of the actor saw: streamed chunks, then a result or an error."""

    chunks: list[str] = field(default_factory=list)
    done: queue.Queue[tuple[RelayctlError | None, Any]] = field(default_factory=queue.Queue)

    def wait(self, timeout: float = 5.0) -> Any:
        error, result = self.done.get(timeout=timeout)
        if error is not None:
            raise error
        return result


class Harness:
    """One AI actor over in-memory stores; `ask` feeds it one message like the bus does."""

    def __init__(self, config: AIConfig | None = None) -> None:
        self.runtime = BusRuntime("nats://unused:4222", name="test-ai")
        self.store = InMemoryEventStore()
        self.events = InMemoryErrorEventStore()
        self.cache = InMemorySuggestionCache()
        self.model = FakeModel()
        self.config = config or AIConfig(base_url="http://model.invalid/v1", model="gpt-test")
        self.append("OrgCreated", ORG, name="Acme")
        self.append("ProjectCreated", ORG, project=PROJECT)
        self.ref: pykka.ActorRef[Any] | None = None

    def start(self, **options: Any) -> Harness:
        factory = None if options.pop("real_client", False) else self.model.factory
        self.ref = AISuggestionActor.start(self.runtime, InMemoryBus(self.store), ai_config=self.config, cache=self.cache,
                                           events=self.events, client_factory=factory, **options)
        wait_ready(self.ref, 5)
        return self

    def stop(self) -> None:
        if self.ref is not None:
            self.ref.stop()
        self.runtime.close()

    def append(self, type_: str, aggregate_id: str, **payload: Any) -> None:
        self.runtime.call(self.store.append([DomainEvent(type_, aggregate_id, payload)], None))

    def set_policy(self, policy: str) -> None:
        self.append("OrgOptionSet", ORG, key="ai:policy", value=policy)

    @property
    def project_id(self) -> int:
        return int(self.ref.proxy().state.get().project(ORG, PROJECT).id)  # type: ignore[union-attr]

    def send(self, message_type: str, payload: dict[str, Any], timeout: float = 10.0) -> Answer:
        answer = Answer()
        request = Request(type=message_type, payload=validate(QUERIES[message_type], payload),
                          deadline=time.time() + timeout)
        assert self.ref is not None
        self.ref.tell(Call(request, lambda error, result: answer.done.put((error, result)), answer.chunks.append))
        return answer

    def ask(self, message_type: str, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        return self.send(message_type, payload, timeout).wait()

    def store_event(self, event: dict[str, Any] | None = None) -> str:
        result = self.ask("events.store", {"org": ORG, "project": PROJECT, "event": event or error_event()})
        return str(result["eventId"])

    def suggest(self, event_id: str, **flags: Any) -> Answer:
        return self.send("ai.suggest", {"org": ORG, "project": PROJECT, "event_id": event_id, **flags})


@pytest.fixture
def ai() -> Iterator[Harness]:
    harness = Harness().start()
    yield harness
    harness.stop()


# -- policy -----------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["individual_consent", "subprocessor", "pii_certification_required", "denied"])
def test_each_restrictive_policy_refuses_with_its_name(policy: str) -> None:
    """Without consent or certification every policy but `allowed` refuses, naming itself."""
    with pytest.raises(Forbidden) as refused:
        check_policy(effective_policy(policy, pii_certified=False), consent=False)
    assert refused.value.details == {"restriction": policy}


def test_consent_unlocks_only_individual_consent() -> None:
    """`consent` lets `individual_consent` go and nothing else."""
    check_policy("individual_consent", consent=True)
    for policy in ("subprocessor", "pii_certification_required", "denied"):
        with pytest.raises(Forbidden):
            check_policy(policy, consent=True)


def test_pii_certification_unlocks_only_pii_certification_required() -> None:
    """`pii_certified` turns `pii_certification_required` into `allowed`, never `subprocessor`."""
    assert effective_policy("pii_certification_required", pii_certified=True) == "allowed"
    assert effective_policy("subprocessor", pii_certified=True) == "subprocessor"
    assert effective_policy("denied", pii_certified=True) == "denied"


def test_an_unknown_policy_fails_closed() -> None:
    """A policy value the actor does not know refuses as `denied`."""
    with pytest.raises(Forbidden) as refused:
        check_policy(effective_policy({"weird": 1}, pii_certified=True), consent=True)
    assert refused.value.details == {"restriction": "denied"}


def test_the_cache_key_is_per_project_and_group_and_names_another_model() -> None:
    """Two projects never share a suggestion; a different model gets its own entry."""
    assert cache_key(1, "ab" * 16) != cache_key(2, "ab" * 16)
    assert cache_key(1, "ab" * 16, "gpt-4") == cache_key(1, "ab" * 16) + ":gpt-4"


def test_the_in_memory_cache_expires_entries() -> None:
    """An entry is gone once its TTL passed."""
    now = [100.0]
    cache = InMemorySuggestionCache(clock=lambda: now[0])
    cache.set("k", "v", 300)
    assert cache.get("k") == "v"
    now[0] += 301
    assert cache.get("k") is None


# -- error events -----------------------------------------------------------------------------

def test_a_stored_event_can_be_read_back_with_its_grouping_hash(ai: Harness) -> None:
    """`events.store` answers the event id; `events.get` returns the event and its group."""
    event = error_event()
    event_id = ai.store_event(event)
    assert event_id == event["event_id"]
    stored = ai.ask("events.get", {"org": ORG, "project": PROJECT, "event_id": event_id})
    assert stored["event"]["exception"] == event["exception"]
    assert stored["projectId"] == ai.project_id and len(stored["groupingHash"]) == 32


def test_an_event_without_id_gets_one_and_a_dashed_id_is_normalised(ai: Harness) -> None:
    """The store gives an id to an event without one and accepts dashed UUIDs."""
    event = error_event()
    del event["event_id"]
    assert len(ai.store_event(event)) == 32
    dashed = "9f1e1c2d-3b4a-4f5e-8d7c-6b5a49382716"
    assert ai.store_event(error_event(event_id=dashed)) == dashed.replace("-", "")


def test_an_invalid_event_is_refused_with_its_reason_and_not_stored(ai: Harness) -> None:
    """A malformed event is a BadRequest whose details carry the reason; nothing is stored."""
    bad = error_event()
    bad["exception"]["values"][0]["stacktrace"]["frames"] = "not a list"
    with pytest.raises(BadRequest) as refused:
        ai.store_event(bad)
    assert "frames must be a list" in refused.value.details["reason"]
    assert ai.events.entries == {}


def test_storing_in_an_unknown_project_is_not_found(ai: Harness) -> None:
    """An event for a project that does not exist is refused."""
    with pytest.raises(NotFound, match="No project matching `acme/nope`"):
        ai.ask("events.store", {"org": ORG, "project": "nope", "event": error_event()})


@pytest.mark.parametrize("encode", [
    lambda event: json.dumps(event).encode(),
    lambda event: pack(event),
    lambda event: Request(type="events.ingest", payload={"event": event}).encode(),
], ids=["json", "msgpack", "envelope"])
def test_published_events_are_stored(ai: Harness, encode: Any) -> None:
    """An event published on rc.events.ingest.<project_id> is stored, in any accepted form."""
    event = error_event()
    ai.ref.tell(IngestEvent(f"rc.events.ingest.{ai.project_id}", encode(event)))  # type: ignore[union-attr]
    stored = ai.ask("events.get", {"org": ORG, "project": PROJECT, "event_id": event["event_id"]})
    assert stored["eventId"] == event["event_id"]
    assert ai.ref.proxy().ingest_stats.get().get("stored") == 1  # type: ignore[union-attr]


def test_bad_published_events_are_dropped_and_counted_with_a_reason(ai: Harness) -> None:
    """Invalid events and unknown projects on the ingest subject are counted and dropped."""
    ai.ref.tell(IngestEvent(f"rc.events.ingest.{ai.project_id}", b"\xc1 not msgpack or json"))  # type: ignore[union-attr]
    ai.ref.tell(IngestEvent(f"rc.events.ingest.{ai.project_id}", json.dumps([1]).encode()))  # type: ignore[union-attr]
    ai.ref.tell(IngestEvent("rc.events.ingest.999999", json.dumps(error_event()).encode()))  # type: ignore[union-attr]
    stats = ai.ref.proxy().ingest_stats.get()  # type: ignore[union-attr]
    assert stats == {"dropped:invalid": 2, "dropped:unknown_project": 1}
    assert ai.events.entries == {}


def test_an_envelope_of_another_type_is_not_taken_for_an_event() -> None:
    """The ingest decoder refuses an envelope whose type is not events.ingest."""
    with pytest.raises(InvalidEvent, match="unexpected message type"):
        decode_ingest(Request(type="events.store", payload={"event": {}}).encode())


# -- suggestions ------------------------------------------------------------------------------

def test_a_plain_suggestion_is_answered_whole_then_served_from_the_cache(ai: Harness) -> None:
    """The first request asks the model; the second, same group, is a cache hit."""
    event_id = ai.store_event()
    first = ai.suggest(event_id, stream=False).wait()
    assert first["suggestion"] == "".join(REPLY_CHUNKS) and first["cached"] is False
    second_event = ai.store_event()  # another event of the same group
    second = ai.suggest(second_event, stream=False).wait()
    assert second["cached"] is True and second["suggestion"] == first["suggestion"]
    assert len(ai.model.calls) == 1


def test_a_streamed_suggestion_sends_chunks_then_the_whole_answer(ai: Harness) -> None:
    """Chunks reach the caller in order before the final reply, which holds them joined."""
    answer = ai.suggest(ai.store_event(), stream=True)
    result = answer.wait()
    assert answer.chunks == REPLY_CHUNKS
    assert result["suggestion"] == "".join(REPLY_CHUNKS)


def test_a_cached_answer_to_a_streamed_request_sends_no_chunks(ai: Harness) -> None:
    """A cache hit answers at once, whole, even when the caller asked for a stream."""
    event_id = ai.store_event()
    ai.suggest(event_id, stream=True).wait()
    again = ai.suggest(event_id, stream=True)
    assert again.wait()["cached"] is True and again.chunks == []


def test_a_stream_that_fails_half_way_is_not_cached(ai: Harness) -> None:
    """Only a complete streamed answer is cached."""
    event_id = ai.store_event()
    ai.model.fail_after = 1
    failed = ai.suggest(event_id, stream=True)
    with pytest.raises(Unavailable):
        failed.wait()
    assert failed.chunks == REPLY_CHUNKS[:1]
    ai.model.fail_after = None
    assert ai.suggest(event_id, stream=True).wait()["cached"] is False
    assert len(ai.model.calls) == 2


def test_the_policy_is_checked_before_the_cache(ai: Harness) -> None:
    """A cached answer is not served to an org whose policy now refuses."""
    event_id = ai.store_event()
    ai.suggest(event_id, stream=False).wait()
    ai.set_policy("denied")
    with pytest.raises(Forbidden) as refused:
        ai.suggest(event_id, stream=False).wait()
    assert refused.value.details == {"restriction": "denied"}


def test_consent_and_pii_certification_are_passed_to_the_policy(ai: Harness) -> None:
    """`individual_consent` goes with consent; `pii_certification_required` with certification."""
    event_id = ai.store_event()
    ai.set_policy("individual_consent")
    with pytest.raises(Forbidden):
        ai.suggest(event_id, stream=False).wait()
    assert ai.suggest(event_id, stream=False, consent=True).wait()["suggestion"]
    ai.set_policy("pii_certification_required")
    assert ai.suggest(event_id, stream=False, pii_certified=True).wait()["suggestion"]


def test_an_unknown_or_malformed_event_id_is_not_found(ai: Harness) -> None:
    """Asking about an event that was never stored is NotFound, whatever the id looks like."""
    for event_id in ("0" * 32, "not-an-id", "../../etc"):
        with pytest.raises(NotFound, match="No event matching"):
            ai.suggest(event_id, stream=False).wait()
    assert ai.model.calls == []


def test_an_unknown_org_is_not_found(ai: Harness) -> None:
    """The org is looked up before anything else."""
    with pytest.raises(NotFound, match="No organization"):
        ai.send("ai.suggest", {"org": "nope", "project": PROJECT, "event_id": "0" * 32}).wait()


def test_no_backend_configured_is_not_found() -> None:
    """Without a base URL or key, a suggestion is NotFound 'no AI backend configured'."""
    harness = Harness(AIConfig()).start(real_client=True)
    try:
        with pytest.raises(NotFound, match="no AI backend configured"):
            harness.suggest(harness.store_event(), stream=True).wait()
    finally:
        harness.stop()


@pytest.mark.parametrize(("error", "kind", "status"), [
    (AIRateLimited("slow down"), Overloaded, 429),
    (AIUnavailable("the AI backend did not answer in time", timed_out=True), Unavailable, 503),
    (AIUnavailable("the AI backend failed with status 500", status=502), Unavailable, 502),
    (AINotConfigured(), NotFound, 404),
])
def test_model_failures_become_errors_carrying_the_http_status(
    ai: Harness, error: Exception, kind: type[RelayctlError], status: int | None
) -> None:
    """Each model failure reaches the caller as a wire error the gateway maps to a status."""
    ai.model.error = error
    with pytest.raises(kind) as failed:
        ai.suggest(ai.store_event(), stream=True).wait()
    assert failed.value.details.get("status") == status


def test_the_model_timeout_never_exceeds_the_callers_deadline(ai: Harness) -> None:
    """A caller with 3 s left gets a model call bounded by less than that."""
    ai.send("ai.suggest", {"org": ORG, "project": PROJECT, "event_id": ai.store_event(), "stream": False},
            timeout=3.0).wait()
    (_, timeout), = ai.model.calls
    assert 0 < timeout < 3.0


def test_a_slow_model_call_does_not_block_other_requests(ai: Harness) -> None:
    """While one suggestion waits on the model, the actor still answers other requests."""
    first_event, second_event = ai.store_event(), ai.store_event(error_event("ValueError"))
    ai.model.gate = threading.Event()
    slow = ai.suggest(first_event, stream=False)
    started = time.monotonic()
    stored = ai.ask("events.get", {"org": ORG, "project": PROJECT, "event_id": second_event})
    assert stored["eventId"] == second_event and time.monotonic() - started < 2
    assert slow.done.empty()
    ai.model.gate.set()
    assert slow.wait()["suggestion"]


def test_too_many_suggestions_in_progress_are_refused_fast() -> None:
    """Past `max_pending` suggestions in progress, the next one is Overloaded at once."""
    harness = Harness().start(max_concurrent=1, max_pending=1)
    try:
        harness.model.gate = threading.Event()
        busy = harness.suggest(harness.store_event(), stream=False)
        time.sleep(0.1)
        with pytest.raises(Overloaded):
            harness.suggest(harness.store_event(error_event("OSError")), stream=False).wait(2)
        harness.model.gate.set()
        busy.wait()
    finally:
        harness.stop()


def test_a_requested_model_is_used_and_cached_separately(ai: Harness) -> None:
    """`model` reaches the client, the description is built for it, and it has its own cache entry."""
    event = error_event()
    ai.store_event(event)
    ai.suggest(event["event_id"], stream=False).wait()
    other = ai.suggest(event["event_id"], stream=False, model="gpt-4").wait()
    assert other["cached"] is False and other["model"] == "gpt-4"
    assert [model for model, _ in ai.model.calls] == [None, "gpt-4"]
    assert ai.model.descriptions == [describe_event_for_ai(event, "gpt-test"), describe_event_for_ai(event, "gpt-4")]


def test_stopping_the_actor_fails_the_calls_it_is_answering() -> None:
    """A caller whose model call is in progress when the actor stops is told at once."""
    harness = Harness().start()
    try:
        harness.model.gate = threading.Event()
        waiting = harness.suggest(harness.store_event(), stream=True)
        time.sleep(0.1)
        harness.ref.stop()  # type: ignore[union-attr]
        with pytest.raises(Unavailable, match="stopped while answering"):
            waiting.wait(2)
    finally:
        harness.model.gate.set()  # type: ignore[union-attr]
        harness.ref = None
        harness.stop()
