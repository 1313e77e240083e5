"""Multiplexing of relayctl's own Sentry envelopes to up to two DSNs.

Every process publishes its sentry-sdk envelopes (see `bus.sentry_transport`); the
transport actor feeds them to a `TransportMultiplexer`, which forwards each one to

- ``upstream`` first (the Sentry most isolated from this installation), with items
  of type ``statsd``/``metric_buckets`` removed unless upstream metrics are enabled;
- then ``relay``, unless the event is unsafe: raised while processing the internal
  project, or on a scope marked unsafe (markers: `bus.sentry_transport`). Unsafe
  envelopes are counted as ``internal.uncaptured.events{dsn=relay,reason=unsafe}``.

Each DSN has its own bounded queue and worker thread, so a DSN that is down (it
retries with exponential backoff) only ever fills its own queue; envelopes that do
not fit, or that exhaust their retries, are dropped and counted.

Counters (through the injected metrics object); the DSN is a tag (``dsn=upstream|relay``),
not part of the name, so one metric family covers both:

- ``internal.captured.envelopes``: envelopes submitted;
- ``internal.uncaptured.envelopes{reason=malformed}``: submitted, but unparseable;
- ``internal.captured.events{dsn}``: envelopes handed to that DSN;
- ``internal.sent_requests{dsn}``: HTTP requests made (retries included);
- ``internal.uncaptured.events{dsn,reason}``: envelopes not delivered to that DSN; reason
  is ``unsafe``, ``queue_full``, ``retries_exhausted``, ``rejected`` (a 4xx other than
  429) or ``error`` (a bug while delivering).

The Sentry envelope format (https://develop.sentry.dev/sdk/envelopes/): one JSON
header line, then items, each a JSON header line and a payload that is either
``length`` bytes long or runs to the next newline.
"""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import structlog

from bus.retry import Backoff, retry_blocking
from bus.sentry_transport import PROCESSING_PROJECT_TAG, UNSAFE_ENVELOPE_HEADER, UNSAFE_TAG

__all__ = [
    "DSN_NAMES",
    "STATSD_ITEM_TYPES",
    "Envelope",
    "EnvelopeItem",
    "MalformedEnvelope",
    "SendEnvelope",
    "SupportsIncr",
    "TransportMultiplexer",
    "envelope_url",
    "http_send",
    "is_unsafe",
    "parse_envelope",
    "route_envelope",
    "sentry_auth_header",
    "serialize_envelope",
]

log = structlog.get_logger(__name__)

UPSTREAM: Final = "upstream"
RELAY: Final = "relay"
# Forwarding order: upstream is the most isolated from this installation.
DSN_NAMES: Final = (UPSTREAM, RELAY)

# Item types carrying SDK custom metrics (text statsd and its JSON bucket form).
STATSD_ITEM_TYPES: Final = frozenset({"statsd", "metric_buckets"})
_EVENT_ITEM_TYPES: Final = frozenset({"event", "transaction"})
_TRUE_VALUES: Final = frozenset({"1", "true", "yes"})

CLIENT_NAME: Final = "relayctl-transport/0.1"


class _TryAgain(Exception):
    """One send got no answer or one worth trying again (5xx, 429)."""


class MalformedEnvelope(ValueError):
    """Bytes that are not a Sentry envelope."""


# -- envelope format -----------------------------------------------------------------


@dataclass(frozen=True)
class EnvelopeItem:
    headers: Mapping[str, Any]
    payload: bytes

    @property
    def type(self) -> str | None:
        item_type = self.headers.get("type")
        return item_type if isinstance(item_type, str) else None


@dataclass(frozen=True)
class Envelope:
    headers: Mapping[str, Any] = field(default_factory=dict)
    items: tuple[EnvelopeItem, ...] = ()


