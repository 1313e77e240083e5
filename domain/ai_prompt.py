"""Prompt building for AI fix suggestions: from a Sentry error event to chat messages.

Pure functions, no I/O, so the prompt can be dumped (`relayctl openai --dump-prompt`),
tested and cached without a model:

- `validate_error_event` checks the shape of an incoming event and gives it an id;
- `describe_event_for_ai` turns it into the compact JSON description the model reads;
- `trim_frames` keeps a stack trace within the model's attention budget;
- `build_messages` wraps a description into chat-completion messages;
- `grouping_hash` says which events share one cached suggestion.

The rules follow BEHAVIOUR.md, "AI suggested fix".
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

from messages.errors import BadRequest

__all__ = [
    "DEFAULT_FINGERPRINT",
    "MAX_EXCEPTIONS",
    "MAX_STACKTRACE_FRAMES",
    "SYSTEM_PROMPT",
    "InvalidEvent",
    "build_messages",
    "describe_event_for_ai",
    "grouping_hash",
    "trim_frames",
    "validate_error_event",
]

# The model sees at most this many chained exceptions and frames per exception; beyond
# that the prompt grows without helping the answer.
MAX_EXCEPTIONS = 3
MAX_STACKTRACE_FRAMES = 15

# A fingerprint entry that stands for "group the way Sentry would by default".
DEFAULT_FINGERPRINT = "{{ default }}"

SYSTEM_PROMPT = """\
You are an experienced software engineer helping a developer fix an error reported by \
Sentry. You receive a JSON description of the error: the language, the message, and up \
to three exceptions, each with its type, message and stack frames (most recent first; \
the frame marked "crash": "here" is where it was raised, and frames marked "in_app" are \
the developer's own code).

Answer in Markdown with exactly these three parts:

1. **Problem description**: in a few sentences, what went wrong and why, pointing at the \
responsible line of the developer's code.
2. **Proposed solution**: how to fix it, with a short code example that shows the \
corrected code in the same language.
3. **Closing**: one or two sentences on how to avoid this kind of error in the future.

Be concise and concrete. If the description does not contain enough information to be \
sure, say what you assume.\
"""


class InvalidEvent(BadRequest):
    """An event that is not a well-formed Sentry error event; `reason` says what is wrong.
    A domain error is a wire error: `bad_request` with the reason in its details."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid event: {reason}", {"reason": reason})
        self.reason = reason


# --- validation ---------------------------------------------------------------------------

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


def validate_error_event(event: Any) -> dict[str, Any]:
    """Check that `event` has the shape of a Sentry error event and return it with an id.

    Returns a shallow copy (the input is never mutated) whose `event_id` is 32 lowercase
    hex digits: the given one (a dashed UUID is accepted and normalised) or a fresh
    `uuid4().hex`. Null exception values and null frames are allowed, as Sentry SDKs
    send them; `describe_event_for_ai` skips them. Raises `InvalidEvent` otherwise.
    """
    if not isinstance(event, dict):
        raise InvalidEvent(f"an event must be a JSON object, not {_json_type(event)}")
    checked = dict(event)

    event_id = event.get("event_id")
    if event_id is None:
        checked["event_id"] = uuid.uuid4().hex
    else:
        if not isinstance(event_id, str):
            raise InvalidEvent(f"event_id must be a string, not {_json_type(event_id)}")
        compact = event_id.replace("-", "") if len(event_id) == 36 else event_id
        if not _HEX32.match(compact):
            raise InvalidEvent(f"event_id must be 32 hex digits, got {event_id!r}")
        checked["event_id"] = compact.lower()

    _expect_optional(event, "platform", str, "platform")
    _expect_optional(event, "logentry", (dict, str), "logentry")
    _expect_optional(event, "message", (dict, str), "message")

    fingerprint = event.get("fingerprint")
    if fingerprint is not None and not (
        isinstance(fingerprint, list) and all(isinstance(part, str) for part in fingerprint)
    ):
        raise InvalidEvent("fingerprint must be a list of strings")

    exception = event.get("exception")
    if exception is not None:
        if not isinstance(exception, dict):
            raise InvalidEvent(f"exception must be an object, not {_json_type(exception)}")
        values = exception.get("values")
        if values is not None:
            if not isinstance(values, list):
                raise InvalidEvent(f"exception.values must be a list, not {_json_type(values)}")
            for index, value in enumerate(values):
                _validate_exception(value, f"exception.values[{index}]")
    return checked


