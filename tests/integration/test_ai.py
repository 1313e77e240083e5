"""AI fix suggestions end to end: CLI and HTTP gateway, NATS, the AI actor, Redis, and an
OpenAI-compatible server over real HTTP (tests.openai_stub)."""

from __future__ import annotations

import http.client
import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner

from actors.ai import AIConfig
from actors.worker import Worker
from bus.embedded import ServerProcess
from bus.runtime import BusRuntime
from cli.main import main as cli_main
from domain.ai_prompt import describe_event_for_ai
from gateway.keys import AI_LIMITER
from messages.envelope import Request
from tests.ai_helpers import error_event, parse_sse, sse_text, start_ai_worker
from tests.openai_stub import OpenAIStub
from tests.system import SystemUnderTest, http_request

REPLY = "The key `rate` is missing.\nUse `rates.get('rate', 0)`:\n\n    total = rates.get('rate', 0)\n"
MODEL_TIMEOUT = 2.0


class AISystem:
    """The system (commands actor + gateway), an AI worker pointed at the stub, and a user."""

    def __init__(self, nats_url: str, redis_url: str, stub: OpenAIStub) -> None:
        self.stub = stub
        self.nats_url, self.redis_url = nats_url, redis_url
        self.config = AIConfig(base_url=stub.url, api_key="test-key", model="stub-model", timeout=MODEL_TIMEOUT)
        self.sut = SystemUnderTest(nats_url, redis_url, actors=["commands", "keys"]).start()
        # Tests hit the endpoint far faster than a person would; one test checks the limit.
        limiter = self.sut.gateway.app[AI_LIMITER]  # type: ignore[union-attr]
        limiter.rate, limiter.burst = 1000.0, 1000
        self.ai: Worker | None = start_ai_worker(nats_url, redis_url, self.config)
        username = "ai-user-" + uuid.uuid4().hex[:8]
        self.sut.cli_ok("user", "create", username, "--superuser")
        self.token = self.sut.cli_ok("token", "create", username, "--json")["token"]

    def restart_ai(self, config: AIConfig) -> None:
        if self.ai is not None:
            self.ai.stop()
        self.ai = start_ai_worker(self.nats_url, self.redis_url, config)

    def stop(self) -> None:
        try:
            self.sut.stop()  # the gateway first: its streams finish while the AI actor runs
        finally:
            if self.ai is not None:
                self.ai.stop()

    def project(self, policy: str | None = None) -> tuple[str, str]:
        created = self.sut.new_project()
        if policy is not None:
            self.sut.cli_ok("org", "option", "set", created["org"], "ai:policy", json.dumps(policy))
        return created["org"], created["slug"]

    def store(self, org: str, project: str, event: dict[str, Any] | None = None) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
            json.dump(event or error_event(), file)
        result = self.sut.cli_ok("event", "store", file.name, "--project", f"{org}/{project}", "--json")
        return str(result["eventId"])

    def get(self, org: str, project: str, event_id: str, query: str = "", token: str | None = "",
            timeout: float = 20.0) -> tuple[int, dict[str, str], bytes]:
        headers = {} if token is None else {"Authorization": f"Bearer {token or self.token}"}
        path = f"/api/0/projects/{org}/{project}/events/{event_id}/ai-fix-suggest/"
        return http_request(self.sut.url + path + (f"?{query}" if query else ""), headers=headers,
                            timeout=timeout)


@pytest.fixture(scope="module")
def ai_system(nats_server: ServerProcess, redis_server: ServerProcess) -> Iterator[AISystem]:
    with OpenAIStub(reply_text=REPLY) as stub:
        system = AISystem(nats_server.url, redis_server.url, stub)
        yield system
        system.stop()


@pytest.fixture
def stub(ai_system: AISystem) -> Iterator[OpenAIStub]:
    """The module's model server, back to answering normally after each test."""
    yield ai_system.stub
    ai_system.stub.mode = "ok"
    ai_system.stub.chunk_delay = 0.0


# -- storing events -----------------------------------------------------------------------------

def test_event_store_prints_the_event_id(ai_system: AISystem) -> None:
    """`relayctl event store FILE --project ORG/PROJECT --json` prints the stored event's id."""
    org, project = ai_system.project()
    event = error_event()
    assert ai_system.store(org, project, event) == event["event_id"]


