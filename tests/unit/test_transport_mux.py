"""Transport multiplexing: relayctl's own Sentry envelopes forwarded to upstream and relay."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope as SdkEnvelope
from sentry_sdk.envelope import Item as SdkItem

from actors.transport_mux import (
    TransportMultiplexer,
    envelope_url,
    parse_envelope,
    route_envelope,
    sentry_auth_header,
    serialize_envelope,
)
from bus.sentry_transport import (
    PublishingTransport,
    init_sentry,
    processing_project,
    unsafe_scope,
)
from tests.envelope_receiver import EnvelopeReceiver

INTERNAL_PROJECT = 1
STATSD_PAYLOAD = b"checkout.duration@second:0.3|d|#env:prod|T1700000000\nlogins@none:1|c\n"


class RecordingMetrics:
    """Records every incr call in order, thread-safely."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def incr(self, name: str, value: float = 1, tags: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            self.calls.append((name, value, dict(tags or {})))

    def count(self, name: str, **tags: str) -> float:
        with self._lock:
            return sum(
                value
                for called, value, called_tags in self.calls
                if called == name and tags.items() <= called_tags.items()
            )

    def names(self) -> list[str]:
        """Names with their dsn tag, if any: `name{dsn}`."""
        with self._lock:
            return [name + (f"{{{tags['dsn']}}}" if "dsn" in tags else "") for name, _, tags in self.calls]


@pytest.fixture
def upstream() -> Iterator[EnvelopeReceiver]:
    with EnvelopeReceiver() as receiver:
        yield receiver


@pytest.fixture
def relay() -> Iterator[EnvelopeReceiver]:
    with EnvelopeReceiver() as receiver:
        yield receiver


@pytest.fixture
def recorded() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
def mux(
    upstream: EnvelopeReceiver, relay: EnvelopeReceiver, recorded: RecordingMetrics
) -> Iterator[TransportMultiplexer]:
    multiplexer = TransportMultiplexer(
        upstream=upstream.dsn(project_id=11),
        relay=relay.dsn(project_id=22),
        metrics=recorded,
        internal_project_id=INTERNAL_PROJECT,
        backoff_initial=0.01,
    )
    yield multiplexer
    multiplexer.close(timeout=1)


@pytest.fixture
def sentry(mux: TransportMultiplexer) -> Iterator[None]:
    """sentry-sdk initialized with the publishing transport feeding `mux` directly."""
    init_sentry(mux.submit, process="tests", default_integrations=False)
    yield
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)
    sentry_sdk.get_global_scope().remove_tag("process")


def _envelope_with_statsd() -> bytes:
    event = {"event_id": "a" * 32, "message": "with metrics", "level": "error"}
    envelope = SdkEnvelope(headers={"event_id": "a" * 32})
    envelope.add_item(SdkItem(payload=json.dumps(event), type="event"))
    envelope.add_item(SdkItem(payload=STATSD_PAYLOAD, type="statsd"))
    return envelope.serialize()


def test_event_reaches_both_dsns_upstream_first(
    sentry: None,
    mux: TransportMultiplexer,
    upstream: EnvelopeReceiver,
    relay: EnvelopeReceiver,
    recorded: RecordingMetrics,
) -> None:
    """A captured error reaches the upstream and relay DSNs, handed to upstream first."""
    event_id = sentry_sdk.capture_message("something broke", level="error")

    [to_upstream] = upstream.wait_for(1)
    [to_relay] = relay.wait_for(1)
    for received, project_id in ((to_upstream, 11), (to_relay, 22)):
        assert received.project_id == project_id
        assert received.auth is not None and "sentry_key=public" in received.auth
        assert received.event is not None
        assert received.event["event_id"] == event_id
        assert received.event["message"] == "something broke"
        assert received.event["tags"] == {"process": "tests"}

    names = recorded.names()
    assert names.index("internal.captured.events{upstream}") < names.index("internal.captured.events{relay}")
    assert mux.flush()
    assert recorded.count("internal.captured.envelopes") == 1
    assert recorded.count("internal.sent_requests", dsn="upstream") == 1
    assert recorded.count("internal.sent_requests", dsn="relay") == 1