def _validate_exception(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise InvalidEvent(f"{where} must be an object, not {_json_type(value)}")
    _expect_optional(value, "type", str, f"{where}.type")
    _expect_optional(value, "mechanism", dict, f"{where}.mechanism")
    stacktrace = value.get("stacktrace")
    if stacktrace is None:
        return
    if not isinstance(stacktrace, dict):
        raise InvalidEvent(f"{where}.stacktrace must be an object, not {_json_type(stacktrace)}")
    frames = stacktrace.get("frames")
    if frames is None:
        return
    if not isinstance(frames, list):
        raise InvalidEvent(f"{where}.stacktrace.frames must be a list, not {_json_type(frames)}")
    for index, frame in enumerate(frames):
        if frame is not None and not isinstance(frame, dict):
            raise InvalidEvent(
                f"{where}.stacktrace.frames[{index}] must be an object, not {_json_type(frame)}"
            )


def _expect_optional(
    obj: dict[str, Any], key: str, types: type | tuple[type, ...], where: str
) -> None:
    value = obj.get(key)
    if value is not None and not isinstance(value, types):
        raise InvalidEvent(f"{where} has the wrong type: {_json_type(value)}")


def _json_type(value: Any) -> str:
    """Name a value's type the way a JSON author thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- description --------------------------------------------------------------------------


def describe_event_for_ai(event: dict[str, Any], model: str) -> dict[str, Any]:
    """Build the JSON description of `event` that the model `model` is given.

    Keys: `message` (when the event has one), `language` (the platform unless missing or
    "other") and `exceptions` (always; the first `MAX_EXCEPTIONS` values, reversed).
    Models whose name starts with "gpt-4" get the code context of every frame; others
    only that of the crash frame of the first exception, and a one-line `code` elsewhere.
    """
    detailed = model.startswith("gpt-4")
    data: dict[str, Any] = {}

    message = _event_message(event)
    if message:
        data["message"] = message

    platform = event.get("platform")
    if platform and platform != "other":
        data["language"] = platform

    exceptions: list[dict[str, Any]] = data.setdefault("exceptions", [])
    values = (event.get("exception") or {}).get("values") or []
    present = [value for value in reversed(values[:MAX_EXCEPTIONS]) if value is not None]
    for index, value in enumerate(present):
        exceptions.append(_describe_exception(value, index, detailed))
    return data


def _event_message(event: dict[str, Any]) -> str | None:
    """The event's human-readable message: `logentry` first, then `message`.

    Either may be a plain string or an object with `formatted` (the message with its
    parameters filled in, what a reader wants) or `message` (the template).
    """
    for key in ("logentry", "message"):
        value = event.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            text = value.get("formatted") or value.get("message")
            if isinstance(text, str) and text:
                return text
    return None


def _describe_exception(value: dict[str, Any], index: int, detailed: bool) -> dict[str, Any]:
    exception: dict[str, Any] = {"num": index + 1}
    if index > 0:
        exception["raised_during_handling_of_previous_exception"] = True
    if value.get("type"):
        exception["type"] = value["type"]
    exception["message"] = value.get("value")
    mechanism = value.get("mechanism") or {}
    if mechanism.get("handled") is False:
        exception["unhandled"] = True
    if mechanism.get("meta"):
        exception["exception_info"] = mechanism["meta"]

    frames = (value.get("stacktrace") or {}).get("frames") or []
    # Only the first exception's crash frame gets its context for free: it is where the
    # error surfaced, the one line the model most needs to see.
    full_context_on_crash = index == 0
    stacktrace: list[dict[str, Any]] = []
    for frame in reversed(frames):  # Sentry lists frames oldest first; walk newest first
        if frame is None:
            continue
        crash = not stacktrace
        full_context = detailed or (crash and full_context_on_crash)
        stacktrace.append(_describe_frame(frame, crash=crash, full_context=full_context))
    if stacktrace:
        exception["stacktrace"] = trim_frames(stacktrace)
    return exception


def _describe_frame(frame: dict[str, Any], *, crash: bool, full_context: bool) -> dict[str, Any]:
    described: dict[str, Any] = {}
    for source, target in (
        ("function", "func"),
        ("module", "module"),
        ("filename", "file"),
        ("lineno", "line"),
    ):
        if frame.get(source) is not None:
            described[target] = frame[source]
    if frame.get("in_app"):
        described["in_app"] = True
    if crash:
        described["crash"] = "here"

    line = frame.get("context_line")
    if full_context:
        if frame.get("pre_context"):
            described["code_before"] = frame["pre_context"]
        if line is not None:
            described["code"] = line
        if frame.get("post_context"):
            described["code_after"] = frame["post_context"]
    # `{snip}` marks a line Sentry cut out of minified code: noise to the model.
    elif isinstance(line, str) and "{snip}" not in line:
        described["code"] = line.strip()
    return described


def trim_frames(
    frames: list[dict[str, Any]], allowance: int = MAX_STACKTRACE_FRAMES
) -> list[dict[str, Any]]:
    """Cut `frames` to at most `allowance`, dropping from the middle, system frames first.

    At or under the allowance the list is returned as is. Otherwise system frames (not
    `in_app`) are dropped from the middle, keeping `half = (allowance - app_count) // 2`
    of them from each end; if the app frames alone reach the allowance, every system
    frame goes, and if they still exceed it app frames are dropped from the middle the
    same way, keeping `allowance // 2` from each end. Kept frames keep their order; the input is not
    modified. With an odd budget one slot stays unused (20 system frames -> 7 + 7).
    """
    if len(frames) <= allowance:
        return frames

    app = [index for index, frame in enumerate(frames) if frame.get("in_app")]
    system = [index for index, frame in enumerate(frames) if not frame.get("in_app")]
    system_allowance = max(allowance - len(app), 0)
    if system_allowance:
        keep = set(app) | _ends(system, system_allowance // 2)
    elif len(app) <= allowance:
        keep = set(app)  # dropping the system frames was enough
    else:
        keep = _ends(app, allowance // 2)
    return [frame for index, frame in enumerate(frames) if index in keep]


def _ends(indices: list[int], half: int) -> set[int]:
    """The first and last `half` of `indices` (written out because `x[-0:]` is all of x)."""
    if half <= 0:
        return set()
    return set(indices[:half]) | set(indices[-half:])


def build_messages(description: dict[str, Any]) -> list[dict[str, str]]:
    """Chat-completion messages asking for a fix: the system prompt, then the description."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": json.dumps(description, ensure_ascii=False)},
    ]


