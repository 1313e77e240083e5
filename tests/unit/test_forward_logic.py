"""The forwarder's pure parts: DSNs, the forwarded body, envelope items, outcomes, and what
an answer of the target means (actors/forwarder.py `classify`)."""

from __future__ import annotations

import json

import pytest

from actors.forwarder import Delivered, ForwardSettings, Permanent, Retry, classify
from bus.settings import InvalidSetting, Settings
from domain.dsn import InvalidDsn, parse_dsn
from domain.ingest import (
    InvalidEnvelope,
    envelope_outcomes,
    error_events,
    event_title,
    forward_body,
    parse_items,
    relay_outcomes,
    scrub_configs,
)
from domain.options import InvalidOption, validate_option

SETTINGS = ForwardSettings(backoff_base=1.0, backoff_max=8.0)


def test_a_dsn_names_the_envelope_url_the_key_and_the_header_dsn() -> None:
    dsn = parse_dsn("https://abc:shh@sentry.example.com:8443/prefix/17")
    assert dsn.envelope_url == "https://sentry.example.com:8443/prefix/api/17/envelope/"
    assert dsn.public_dsn == "https://abc@sentry.example.com:8443/prefix/17"
    assert dsn.auth_header("c/1") == "Sentry sentry_key=abc, sentry_version=7, sentry_client=c/1, sentry_secret=shh"
    assert parse_dsn("http://k@[::1]:9000/3").envelope_url == "http://[::1]:9000/api/3/envelope/"


@pytest.mark.parametrize("value, reason", [
    ("", "non-empty"), (17, "non-empty"), ("ftp://k@h/1", "scheme"), ("https://h/1", "public key"),
    ("https://k@h/abc", "numeric project id"), ("https://k@h/1?x=1", "query"), ("https://k@/1", "host"),
    ("https://k@h:99999/1", "not a URL"),
])
def test_a_bad_dsn_says_what_is_wrong(value: object, reason: str) -> None:
    with pytest.raises(InvalidDsn, match=reason):
        parse_dsn(value)


def test_the_option_is_validated_and_null_opts_out() -> None:
    assert validate_option("project", "relayctl:forward_dsn", " https://k@h/1 ") == "https://k@h/1"
    assert validate_option("org", "relayctl:forward_dsn", None) is None
    with pytest.raises(InvalidOption, match="relayctl:forward_dsn"):
        validate_option("project", "relayctl:forward_dsn", "https://h/1")


def envelope(header: dict[str, object], *items: tuple[dict[str, object], bytes]) -> bytes:
    out = json.dumps(header).encode() + b"\n"
    for item, payload in items:
        out += json.dumps(item).encode() + b"\n" + payload + b"\n"
    return out


def test_the_forwarded_body_changes_only_the_dsn() -> None:
    target = parse_dsn("https://k@sentry.example.com/5")
    payload = b'{"message":"x"}'
    data = envelope({"event_id": "a" * 32, "dsn": "http://old@relayctl/1", "sent_at": "now"},
                    ({"type": "event", "length": len(payload)}, payload))
    body = forward_body(data, target)
    header_line, rest = body.split(b"\n", 1)
    assert json.loads(header_line) == {"event_id": "a" * 32, "dsn": "https://k@sentry.example.com/5", "sent_at": "now"}
    assert rest == data.split(b"\n", 1)[1]
    assert json.loads(forward_body(b"{}\n", target).split(b"\n")[0])["dsn"] == target.public_dsn
    with pytest.raises(InvalidEnvelope):
        forward_body(b"not json\n", target)


def test_items_by_length_or_by_line_and_lengths_are_checked() -> None:
    data = envelope({}, ({"type": "attachment", "length": 5}, b"a\nb\nc"), ({"type": "session"}, b'{"s": 1}'))
    items = parse_items(data)
    assert [(i.type, i.payload) for i in items] == [("attachment", b"a\nb\nc"), ("session", b'{"s": 1}')]
    with pytest.raises(InvalidEnvelope, match="past the end"):
        parse_items(b'{}\n{"type":"event","length":100}\n{}\n')
    with pytest.raises(InvalidEnvelope, match="item 0"):
        parse_items(b"{}\nnope\n")


def test_accepted_items_and_client_reports_become_outcomes() -> None:
    report = {"discarded_events": [{"reason": "queue_overflow", "category": "error", "quantity": 2},
                                   {"reason": "<script>", "category": "nonsense", "quantity": 1},
                                   {"reason": "sample_rate", "category": "transaction", "quantity": -4}],
              "filtered_events": [{"reason": "before_send", "category": "span", "quantity": 3}]}
    data = envelope({}, ({"type": "event"}, b'{"message":"m"}'), ({"type": "transaction"}, b"{}"),
                    ({"type": "client_report"}, json.dumps(report).encode()), ({"type": "statsd"}, b"x:1|c"))
    got = [(o.outcome, o.category, o.reason, o.quantity) for o in envelope_outcomes(parse_items(data), 9)]
    assert got == [("accepted", "error", "none", 1), ("accepted", "transaction", "none", 1),
                   ("client_discard", "error", "queue_overflow", 2), ("client_discard", "unknown", "other", 1),
                   ("filtered", "span", "before_send", 3)]