def test_statsd_items_reach_relay_but_not_upstream(
    mux: TransportMultiplexer, upstream: EnvelopeReceiver, relay: EnvelopeReceiver
) -> None:
    """Upstream gets the envelope without its statsd item; relay gets it whole."""
    body = _envelope_with_statsd()
    mux.submit(body)

    [to_upstream] = upstream.wait_for(1)
    [to_relay] = relay.wait_for(1)
    assert to_upstream.item_types == ["event"]
    assert to_relay.item_types == ["event", "statsd"]
    assert to_relay.body == body
    assert to_relay.envelope.items[1].get_bytes() == STATSD_PAYLOAD


def test_statsd_only_envelope_skips_upstream(
    mux: TransportMultiplexer,
    upstream: EnvelopeReceiver,
    relay: EnvelopeReceiver,
    recorded: RecordingMetrics,
) -> None:
    """An envelope holding nothing but metrics is not sent upstream at all."""
    envelope = SdkEnvelope()
    envelope.add_item(SdkItem(payload=STATSD_PAYLOAD, type="statsd"))
    mux.submit(envelope.serialize())

    relay.wait_for(1)
    assert mux.flush()
    assert upstream.requests == 0
    assert recorded.count("internal.captured.events", dsn="upstream") == 0


def test_route_keeps_statsd_upstream_when_enabled_and_never_mutates() -> None:
    """With upstream metrics enabled the original bytes go upstream; the input is untouched."""
    body = _envelope_with_statsd()
    snapshot = bytes(body)

    enabled = route_envelope(body, upstream_metrics_enabled=True, internal_project_id=None)
    disabled = route_envelope(body, upstream_metrics_enabled=False, internal_project_id=None)

    assert enabled == {"upstream": body, "relay": body}
    assert disabled["relay"] == body
    assert disabled["upstream"] is not None
    assert [i.type for i in parse_envelope(disabled["upstream"]).items] == ["event"]
    assert body == snapshot


def test_unsafe_scope_reaches_upstream_only(
    sentry: None,
    mux: TransportMultiplexer,
    upstream: EnvelopeReceiver,
    relay: EnvelopeReceiver,
    recorded: RecordingMetrics,
) -> None:
    """An event from a scope marked unsafe goes upstream, not to relay, and is counted."""
    with unsafe_scope():
        sentry_sdk.capture_message("unsafe", level="error")

    upstream.wait_for(1)
    assert mux.flush()
    assert relay.requests == 0
    assert recorded.count("internal.uncaptured.events", dsn="relay", reason="unsafe") == 1
    assert recorded.count("internal.captured.events", dsn="relay") == 0


def test_event_of_internal_project_reaches_upstream_only(
    sentry: None,
    mux: TransportMultiplexer,
    upstream: EnvelopeReceiver,
    relay: EnvelopeReceiver,
    recorded: RecordingMetrics,
) -> None:
    """An error raised while processing the internal project is kept away from relay."""
    with processing_project(INTERNAL_PROJECT):
        try:
            raise ValueError("bad config for the internal project")
        except ValueError:
            sentry_sdk.capture_exception()
    with processing_project(INTERNAL_PROJECT + 41):
        sentry_sdk.capture_message("another project's problem", level="error")

    upstream.wait_for(2)
    [to_relay] = relay.wait_for(1)
    assert to_relay.event is not None
    assert to_relay.event["message"] == "another project's problem"
    assert recorded.count("internal.uncaptured.events", dsn="relay", reason="unsafe") == 1


@pytest.mark.parametrize("down_mode", ["503", "close"])
def test_down_dsn_does_not_block_the_other(
    down_mode: str, relay: EnvelopeReceiver, recorded: RecordingMetrics
) -> None:
    """While upstream is down relay still gets everything promptly; upstream's queue is bounded."""
    with EnvelopeReceiver(down_mode=down_mode) as upstream:  # type: ignore[arg-type]
        upstream.down = True
        multiplexer = TransportMultiplexer(
            upstream=upstream.dsn(),
            relay=relay.dsn(),
            metrics=recorded,
            queue_size=2,
            max_attempts=1000,
            backoff_initial=0.05,
            backoff_max=0.1,
        )
        try:
            body = _envelope_with_statsd()
            for sent in range(1, 11):
                multiplexer.submit(body)
                relay.wait_for(sent)

            upstream.wait_for_requests(2)  # it is being retried
            # 10 submitted: at most 1 in flight and 2 queued, the rest dropped.
            assert multiplexer.dropped["upstream"] >= 7
            assert multiplexer.dropped["relay"] == 0
            dropped = recorded.count("internal.uncaptured.events", dsn="upstream", reason="queue_full")
            assert dropped == multiplexer.dropped["upstream"]

            upstream.down = False
            upstream.wait_for(10 - multiplexer.dropped["upstream"])
        finally:
            multiplexer.close(timeout=1)


