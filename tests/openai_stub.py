"""An OpenAI-compatible HTTP server for tests: real sockets, scripted answers.

`OpenAIStub` serves `POST /v1/chat/completions` (plain JSON, or server-sent events when
the request says `"stream": true`) and `GET /v1/models` from a thread, so it works for
sync and asyncio tests and for child processes alike (point OPENAI_BASE_URL at `.url`):

    with OpenAIStub(reply_text="Use dict.get.") as stub:
        client = ModelClient(base_url=stub.url, api_key="test")
        ...
        assert stub.calls == 1

Behaviour is chosen by `mode`, which may be changed while the server runs:

- "ok": answer with `reply_text` (streamed as `chunks`, by default its words);
- "rate_limit": 429 with an OpenAI-style error body;
- "error500": 500 with an OpenAI-style error body;
- "hang": accept the request and never answer (until the stub stops);
- "stall": stream the first chunk, then never send more (until the stub stops).

`chunk_delay` paces streamed chunks, to watch them arrive one by one.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["MODES", "OpenAIStub", "RecordedRequest"]

MODES = frozenset({"ok", "rate_limit", "error500", "hang", "stall"})


@dataclass
class RecordedRequest:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]  # names lowercased, as HTTP header names are case-insensitive
    body: Any = None  # the parsed JSON body, or None
    received_at: float = field(default_factory=time.monotonic)


class OpenAIStub:
    """A scripted OpenAI-compatible server on a free port of 127.0.0.1."""

    def __init__(
        self,
        reply_text: str = "This is a stub suggestion.",
        *,
        mode: str = "ok",
        chunks: list[str] | None = None,
        chunk_delay: float = 0.0,
    ) -> None:
        self.reply_text = reply_text
        self.mode = mode
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.requests: list[RecordedRequest] = []
        self._calls = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- scripting ----------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {sorted(MODES)}")
        self._mode = mode

    @property
    def calls(self) -> int:
        """How many chat completions were requested."""
        with self._lock:
            return self._calls

    def reply_chunks(self) -> list[str]:
        """The pieces a streamed answer is sent in: `chunks`, or the words of `reply_text`."""
        if self.chunks is not None:
            return list(self.chunks)
        # Each word keeps its trailing whitespace, so the pieces join back to the text.
        return re.findall(r"\S+\s*|\s+", self.reply_text)

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL clients use, ending in /v1."""
        if self._server is None:
            raise RuntimeError("the stub is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        # Handler threads that hang must not keep the test process alive.
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            # A short poll keeps stop() quick; each test starts and stops its own stub.
            kwargs={"poll_interval": 0.05},
            name="openai-stub",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        # Release hanging handlers first, so their connections close with the server.
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- request handling (called from handler threads) ---------------------------------

    def _record(self, request: RecordedRequest, *, completion: bool) -> None:
        with self._lock:
            self.requests.append(request)
            if completion:
                self._calls += 1

    def _hang(self) -> None:
        self._stopping.wait()


def _handler_for(stub: OpenAIStub) -> type[BaseHTTPRequestHandler]:
    class Handler(_StubHandler):
        pass

    Handler.stub = stub
    return Handler


class _StubHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so the client keeps its connection and streamed bodies use chunked framing,
    # as a real OpenAI server does.
    protocol_version = "HTTP/1.1"
    stub: OpenAIStub

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""

    def do_GET(self) -> None:
        self.stub._record(self._recorded(None), completion=False)
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(200, {"object": "list", "data": [_model_entry("stub-model")]})
        else:
            self._send_json(404, _error_body("not found", "invalid_request_error"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.stub._record(self._recorded(body), completion=False)
            self._send_json(404, _error_body("not found", "invalid_request_error"))
            return
        self.stub._record(self._recorded(body), completion=True)
        if not isinstance(body, dict):
            self._send_json(400, _error_body("body must be a JSON object", "invalid_request_error"))
            return

        mode = self.stub.mode
        if mode == "hang":
            self.stub._hang()
            self.close_connection = True
            return
        if mode == "rate_limit":
            self._send_json(
                429,
                _error_body("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
            )
            return
        if mode == "error500":
            self._send_json(500, _error_body("The server had an error", "server_error"))
            return

        model = str(body.get("model") or "stub-model")
        if body.get("stream"):
            self._stream(model, stall=(mode == "stall"))
        else:
            self._send_json(200, _completion(model, self.stub.reply_text))

    def _recorded(self, body: Any) -> RecordedRequest:
        return RecordedRequest(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, model: str, *, stall: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        try:
            self._event(_chunk(completion_id, model, {"role": "assistant", "content": ""}))
            for piece in self.stub.reply_chunks():
                if self.stub.chunk_delay:
                    time.sleep(self.stub.chunk_delay)
                self._event(_chunk(completion_id, model, {"content": piece}))
                if stall:
                    self.stub._hang()
                    self.close_connection = True
                    return
            self._event(_chunk(completion_id, model, {}, finish_reason="stop"))
            self._write_chunk(b"data: [DONE]\n\n")
            self._write_chunk(b"")  # the terminating zero-length chunk
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. closed the stream early): nothing left to do.
            self.close_connection = True

    def _event(self, payload: dict[str, Any]) -> None:
        self._write_chunk(f"data: {json.dumps(payload)}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _model_entry(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": "openai-stub"}


def _completion(model: str, text: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _chunk(
    completion_id: str, model: str, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