def test_event_store_refuses_an_invalid_event_with_the_reason(ai_system: AISystem, tmp_path: Path) -> None:
    """A malformed event exits 1 with the reason on stderr (with --json: the JSON error on stdout)."""
    org, project = ai_system.project()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"exception": {"values": "nope"}}))
    result = ai_system.sut.cli("event", "store", str(path), "--project", f"{org}/{project}")
    assert result.exit_code == 1
    assert "exception.values must be a list" in result.stderr
    result = ai_system.sut.cli("event", "store", str(path), "--project", f"{org}/{project}", "--json")
    assert result.exit_code == 1 and result.json()["error"]["code"] == "bad_request"
    assert "exception.values must be a list" in result.json()["error"]["message"]


def test_events_published_on_the_ingest_subject_are_stored(ai_system: AISystem) -> None:
    """A service publishing on rc.events.ingest.<project_id> gets its event explained."""
    created = ai_system.sut.new_project()
    event = error_event("ZeroDivisionError", "division by zero")
    runtime = BusRuntime(ai_system.nats_url, name="test-publisher").start()
    try:
        assert runtime.nc is not None
        runtime.call(runtime.nc.publish(f"rc.events.ingest.{created['id']}", json.dumps(event).encode()))
        envelope = Request(type="events.ingest", payload={"event": error_event("OSError")})
        runtime.call(runtime.nc.publish(f"rc.events.ingest.{created['id']}", envelope.encode()))
        runtime.call(runtime.nc.flush())
    finally:
        runtime.close()
    deadline = time.monotonic() + 5
    while True:
        status, _, body = ai_system.get(created["org"], created["slug"], event["event_id"])
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200, body
    assert json.loads(body)["suggestion"] == REPLY


# -- suggestions over HTTP ----------------------------------------------------------------------

def test_a_plain_suggestion_is_json_and_the_second_comes_from_the_cache(
    ai_system: AISystem, stub: OpenAIStub
) -> None:
    """Non-stream -> 200 {"suggestion"}; another event of the group makes no model call."""
    org, project = ai_system.project()
    first, second = ai_system.store(org, project), ai_system.store(org, project)
    calls = stub.calls
    status, headers, body = ai_system.get(org, project, first)
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"suggestion": REPLY}
    status, _, body = ai_system.get(org, project, second)
    assert status == 200 and json.loads(body) == {"suggestion": REPLY}
    assert stub.calls == calls + 1


def test_the_model_gets_the_event_description(ai_system: AISystem, stub: OpenAIStub) -> None:
    """The chat request carries the configured model, temperature 0.7 and the description."""
    org, project = ai_system.project()
    event = error_event("TypeError")
    ai_system.store(org, project, event)
    assert ai_system.get(org, project, event["event_id"])[0] == 200
    body = stub.requests[-1].body
    assert body["model"] == "stub-model" and body["temperature"] == 0.7
    assert json.loads(body["messages"][1]["content"]) == describe_event_for_ai(event, "stub-model")
    assert stub.requests[-1].headers["authorization"] == "Bearer test-key"


def test_a_streamed_suggestion_is_server_sent_events_then_cached_text(
    ai_system: AISystem, stub: OpenAIStub
) -> None:
    """stream=yes -> text/event-stream of the chunks; asked again -> the cached text/plain."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    status, headers, body = ai_system.get(org, project, event_id, "stream=yes")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = parse_sse(body)
    assert [data for name, data in events if name == "message"] == stub.reply_chunks()
    assert sse_text(body) == REPLY
    assert events[-1] == ("done", "{}")
    calls = stub.calls
    status, headers, body = ai_system.get(org, project, event_id, "stream=yes")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert body.decode() == REPLY and stub.calls == calls


def test_streamed_chunks_reach_the_client_as_they_arrive(ai_system: AISystem, stub: OpenAIStub) -> None:
    """The first chunk is on the wire long before the model has finished."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    stub.chunk_delay = 0.15  # about 15 chunks: more than 2 s in all
    conn = http.client.HTTPConnection("127.0.0.1", int(ai_system.sut.url.rsplit(":", 1)[1]), timeout=20)
    try:
        started = time.monotonic()
        conn.request("GET", f"/api/0/projects/{org}/{project}/events/{event_id}/ai-fix-suggest/?stream=yes",
                     headers={"Authorization": f"Bearer {ai_system.token}"})
        response = conn.getresponse()
        first_line = response.readline()
        first_at = time.monotonic() - started
        rest = response.read()
        total = time.monotonic() - started
    finally:
        conn.close()
    assert first_line.startswith(b"data: ")
    assert first_at < total / 2, (first_at, total)
    assert sse_text(first_line + rest) == REPLY


