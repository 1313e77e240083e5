"""The wire format: envelopes, replies, payload schemas, domain events and their versions."""

from __future__ import annotations

import time

import msgpack
import pytest

from messages.commands import CONTROL, QUERIES
from messages.envelope import (
    ENVELOPE_VERSION,
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    Request,
    decode_reply,
    decode_request,
    encode_error,
    encode_result,
    pack,
)
from messages.errors import BadMessage, BadRequest, Conflict, NotFound, RelayctlError, from_wire
from messages.events import (
    EVENT_TYPES,
    DomainEvent,
    aggregate_subject,
    decode_commit,
    encode_commit,
    event_subject,
    subject_token,
    upcast,
)
from messages.schema import validate

KEY = "0123456789abcdef0123456789abcdef"


def envelope(**overrides: object) -> bytes:
    raw = {"type": "org.create", "v": 1, "id": "c1", "deadline": time.time() + 5,
           "payload": {"slug": "acme"}}
    raw.update(overrides)
    return pack({k: v for k, v in raw.items() if v is not ...})


# -- envelope ---------------------------------------------------------------------------------

def test_request_round_trips_through_msgpack() -> None:
    """An encoded request decodes to the same type, version, id, deadline, actor and payload."""
    request = Request("project.option_set", {"org": "a", "value": [1, {"x": None}]}, actor="cli:me")
    decoded = decode_request(request.encode())
    assert decoded == request
    assert decoded.v == ENVELOPE_VERSION and decoded.remaining() > 0


def test_bytes_that_are_not_msgpack_are_a_bad_message() -> None:
    """Garbage bytes raise BadMessage, never a msgpack exception."""
    for data in (b"\xc1", b"\x92\x01", b"", b"\xdb\xff\xff\xff\xff"):
        with pytest.raises(BadMessage, match="not valid msgpack"):
            decode_request(data)


def test_an_envelope_that_is_not_a_map_is_a_bad_message() -> None:
    """A msgpack list or string is refused as an envelope."""
    for value in ([1, 2], "org.create", 7, None):
        with pytest.raises(BadMessage, match="envelope must be a msgpack map"):
            decode_request(pack(value))


@pytest.mark.parametrize("overrides, problem", [
    ({"type": ...}, "type: required string"),
    ({"type": ""}, "type: required string"),
    ({"v": "1"}, "v: required integer"),
    ({"v": True}, "v: required integer"),
    ({"v": ENVELOPE_VERSION + 1}, "unsupported envelope version"),
    ({"id": 5}, "id: required string"),
    ({"deadline": "soon"}, "deadline: required number"),
    ({"deadline": False}, "deadline: required number"),
    ({"payload": [1]}, "payload: required map"),
    ({"payload": ...}, "payload: required map"),
])
def test_each_wrong_envelope_field_is_named(overrides: dict[str, object], problem: str) -> None:
    """A wrong or missing envelope field is refused with a message naming it."""
    with pytest.raises(BadMessage, match=problem):
        decode_request(envelope(**overrides))


def test_every_envelope_problem_is_reported_at_once() -> None:
    """An envelope with several problems lists all of them."""
    with pytest.raises(BadMessage) as info:
        decode_request(pack({"v": "x", "payload": 3}))
    for name in ("type", "v", "id", "deadline", "payload"):
        assert f"{name}:" in info.value.message


def test_a_non_string_actor_is_ignored() -> None:
    """An actor field of the wrong type is dropped instead of refusing the request."""
    assert decode_request(envelope(actor=42)).actor == ""


# -- replies ----------------------------------------------------------------------------------

def test_a_result_reply_decodes_to_its_result() -> None:
    """`encode_result` and `decode_reply` round-trip any msgpack value."""
    assert decode_reply(encode_result({"id": 1, "keys": ["a"]})) == {"id": 1, "keys": ["a"]}
    assert decode_reply(encode_result(None)) is None


def test_an_error_reply_carries_micro_headers_and_rebuilds_the_exception() -> None:
    """An error reply sets Nats-Service-Error(-Code) and decodes to the same exception class."""
    data, headers = encode_error(NotFound("No organization matching `x`", {"slug": "x"}))
    assert headers == {ERROR_HEADER: "No organization matching `x`", ERROR_CODE_HEADER: "404"}
    with pytest.raises(NotFound) as info:
        decode_reply(data)
    assert info.value.message == "No organization matching `x`"
    assert info.value.details == {"slug": "x"}


