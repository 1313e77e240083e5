"""Fuzzing the wire format: whatever bytes or values arrive, the decoders and the payload
validator raise only the errors of `messages.errors` (a bad message is an error reply,
never a crash of the actor that reads it)."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from messages.commands import CONTROL, QUERIES
from messages.envelope import Request, decode_reply, decode_request, pack
from messages.errors import BadMessage, BadRequest, RelayctlError
from messages.events import EVENT_TYPES, DomainEvent, decode_commit
from messages.schema import validate

FUZZ = settings(max_examples=1500, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Every value msgpack can carry: scalars of every type and size, and nested lists and maps
# (map keys of any scalar type, not just strings).
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20) | st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(scalars.filter(lambda v: not isinstance(v, float)), inner, max_size=4),
                      max_leaves=20)
envelope_keys = st.sampled_from(["type", "v", "id", "deadline", "actor", "payload", "ok", "result", "error",
                                 "events", "code", "message", "details", "x"])


@st.composite
def near_valid_maps(draw: Any, keys: st.SearchStrategy[str]) -> bytes:
    """A msgpack map with the right keys (some of them) and values of any type."""
    return pack(draw(st.dictionaries(keys, values, max_size=7)))


def packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@st.composite
def commits(draw: Any) -> bytes:
    """A commit map whose events are near-valid: real types, fields of any type."""
    event = st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(sorted(EVENT_TYPES)) | values, "v": values, "id": values,
        "aggregate_id": values, "ts": values, "actor": values, "payload": values,
        "aggregate": values})
    return packed({"events": draw(st.lists(event | values, max_size=3))})


@FUZZ
@given(st.binary(max_size=200) | near_valid_maps(envelope_keys) | st.builds(packed, values))
@example(b"\xc1")
@example(packed({"type": "x", "v": 1, "id": "i", "deadline": float("inf"), "payload": {}}))
@example(packed({"type": "x", "v": 1, "id": "i", "deadline": float("nan"), "payload": {}}))
@example(packed({"type": "x", "v": 2**64 - 1, "id": "i", "deadline": 1, "payload": {}}))
def test_decode_request_raises_only_bad_message(data: bytes) -> None:
    """Any bytes decode to a Request or raise BadMessage."""
    try:
        request = decode_request(data)
    except BadMessage:
        return
    assert isinstance(request, Request) and isinstance(request.payload, dict)
    assert isinstance(request.type, str) and isinstance(request.deadline, float)


@FUZZ
@given(st.binary(max_size=200) | near_valid_maps(envelope_keys) | st.builds(packed, values))
@example(packed({"ok": False, "error": {"code": [], "message": {"a": 1}, "details": 7}}))
@example(packed({"ok": float("nan")}))
def test_decode_reply_raises_only_relayctl_errors(data: bytes) -> None:
    """Any bytes decode to a result or raise an error of the hierarchy (BadMessage when the
    bytes are no reply at all)."""
    try:
        decode_reply(data)
    except RelayctlError as exc:
        assert isinstance(exc.message, str) and isinstance(exc.details, dict)


@FUZZ
@given(st.binary(max_size=200) | commits() | st.builds(packed, values))
@example(packed({"events": [{"type": []}]}))
@example(packed({"events": [{"type": "KeyCreated", "v": float("inf"), "aggregate_id": "a", "id": "i", "ts": 1}]}))
@example(packed({"events": [{"type": "KeyCreated", "v": 1, "aggregate_id": "a", "id": "i", "ts": 1,
                             "payload": "ab"}]}))
@example(packed({"events": [{"type": "KeyCreated", "v": -(2**63), "aggregate_id": "a", "id": "i", "ts": 1}]}))
def test_decode_commit_raises_only_bad_message(data: bytes) -> None:
    """Any bytes decode to a list of DomainEvents or raise BadMessage."""
    try:
        events = decode_commit(data, 7)
    except BadMessage:
        return
    assert all(isinstance(e, DomainEvent) and isinstance(e.payload, dict) and e.sequence == 7 for e in events)


SCHEMAS = sorted({**CONTROL, **QUERIES}.items())


@FUZZ
@given(st.sampled_from(SCHEMAS).flatmap(lambda item: st.tuples(st.just(item), st.one_of(
    values, st.fixed_dictionaries({}, optional={name: values for name in item[1]}),
    st.dictionaries(st.sampled_from(sorted(item[1]) or ["x"]) | st.text(max_size=5), values, max_size=5)))))
def test_validate_raises_only_bad_request(case: tuple[tuple[str, Any], Any]) -> None:
    """Any payload validates into exactly the schema's fields or raises BadRequest naming them."""
    (_, schema), payload = case
    try:
        out = validate(schema, payload)
    except BadRequest as exc:
        assert exc.message.startswith(("invalid payload", "payload must be a map"))
        return
    assert set(out) == set(schema)
