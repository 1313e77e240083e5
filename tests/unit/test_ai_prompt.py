"""Prompt building for AI fix suggestions: validation, description, trimming, grouping."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from domain.ai_prompt import (
    SYSTEM_PROMPT,
    InvalidEvent,
    build_messages,
    describe_event_for_ai,
    grouping_hash,
    trim_frames,
    validate_error_event,
)
from messages.errors import BadRequest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE_NAMES = [
    "event-python-chained.json",
    "event-javascript-minified.json",
    "event-deep-stack.json",
]


def load_fixture(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return event


def frames_of(*kinds: str) -> list[dict[str, Any]]:
    """Frames named by position, e.g. frames_of("a", "s") -> [app 0, system 1]."""
    frames: list[dict[str, Any]] = []
    for index, kind in enumerate(kinds):
        frame: dict[str, Any] = {"func": f"f{index}"}
        if kind == "a":
            frame["in_app"] = True
        frames.append(frame)
    return frames


def names(frames: list[dict[str, Any]]) -> list[str]:
    return [frame["func"] for frame in frames]


def raw_frame(function: str, *, in_app: bool = True, line: str = "x = 1") -> dict[str, Any]:
    return {
        "function": function,
        "module": f"app.{function}",
        "filename": f"app/{function}.py",
        "lineno": 10,
        "in_app": in_app,
        "context_line": f"    {line}",
        "pre_context": ["def f():"],
        "post_context": ["    return x"],
    }


def error_event(*exceptions: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"platform": "python", "exception": {"values": list(exceptions)}, **extra}


def exception(type_: str, *frames: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "value": f"{type_} happened",
        "stacktrace": {"frames": list(frames)},
        **extra,
    }


# --- trim_frames --------------------------------------------------------------------------


def test_trim_keeps_first_and_last_seven_of_twenty_system_frames() -> None:
    """Twenty system frames are cut to the first 7 and the last 7."""
    frames = frames_of(*"s" * 20)
    assert names(trim_frames(frames)) == names(frames[:7] + frames[-7:])


def test_trim_keeps_all_app_frames_and_two_system_frames_from_each_end() -> None:
    """Ten app and ten system frames keep every app frame and system frames 2 from each end."""
    frames = frames_of(*("a" * 10 + "s" * 10))
    system = frames[10:]
    assert names(trim_frames(frames)) == names(frames[:10] + system[:2] + system[-2:])


def test_trim_keeps_order_when_app_and_system_frames_interleave() -> None:
    """Kept frames stay in their original order, whatever their kind."""
    frames = frames_of(*("as" * 10))
    kept = trim_frames(frames)
    assert names(kept) == sorted(names(kept), key=lambda name: int(name[1:]))
    assert sum(1 for frame in kept if frame.get("in_app")) == 10
    assert len(kept) == 14


def test_trim_drops_one_middle_system_frame_of_one_app_and_fifteen_system() -> None:
    """One app frame and fifteen system frames lose exactly the middle system frame."""
    frames = frames_of(*("a" + "s" * 15))
    kept = trim_frames(frames)
    assert len(kept) == 15
    assert [frame for frame in frames if frame not in kept] == [frames[8]]


def test_trim_keeps_first_and_last_seven_of_sixteen_app_frames() -> None:
    """Sixteen app frames are cut to the first 7 and the last 7."""
    frames = frames_of(*"a" * 16)
    assert names(trim_frames(frames)) == names(frames[:7] + frames[-7:])


def test_trim_drops_every_system_frame_when_app_frames_fill_the_allowance() -> None:
    """With more app frames than the allowance, system frames all go before any app frame."""
    frames = frames_of(*("s" + "a" * 15 + "s"))
    assert names(trim_frames(frames)) == names(frames[1:16])
    frames = frames_of(*("s" + "a" * 16))
    assert names(trim_frames(frames)) == names(frames[1:8] + frames[-7:])


def test_trim_with_one_system_slot_drops_every_system_frame() -> None:
    """A system budget of one rounds to zero per end, so only the app frames remain."""
    frames = frames_of(*("a" * 14 + "s" * 10))
    assert names(trim_frames(frames)) == names(frames[:14])


def test_trim_leaves_fifteen_app_frames_unchanged() -> None:
    """A list at the allowance is returned as is."""
    frames = frames_of(*"a" * 15)
    assert trim_frames(frames) is frames


def test_trim_honours_a_custom_allowance_and_does_not_mutate_input() -> None:
    """The allowance is a parameter and the input list and frames are left untouched."""
    frames = frames_of(*"s" * 10)
    before = copy.deepcopy(frames)
    assert names(trim_frames(frames, allowance=4)) == ["f0", "f1", "f8", "f9"]
    assert frames == before


# --- describe_event_for_ai ----------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_fixture_is_valid_and_describes_to_json(name: str) -> None:
    """Each shared fixture validates, keeps its id, and describes to JSON-serialisable data."""
    event = load_fixture(name)
    checked = validate_error_event(event)
    assert checked["event_id"] == event["event_id"]
    for model in ("gpt-3.5-turbo", "gpt-4"):
        description = describe_event_for_ai(checked, model)
        json.dumps(description)
        assert description["language"] == event["platform"]
        assert description["exceptions"]
        for exc in description["exceptions"]:
            assert len(exc["stacktrace"]) <= 15
            assert exc["stacktrace"][0]["crash"] == "here"
            assert all("crash" not in frame for frame in exc["stacktrace"][1:])


def test_python_chained_fixture_is_described_as_specified() -> None:
    """The chained Python event reverses its exceptions, marks the unhandled one, skips null frames."""
    description = describe_event_for_ai(load_fixture("event-python-chained.json"), "gpt-3.5-turbo")
    assert description["message"] == "Failed to compute invoice total"
    assert description["language"] == "python"
    first, second = description["exceptions"]
    assert first == {
        "num": 1,
        "type": "ZeroDivisionError",
        "message": "division by zero",
        "unhandled": True,
        "exception_info": {"signal": {"number": 0}},
        "stacktrace": [
            {
                "func": "divide",
                "module": "app.mod5",
                "file": "app/mod5.py",
                "line": 15,
                "in_app": True,
                "crash": "here",
                "code_before": ["def func_5(value):", "    # compute"],
                "code": "    result = step_5(value)",
                "code_after": ["    return result"],
            },
            {
                "func": "compute_total",
                "module": "app.mod4",
                "file": "app/mod4.py",
                "line": 14,
                "in_app": True,
                "code": "result = step_4(value)",
            },
            {
                "func": "handle_request",
                "module": "lib.mod3",
                "file": "site-packages/lib/mod3.py",
                "line": 13,
                "code": "result = step_3(value)",
            },
        ],
    }
    assert second["num"] == 2
    assert second["raised_during_handling_of_previous_exception"] is True
    assert second["type"] == "KeyError"
    assert "unhandled" not in second
    # The second exception's crash frame is marked but gets no full context.
    assert second["stacktrace"][0] == {
        "func": "get_rate",
        "module": "app.mod2",
        "file": "app/mod2.py",
        "line": 12,
        "in_app": True,
        "crash": "here",
        "code": "result = step_2(value)",
    }


def test_javascript_minified_fixture_gives_snipped_frames_no_code() -> None:
    """A minified `{snip}` line is left out, while the readable crash frame keeps its context."""
    description = describe_event_for_ai(
        load_fixture("event-javascript-minified.json"), "gpt-3.5-turbo"
    )
    assert "message" not in description
    assert description["language"] == "javascript"
    (exc,) = description["exceptions"]
    assert exc["unhandled"] is True
    crash, minified = exc["stacktrace"]
    assert crash["func"] == "renderList"
    assert crash["code"] == "  const ids = props.items.map(item => item.id);"
    assert crash["code_before"] == ["function renderList(props) {"]
    assert minified["func"] == "n"
    assert "code" not in minified and "code_before" not in minified


def test_deep_stack_fixture_is_trimmed_to_the_allowance() -> None:
    """The deep Python stack is cut from the middle and keeps its message string."""
    event = load_fixture("event-deep-stack.json")
    description = describe_event_for_ai(event, "gpt-3.5-turbo")
    assert description["message"] == "Deep recursion in tree walker"
    (exc,) = description["exceptions"]
    raw_frames = [f for f in event["exception"]["values"][0]["stacktrace"]["frames"] if f]
    assert len(raw_frames) > 15
    assert len(exc["stacktrace"]) <= 15
    assert exc["stacktrace"][0]["func"] == raw_frames[-1]["function"]
    # Every app frame survives trimming when there are fewer than the allowance.
    app_count = sum(1 for frame in raw_frames if frame.get("in_app"))
    if app_count < 15:
        assert sum(1 for frame in exc["stacktrace"] if frame.get("in_app")) == app_count


def test_gpt4_gets_full_context_on_every_frame() -> None:
    """A gpt-4 model sees code before, at and after every frame, of every exception."""
    event = error_event(
        exception("KeyError", raw_frame("a"), raw_frame("b", in_app=False)),
        exception("ValueError", raw_frame("c"), raw_frame("d")),
    )
    description = describe_event_for_ai(event, "gpt-4o")
    frames = [frame for exc in description["exceptions"] for frame in exc["stacktrace"]]
    assert len(frames) == 4
    for frame in frames:
        assert frame["code_before"] == ["def f():"]
        assert frame["code"] == "    x = 1"
        assert frame["code_after"] == ["    return x"]


def test_other_models_get_full_context_only_on_the_crash_frame() -> None:
    """Other models see full context only at the first exception's crash, a stripped line elsewhere."""
    event = error_event(
        exception("KeyError", raw_frame("a"), raw_frame("b")),
        exception("ValueError", raw_frame("c"), raw_frame("d")),
    )
    description = describe_event_for_ai(event, "gpt-3.5-turbo")
    first, second = description["exceptions"]
    crash, other = first["stacktrace"]
    assert crash["func"] == "d" and "code_before" in crash and "code_after" in crash
    assert crash["code"] == "    x = 1"
    for frame in [other, *second["stacktrace"]]:
        assert "code_before" not in frame and "code_after" not in frame
        assert frame["code"] == "x = 1"


