"""Checking an envelope before it is stored: what `sentry_sdk`'s parser lets through.

`sentry_sdk.envelope.Envelope.deserialize` reads real envelopes (and checks that event and
transaction payloads are JSON), but it reads `length` bytes without checking they are
there, so a truncated envelope loses the end of an item silently, and it ignores whatever
follows a payload up to the next newline. `scan` walks the bytes as Relay does - item
headers are JSON objects, a payload of `length` bytes is followed by a newline or the end,
a payload without `length` runs to the next newline, blank lines between items are
skipped - and says exactly what is wrong, so the gateway can answer 400 naming it.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from sentry_sdk.envelope import Envelope

MAX_ITEMS = 10_000  # far beyond any SDK's or Relay's envelope; bounds the work per request
_HEX32 = re.compile(r"[0-9a-f]{32}")


class MalformedEnvelope(ValueError):
    """The envelope cannot be parsed; the message names what is wrong (for the 400 detail)."""


@dataclass
class ScannedEnvelope:
    header: dict[str, Any]
    item_types: list[str] = field(default_factory=list)
    event_id: str | None = None


def normalize_event_id(value: Any) -> str | None:
    """32 lowercase hex digits for an event id in any form `uuid` reads (with dashes, braces),
    None when it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    if _HEX32.fullmatch(value):
        return value
    try:
        return uuid.UUID(value).hex
    except ValueError:
        return None


def _json_object(line: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MalformedEnvelope(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedEnvelope(f"{what} is not a JSON object")
    return value


def scan(data: bytes, *, payloads: bool = True) -> ScannedEnvelope:
    """Check the structure of `data` (with `payloads`, also that event and transaction
    payloads are JSON objects); raises `MalformedEnvelope` naming the first problem."""
    if not data.strip():
        raise MalformedEnvelope("empty envelope")
    end = data.find(b"\n")
    end = len(data) if end < 0 else end
    header = _json_object(data[:end], "the envelope header")
    out = ScannedEnvelope(header)
    if "event_id" in header and header["event_id"] is not None:
        out.event_id = normalize_event_id(header["event_id"])
        if out.event_id is None:
            raise MalformedEnvelope("the envelope header's event_id is not a UUID")
    pos = end + 1
    size = len(data)
    while pos < size:
        if data[pos:pos + 1] in (b"\n", b"\r", b" ", b"\t"):  # whitespace between items, as Relay
            pos += 1
            continue
        number = len(out.item_types) + 1
        if number > MAX_ITEMS:
            raise MalformedEnvelope(f"more than {MAX_ITEMS} items")
        line_end = data.find(b"\n", pos)
        line_end = size if line_end < 0 else line_end
        item = _json_object(data[pos:line_end], f"the header of item {number}")
        kind = item.get("type")
        if not isinstance(kind, str) or not kind:
            raise MalformedEnvelope(f"item {number} has no type")
        length = item.get("length")
        start = line_end + 1
        if length is None:
            stop = data.find(b"\n", start) if start <= size else -1
            pos = (size if stop < 0 else stop) + 1
            if payloads and kind in ("event", "transaction"):
                _json_object(data[start:pos - 1], f"the payload of item {number} ({kind})")
        else:
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                raise MalformedEnvelope(f"item {number} ({kind}): length must be a non-negative integer")
            left = max(0, size - start)
            if length > left:
                raise MalformedEnvelope(f"item {number} ({kind}): length {length} exceeds the {left} bytes "
                                        "left in the envelope (truncated?)")
            after = start + length
            if after < size and data[after:after + 1] != b"\n":
                raise MalformedEnvelope(f"item {number} ({kind}): payload is longer than its length {length}")
            pos = after + 1
            if payloads and kind in ("event", "transaction"):
                _json_object(data[start:after], f"the payload of item {number} ({kind})")
        out.item_types.append(kind)
    if not out.item_types:
        raise MalformedEnvelope("the envelope has no items")
    return out


def check(data: bytes) -> ScannedEnvelope:
    """`scan`, then `sentry_sdk`'s parser over the same bytes (it also checks that event and
    transaction payloads are JSON): the envelope every consumer will read."""
    scanned = scan(data, payloads=False)  # sentry_sdk parses the event payloads: once is enough
    try:
        parsed = Envelope.deserialize(data)
    except Exception as exc:  # untrusted bytes: whatever sentry_sdk's parser raises, the envelope is refused
        scan(data)  # names the item whose payload is not JSON, if that is what failed
        raise MalformedEnvelope(f"the envelope cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}") from None
    for number, item in enumerate(parsed.items, 1):
        if item.headers.get("type") in ("event", "transaction") and not isinstance(item.payload.json, dict):
            raise MalformedEnvelope(f"item {number} ({item.headers.get('type')}): payload is not a JSON object")
    return scanned


def wrap_event(event: dict[str, Any], event_id: str) -> bytes:
    """A legacy store request's event as an envelope of one `event` item."""
    payload = json.dumps(event, separators=(",", ":")).encode()
    header = json.dumps({"event_id": event_id}).encode()
    item = json.dumps({"type": "event", "length": len(payload), "content_type": "application/json"}).encode()
    return header + b"\n" + item + b"\n" + payload + b"\n"