@pytest.mark.parametrize("policy", ["individual_consent", "subprocessor", "pii_certification_required", "denied"])
def test_each_restrictive_policy_is_403_with_its_restriction(
    ai_system: AISystem, stub: OpenAIStub, policy: str
) -> None:
    """A refusing org policy answers 403 {"restriction": policy} and calls no model."""
    org, project = ai_system.project(policy)
    event_id = ai_system.store(org, project)
    calls = stub.calls
    for query in ("", "stream=yes"):
        status, _, body = ai_system.get(org, project, event_id, query)
        assert (status, json.loads(body)) == (403, {"restriction": policy})
    assert stub.calls == calls


def test_the_policy_is_checked_before_the_cache(ai_system: AISystem) -> None:
    """An answer cached while allowed is not served once the org denies AI."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    assert ai_system.get(org, project, event_id)[0] == 200
    ai_system.sut.cli_ok("org", "option", "set", org, "ai:policy", '"denied"')
    status, _, body = ai_system.get(org, project, event_id)
    assert (status, json.loads(body)) == (403, {"restriction": "denied"})


def test_consent_and_pii_certification_unlock_their_policies(ai_system: AISystem) -> None:
    """consent=yes passes individual_consent; pii_certified=yes passes pii_certification_required."""
    org, project = ai_system.project("individual_consent")
    event_id = ai_system.store(org, project)
    assert ai_system.get(org, project, event_id, "consent=yes")[0] == 200
    org, project = ai_system.project("pii_certification_required")
    event_id = ai_system.store(org, project)
    assert ai_system.get(org, project, event_id, "pii_certified=yes")[0] == 200
    org, project = ai_system.project("subprocessor")
    event_id = ai_system.store(org, project)
    assert ai_system.get(org, project, event_id, "pii_certified=yes&consent=yes")[0] == 403


def test_a_missing_or_unknown_token_is_401(ai_system: AISystem) -> None:
    """No Authorization header, another scheme, or an unknown token -> 401."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    assert ai_system.get(org, project, event_id, token=None)[0] == 401
    status, headers, _ = ai_system.get(org, project, event_id, token="not-a-token")
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    path = f"{ai_system.sut.url}/api/0/projects/{org}/{project}/events/{event_id}/ai-fix-suggest/"
    assert http_request(path, headers={"Authorization": f"Basic {ai_system.token}"})[0] == 401


def test_an_unknown_event_project_or_org_is_404(ai_system: AISystem) -> None:
    """Events never stored, and unknown projects or orgs, are 404 with a detail."""
    org, project = ai_system.project()
    for path in ((org, project, uuid.uuid4().hex), (org, project, "not-an-event"),
                 (org, "no-such-project", uuid.uuid4().hex), ("no-such-org", project, uuid.uuid4().hex)):
        status, _, body = ai_system.get(*path)
        assert status == 404 and "detail" in json.loads(body), (path, body)