def test_error_codes_map_to_classes_and_statuses() -> None:
    """Each wire code rebuilds its class; unknown codes and junk become the base class."""
    assert isinstance(from_wire({"code": "conflict", "message": "m"}), Conflict)
    assert isinstance(from_wire({"code": "bad_message", "message": "m"}), BadMessage)
    assert isinstance(from_wire({"code": "bad_message"}), BadRequest)
    assert type(from_wire({"code": "weird", "message": "m"})) is RelayctlError
    assert type(from_wire("not a map")) is RelayctlError
    assert BadMessage("x").status == 400 and Conflict("x").status == 409


def test_a_reply_that_is_not_a_reply_map_is_a_bad_message() -> None:
    """A reply without the `ok` flag is refused."""
    with pytest.raises(BadMessage):
        decode_reply(pack({"result": 1}))
    with pytest.raises(BadMessage):
        decode_reply(b"\xc1")


def test_long_error_messages_are_cut_in_the_header_only() -> None:
    """The header holds at most 512 characters; the reply body keeps the whole message."""
    data, headers = encode_error(BadRequest("x" * 2000))
    assert len(headers[ERROR_HEADER]) == 512
    with pytest.raises(BadRequest) as info:
        decode_reply(data)
    assert len(info.value.message) == 2000


# -- payload schemas --------------------------------------------------------------------------

def test_a_valid_payload_gets_defaults_for_missing_optional_fields() -> None:
    """Optional fields are filled with their defaults; the result holds exactly the schema's fields."""
    assert validate(CONTROL["relay.allow"], {"public_key": "a" * 43}) == {
        "public_key": "a" * 43, "internal": False}
    assert validate(CONTROL["org.create"], {"slug": "acme"}) == {"slug": "acme", "name": None, "owner": None}


def test_schema_errors_name_every_wrong_field() -> None:
    """Wrong types, failed checks, missing and unknown fields are all reported together."""
    with pytest.raises(BadRequest) as info:
        validate(CONTROL["project.option_set"], {"org": "Bad Slug", "project": 5, "extra": 1})
    fields = info.value.details["fields"]
    assert fields == {"org": "not a valid slug (lowercase letters, digits, - and _)",
                      "project": "expected string", "key": "required field", "value": "required field",
                      "extra": "unknown field"}
    assert info.value.message.startswith("invalid payload (")


def test_booleans_never_pass_as_integers() -> None:
    """`True` is refused where an integer is expected, and integers where a boolean is."""
    with pytest.raises(BadRequest, match="version: expected integer"):
        validate(QUERIES["config.get"], {"public_keys": [], "version": True})
    with pytest.raises(BadRequest, match="internal: expected boolean"):
        validate(CONTROL["relay.allow"], {"public_key": "a" * 43, "internal": 1})


def test_option_values_may_be_null_but_not_missing() -> None:
    """An option value of any type, null included, is accepted; leaving it out is not."""
    base = {"org": "a", "project": "b", "key": "sentry:origins"}
    assert validate(CONTROL["project.option_set"], {**base, "value": None})["value"] is None
    assert validate(CONTROL["project.option_set"], {**base, "value": {"x": [1]}})["value"] == {"x": [1]}
    with pytest.raises(BadRequest, match="value: required field"):
        validate(CONTROL["project.option_set"], base)


def test_a_payload_that_is_not_a_map_is_refused() -> None:
    """A list payload is a BadRequest, not a crash."""
    with pytest.raises(BadRequest, match="payload must be a map"):
        validate(CONTROL["org.create"], ["acme"])


# -- domain events ----------------------------------------------------------------------------

def test_events_get_their_current_version_and_aggregate() -> None:
    """A new event carries its type's current version and the aggregate the type belongs to."""
    event = DomainEvent("KeyCreated", "acme", {"project": "web", "public_key": KEY, "rate_limit": None})
    assert event.v == EVENT_TYPES["KeyCreated"][1] == 3
    assert event.aggregate == "org"
    assert event.to_map()["aggregate"] == "org"


def test_unknown_event_types_are_refused() -> None:
    """Making an event of an unknown type raises BadMessage."""
    with pytest.raises(BadMessage):
        DomainEvent("OrgRenamed", "acme", {})


def test_subjects_of_events_and_aggregates() -> None:
    """Events live under rc.ev.<aggregate>.<id>.<type>; an aggregate's scope is its `>` wildcard."""
    assert event_subject("org", "acme", "OrgCreated") == "rc.ev.org.acme.OrgCreated"
    assert aggregate_subject("org", "acme") == "rc.ev.org.acme.>"


