"""What the forwarder makes of what SDKs and relays send (issue 12): the error events the AI
flow reads - normalized, scrubbed with the project's own settings - and the outcome counts.

End to end with real clients: the sentry-sdk package with a DSN at relayctl's gateway, a
registered internal relay posting outcomes, the OpenAI-compatible stub as the model. One
system for the module: every actor (the AI actor in a worker pointed at the stub) and the
gateway.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sentry_sdk

from actors.ai import AIConfig
from actors.worker import ACTOR_NAMES, Worker
from bus.embedded import ServerProcess
from gateway.keys import AI_LIMITER
from tests.ai_helpers import start_ai_worker
from tests.conftest import gateway_redis_url
from tests.openai_stub import OpenAIStub
from tests.system import SystemUnderTest, http_request
from tests.waiting import eventually

REPLY = "Check the password before logging in."
SECRETS = ("hunter2-local", "s3cr3t-extra", "4111 1111 1111 1111", "shh-order-ref")


class EventsSystem:
    def __init__(self, nats: ServerProcess, redis: ServerProcess, stub: OpenAIStub) -> None:
        self.stub = stub
        self.sut = SystemUnderTest(nats.url, redis.url, actors=[a for a in ACTOR_NAMES if a != "ai"],
                                   gateway_redis_url=gateway_redis_url(redis)).start()
        limiter = self.sut.gateway.app[AI_LIMITER]  # type: ignore[union-attr]
        limiter.rate, limiter.burst = 1000.0, 1000
        config = AIConfig(base_url=stub.url, api_key="test-key", model="stub-model", timeout=5.0)
        self.ai: Worker = start_ai_worker(nats.url, redis.url, config)
        username = "events-user-" + uuid.uuid4().hex[:8]
        self.sut.cli_ok("user", "create", username, "--superuser")
        self.token = self.sut.cli_ok("token", "create", username, "--json")["token"]

    def stop(self) -> None:
        try:
            self.sut.stop()
        finally:
            self.ai.stop()

    def dsn(self, project: dict[str, Any]) -> str:
        assert self.sut.gateway is not None
        return f"http://{project['publicKey']}@127.0.0.1:{self.sut.gateway.port}/{project['id']}"


@pytest.fixture(scope="module")
def events(nats_server: ServerProcess, redis_server: ServerProcess) -> Iterator[EventsSystem]:
    with OpenAIStub(reply_text=REPLY) as stub:
        system = EventsSystem(nats_server, redis_server, stub)
        yield system
        system.stop()


def capture(dsn: str, fail: Callable[[], None], **extras: Any) -> str:
    """capture_exception from a real sentry-sdk client (local variables included)."""
    client = sentry_sdk.Client(dsn=dsn, default_integrations=False, auto_enabling_integrations=False,
                               include_local_variables=True)
    with sentry_sdk.new_scope() as scope:
        scope.set_client(client)
        for key, value in extras.items():
            scope.set_extra(key, value)
        try:
            fail()
        except Exception as exc:
            event_id = sentry_sdk.capture_exception(exc)
    client.flush(timeout=10)
    client.close()
    assert event_id
    return str(event_id)


def login(password: str, card: str) -> None:
    """Fails with the secrets in its local variables (given, so no source line shows them)."""
    checked = bool(password and card)
    raise PermissionError(f"login refused for alice ({checked})")


def listed(events: EventsSystem, ref: str, event_id: str) -> Any:
    found = [e for e in events.sut.cli_ok("event", "list", ref, "--json") if e["eventId"] == event_id]
    return found[0] if found else None


def test_an_sdk_exception_is_listed_scrubbed_and_explained(events: EventsSystem) -> None:
    project = events.sut.new_project()
    ref = f"{project['org']}/{project['slug']}"
    event_id = capture(events.dsn(project), lambda: login(SECRETS[0], SECRETS[2]), password=SECRETS[1],
                       note="fine")

    summary = eventually(lambda: listed(events, ref, event_id), "the event listed")
    assert summary["title"] == "PermissionError: login refused for alice (True)"
    assert summary["received"].endswith("Z")
    assert f"{event_id}" in events.sut.cli_ok("event", "list", ref)

    shown = events.sut.cli_ok("event", "show", event_id, "--json")
    assert (shown["org"], shown["project"]) == (project["org"], project["slug"])
    text = json.dumps(shown["event"])
    assert not [s for s in SECRETS if s in text], text
    assert shown["event"]["extra"]["password"] == "[Filtered]" and shown["event"]["extra"]["note"] == "fine"
    frames = shown["event"]["exception"]["values"][0]["stacktrace"]["frames"]
    # the SDK sends a repr ("'4111 ...'"): the card number inside is replaced
    assert frames[-1]["vars"]["password"] == "[Filtered]" and "[Filtered]" in frames[-1]["vars"]["card"]
    assert shown["event"]["type"] == "error"  # normalized by Relay's own code

    before = len(events.stub.requests)
    status, _, body = http_request(
        f"{events.sut.url}/api/0/projects/{project['org']}/{project['slug']}/events/{event_id}/ai-fix-suggest/"
        "?stream=false", headers={"Authorization": f"Bearer {events.token}"}, timeout=20)
    assert status == 200, body
    assert json.loads(body)["suggestion"] == REPLY
    sent = json.dumps([r.body for r in events.stub.requests[before:]])
    assert "login refused for alice" in sent
    assert not [s for s in SECRETS if s in sent]


def test_the_projects_own_sensitive_fields_are_scrubbed(events: EventsSystem) -> None:
    project = events.sut.new_project()
    ref = f"{project['org']}/{project['slug']}"
    events.sut.cli_ok("project", "option", "set", ref, "sentry:sensitive_fields", '["order_ref"]')
    plain = events.sut.new_project()

    def fail() -> None:
        raise KeyError("order")

    scrubbed = capture(events.dsn(project), fail, order_ref="shh-order-ref")
    kept = capture(events.dsn(plain), fail, order_ref="visible-in-plain")
    eventually(lambda: listed(events, ref, scrubbed), "the scrubbed event")
    eventually(lambda: listed(events, f"{plain['org']}/{plain['slug']}", kept), "the plain event")
    assert events.sut.cli_ok("event", "show", scrubbed, "--json")["event"]["extra"]["order_ref"] == "[Filtered]"
    assert events.sut.cli_ok("event", "show", kept, "--json")["event"]["extra"]["order_ref"] == "visible-in-plain"


def test_unknown_events_and_bad_ids_are_clear_errors(events: EventsSystem) -> None:
    missing = events.sut.cli("event", "show", uuid.uuid4().hex)
    assert missing.exit_code == 1 and "No event matching" in missing.stderr
    bad = events.sut.cli("event", "show", "not-an-id")
    assert bad.exit_code == 1 and "32 hex digits" in bad.stderr
    project = events.sut.new_project()
    assert events.sut.cli_ok("event", "list", f"{project['org']}/{project['slug']}", "--json") == []
    unknown = events.sut.cli("event", "list", f"{project['org']}/nope")
    assert unknown.exit_code == 1 and "No project matching" in unknown.stderr
    stats = events.sut.cli("project", "stats", f"{project['org']}/nope", "--json")
    assert stats.exit_code == 1 and stats.json()["error"]["code"] == "not_found"
    usage = events.sut.cli("ingest", "replay", "--project", "no-slash")
    assert usage.exit_code == 2 and "ORG/PROJECT" in usage.stderr


def post_envelope(events: EventsSystem, project: dict[str, Any], items: list[tuple[dict[str, Any], Any]]) -> None:
    body = json.dumps({"event_id": uuid.uuid4().hex}).encode() + b"\n"
    for header, payload in items:
        data = json.dumps(payload).encode()
        body += json.dumps({**header, "length": len(data)}).encode() + b"\n" + data + b"\n"
    status, _, answer = http_request(
        f"{events.sut.url}/api/{project['id']}/envelope/", "POST", body,
        {"X-Sentry-Auth": f"Sentry sentry_key={project['publicKey']}, sentry_version=7",
         "Content-Type": "application/x-sentry-envelope"})
    assert status == 200, answer


def test_outcomes_and_client_reports_make_the_project_stats(events: EventsSystem) -> None:
    project = events.sut.new_project()
    ref = f"{project['org']}/{project['slug']}"
    post_envelope(events, project, [
        ({"type": "event"}, {"message": "one", "level": "error"}),
        ({"type": "attachment", "filename": "a.txt"}, "attached"),
        ({"type": "client_report"}, {"timestamp": time.time(), "discarded_events": [
            {"reason": "queue_overflow", "category": "error", "quantity": 3},
            {"reason": "made-up-by-a-client", "category": "transaction", "quantity": 2}],
            "rate_limited_events": [{"reason": "ratelimit_backoff", "category": "error", "quantity": 4}]}),
    ])
    relay = events.sut.registered_relay(internal=True)
    status, _ = relay.post("outcomes/", {"outcomes": [
        {"timestamp": "2026-12-03T13:30:00Z", "org_id": 1, "project_id": project["id"], "key_id": 1,
         "outcome": 1, "reason": "browser-extensions", "category": 1, "quantity": 5},
        {"timestamp": "2026-12-03T13:30:00Z", "org_id": 1, "project_id": project["id"], "key_id": 1,
         "outcome": 3, "reason": "invalid_json", "category": 2, "quantity": 1},
        {"outcome": "junk", "project_id": project["id"]},
    ]})
    assert status == 202

    def stats() -> Any:
        found = events.sut.cli_ok("project", "stats", ref, "--json")
        hour = found["lastHour"]
        return found if hour["filtered"] == 5 and hour["invalid"] == 1 and hour["accepted"] == 2 else None

    found = eventually(stats, "the counts")
    hour = found["lastHour"]
    assert hour["rate_limited"] == 4 and hour["client_discard"] == 5
    assert hour["byCategory"]["error"] == {"accepted": 1, "client_discard": 3, "rate_limited": 4, "filtered": 5}
    assert hour["byCategory"]["attachment"] == {"accepted": 1}
    assert found["last24h"]["filtered"] == 5
    assert "1 invalid" in events.sut.cli_ok("project", "stats", ref)

    def prometheus() -> Any:
        text = events.sut.cli_ok("metrics", "--prometheus")
        lines = [line for line in text.splitlines() if "ingest_outcomes" in line and not line.startswith("#")]
        return lines if any('reason="browser-extensions"' in line for line in lines) else None

    lines = eventually(prometheus, "the Prometheus counters")
    assert any('outcome="client_discard"' in line and 'reason="other"' in line for line in lines)
    assert not any(str(project["id"]) in line.split("}")[0] for line in lines)  # no project label


def test_envelopes_the_gateway_rate_limits_count_as_rate_limited(events: EventsSystem) -> None:
    project = events.sut.new_project()
    ref = f"{project['org']}/{project['slug']}"
    events.sut.cli_ok("key", "rate-limit", project["publicKey"], "1", "3600")

    def send() -> int:
        body = json.dumps({"event_id": uuid.uuid4().hex}).encode() + b'\n{"type":"event"}\n{"message":"m"}\n'
        status, _, _ = http_request(f"{events.sut.url}/api/{project['id']}/envelope/", "POST", body,
                                    {"X-Sentry-Auth": f"Sentry sentry_key={project['publicKey']}, sentry_version=7"})
        return status

    eventually(lambda: send() == 429, "the limit applied")  # once the limited config reached the cache
    assert [send() for _ in range(3)] == [429, 429, 429]

    def counted() -> Any:
        hour = events.sut.cli_ok("project", "stats", ref, "--json")["lastHour"]
        return hour if hour["rate_limited"] >= 4 else None

    hour = eventually(counted, "the gateway's rate-limited outcomes")
    assert hour["byCategory"]["error"]["rate_limited"] == hour["rate_limited"]