def test_snipped_lines_get_no_code_but_plain_lines_do() -> None:
    """A context line containing `{snip}` gives no `code` on a non-crash frame."""
    event = error_event(
        exception("E", raw_frame("old", line="{snip} a.b(c) {snip}"), raw_frame("new"))
    )
    crash, snipped = describe_event_for_ai(event, "gpt-3.5-turbo")["exceptions"][0]["stacktrace"]
    assert "code" not in snipped
    assert crash["code"] == "    x = 1"


def test_null_frames_are_skipped_and_the_first_real_frame_is_the_crash() -> None:
    """Null frames are skipped, also at the newest end, so the crash is the newest real frame."""
    event = error_event(exception("E", raw_frame("old"), None, raw_frame("new"), None))
    frames = describe_event_for_ai(event, "gpt-3.5-turbo")["exceptions"][0]["stacktrace"]
    assert [frame["func"] for frame in frames] == ["new", "old"]
    assert frames[0]["crash"] == "here"


def test_only_the_first_three_exceptions_are_used_reversed() -> None:
    """Of five exception values the first three are described, newest of them first."""
    event = error_event(*(exception(f"E{index}") for index in range(5)))
    exceptions = describe_event_for_ai(event, "gpt-4")["exceptions"]
    assert [exc["type"] for exc in exceptions] == ["E2", "E1", "E0"]
    assert [exc["num"] for exc in exceptions] == [1, 2, 3]
    assert "raised_during_handling_of_previous_exception" not in exceptions[0]
    assert all(exc["raised_during_handling_of_previous_exception"] for exc in exceptions[1:])


