"""structlog set-up for every process: JSON lines in production, readable in a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def setup_logging(process: str, level: str | None = None, *, cache: bool = True) -> None:
    level_name = (level or os.environ.get("RELAYCTL_LOG_LEVEL", "info")).upper()
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if sys.stderr.isatty() and not os.environ.get("RELAYCTL_LOG_JSON")
        else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=cache,
    )
    structlog.contextvars.bind_contextvars(process=process, pid=os.getpid())