def test_the_backends_rate_limit_is_429(ai_system: AISystem, stub: OpenAIStub) -> None:
    """The model server's 429 becomes a 429 {"error": ...}, streamed or not."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    stub.mode = "rate_limit"
    for query in ("", "stream=yes"):
        status, _, body = ai_system.get(org, project, event_id, query)
        assert status == 429 and "rate limit" in json.loads(body)["error"]


def test_a_users_own_rate_limit_is_429(ai_system: AISystem) -> None:
    """A user who spends their token bucket gets 429 with Retry-After, before any model call."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    limiter = ai_system.sut.gateway.app[AI_LIMITER]  # type: ignore[union-attr]
    rate, burst = limiter.rate, limiter.burst
    limiter.rate, limiter.burst = 0.01, 2
    try:
        username = "limited-" + uuid.uuid4().hex[:8]
        ai_system.sut.cli_ok("user", "create", username, "--superuser")
        token = ai_system.sut.cli_ok("token", "create", username, "--json")["token"]
        statuses = [ai_system.get(org, project, event_id, token=token)[0] for _ in range(3)]
        status, headers, body = ai_system.get(org, project, event_id, token=token)
        assert statuses == [200, 200, 429] and status == 429
        assert int(headers["retry-after"]) >= 1 and "error" in json.loads(body)
        assert ai_system.get(org, project, event_id)[0] == 200  # other users are not affected
    finally:
        limiter.rate, limiter.burst = rate, burst


@pytest.mark.parametrize("query", ["", "stream=yes"])
@pytest.mark.parametrize("mode", ["hang", "error500"])
def test_a_backend_that_is_down_is_5xx_within_the_deadline(
    ai_system: AISystem, stub: OpenAIStub, mode: str, query: str
) -> None:
    """A hanging or failing model server is a 5xx after the model timeout, never a hang."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    stub.mode = mode
    started = time.monotonic()
    status, _, body = ai_system.get(org, project, event_id, query, timeout=MODEL_TIMEOUT + 8)
    assert status == (503 if mode == "hang" else 502), body
    assert "detail" in json.loads(body)
    assert time.monotonic() - started < MODEL_TIMEOUT + 3


def test_a_stream_that_stalls_after_a_chunk_ends_with_an_error_event(
    ai_system: AISystem, stub: OpenAIStub
) -> None:
    """Once streaming started the status is sent: the failure is an `error` event, then the end."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    stub.mode = "stall"
    started = time.monotonic()
    status, headers, body = ai_system.get(org, project, event_id, "stream=yes", timeout=MODEL_TIMEOUT + 8)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = parse_sse(body)
    assert events[0] == ("message", stub.reply_chunks()[0])
    name, data = events[-1]
    assert name == "error" and json.loads(data)["status"] == 503
    assert time.monotonic() - started < MODEL_TIMEOUT + 3
    stub.mode = "ok"
    assert ai_system.get(org, project, event_id)[0] == 200  # the failed stream cached nothing


def test_no_backend_configured_is_404(ai_system: AISystem) -> None:
    """An AI actor without OPENAI_BASE_URL or OPENAI_API_KEY answers 404."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    ai_system.restart_ai(AIConfig())
    try:
        for query in ("", "stream=yes"):
            status, _, body = ai_system.get(org, project, event_id, query)
            assert (status, json.loads(body)["detail"]) == (404, "no AI backend configured")
    finally:
        ai_system.restart_ai(ai_system.config)


# -- the openai command -------------------------------------------------------------------------

def run_openai(*args: str, env: dict[str, str] | None = None) -> Any:
    env = {"OPENAI_BASE_URL": "", "OPENAI_API_KEY": "", "RELAYCTL_AI_MODEL": "", **(env or {})}
    return CliRunner().invoke(cli_main, ["openai", *args], env=env, catch_exceptions=False)


def test_openai_dump_prompt_prints_the_description_and_calls_no_model(
    tmp_path: Path, stub: OpenAIStub
) -> None:
    """--dump-prompt prints describe_event_for_ai(event, model) as indented JSON."""
    event = error_event()
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    calls = stub.calls
    result = run_openai("--event", str(path), "--model", "gpt-4", "--dump-prompt",
                        env={"OPENAI_BASE_URL": stub.url})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == describe_event_for_ai(event, "gpt-4")
    assert result.stdout.startswith('{\n  "')
    assert stub.calls == calls


def test_openai_streams_the_suggestion_then_a_newline(tmp_path: Path, stub: OpenAIStub) -> None:
    """Without --dump-prompt the command prints the model's answer and a newline."""
    path = tmp_path / "event.json"
    path.write_text(json.dumps(error_event()))
    result = run_openai("--event", str(path), "--model", "gpt-test", env={"OPENAI_BASE_URL": stub.url})
    assert result.exit_code == 0, result.output
    assert result.stdout == REPLY + "\n"
    assert stub.requests[-1].body["model"] == "gpt-test" and stub.requests[-1].body["stream"] is True