def test_unhandled_only_when_mechanism_says_handled_false() -> None:
    """`unhandled` is set for `handled: false` only, not for true or a missing flag."""
    event = error_event(
        exception("A", mechanism={"handled": True}),
        exception("B", mechanism={"type": "generic"}),
        exception("C", mechanism={"handled": False, "meta": {"errno": {"number": 2}}}),
    )
    by_type = {exc["type"]: exc for exc in describe_event_for_ai(event, "gpt-4")["exceptions"]}
    assert "unhandled" not in by_type["A"] and "unhandled" not in by_type["B"]
    assert by_type["C"]["unhandled"] is True
    assert by_type["C"]["exception_info"] == {"errno": {"number": 2}}


def test_exception_without_type_or_frames_keeps_only_num_and_message() -> None:
    """A bare exception value yields just its number and message, no type or stacktrace."""
    event = {"exception": {"values": [{"value": "boom"}]}}
    assert describe_event_for_ai(event, "gpt-4")["exceptions"] == [{"num": 1, "message": "boom"}]


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("python", "python"), ("javascript", "javascript"), ("other", None), (None, None)],
)
def test_language_comes_from_platform_unless_missing_or_other(
    platform: str | None, expected: str | None
) -> None:
    """`language` is the platform, left out when the platform is missing or "other"."""
    event: dict[str, Any] = {"message": "hi"}
    if platform is not None:
        event["platform"] = platform
    assert describe_event_for_ai(event, "gpt-4").get("language") == expected


