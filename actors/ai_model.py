"""The model client for AI fix suggestions: one chat completion against an OpenAI-compatible API.

Blocking by design (the sync `openai.OpenAI` client): the AI actor runs it in a worker
thread, the CLI calls it directly. Every call is bounded by `timeout` (connect and each
read, so a stream that stalls between chunks fails too) and retried at most
`max_retries` times (0 by default), so a caller never hangs on a dead backend.

Backend failures surface as one exception hierarchy, each with the HTTP status the
gateway answers with:

    AIError              status 502 - the backend answered, but not usefully
    ├── AINotConfigured  status 404 - no AI backend configured
    ├── AIRateLimited    status 429 - the backend's rate limit (openai.RateLimitError)
    └── AIUnavailable    status 503 - connection refused/reset or timed out
                         status 502 - the backend answered with a 5xx

Timeouts are 503 rather than 504 so that "backend down" keeps the two statuses
BEHAVIOUR.md promises (502/503); `AIUnavailable.timed_out` tells them apart.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Self

import openai

from bus.settings import Settings
from domain.ai_prompt import build_messages
from messages.errors import NotFound, Overloaded, Unavailable

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT",
    "TEMPERATURE",
    "AIError",
    "AINotConfigured",
    "AIRateLimited",
    "AIUnavailable",
    "ModelClient",
]

DEFAULT_MODEL = "gpt-3.5-turbo"
# Seconds for connecting and for each read; a suggestion streams its first token well
# within this, and a stalled backend is given up on after it.
DEFAULT_TIMEOUT = 30.0
# Connecting never needs long; a black-holed host should fail fast even with a long
# read timeout.
CONNECT_TIMEOUT = 5.0
TEMPERATURE = 0.7
# The longest suggestion a model may write: a fix is a few paragraphs, and a small local
# model left unbounded can ramble until its context is full (minutes on a busy CPU).
MAX_TOKENS = 1024


class AIError(Unavailable):
    """A suggestion could not be produced. A wire error (messages/errors.py) as it is:
    `unavailable`, with the HTTP status to answer with in `status` and in its details, which
    the gateway answers with (gateway/errors.py `from_error`)."""

    status = 502
    reason = ""

    def __init__(self, message: str, *, status: int | None = None, details: dict[str, Any] | None = None) -> None:
        if status is not None:
            self.status = status
        extra = {"reason": self.reason} if self.reason else {}
        super().__init__(message, {"status": self.status, **extra, **(details or {})})


class AINotConfigured(NotFound, AIError):
    """Neither OPENAI_BASE_URL nor OPENAI_API_KEY is set: `not_found` (404)."""

    status = 404
    reason = "ai_not_configured"

    def __init__(self, message: str = "no AI backend configured") -> None:
        super().__init__(message)


class AIRateLimited(Overloaded, AIError):
    """The backend refused the request under its rate limit: `overloaded` (429)."""

    status = 429
    reason = "ai_rate_limited"


class AIUnavailable(AIError):
    """The backend is unreachable (503), timed out (503) or failing (502)."""

    status = 503

    def __init__(self, message: str, *, status: int = 503, timed_out: bool = False) -> None:
        super().__init__(message, status=status, details={"timedOut": timed_out})
        self.timed_out = timed_out


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's transport errors, in case a stream raises them unwrapped.

    Recent openai versions wrap errors raised while a stream is read; older 1.x ones let
    the underlying httpx exception through. openai has shipped on `httpx` and on
    `httpx2`, so look the module up instead of importing either by name.
    """
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return (module.TransportError, module.TimeoutException)
    return ()


_TRANSPORT_ERRORS = _transport_errors()


