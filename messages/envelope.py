"""The request envelope and reply format every NATS request uses, msgpack-encoded.

Request (a msgpack map):

    {"type": str, "v": int, "id": str (correlation id), "deadline": float (unix time),
     "actor": str (optional: who asks), "after": int (optional), "tp": str (optional),
     "payload": map}

`tp` is the W3C `traceparent` of the caller's span (messages/tracing.py): the actor that
serves the request logs under the same trace id. An invalid one is ignored.

`after` asks for a read served at or after that event stream sequence: a caller passes the
`sequence` of its last write's reply to read its own writes (messages/endpoints.py).

Reply: `{"ok": true, "result": any}` (a stored write adds `"sequence": int`, where the
event stream holds it) or `{"ok": false, "error": {"code", "message",
"details"}}`. An error reply also carries the NATS micro headers `Nats-Service-Error`
(the message) and `Nats-Service-Error-Code` (the HTTP-like status), so generic NATS tools
see the failure too.

Streamed replies (AI suggestions) are a series of `{"ok": true, "chunk": str}` messages
closed by `{"ok": true, "done": true, "result": any}` or an error reply.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack

from messages.errors import BadMessage, BadRequest, RelayctlError, from_wire

ENVELOPE_VERSION = 1
DEFAULT_TIMEOUT = 5.0
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"


@dataclass
class Request:
    type: str
    payload: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    deadline: float = field(default_factory=lambda: time.time() + DEFAULT_TIMEOUT)
    v: int = ENVELOPE_VERSION
    actor: str = ""  # who is asking (a user, "cli", a service name); recorded on events
    after: int = 0  # serve a read once the event stream is folded up to here (0: no such wish)
    traceparent: str = ""  # the caller's W3C trace context (messages/tracing.py), "" for none

    def remaining(self) -> float:
        return self.deadline - time.time()

    def encode(self) -> bytes:
        raw = {"type": self.type, "v": self.v, "id": self.id, "actor": self.actor,
               "deadline": self.deadline, "payload": self.payload}
        if self.after:
            raw["after"] = self.after
        if self.traceparent:
            raw["tp"] = self.traceparent
        return pack(raw)


def pack(value: Any) -> bytes:
    """msgpack bytes of `value`; BadRequest for a value msgpack cannot carry (an integer
    outside 64 bits, nesting too deep), so e.g. a CLI option value of 2**64 is an error
    message, not a traceback."""
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
        return packed
    except (OverflowError, ValueError) as exc:
        raise BadRequest(f"value cannot be encoded: {exc}") from None


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises a family of unrelated exception types
        raise BadMessage(f"not valid msgpack: {type(exc).__name__}") from None


def decode_request(data: bytes) -> Request:
    """Parse and check an envelope; raise BadMessage naming what is wrong."""
    raw = unpack(data)
    if not isinstance(raw, dict):
        raise BadMessage("envelope must be a msgpack map")
    problems = []
    kind, version, cid, deadline, payload = (raw.get(k) for k in ("type", "v", "id", "deadline", "payload"))
    if not isinstance(kind, str) or not kind:
        problems.append("type: required string")
    if not isinstance(version, int) or isinstance(version, bool):
        problems.append("v: required integer")
    elif version > ENVELOPE_VERSION:
        problems.append(f"v: unsupported envelope version {version}")
    if not isinstance(cid, str) or not cid:
        problems.append("id: required string")
    if not isinstance(deadline, (int, float)) or isinstance(deadline, bool):
        problems.append("deadline: required number")
    if not isinstance(payload, dict):
        problems.append("payload: required map")
    if problems:
        raise BadMessage("invalid envelope: " + "; ".join(problems))
    actor = raw.get("actor")
    after = raw.get("after")
    traceparent = raw.get("tp")
    # Every field was checked above; the asserts tell the type checker so.
    assert isinstance(kind, str) and isinstance(payload, dict) and isinstance(cid, str)
    assert isinstance(deadline, (int, float)) and isinstance(version, int)
    return Request(type=kind, payload=payload, id=cid, deadline=float(deadline), v=version,
                   actor=actor if isinstance(actor, str) else "",
                   after=after if isinstance(after, int) and not isinstance(after, bool) and after > 0 else 0,
                   traceparent=traceparent if isinstance(traceparent, str) and len(traceparent) <= 128 else "")


def encode_result(result: Any, sequence: int | None = None) -> bytes:
    if sequence:
        return pack({"ok": True, "result": result, "sequence": sequence})
    return pack({"ok": True, "result": result})


def encode_error(error: RelayctlError) -> tuple[bytes, dict[str, str]]:
    headers = {ERROR_HEADER: error.message[:512], ERROR_CODE_HEADER: str(error.status)}
    return pack({"ok": False, "error": error.to_wire()}), headers


def decode_reply(data: bytes) -> Any:
    """Return the result of a reply or raise the error it carries."""
    return decode_reply_sequence(data)[0]


def decode_reply_sequence(data: bytes) -> tuple[Any, int]:
    """The result of a reply and the stream sequence it names (0: none), or raise its error."""
    raw = unpack(data)
    if not isinstance(raw, dict) or "ok" not in raw:
        raise BadMessage("reply is not a relayctl reply map")
    if raw["ok"]:
        sequence = raw.get("sequence")
        return raw.get("result"), sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else 0
    raise from_wire(raw.get("error"))


def encode_chunk(text: str) -> bytes:
    return pack({"ok": True, "chunk": text})


def encode_done(result: Any = None) -> bytes:
    return pack({"ok": True, "done": True, "result": result})