def test_an_event_without_exceptions_still_has_an_empty_exception_list() -> None:
    """`exceptions` is always present, even for a plain message event."""
    description = describe_event_for_ai({"logentry": {"message": "disk %s full"}}, "gpt-4")
    assert description == {"message": "disk %s full", "exceptions": []}


def test_logentry_wins_over_message() -> None:
    """The logentry's formatted text is preferred to the `message` field."""
    event = {"logentry": {"formatted": "from logentry"}, "message": "from message"}
    assert describe_event_for_ai(event, "gpt-4")["message"] == "from logentry"


def test_build_messages_holds_the_system_prompt_and_the_json_description() -> None:
    """The chat messages are the system prompt, then the description as JSON."""
    description = describe_event_for_ai(error_event(exception("E", raw_frame("a"))), "gpt-4")
    system, user = build_messages(description)
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert user["role"] == "user"
    assert json.loads(user["content"]) == description
    for part in ("Problem description", "Proposed solution", "Closing"):
        assert part in SYSTEM_PROMPT


# --- validate_error_event -----------------------------------------------------------------


def test_validation_generates_an_event_id_without_mutating_the_event() -> None:
    """An event without an id gets a fresh 32-hex-digit one in a copy."""
    event: dict[str, Any] = {"platform": "python"}
    checked = validate_error_event(event)
    assert len(checked["event_id"]) == 32 and int(checked["event_id"], 16) >= 0
    assert "event_id" not in event
    assert validate_error_event({})["event_id"] != validate_error_event({})["event_id"]


def test_validation_normalises_a_dashed_uppercase_uuid() -> None:
    """A dashed or uppercase UUID is accepted and stored as 32 lowercase hex digits."""
    checked = validate_error_event({"event_id": "9F1E1C2D-3B4A-4F5E-8D7C-6B5A49382716"})
    assert checked["event_id"] == "9f1e1c2d3b4a4f5e8d7c6b5a49382716"


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ([], "JSON object"),
        ("x", "JSON object"),
        ({"event_id": "nothex"}, "event_id"),
        ({"event_id": 12}, "event_id"),
        ({"platform": 3}, "platform"),
        ({"exception": []}, "exception must be an object"),
        ({"exception": {"values": {}}}, "exception.values must be a list"),
        ({"exception": {"values": ["x"]}}, "exception.values[0]"),
        ({"exception": {"values": [{"stacktrace": []}]}}, "exception.values[0].stacktrace"),
        (
            {"exception": {"values": [{"stacktrace": {"frames": {}}}]}},
            "exception.values[0].stacktrace.frames must be a list",
        ),
        (
            {"exception": {"values": [None, {"stacktrace": {"frames": [None, 3]}}]}},
            "exception.values[1].stacktrace.frames[1]",
        ),
        ({"fingerprint": "abc"}, "fingerprint"),
    ],
)
def test_validation_rejects_malformed_events_with_a_reason(event: Any, reason: str) -> None:
    """Malformed events raise InvalidEvent (a wire error: bad_request) naming what is wrong."""
    with pytest.raises(InvalidEvent) as caught:
        validate_error_event(event)
    assert reason in caught.value.reason
    assert isinstance(caught.value, BadRequest) and caught.value.details["reason"] == caught.value.reason