def _translate(error: BaseException) -> AIError:
    """Map an openai (or transport) exception onto the AIError hierarchy."""
    if isinstance(error, openai.APITimeoutError):
        return AIUnavailable("the AI backend did not answer in time", timed_out=True)
    if isinstance(error, openai.APIConnectionError):
        return AIUnavailable(f"the AI backend is unreachable: {error}")
    if isinstance(error, openai.RateLimitError):
        return AIRateLimited(f"the AI backend is rate limiting requests: {error.message}")
    if isinstance(error, openai.APIStatusError):
        if error.status_code >= 500:
            return AIUnavailable(
                f"the AI backend failed with status {error.status_code}: {error.message}",
                status=502,
            )
        # A 4xx from the backend (bad key, unknown model) is our configuration's fault,
        # not the caller's: report a bad gateway, never pass the backend's 404 on.
        return AIError(
            f"the AI backend rejected the request ({error.status_code}): {error.message}"
        )
    if _TRANSPORT_ERRORS and isinstance(error, _TRANSPORT_ERRORS):
        timed_out = "Timeout" in type(error).__name__
        return AIUnavailable(
            f"the AI backend connection failed: {type(error).__name__}", timed_out=timed_out
        )
    if isinstance(error, openai.APIError):
        return AIError(f"the AI backend failed: {error.message}")
    return AIError(f"the AI backend failed: {error}")


_CAUGHT: tuple[type[BaseException], ...] = (openai.OpenAIError, *_TRANSPORT_ERRORS)


class ModelClient:
    """Asks an OpenAI-compatible chat-completion API for fix suggestions."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str = DEFAULT_MODEL,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = 0,
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        if not base_url and not api_key:
            raise AINotConfigured()
        self.base_url = base_url
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        self._client = openai.OpenAI(
            base_url=base_url or None,
            # Local OpenAI-compatible servers need no key, but the client insists on one.
            api_key=api_key or "unused",
            timeout=openai.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            max_retries=max_retries,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, timeout: float = DEFAULT_TIMEOUT) -> ModelClient:
        """Build a client from OPENAI_BASE_URL, OPENAI_API_KEY and RELAYCTL_AI_MODEL (the
        process's settings, bus/settings.py).

        Raises `AINotConfigured` when neither the base URL nor the key is set.
        """
        return cls(
            base_url=settings.value("OPENAI_BASE_URL") or None,
            api_key=settings.value("OPENAI_API_KEY") or None,
            model=settings.value("RELAYCTL_AI_MODEL") or DEFAULT_MODEL,
            timeout=timeout,
        )

    def stream_suggestion(self, description: dict[str, Any]) -> Iterator[str]:
        """Start a streamed suggestion and return an iterator over its text chunks.

        The request is made before this returns, so a refusal (rate limit, backend down)
        raises here, before the caller has committed to a streamed response; failures
        later in the stream raise from the iterator. Closing the iterator early releases
        the connection.
        """
        try:
            stream = self._client.chat.completions.create(
                model=self.model,
                messages=build_messages(description),  # type: ignore[arg-type]
                temperature=TEMPERATURE,
                max_tokens=self.max_tokens,
                stream=True,
            )
        except _CAUGHT as error:
            raise _translate(error) from error
        return self._chunks(stream)

    def _chunks(self, stream: Any) -> Iterator[str]:
        try:
            for chunk in stream:
                if not chunk.choices:  # e.g. a trailing usage-only chunk
                    continue
                content = chunk.choices[0].delta.content
                if content:
                    yield content
        except _CAUGHT as error:
            raise _translate(error) from error
        finally:
            stream.close()

    def suggestion(self, description: dict[str, Any]) -> str:
        """Ask for a suggestion and return it whole."""
        try:
            completion = self._client.chat.completions.create(
                model=self.model,
                messages=build_messages(description),  # type: ignore[arg-type]
                temperature=TEMPERATURE,
                max_tokens=self.max_tokens,
            )
        except _CAUGHT as error:
            raise _translate(error) from error
        if not completion.choices:
            raise AIError("the AI backend returned no answer")
        return completion.choices[0].message.content or ""

    def close(self) -> None:
        """Release the client's connection pool."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
