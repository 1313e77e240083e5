"""The envelope checks and request parsing of gateway/ingest.py, without a server."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.rate_limits import Quota, envelope_categories, quotas_of
from gateway.envelopes import MalformedEnvelope, check, normalize_event_id, scan, wrap_event
from gateway.ingest import dsn_key, origin_allowed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_are_an_envelope_or_a_malformed_one(data: bytes) -> None:
    """Whatever arrives, the check answers or names the problem: never another exception."""
    try:
        check(data)
    except MalformedEnvelope as exc:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["event", "attachment", "session", "transaction"]),
                          st.binary(max_size=50), st.booleans()), min_size=1, max_size=5))
def test_well_formed_envelopes_pass_and_keep_their_items(items: list[tuple[str, bytes, bool]]) -> None:
    body = b'{"event_id":"' + b"a" * 32 + b'"}\n'
    for kind, payload, with_length in items:
        if kind in ("event", "transaction"):
            payload = json.dumps({"p": payload.hex()}).encode()
        elif not with_length:
            payload = payload.replace(b"\n", b"")
        header = {"type": kind, **({"length": len(payload)} if with_length else {})}
        body += json.dumps(header).encode() + b"\n" + payload + b"\n"
    scanned = check(body)
    assert scanned.item_types == [k for k, _, _ in items] and scanned.event_id == "a" * 32


def test_a_truncated_item_is_named() -> None:
    with pytest.raises(MalformedEnvelope, match="item 2 \\(attachment\\): length 10 exceeds the 3 bytes left"):
        scan(b'{}\n{"type":"event","length":2}\n{}\n{"type":"attachment","length":10}\nabc')


def test_event_ids_in_any_uuid_form_are_normalized() -> None:
    assert normalize_event_id("9ec79c33-ec99-42ab-8353-589fcb2e04dc") == "9ec79c33ec9942ab8353589fcb2e04dc"
    assert normalize_event_id("9EC79C33EC9942AB8353589FCB2E04DC") == "9ec79c33ec9942ab8353589fcb2e04dc"
    assert normalize_event_id("nope") is None and normalize_event_id(5) is None


def test_a_wrapped_store_event_is_an_envelope_of_one_event() -> None:
    scanned = check(wrap_event({"message": "x"}, "b" * 32))
    assert scanned.item_types == ["event"] and scanned.event_id == "b" * 32


@pytest.mark.parametrize(("origin", "allowed", "ok"), [
    ("https://app.example.com", ("*",), True),
    ("https://app.example.com", ("app.example.com",), True),
    ("https://app.example.com", ("*.example.com",), True),
    ("https://example.com", ("*.example.com",), True),
    ("https://evil-example.com", ("*.example.com",), False),
    ("https://app.example.com", ("http://app.example.com",), False),
    ("http://localhost:3000", ("localhost:3000",), True),
    ("http://localhost:3001", ("localhost:3000",), False),
    ("null", ("app.example.com",), False),
    ("https://app.example.com", (), False),
])
def test_origins_follow_sentrys_rules(origin: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, allowed) is ok


def test_the_key_of_an_envelope_dsn() -> None:
    assert dsn_key({"dsn": "https://" + "c" * 32 + "@o1.ingest.example/5"}) == "c" * 32
    assert dsn_key({"dsn": 5}) is None and dsn_key({}) is None


def test_quotas_and_categories() -> None:
    quotas = quotas_of({"quotas": [
        {"id": "k", "scope": "key", "scopeId": "7", "categories": ["default", "error", "security"], "limit": 5,
         "window": 60, "reasonCode": "key_quota"},
        {"id": "x", "scope": "project", "limit": None, "window": 60},  # no limit: nothing to count
        "junk"]})
    assert quotas == (Quota("k", "key", "7", 5, 60, ("default", "error", "security"), "key_quota"),)
    assert quotas[0].applies(envelope_categories(["event", "attachment"]))
    assert not quotas[0].applies(envelope_categories(["session", "client_report"]))