def test_an_aggregate_id_is_always_one_subject_token() -> None:
    """Dots and wildcards in ids (usernames may hold dots) are escaped, one-to-one."""
    assert event_subject("user", "ann.smith", "UserCreated") == "rc.ev.user.ann%2Esmith.UserCreated"
    assert aggregate_subject("user", "ann.") == "rc.ev.user.ann%2E.>"
    ids = ["a.b", "a%2Eb", "a b", "a*", "a>", "a\u3000b", "a%20b", "ann@example.com+x"]
    tokens = [subject_token(i) for i in ids]
    assert len(set(tokens)) == len(ids)
    assert all("." not in t and " " not in t and "*" not in t and ">" not in t for t in tokens)
    assert subject_token("ann@example.com+x") == "ann@example%2Ecom+x"


def test_a_commit_round_trips_all_its_events() -> None:
    """`encode_commit`/`decode_commit` keep every field and stamp the stream sequence."""
    events = [DomainEvent("ProjectCreated", "acme", {"project": "web", "name": "Web", "template": None},
                          actor="cli:me"),
              DomainEvent("KeyCreated", "acme", {"project": "web", "public_key": KEY, "rate_limit": None})]
    decoded = decode_commit(encode_commit(events), sequence=17)
    assert [e.to_map() for e in decoded] == [e.to_map() for e in events]
    assert [e.sequence for e in decoded] == [17, 17]


def test_a_commit_holds_events_of_one_aggregate() -> None:
    """Empty commits and commits mixing aggregates are refused before they reach the store."""
    with pytest.raises(ValueError):
        encode_commit([])
    with pytest.raises(ValueError):
        encode_commit([DomainEvent("OrgCreated", "a", {}), DomainEvent("OrgCreated", "b", {})])
    with pytest.raises(ValueError):
        encode_commit([DomainEvent("OrgCreated", "a", {}), DomainEvent("UserCreated", "a", {})])


def test_key_created_v1_is_upcast_to_the_current_version_on_read() -> None:
    """A stored KeyCreated v1 (no rate limit, no stored id) reads as v3 with an explicit
    `rate_limit: None` and `numeric_id: None` (the fold then hands out a fold-order id)."""
    stored = {"id": "e1", "type": "KeyCreated", "v": 1, "aggregate": "org", "aggregate_id": "acme",
              "ts": 1.5, "actor": "old", "payload": {"project": "web", "public_key": KEY}}
    [event] = decode_commit(pack({"events": [stored]}), sequence=3)
    assert event.v == 3
    assert event.payload == {"project": "web", "public_key": KEY, "rate_limit": None, "numeric_id": None}
    assert (event.id, event.aggregate_id, event.ts, event.actor) == ("e1", "acme", 1.5, "old")


def test_upcasting_a_current_event_changes_nothing() -> None:
    """An event already at its current version is returned as it is."""
    payload = {"project": "web", "public_key": KEY, "rate_limit": {"window": 60, "count": 5}, "numeric_id": 7}
    assert upcast("KeyCreated", 3, payload) == (3, payload)


def test_a_version_without_an_upcaster_is_a_bad_message() -> None:
    """An old version nobody can upcast is refused rather than folded wrong."""
    with pytest.raises(BadMessage, match="no upcaster"):
        upcast("OrgCreated", 0, {})


@pytest.mark.parametrize("data", [
    b"\xc1",
    pack([1, 2]),
    pack({"events": "x"}),
    pack({"events": [{"type": "Nope"}]}),
    pack({"events": [{"type": "OrgCreated"}]}),
    pack({"events": [{"type": "OrgCreated", "id": "e", "aggregate_id": "a", "ts": "x"}]}),
    pack({"events": [{"type": "OrgCreated", "id": "e", "aggregate_id": "a", "ts": 1, "payload": [1]}]}),
    pack({"events": [{"type": "OrgCreated", "id": "e", "aggregate_id": "a", "ts": 1, "v": "one"}]}),
])
def test_malformed_commits_are_a_bad_message(data: bytes) -> None:
    """A commit that is not msgpack, not a map, or holds a malformed event raises BadMessage."""
    with pytest.raises(BadMessage):
        decode_commit(data)


def test_unknown_map_keys_survive_msgpack() -> None:
    """Integer map keys (as msgpack allows) decode instead of failing strict key checks."""
    raw = msgpack.packb({"type": "keys.lookup", "v": 1, "id": "c", "deadline": time.time() + 5,
                         "payload": {"public_keys": [], 1: "x"}})
    request = decode_request(raw)
    with pytest.raises(BadRequest, match="1: unknown field"):
        validate(QUERIES["keys.lookup"], request.payload)
