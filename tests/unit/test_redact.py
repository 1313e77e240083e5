"""Credentials never reach output: `redact_url` and the logging hooks built on it."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from messages.redact import redact, redact_processor, redact_url


@pytest.mark.parametrize(("text", "expected"), [
    ("cannot connect to NATS at nats://operator:s3-cr_T@127.0.0.1:4222: timeout",
     "cannot connect to NATS at nats://operator:***@127.0.0.1:4222: timeout"),
    ("nats://a:x@h1:4222,nats://b:y@h2:4222", "nats://a:***@h1:4222,nats://b:***@h2:4222"),
    ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("rediss://gateway:p%40ss@redis:6380/1", "rediss://gateway:***@redis:6380/1"),
    ("nats://t0ken@nats:4222", "nats://***@nats:4222"),  # a token in the user position
    ("url='redis://u:p@h'", "url='redis://u:***@h'"),
    ("http://127.0.0.1:3000/_health/?a=b@c", "http://127.0.0.1:3000/_health/?a=b@c"),
    ("write to ops@example.com", "write to ops@example.com"),
    ("", ""),
])
def test_redact_url_masks_passwords_and_tokens_only(text: str, expected: str) -> None:
    assert redact_url(text) == expected


def test_redact_walks_structures_and_reprs() -> None:
    """Strings inside maps, lists and tuples are redacted; an object whose repr shows a
    password is replaced by its redacted repr; other values are left alone."""
    value = {"url": "nats://a:pw@h", "urls": ["redis://:pw@h", ("nats://b:pw@h",)], "n": 3,
             "error": ValueError("nats://c:pw@h"), "flag": True}
    out = redact(value)
    assert "pw" not in repr(out)
    assert out["n"] == 3 and out["flag"] is True
    assert redact(ValueError("plain")).args == ("plain",)


def test_structlog_processor_redacts_every_value() -> None:
    event = {"event": "connect failed nats://a:pw@h", "exception": "Traceback...\nUnavailable: nats://a:pw@h",
             "extra": {"url": "redis://u:pw@h"}}
    assert "pw" not in repr(redact_processor(None, "error", event))


def test_stdlib_records_go_through_structlog_redacted() -> None:
    """A library's stdlib record (message and traceback) becomes a structlog line like any
    other (cli/logging.py), with no credential in it."""
    from cli.logging import setup_logging

    saved = structlog.get_config()
    out = io.StringIO()
    try:
        setup_logging(process="tests", level="warning", cache=False)
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(out))
        try:
            raise RuntimeError("cannot reach redis://u:pw@h")
        except RuntimeError:
            logging.getLogger("some.library").error("failed %s", "nats://a:pw@h", exc_info=True)
    finally:
        structlog.configure(**saved)
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["event"] == "failed nats://a:***@h" and line["logger"] == "some.library", line
    assert "redis://u:***@h" in line["exception"] and "pw" not in out.getvalue()
