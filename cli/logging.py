"""structlog set-up for every process: JSON lines in production, readable in a terminal.

One style: relayctl's own modules log with structlog (`structlog.get_logger(__name__)`,
an event name and fields). The stdlib records of libraries (nats-py, asyncio, aiohttp),
warnings and up, are routed into the same chain (`_StdlibToStructlog`), so every line has
the same shape.

No log line carries a credential: every event passes `messages.redact.redact_processor`
(after tracebacks are formatted); the tracebacks of uncaught exceptions are redacted too.

No log line is huge either: `cap_processor` cuts every field to `MAX_FIELD` characters
(`MAX_TRACEBACK` for a traceback) and says how long it was, so a payload that made its way
into an event (a 500-key batch, a whole import) costs a few kilobytes, not megabytes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import structlog

from bus.settings import Settings
from messages.redact import redact_processor, redact_url

# Marks the stdlib handler installed here, so a second set-up does not add another.
_HANDLER_NAME = "relayctl-to-structlog"
MAX_FIELD = 2000
MAX_TRACEBACK = 20000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... [cut: {len(text)} characters]"


def cap_processor(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Cut every field of a log event to `MAX_FIELD` characters (a structure by its JSON
    text, which then stands in for it), tracebacks to `MAX_TRACEBACK`."""
    for name, value in event_dict.items():
        limit = MAX_TRACEBACK if name in ("exception", "stack") else MAX_FIELD
        if isinstance(value, str):
            event_dict[name] = _cut(value, limit)
        elif isinstance(value, (dict, list, tuple, set, bytes)):
            try:
                text = json.dumps(value, default=str) if not isinstance(value, bytes) else repr(value)
            except (TypeError, ValueError, RecursionError):
                text = repr(value)
            if len(text) > limit:
                event_dict[name] = _cut(text, limit)
    return event_dict


def setup_logging(process: str, level: str | None = None, *, cache: bool = True,
                  settings: Settings | None = None) -> None:
    """Configure structlog for this process: `level` (default `RELAYCTL_LOG_LEVEL`), JSON
    lines unless stderr is a terminal and `RELAYCTL_LOG_JSON` is not set, from `settings`
    (the process's; default: built from the environment)."""
    settings = settings or Settings.load()
    level_name = (level or settings.value("RELAYCTL_LOG_LEVEL")).upper()
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if sys.stderr.isatty() and not settings.value("RELAYCTL_LOG_JSON")
        else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            cap_processor,  # after redaction: a credential cut in half would not be recognized
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=cache,
    )
    structlog.contextvars.bind_contextvars(process=process, pid=os.getpid())
    _route_stdlib_logging()
    # A crash's traceback is printed by the interpreter, not logged: redacted all the same.
    sys.excepthook = _redacting_excepthook
    threading.excepthook = _redacting_thread_excepthook


def _redacting_excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(redact_url("".join(traceback.format_exception(kind, exc, tb))))


def _redacting_thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    sys.stderr.write(f"Exception in thread {name}:\n")
    _redacting_excepthook(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)


class _StdlibToStructlog(logging.Handler):
    """A stdlib record as a structlog event: its message, the logger's name and its
    traceback go through the processors every line passes (redaction, the caps)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)
        except Exception:  # noqa: BLE001 - logging's own boundary: a record that cannot be written
            self.handleError(record)


def _route_stdlib_logging() -> None:
    """Stdlib records (warnings and up, as Python's last-resort handler would print them)
    go through structlog."""
    root = logging.getLogger()
    if any(handler.get_name() == _HANDLER_NAME for handler in root.handlers):
        return
    handler = _StdlibToStructlog()
    handler.set_name(_HANDLER_NAME)
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)