def test_relay_outcomes_skip_what_is_malformed() -> None:
    body = json.dumps({"outcomes": [
        {"outcome": 2, "reason": "key_quota", "category": 1, "quantity": 7, "project_id": 4},
        {"outcome": 9, "project_id": 4}, {"outcome": 1, "project_id": "4"}, "junk",
        {"outcome": 3, "reason": "a b c", "category": 999, "project_id": 5},
    ]}).encode()
    got = [(o.project_id, o.outcome, o.category, o.reason, o.quantity) for o in relay_outcomes(body)]
    assert got == [(4, "rate_limited", "error", "key_quota", 7), (5, "invalid", "unknown", "other", 1)]
    assert relay_outcomes(b"not json") == [] and relay_outcomes(b'{"outcomes": 3}') == []


def test_error_events_are_normalized_and_scrubbed_and_others_skipped() -> None:
    event = {"exception": {"values": [{"type": "E", "value": "v"}]}, "extra": {"password": "p", "ok": 1}}
    data = envelope({"event_id": "b" * 32}, ({"type": "event"}, json.dumps(event).encode()),
                    ({"type": "transaction"}, b'{"type":"transaction"}'))
    scrubbing = {"scrubData": True, "scrubDefaults": True, "scrubIpAddresses": False,
                 "sensitiveFields": [], "excludeFields": []}
    [got] = list(error_events(parse_items(data), 3, scrubbing=scrub_configs(None, scrubbing), event_id="b" * 32))
    assert got["event_id"] == "b" * 32 and got["type"] == "error" and got["project"] == 3
    assert got["extra"] == {"password": "[Filtered]", "ok": 1}
    assert event_title(got) == "E: v"
    assert event_title({"logentry": {"formatted": "line one\nline two"}}) == "line one"


def test_what_an_answer_means() -> None:
    assert classify(202, {}, 1, SETTINGS) == Delivered(202)
    assert classify(429, {"Retry-After": "30"}, 1, SETTINGS) == Retry(30.0, "HTTP 429")
    assert classify(429, {"X-Sentry-Rate-Limits": "60:error:key, 5::org"}, 1, SETTINGS).delay == 60.0  # type: ignore[union-attr]
    assert classify(503, {}, 3, SETTINGS) == Retry(4.0, "HTTP 503")  # 1, 2, 4, ... capped at 8
    assert classify(502, {}, 30, SETTINGS) == Retry(8.0, "HTTP 502")
    assert classify(408, {}, 1, SETTINGS) == Retry(1.0, "HTTP 408")
    assert classify(400, {}, 1, SETTINGS, "bad envelope") == Permanent(400, "bad envelope")
    assert classify(413, {}, 1, SETTINGS) == Permanent(413, "")


def test_stats_windows_count_the_last_hour_and_day() -> None:
    from actors.ingest_stats import summarize

    now = 1_000_000 * 60.0
    minutes = [(1_000_000, {"accepted|error": 2, "filtered|error": 1}), (1_000_000 - 59, {"invalid|span": 4}),
               (1_000_000 - 60, {"rate_limited|error": 8}), (1_000_000 - 1439, {"accepted|attachment": 1}),
               (1_000_000 - 1440, {"accepted|error": 100})]
    stats = summarize(minutes, now)
    assert {k: v for k, v in stats["lastHour"].items() if k != "byCategory"} == {
        "accepted": 2, "filtered": 1, "rate_limited": 0, "invalid": 4}
    assert stats["last24h"]["rate_limited"] == 8 and stats["last24h"]["accepted"] == 3
    assert stats["last24h"]["byCategory"] == {"attachment": {"accepted": 1}, "error": {
        "accepted": 2, "filtered": 1, "rate_limited": 8}, "span": {"invalid": 4}}


def test_an_instance_may_run_some_consumers_only() -> None:
    def consumers(value: str | None) -> frozenset[str]:
        return ForwardSettings.from_settings(Settings.load({"RELAYCTL_FORWARD_CONSUMERS": value} if value else {})
                                             ).consumers

    assert consumers("forwarder, outcomes") == {"forwarder", "outcomes"}
    with pytest.raises(InvalidSetting, match="unknown consumer nope; known: forwarder, error-events, outcomes"):
        consumers("forwarder,nope")
    assert consumers(None) == {"forwarder", "error-events", "outcomes"}


def test_the_forwarders_settings_come_from_the_process_settings() -> None:
    settings = ForwardSettings.from_settings(Settings.load({"RELAYCTL_FORWARD_ACK_WAIT": "2",
                                                            "RELAYCTL_FORWARD_MAX_ACK_PENDING": "7",
                                                            "RELAYCTL_STREAM_REPLICAS": "3"}))
    assert (settings.ack_wait, settings.max_ack_pending, settings.replicas) == (2.0, 7, 3)
    assert ForwardSettings.from_settings(Settings.load({})) == ForwardSettings()  # the catalogue's defaults