# --- grouping -----------------------------------------------------------------------------


def grouping_hash(event: dict[str, Any]) -> str:
    """A stable 32-hex-digit hash that events of one group share (the suggestion cache key).

    The hash covers the first rule that yields anything:

    1. the event's `fingerprint`, unless it is only `["{{ default }}"]`; a
       `"{{ default }}"` entry inside a longer fingerprint stands for rule 2's components;
    2. the exception types of every exception value, plus the module and function of the
       in-app frames of the top (last, most recent) exception, or of all its frames if
       none is in app. Line numbers and exception messages are left out on purpose: they
       change between releases and with the data, while the group stays the same;
    3. the message (the `logentry` template, which leaves parameters out, before the
       formatted text);
    4. the event id, so that events carrying nothing to group by never share an answer.

    Each rule's components are tagged with the rule's name, so a fingerprint can never
    collide with an exception of the same text.
    """
    fingerprint = event.get("fingerprint")
    if isinstance(fingerprint, list) and fingerprint and not _is_default(fingerprint):
        components: list[Any] = ["fingerprint"]
        for part in fingerprint:
            if _is_default([part]):
                components.append(_default_components(event))
            else:
                components.append(str(part))
        return _hash(components)
    return _hash(_default_components(event))


def _is_default(fingerprint: list[Any]) -> bool:
    return len(fingerprint) == 1 and str(fingerprint[0]).replace(" ", "") == "{{default}}"


def _default_components(event: dict[str, Any]) -> list[Any]:
    values = [
        value
        for value in (event.get("exception") or {}).get("values") or []
        if isinstance(value, dict)
    ]
    if values:
        types = [str(value.get("type") or "") for value in values]
        frames = [
            frame
            for frame in ((values[-1].get("stacktrace") or {}).get("frames") or [])
            if isinstance(frame, dict)
        ]
        in_app = [frame for frame in frames if frame.get("in_app")] or frames
        frame_keys = [[frame.get("module") or "", frame.get("function") or ""] for frame in in_app]
        if any(types) or frame_keys:
            return ["exception", types, frame_keys]

    message = _grouping_message(event)
    if message:
        return ["message", message]
    return ["event_id", str(event.get("event_id") or "")]


def _grouping_message(event: dict[str, Any]) -> str | None:
    for key in ("logentry", "message"):
        value = event.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            text = value.get("message") or value.get("formatted")
            if isinstance(text, str) and text:
                return text
    return None


def _hash(components: list[Any]) -> str:
    canonical = json.dumps(components, separators=(",", ":"), ensure_ascii=False)
    # md5 for the 32-hex-digit shape of Sentry's own grouping hashes, not for security.
    return hashlib.md5(canonical.encode("utf-8"), usedforsecurity=False).hexdigest()