def test_openai_without_a_backend_fails_with_a_hint(tmp_path: Path) -> None:
    """No OPENAI_BASE_URL or OPENAI_API_KEY: exit 1 with a message, no traceback."""
    path = tmp_path / "event.json"
    path.write_text(json.dumps(error_event()))
    result = run_openai("--event", str(path))
    assert result.exit_code == 1
    assert "no AI backend configured" in result.stderr and "OPENAI_BASE_URL" in result.stderr


def test_openai_refuses_an_invalid_event(tmp_path: Path) -> None:
    """An event file that is not a valid error event exits 1 with the reason."""
    path = tmp_path / "event.json"
    path.write_text(json.dumps({"event_id": 7}))
    result = run_openai("--event", str(path), "--dump-prompt")
    assert result.exit_code == 1 and "event_id must be a string" in result.stderr


def test_the_reply_envelope_of_a_stream_is_chunks_then_a_result(ai_system: AISystem) -> None:
    """Over NATS, rc.ai.suggest answers with chunk messages, then one result message."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    runtime = BusRuntime(ai_system.nats_url, name="test-ai-client").start()
    try:
        nc = runtime.nc
        assert nc is not None

        async def collect() -> list[dict[str, Any]]:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            request = Request(type="ai.suggest", payload={"org": org, "project": project, "event_id": event_id,
                                                          "stream": True}, deadline=time.time() + 10)
            await nc.publish("rc.ai.suggest", request.encode(), reply=inbox)
            replies: list[dict[str, Any]] = []
            while not replies or "chunk" in replies[-1]:
                replies.append(msgpack.unpackb((await sub.next_msg(timeout=10)).data))
            await sub.unsubscribe()
            return replies

        replies = runtime.call(collect())
    finally:
        runtime.close()
    assert "".join(r["chunk"] for r in replies[:-1]) == REPLY
    assert replies[-1]["ok"] is True and replies[-1]["result"]["suggestion"] == REPLY


def test_a_client_leaving_mid_stream_still_gets_the_answer_cached(ai_system: AISystem, stub: OpenAIStub) -> None:
    """The model's answer is finished and cached even when the streaming client hangs up."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    stub.chunk_delay = 0.05
    conn = http.client.HTTPConnection("127.0.0.1", int(ai_system.sut.url.rsplit(":", 1)[1]), timeout=20)
    conn.request("GET", f"/api/0/projects/{org}/{project}/events/{event_id}/ai-fix-suggest/?stream=yes",
                 headers={"Authorization": f"Bearer {ai_system.token}"})
    assert conn.getresponse().readline().startswith(b"data: ")
    conn.close()
    calls = stub.calls
    # Asking again while the first answer still streams would be a second model call:
    # identical requests in flight are not merged. Wait until it has surely finished.
    time.sleep(len(stub.reply_chunks()) * stub.chunk_delay + 1.0)
    status, headers, body = ai_system.get(org, project, event_id, "stream=yes")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert body.decode() == REPLY and stub.calls == calls


def test_an_ai_instance_stopping_mid_stream_ends_the_stream_with_an_error(
    ai_system: AISystem, stub: OpenAIStub
) -> None:
    """When the instance answering goes away, the client gets an `error` event at once, not a hang."""
    org, project = ai_system.project()
    event_id = ai_system.store(org, project)
    stub.chunk_delay = 0.2
    conn = http.client.HTTPConnection("127.0.0.1", int(ai_system.sut.url.rsplit(":", 1)[1]), timeout=20)
    try:
        conn.request("GET", f"/api/0/projects/{org}/{project}/events/{event_id}/ai-fix-suggest/?stream=yes",
                     headers={"Authorization": f"Bearer {ai_system.token}"})
        response = conn.getresponse()
        first = response.readline() + response.readline()
        started = time.monotonic()
        assert ai_system.ai is not None
        ai_system.ai.stop()
        rest = response.read()
        assert time.monotonic() - started < 10
    finally:
        conn.close()
        ai_system.restart_ai(ai_system.config)
    name, data = parse_sse(first + rest)[-1]
    assert name == "error" and json.loads(data)["status"] == 503