def _read_line(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.find(b"\n", pos)
    if end == -1:
        return data[pos:], len(data)
    return data[pos:end], end + 1


def _json_object(line: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise MalformedEnvelope(f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedEnvelope(f"{what} is not an object")
    return value


def parse_envelope(data: bytes) -> Envelope:
    """Parse envelope bytes; raises `MalformedEnvelope`."""
    header_line, pos = _read_line(data, 0)
    headers = _json_object(header_line, "envelope header") if header_line.strip() else {}
    items: list[EnvelopeItem] = []
    while pos < len(data):
        line, pos = _read_line(data, pos)
        if not line.strip():
            continue  # trailing newline, or padding between items
        item_headers = _json_object(line, "item header")
        length = item_headers.get("length")
        if length is None:
            payload, pos = _read_line(data, pos)
        else:
            if not isinstance(length, int) or length < 0 or pos + length > len(data):
                raise MalformedEnvelope(f"bad item length {length!r}")
            payload = data[pos : pos + length]
            pos += length
            if data[pos : pos + 1] == b"\n":
                pos += 1
        items.append(EnvelopeItem(item_headers, payload))
    return Envelope(headers, tuple(items))


def serialize_envelope(envelope: Envelope) -> bytes:
    """Serialize an envelope, writing an explicit ``length`` for every item."""
    parts = [json.dumps(dict(envelope.headers), separators=(",", ":")).encode(), b"\n"]
    for item in envelope.items:
        headers = {**item.headers, "length": len(item.payload)}
        parts += [json.dumps(headers, separators=(",", ":")).encode(), b"\n", item.payload, b"\n"]
    return b"".join(parts)


# -- routing ------------------------------------------------------------------------


def _event_tags(payload: bytes) -> dict[str, str]:
    try:
        event = json.loads(payload)
    except ValueError:
        return {}
    tags = event.get("tags") if isinstance(event, dict) else None
    # Sentry accepts tags as an object or as a list of [key, value] pairs.
    if isinstance(tags, dict):
        return {str(k): str(v) for k, v in tags.items()}
    if isinstance(tags, list):
        return {str(p[0]): str(p[1]) for p in tags if isinstance(p, list) and len(p) == 2}
    return {}


def is_unsafe(envelope: Envelope, internal_project_id: int | None) -> bool:
    """Whether the envelope must not be sent to the relay DSN (see module docstring)."""
    if envelope.headers.get(UNSAFE_ENVELOPE_HEADER) is True:
        return True
    for item in envelope.items:
        if item.type not in _EVENT_ITEM_TYPES:
            continue
        tags = _event_tags(item.payload)
        if tags.get(UNSAFE_TAG, "").lower() in _TRUE_VALUES:
            return True
        if internal_project_id is not None and tags.get(PROCESSING_PROJECT_TAG) == str(
            internal_project_id
        ):
            return True
    return False


def route_envelope(
    envelope_bytes: bytes,
    *,
    upstream_metrics_enabled: bool,
    internal_project_id: int | None,
) -> dict[str, bytes | None]:
    """Return the bytes to send to each DSN, keyed ``"upstream"`` and ``"relay"``.

    ``upstream`` is the original bytes, or a re-serialized copy without statsd items
    unless `upstream_metrics_enabled` (None if no item is left). ``relay`` is the
    original bytes, or None when the envelope is unsafe. The input is never modified.
    Raises `MalformedEnvelope`.
    """
    envelope = parse_envelope(envelope_bytes)

    upstream: bytes | None = envelope_bytes
    if not upstream_metrics_enabled:
        kept = tuple(item for item in envelope.items if item.type not in STATSD_ITEM_TYPES)
        if len(kept) != len(envelope.items):
            upstream = serialize_envelope(Envelope(envelope.headers, kept)) if kept else None

    relay = None if is_unsafe(envelope, internal_project_id) else envelope_bytes
    return {UPSTREAM: upstream, RELAY: relay}


# -- sending ------------------------------------------------------------------------


def _split_dsn(dsn: str) -> tuple[str, str, str, str]:
    """Return (scheme, public_key, host[:port] + path prefix, project_id) of a DSN."""
    parts = urlsplit(dsn)
    if not parts.scheme or not parts.username or not parts.hostname:
        raise ValueError(f"not a DSN: {dsn!r}")
    path, _, project_id = parts.path.rpartition("/")
    if not project_id:
        raise ValueError(f"DSN has no project id: {dsn!r}")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return parts.scheme, parts.username, netloc + path, project_id


def envelope_url(dsn: str) -> str:
    """Return ``<scheme>://<host>[/<path>]/api/<project_id>/envelope/`` for a DSN."""
    scheme, _, base, project_id = _split_dsn(dsn)
    return f"{scheme}://{base}/api/{project_id}/envelope/"


def sentry_auth_header(dsn: str) -> str:
    """Return the ``X-Sentry-Auth`` header value for a DSN."""
    _, public_key, _, _ = _split_dsn(dsn)
    return f"Sentry sentry_version=7, sentry_key={public_key}, sentry_client={CLIENT_NAME}"


# (dsn, envelope bytes) -> HTTP status; raises (e.g. OSError) when nothing was answered.
SendEnvelope = Callable[[str, bytes], int]


def http_send(dsn: str, body: bytes, timeout: float = 5.0) -> int:
    """POST an envelope to the DSN's envelope endpoint and return the HTTP status."""
    request = urllib.request.Request(
        envelope_url(dsn),
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/x-sentry-envelope",
            "X-Sentry-Auth": sentry_auth_header(dsn),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class SupportsIncr(Protocol):
    def incr(self, name: str, value: float = 1, tags: Mapping[str, Any] | None = None) -> None: ...


class _DsnWorker:
    """A bounded queue and a thread delivering envelopes to one DSN, with retries."""

    def __init__(
        self,
        name: str,
        dsn: str,
        *,
        send: SendEnvelope,
        metrics: SupportsIncr,
        queue_size: int,
        max_attempts: int,
        backoff_initial: float,
        backoff_max: float,
    ) -> None:
        self.name = name
        self.dsn = dsn
        self._send = send
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        # Drops happen on the submitting thread (queue full) and on the worker.
        self._dropped_lock = threading.Lock()
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"transport-{name}", daemon=True)
        self._thread.start()

    def put(self, body: bytes) -> None:
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self._drop("queue_full")

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued envelope was delivered or dropped."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _drop(self, reason: str) -> None:
        with self._dropped_lock:
            self.dropped += 1
        self._metrics.incr("internal.uncaptured.events", tags={"dsn": self.name, "reason": reason})

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                body = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._deliver(body)
            except Exception:  # the DSN thread's boundary: a bug costs one envelope, not the thread
                log.exception("transport.unexpected_error", transport=self.name)
                self._drop("error")
            finally:
                self._queue.task_done()

    def _deliver(self, body: bytes) -> None:
        def attempt(n: int) -> None:
            self._metrics.incr("internal.sent_requests", tags={"dsn": self.name})
            try:
                status = self._send(self.dsn, body)
            except (OSError, http.client.HTTPException) as exc:  # no answer (URLError is an OSError): retried
                log.info("transport.attempt_failed", transport=self.name, attempt=n + 1, error=str(exc))
                raise _TryAgain from exc
            if 200 <= status < 300:
                return
            if 400 <= status < 500 and status != 429:
                # The DSN understood and refused; sending again cannot help.
                log.warning("transport.envelope_rejected", transport=self.name, status=status)
                self._drop("rejected")
                return
            log.info("transport.attempt_status", transport=self.name, attempt=n + 1, status=status)
            raise _TryAgain

        try:
            retry_blocking(attempt, retry_on=(_TryAgain,), attempts=self._max_attempts, stop=self._stop,
                           backoff=Backoff(self._backoff_initial, 2.0, self._backoff_max))
        except _TryAgain:
            self._drop("retries_exhausted")


class TransportMultiplexer:
    """Forwards envelope bytes to the ``upstream`` and ``relay`` DSNs (both optional).

    `submit` never blocks and never raises: it routes the envelope and queues it per
    DSN, upstream first. Call `close` to stop the worker threads.
    """

    def __init__(
        self,
        *,
        upstream: str | None,
        relay: str | None,
        metrics: SupportsIncr,
        send: SendEnvelope = http_send,
        upstream_metrics_enabled: bool = False,
        internal_project_id: int | None = None,
        queue_size: int = 1000,
        max_attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self._metrics = metrics
        self._upstream_metrics_enabled = upstream_metrics_enabled
        self._internal_project_id = internal_project_id
        self._workers: dict[str, _DsnWorker] = {}
        for name, dsn in zip(DSN_NAMES, (upstream, relay), strict=True):
            if dsn:
                envelope_url(dsn)  # fail at startup, not on the first error report
                self._workers[name] = _DsnWorker(
                    name,
                    dsn,
                    send=send,
                    metrics=metrics,
                    queue_size=queue_size,
                    max_attempts=max_attempts,
                    backoff_initial=backoff_initial,
                    backoff_max=backoff_max,
                )

    @property
    def dropped(self) -> dict[str, int]:
        """Envelopes dropped so far per DSN (queue full, retries exhausted, rejected)."""
        return {name: worker.dropped for name, worker in self._workers.items()}

    def submit(self, envelope_bytes: bytes) -> None:
        """Route one envelope and queue it for each configured DSN."""
        self._metrics.incr("internal.captured.envelopes")
        try:
            routed = route_envelope(
                envelope_bytes,
                upstream_metrics_enabled=self._upstream_metrics_enabled,
                internal_project_id=self._internal_project_id,
            )
        except MalformedEnvelope:
            log.warning("transport.malformed_envelope_dropped", exc_info=True)
            self._metrics.incr("internal.uncaptured.envelopes", tags={"reason": "malformed"})
            return
        for name in DSN_NAMES:
            worker = self._workers.get(name)
            if worker is None:
                continue
            body = routed[name]
            if body is not None:
                self._metrics.incr("internal.captured.events", tags={"dsn": name})
                worker.put(body)
            elif name == RELAY:
                self._metrics.incr("internal.uncaptured.events", tags={"dsn": "relay", "reason": "unsafe"})

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every DSN's queue is empty; False if `timeout` ran out first."""
        deadline = time.monotonic() + timeout
        return all(
            worker.wait_idle(max(0.0, deadline - time.monotonic()))
            for worker in self._workers.values()
        )

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what can be delivered within `timeout`, then stop the workers."""
        self.flush(timeout)
        for worker in self._workers.values():
            worker.stop(timeout)

    def __enter__(self) -> TransportMultiplexer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