def test_retries_are_bounded(relay: EnvelopeReceiver, recorded: RecordingMetrics) -> None:
    """A DSN that stays down gets a bounded number of attempts, then the envelope is dropped."""
    with EnvelopeReceiver() as upstream:
        upstream.down = True
        multiplexer = TransportMultiplexer(
            upstream=upstream.dsn(),
            relay=None,
            metrics=recorded,
            max_attempts=3,
            backoff_initial=0.01,
        )
        try:
            multiplexer.submit(_envelope_with_statsd())
            assert multiplexer.flush(timeout=5)
        finally:
            multiplexer.close(timeout=1)

    assert upstream.requests == 3
    assert recorded.count("internal.sent_requests", dsn="upstream") == 3
    assert recorded.count("internal.uncaptured.events", dsn="upstream", reason="retries_exhausted") == 1


def test_rejected_envelope_is_not_retried(recorded: RecordingMetrics) -> None:
    """A 4xx answer (other than 429) drops the envelope after one attempt."""
    attempts: list[str] = []

    def refuse(dsn: str, body: bytes) -> int:
        attempts.append(dsn)
        return 400

    with TransportMultiplexer(
        upstream="https://key@sentry.example/5", relay=None, metrics=recorded, send=refuse
    ) as multiplexer:
        multiplexer.submit(_envelope_with_statsd())
        assert multiplexer.flush()

    assert attempts == ["https://key@sentry.example/5"]
    assert recorded.count("internal.uncaptured.events", dsn="upstream", reason="rejected") == 1


def test_malformed_envelope_is_counted_not_raised(recorded: RecordingMetrics) -> None:
    """Bytes that are not an envelope are counted and dropped without raising."""
    with TransportMultiplexer(
        upstream="https://key@sentry.example/5",
        relay=None,
        metrics=recorded,
        send=lambda dsn, body: 200,
    ) as multiplexer:
        multiplexer.submit(b'{}\n{"type": "event", "length": 999}\n{}')
        multiplexer.submit(b"\xff\xfe not json")

    assert recorded.count("internal.uncaptured.envelopes", reason="malformed") == 2


def test_envelope_format_interoperates_with_sentry_sdk() -> None:
    """Envelopes written by sentry-sdk parse here, and ours parse in sentry-sdk."""
    sdk_bytes = _envelope_with_statsd()
    parsed = parse_envelope(sdk_bytes)
    assert parsed.headers == {"event_id": "a" * 32}
    assert [item.type for item in parsed.items] == ["event", "statsd"]
    assert parsed.items[1].payload == STATSD_PAYLOAD

    again = SdkEnvelope.deserialize(serialize_envelope(parsed))
    assert [item.type for item in again.items] == ["event", "statsd"]
    assert again.items[1].get_bytes() == STATSD_PAYLOAD


def test_newline_terminated_items_parse() -> None:
    """Items without a length header run to the end of their line."""
    body = b'{}\n{"type":"event"}\n{"message":"hi"}\n{"type":"attachment","length":0}\n\n'
    parsed = parse_envelope(body)
    assert [item.type for item in parsed.items] == ["event", "attachment"]
    assert json.loads(parsed.items[0].payload) == {"message": "hi"}
    assert parsed.items[1].payload == b""


def test_dsn_endpoint_and_auth() -> None:
    """A DSN maps to its envelope endpoint and X-Sentry-Auth header."""
    dsn = "https://abc123@o1.ingest.example.com:8443/sentry/42"
    assert envelope_url(dsn) == "https://o1.ingest.example.com:8443/sentry/api/42/envelope/"
    assert "sentry_key=abc123" in sentry_auth_header(dsn)
    assert sentry_auth_header(dsn).startswith("Sentry sentry_version=7")


def test_publishing_transport_never_raises() -> None:
    """A publish that raises is swallowed so capturing an error cannot raise another."""

    def broken_publish(data: bytes) -> None:
        raise ConnectionError("no bus")

    client = sentry_sdk.Client(
        dsn="https://public@relayctl.invalid/1",
        transport=PublishingTransport(broken_publish),
        default_integrations=False,
    )
    try:
        with sentry_sdk.isolation_scope() as scope:
            scope.set_client(client)
            assert sentry_sdk.capture_message("still fine") is not None
    finally:
        client.close()
