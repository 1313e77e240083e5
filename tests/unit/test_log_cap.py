"""Log lines stay small (issue 16 item 12): every field is cut, after redaction."""

from __future__ import annotations

import json

import structlog

from cli.logging import MAX_FIELD, setup_logging


def render(**fields: object) -> str:
    setup_logging(process="tests", level="warning", cache=False)  # the chain every process uses
    event: object = {"event": "big", **fields}
    for processor in structlog.get_config()["processors"]:
        event = processor(None, "warning", event)
    assert isinstance(event, str)
    return event


def test_huge_fields_are_cut_and_say_how_long_they_were() -> None:
    line = render(payload="x" * 360_238, keys=[f"{i:032x}" for i in range(20_000)], small="kept")
    assert len(line) < 3 * MAX_FIELD + 500
    event = json.loads(line)
    assert event["payload"].endswith("... [cut: 360238 characters]")
    assert event["keys"].startswith('["00000000000000000000000000000000"')
    assert event["small"] == "kept"


def test_a_credential_is_redacted_before_the_cut() -> None:
    """A password longer than the cap is still masked, not cut in half and left readable."""
    password = "p" * (MAX_FIELD + 100)
    line = render(url=f"nats://operator:{password}@127.0.0.1:4222 and more")
    assert "ppppppppp" not in line and "operator:***@127.0.0.1" in line