def test_validation_accepts_null_exception_values_and_frames() -> None:
    """Null exception values and null frames, as SDKs send them, are valid."""
    event = {"exception": {"values": [None, {"stacktrace": {"frames": [None]}}]}}
    assert validate_error_event(event)["exception"] == event["exception"]
    assert describe_event_for_ai(validate_error_event(event), "gpt-4")["exceptions"] == [
        {"num": 1, "message": None}
    ]


# --- grouping_hash ------------------------------------------------------------------------


def test_grouping_hash_is_equal_for_events_of_one_group() -> None:
    """Events differing only in id, message value and line numbers share a hash."""
    first = error_event(exception("KeyError", raw_frame("a"), raw_frame("b")), event_id="1" * 32)
    second = copy.deepcopy(first)
    second["event_id"] = "2" * 32
    second["exception"]["values"][0]["value"] = "'other key'"
    for frame in second["exception"]["values"][0]["stacktrace"]["frames"]:
        frame["lineno"] += 7
        frame["context_line"] = "changed"
    assert grouping_hash(first) == grouping_hash(second)
    assert len(grouping_hash(first)) == 32


def test_grouping_hash_ignores_system_frames_when_app_frames_exist() -> None:
    """A different library frame does not split a group that has app frames."""
    first = error_event(exception("E", raw_frame("lib1", in_app=False), raw_frame("a")))
    second = error_event(exception("E", raw_frame("lib2", in_app=False), raw_frame("a")))
    assert grouping_hash(first) == grouping_hash(second)


def test_grouping_hash_differs_across_groups() -> None:
    """A different exception type, app frame or message gives a different hash."""
    base = error_event(exception("KeyError", raw_frame("a")))
    hashes = {
        grouping_hash(base),
        grouping_hash(error_event(exception("ValueError", raw_frame("a")))),
        grouping_hash(error_event(exception("KeyError", raw_frame("b")))),
        grouping_hash({"message": "disk full"}),
        grouping_hash({"message": "disk empty"}),
    }
    assert len(hashes) == 5


def test_grouping_hash_uses_the_fingerprint_when_set() -> None:
    """A custom fingerprint groups events regardless of their exceptions."""
    first = error_event(exception("KeyError", raw_frame("a")), fingerprint=["billing"])
    second = error_event(exception("ValueError", raw_frame("b")), fingerprint=["billing"])
    third = error_event(exception("KeyError", raw_frame("a")), fingerprint=["shipping"])
    assert grouping_hash(first) == grouping_hash(second) != grouping_hash(third)


def test_grouping_hash_treats_a_default_fingerprint_as_none() -> None:
    """A fingerprint of just "{{ default }}" groups like no fingerprint at all."""
    plain = error_event(exception("KeyError", raw_frame("a")))
    default = error_event(exception("KeyError", raw_frame("a")), fingerprint=["{{ default }}"])
    extended = error_event(
        exception("KeyError", raw_frame("a")), fingerprint=["{{ default }}", "tenant-1"]
    )
    assert grouping_hash(plain) == grouping_hash(default) != grouping_hash(extended)


def test_grouping_hash_of_message_events_uses_the_template() -> None:
    """Message events group by the logentry template, not its formatted parameters."""
    first = {"logentry": {"message": "user %s missing", "formatted": "user 1 missing"}}
    second = {"logentry": {"message": "user %s missing", "formatted": "user 2 missing"}}
    assert grouping_hash(first) == grouping_hash(second)


def test_grouping_hash_of_the_fixtures_is_stable_and_distinct() -> None:
    """The fixtures hash to distinct values, the same on every call."""
    events = [load_fixture(name) for name in FIXTURE_NAMES]
    hashes = [grouping_hash(event) for event in events]
    assert hashes == [grouping_hash(copy.deepcopy(event)) for event in events]
    assert len(set(hashes)) == len(hashes)
