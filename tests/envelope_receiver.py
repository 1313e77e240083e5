"""A local HTTP server standing in for a Sentry DSN in tests.

`EnvelopeReceiver` listens on a free 127.0.0.1 port (in a thread), accepts POSTs to
``/api/<project_id>/envelope/`` and records each envelope, parsed with sentry-sdk's
own envelope parser so tests do not check relayctl's parser against itself. Set
`down` to make it answer 503 (or, with ``down_mode="close"``, drop the connection
without answering) to simulate an unreachable DSN::

    with EnvelopeReceiver() as receiver:
        dsn = receiver.dsn(project_id=1)
        ...
        [received] = receiver.wait_for(1)
"""

from __future__ import annotations

import gzip
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from sentry_sdk.envelope import Envelope

__all__ = ["EnvelopeReceiver", "ReceivedEnvelope"]

_ENVELOPE_PATH = re.compile(r"^/api/(\d+)/envelope/?$")


@dataclass(frozen=True)
class ReceivedEnvelope:
    project_id: int
    auth: str | None
    body: bytes
    envelope: Envelope
    received_at: float  # time.monotonic()

    @property
    def item_types(self) -> list[str | None]:
        return [item.type for item in self.envelope.items]

    @property
    def event(self) -> dict[str, Any] | None:
        event = self.envelope.get_event()
        return dict(event) if event is not None else None


class EnvelopeReceiver:
    """Records Sentry envelopes POSTed to it; see the module docstring."""

    def __init__(self, down_mode: Literal["503", "close"] = "503") -> None:
        self.down = False
        self.down_mode = down_mode
        self.envelopes: list[ReceivedEnvelope] = []
        self.requests = 0  # every POST, including those refused while down
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def dsn(self, project_id: int = 1, public_key: str = "public") -> str:
        return f"http://{public_key}@127.0.0.1:{self.port}/{project_id}"

    def start(self) -> EnvelopeReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> EnvelopeReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedEnvelope]:
        """Wait until at least `count` envelopes arrived; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.envelopes) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} envelopes within {timeout}s, got {len(self.envelopes)}"
                    )
                self._changed.wait(remaining)
            return list(self.envelopes)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> None:
        """Wait until at least `count` POSTs arrived, accepted or not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.requests < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} requests, got {self.requests}")
                self._changed.wait(remaining)

    def _record_request(self) -> None:
        with self._changed:
            self.requests += 1
            self._changed.notify_all()

    def _record(self, received: ReceivedEnvelope) -> None:
        with self._changed:
            self.envelopes.append(received)
            self._changed.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._record_request()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.down:
                    if receiver.down_mode == "close":
                        self.close_connection = True
                        self.connection.close()
                        return
                    self._answer(503, b'{"detail":"down"}')
                    return
                match = _ENVELOPE_PATH.match(self.path)
                if match is None:
                    self._answer(404, b'{"detail":"not found"}')
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                try:
                    envelope = Envelope.deserialize(body)
                except Exception:
                    self._answer(400, b'{"detail":"bad envelope"}')
                    return
                receiver._record(
                    ReceivedEnvelope(
                        project_id=int(match.group(1)),
                        auth=self.headers.get("X-Sentry-Auth"),
                        body=body,
                        envelope=envelope,
                        received_at=time.monotonic(),
                    )
                )
                self._answer(200, b'{"id":null}')

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean

        return Handler
