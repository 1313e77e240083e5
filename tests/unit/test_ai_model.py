"""The AI model client against a real OpenAI-compatible HTTP server (tests.openai_stub)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from actors.ai_model import (
    MAX_TOKENS,
    TEMPERATURE,
    AIError,
    AINotConfigured,
    AIRateLimited,
    AIUnavailable,
    ModelClient,
)
from bus.settings import Settings
from domain.ai_prompt import SYSTEM_PROMPT
from tests.openai_stub import OpenAIStub

DESCRIPTION: dict[str, Any] = {
    "language": "python",
    "exceptions": [{"num": 1, "type": "KeyError", "message": "'rate'"}],
}
REPLY = "The key `rate` is missing. Use `rates.get('rate', 0)` instead. Happy fixing!"


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(reply_text=REPLY) as server:
        yield server


@pytest.fixture
def client(stub: OpenAIStub) -> Iterator[ModelClient]:
    with ModelClient(base_url=stub.url, api_key="test-key", model="gpt-test", timeout=1.0) as c:
        yield c


def closed_port_url() -> str:
    """A URL on 127.0.0.1 whose port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_streamed_chunks_arrive_in_order_and_join_to_the_reply(
    stub: OpenAIStub, client: ModelClient
) -> None:
    """A streamed suggestion yields the server's chunks one by one, in order."""
    chunks = list(client.stream_suggestion(DESCRIPTION))
    assert chunks == stub.reply_chunks()
    assert len(chunks) > 1
    assert "".join(chunks) == REPLY


def test_stream_yields_each_chunk_before_the_next_is_sent(
    stub: OpenAIStub, client: ModelClient
) -> None:
    """Chunks reach the caller as they arrive, not after the whole answer."""
    stub.chunks = ["one ", "two ", "three"]
    stub.chunk_delay = 0.2
    started = time.monotonic()
    stream = client.stream_suggestion(DESCRIPTION)
    assert next(stream) == "one "
    assert time.monotonic() - started < 0.35
    assert list(stream) == ["two ", "three"]


def test_stream_request_carries_model_temperature_and_messages(
    stub: OpenAIStub, client: ModelClient
) -> None:
    """The request asks for a stream from the configured model at temperature 0.7."""
    list(client.stream_suggestion(DESCRIPTION))
    assert stub.calls == 1
    request = stub.requests[-1]
    assert request.path == "/v1/chat/completions"
    assert request.headers.get("authorization") == "Bearer test-key"
    assert request.body["model"] == "gpt-test"
    assert request.body["stream"] is True
    assert request.body["temperature"] == TEMPERATURE == 0.7
    assert request.body["max_tokens"] == MAX_TOKENS == 1024  # a small model never rambles on
    system, user = request.body["messages"]
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user["role"] == "user" and '"KeyError"' in user["content"]


def test_plain_suggestion_returns_the_whole_answer(stub: OpenAIStub, client: ModelClient) -> None:
    """A non-streamed suggestion returns the reply text in one piece."""
    assert client.suggestion(DESCRIPTION) == REPLY
    assert stub.calls == 1
    assert not stub.requests[-1].body.get("stream")


def test_rate_limit_raises_ai_rate_limited_with_429(stub: OpenAIStub, client: ModelClient) -> None:
    """The backend's 429 becomes AIRateLimited (status 429), without retrying."""
    stub.mode = "rate_limit"
    with pytest.raises(AIRateLimited) as caught:
        client.suggestion(DESCRIPTION)
    assert caught.value.status == 429
    with pytest.raises(AIRateLimited):
        client.stream_suggestion(DESCRIPTION)
    assert stub.calls == 2


def test_backend_5xx_raises_ai_unavailable_with_502(stub: OpenAIStub, client: ModelClient) -> None:
    """A 500 from the backend becomes AIUnavailable with status 502 (bad gateway)."""
    stub.mode = "error500"
    with pytest.raises(AIUnavailable) as caught:
        client.stream_suggestion(DESCRIPTION)
    assert caught.value.status == 502
    assert isinstance(caught.value, AIError)


def test_server_down_raises_ai_unavailable_quickly() -> None:
    """A closed port gives AIUnavailable (503) at once, not after the timeout."""
    client = ModelClient(base_url=closed_port_url(), api_key="k", timeout=10.0)
    started = time.monotonic()
    with pytest.raises(AIUnavailable) as caught:
        client.suggestion(DESCRIPTION)
    with pytest.raises(AIUnavailable):
        client.stream_suggestion(DESCRIPTION)
    assert time.monotonic() - started < 3.0
    assert caught.value.status == 503
    assert caught.value.timed_out is False


def test_hanging_backend_raises_ai_unavailable_within_the_timeout(
    stub: OpenAIStub, client: ModelClient
) -> None:
    """A backend that never answers gives AIUnavailable (503, timed out) after about 1 s."""
    stub.mode = "hang"
    for call in (client.suggestion, client.stream_suggestion):
        started = time.monotonic()
        with pytest.raises(AIUnavailable) as caught:
            call(DESCRIPTION)
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 3.0
        assert caught.value.status == 503
        assert caught.value.timed_out is True


def test_stream_that_stalls_midway_raises_from_the_iterator(
    stub: OpenAIStub, client: ModelClient
) -> None:
    """A stream that stops sending after its first chunk fails within the timeout."""
    stub.mode = "stall"
    stream = client.stream_suggestion(DESCRIPTION)
    assert next(stream) == stub.reply_chunks()[0]
    started = time.monotonic()
    with pytest.raises(AIUnavailable) as caught:
        next(stream)
    assert time.monotonic() - started < 3.0
    assert caught.value.status == 503


def test_closing_a_stream_early_releases_it(stub: OpenAIStub, client: ModelClient) -> None:
    """Abandoning a stream after one chunk leaves the client usable for the next call."""
    stub.chunk_delay = 0.05
    stream = client.stream_suggestion(DESCRIPTION)
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    stub.chunk_delay = 0.0
    assert client.suggestion(DESCRIPTION) == REPLY


def test_from_settings_reads_the_configuration() -> None:
    """from_settings takes base URL, key and model from the process's settings."""
    client = ModelClient.from_settings(
        Settings.load({"OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "RELAYCTL_AI_MODEL": "gpt-4o"})
    )
    assert client.model == "gpt-4o"
    assert client.base_url == "http://127.0.0.1:1/v1"
    assert ModelClient.from_settings(Settings.load({"OPENAI_API_KEY": "sk-x"})).model == "gpt-3.5-turbo"


def test_from_settings_without_url_or_key_is_not_configured() -> None:
    """With neither OPENAI_BASE_URL nor OPENAI_API_KEY the backend is not configured (404)."""
    with pytest.raises(AINotConfigured) as caught:
        ModelClient.from_settings(Settings.load({"RELAYCTL_AI_MODEL": "gpt-4"}))
    assert caught.value.status == 404
    assert str(caught.value) == "no AI backend configured"


def test_stub_rejects_unknown_modes() -> None:
    """The stub refuses a mode it cannot play, so a typo in a test fails loudly."""
    with pytest.raises(ValueError):
        OpenAIStub(mode="flaky")
