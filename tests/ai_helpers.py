"""Test helpers for AI suggestions: sample events, an AI worker with an explicit config,
server-sent event parsing."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from actors.ai import AIConfig, ai_actor_factory
from actors.worker import Worker


def error_event(type_: str = "KeyError", value: str = "'rate'", *, function: str = "total",
                event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A small Python error event; a distinct `type_` or `function` is a distinct group."""
    return {
        "event_id": event_id or uuid.uuid4().hex,
        "platform": "python",
        "logentry": {"formatted": "Failed to compute invoice total"},
        "exception": {"values": [{
            "type": type_, "value": value, "mechanism": {"type": "generic", "handled": False},
            "stacktrace": {"frames": [
                {"function": "main", "module": "app.cli", "filename": "app/cli.py", "lineno": 3,
                 "in_app": True, "context_line": "    total(invoice)"},
                {"function": function, "module": "app.billing", "filename": "app/billing.py",
                 "lineno": 12, "in_app": True, "context_line": "    return rates['rate'] * amount",
                 "pre_context": ["def total(invoice):"], "post_context": [""]},
            ]},
        }]},
        **extra,
    }


def start_ai_worker(nats_url: str, redis_url: str | None, config: AIConfig, **options: Any) -> Worker:
    """The `ai` actor in its own worker, configured explicitly rather than by the environment."""
    worker = Worker(["ai"], nats_url, redis_url, process_name="test-ai")
    worker.kinds = [dataclasses.replace(kind, start=ai_actor_factory(config, **options)) for kind in worker.kinds]
    return worker.start()


def parse_sse(body: bytes) -> list[tuple[str, str]]:
    """(event name, data) for each server-sent event, as an EventSource client sees them."""
    events: list[tuple[str, str]] = []
    for block in body.decode("utf-8").split("\n\n"):
        if not block:
            continue
        name, data = "message", []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


def sse_text(body: bytes) -> str:
    """The streamed answer: the data of every `message` event, joined."""
    return "".join(data for name, data in parse_sse(body) if name == "message")
