"""What the consumers of the ingest stream read out of an envelope. Pure: no I/O.

- `forward_body`: the envelope as it goes on to a downstream Sentry - byte for byte what
  was stored, except the envelope header `dsn`, which names the target DSN (a stale `dsn`
  makes Sentry refuse the envelope: "bad envelope authentication header"). `event_id` and
  every item stay as they were, so the target deduplicates a retry.
- `error_events`: the `event` items that are errors, normalized by Relay's own
  `StoreNormalizer` and scrubbed by `pii_strip_event` with the project's `piiConfig` and
  `datascrubbingSettings` (exactly what relayctl sends Relay for the project), so what is
  stored for the AI flow is what Sentry would have kept.
- `envelope_outcomes` / `relay_outcomes`: the counts `relayctl project stats` and the
  Prometheus counters are made of: each stored envelope's items as `accepted` per data
  category, `client_report` items as the outcomes the SDK reports, and the outcome batches
  relays post (`POST /api/0/relays/outcomes/`).

Labels never carry raw input: outcome names, categories and reasons are mapped onto
closed sets (`reason_label`), anything else is "other".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sentry_relay
from sentry_relay.consts import DataCategory

from domain.dsn import Dsn

__all__ = [
    "OUTCOMES",
    "EnvelopeItem",
    "InvalidEnvelope",
    "Outcome",
    "envelope_header",
    "envelope_outcomes",
    "error_events",
    "event_title",
    "forward_body",
    "parse_items",
    "reason_label",
    "relay_outcomes",
    "scrub_configs",
    "scrub_event",
]

# Relay's outcome ids (relay-server `Outcome`), by the name used in labels and stats.
OUTCOMES = {0: "accepted", 1: "filtered", 2: "rate_limited", 3: "invalid", 4: "abuse",
            5: "client_discard", 6: "cardinality_limited"}
_CATEGORY_NAMES: dict[int, str] = {int(c.value): str(c.name).lower() for c in DataCategory}
_CATEGORIES = frozenset(_CATEGORY_NAMES.values())

# Item type -> the data category Relay counts it under (items not listed are not counted:
# client reports, metrics, ...).
_ITEM_CATEGORIES = {
    "event": "error", "transaction": "transaction", "security": "security", "attachment": "attachment",
    "session": "session", "sessions": "session", "profile": "profile", "profile_chunk": "profile_chunk",
    "replay_event": "replay", "replay_recording": "replay", "replay_video": "replay",
    "check_in": "monitor", "span": "span", "user_report": "user_report_v2", "feedback": "user_report_v2",
    "log": "log_item", "otel_log": "log_item",
}
# The client report fields (Relay's `ClientReport`) and the outcome each stands for.
_CLIENT_REPORT_FIELDS = {"discarded_events": "client_discard", "rate_limited_events": "rate_limited",
                         "filtered_events": "filtered", "filtered_sampling_events": "filtered"}
# Reasons SDKs report (sentry-python, -javascript, -cocoa, ... `DiscardReason`); others are "other".
_SDK_REASONS = frozenset({
    "queue_overflow", "cache_overflow", "buffer_overflow", "ratelimit_backoff", "network_error",
    "sample_rate", "before_send", "event_processor", "send_error", "internal_sdk_error",
    "insufficient_data", "backpressure", "ignored", "deadline_exceeded"})
# Reasons from relays (trusted, internal): Relay's own reason codes have this shape.
_RELAY_REASON = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,47}$")
MAX_OUTCOMES_PER_BATCH = 10_000


class InvalidEnvelope(ValueError):
    """The stored bytes are not an envelope (cannot be forwarded or read)."""


@dataclass(frozen=True)
class EnvelopeItem:
    headers: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        value = self.headers.get("type")
        return value if isinstance(value, str) else ""

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass(frozen=True)
class Outcome:
    outcome: str  # a value of OUTCOMES
    category: str  # a DataCategory name, lower case, or "unknown"
    reason: str  # a label (reason_label)
    quantity: int
    project_id: int | None = None


def _split_header(data: bytes) -> tuple[dict[str, Any], bytes]:
    line, _, rest = data.partition(b"\n")
    try:
        header = json.loads(line) if line.strip() else {}
    except ValueError:
        raise InvalidEnvelope("the envelope header is not JSON") from None
    if not isinstance(header, dict):
        raise InvalidEnvelope("the envelope header is not a JSON object")
    return header, rest


def envelope_header(data: bytes) -> dict[str, Any]:
    return _split_header(data)[0]


def forward_body(data: bytes, target: Dsn) -> bytes:
    """The envelope for `target`: its header's `dsn` replaced, everything else unchanged."""
    header, rest = _split_header(data)
    header["dsn"] = target.public_dsn
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + rest


def parse_items(data: bytes) -> list[EnvelopeItem]:
    """The items of an envelope (length-prefixed or newline-terminated payloads)."""
    _, rest = _split_header(data)
    items: list[EnvelopeItem] = []
    pos = 0
    while pos < len(rest):
        end = rest.find(b"\n", pos)
        line = rest[pos:] if end < 0 else rest[pos:end]
        pos = len(rest) if end < 0 else end + 1
        if not line.strip():
            continue
        try:
            headers = json.loads(line)
        except ValueError:
            raise InvalidEnvelope(f"item {len(items)}: the item header is not JSON") from None
        if not isinstance(headers, dict):
            raise InvalidEnvelope(f"item {len(items)}: the item header is not a JSON object")
        length = headers.get("length")
        if isinstance(length, int) and not isinstance(length, bool) and length >= 0:
            if pos + length > len(rest):
                raise InvalidEnvelope(f"item {len(items)}: length {length} is past the end of the envelope")
            payload = rest[pos:pos + length]
            pos += length
            if rest[pos:pos + 1] == b"\n":
                pos += 1
        else:
            end = rest.find(b"\n", pos)
            payload = rest[pos:] if end < 0 else rest[pos:end]
            pos = len(rest) if end < 0 else end + 1
        items.append(EnvelopeItem(headers, payload))
    return items


# -- error events ------------------------------------------------------------------------

def scrub_configs(pii_config: Mapping[str, Any] | None,
                  datascrubbing: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The PII configs a project's events are scrubbed with, in Relay's order: its PII rules,
    then its datascrubbing settings (passwords, card numbers, sensitive fields and IPs become
    `[Filtered]`) as `convert_datascrubbing_config` turns them into rules. Made once per
    project and change (the conversion costs about as much as scrubbing one event)."""
    configs: list[dict[str, Any]] = []
    if pii_config and (pii_config.get("rules") or pii_config.get("applications")):
        configs.append(dict(pii_config))
    if datascrubbing is not None:
        converted = sentry_relay.convert_datascrubbing_config(dict(datascrubbing))
        if converted:
            configs.append(converted)
    return configs


def scrub_event(event: dict[str, Any], configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The event scrubbed as Relay scrubs it (`scrub_configs`)."""
    for config in configs:
        event = sentry_relay.pii_strip_event(config, event)
    return event


def error_events(items: list[EnvelopeItem], project_id: int, *, client_ip: str | None = None,
                 scrubbing: list[dict[str, Any]] | None = None,
                 event_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Every `event` item that is an error, normalized and scrubbed with `scrubbing` (the
    project's `scrub_configs`). An item that is not a JSON object raises `InvalidEnvelope`.
    Relay's code releases the GIL: callers may run this on a thread pool."""
    normalizer = sentry_relay.StoreNormalizer(project_id=project_id, client_ip=client_ip,
                                              normalize_user_agent=True)
    for index, item in enumerate(items):
        if item.type != "event":
            continue
        try:
            raw = item.json()
        except ValueError:
            raise InvalidEnvelope(f"item {index}: the event is not JSON") from None
        if not isinstance(raw, dict):
            raise InvalidEnvelope(f"item {index}: the event is not a JSON object")
        if event_id and not raw.get("event_id"):
            raw["event_id"] = event_id  # SDKs may put it in the envelope header only
        normalized = normalizer.normalize_event(raw)
        if normalized.get("type") not in ("error", "default"):
            continue
        yield scrub_event(normalized, scrubbing or [])


def event_title(event: Mapping[str, Any]) -> str:
    """A one-line title like Sentry's: `Type: value` of the last exception, else the message."""
    exception = event.get("exception")
    values = exception.get("values") if isinstance(exception, dict) else None
    if isinstance(values, list):
        for value in reversed(values):
            if isinstance(value, dict) and (value.get("type") or value.get("value")):
                kind, text = value.get("type"), value.get("value")
                title = f"{kind}: {text}" if kind and text else str(kind or text)
                return title.splitlines()[0][:200] if title else "<untitled>"
    logentry = event.get("logentry")
    message = logentry.get("formatted") or logentry.get("message") if isinstance(logentry, dict) else None
    message = message or event.get("message")
    if isinstance(message, dict):
        message = message.get("formatted") or message.get("message")
    if isinstance(message, str) and message.strip():
        return message.strip().splitlines()[0][:200]
    return "<untitled>"


# -- outcomes ------------------------------------------------------------------------------

def category_label(value: Any) -> str:
    if isinstance(value, bool):
        return "unknown"
    if isinstance(value, int):
        return _CATEGORY_NAMES.get(value, "unknown")
    if isinstance(value, str) and value in _CATEGORIES:
        return value
    return "unknown"


def reason_label(reason: Any, *, from_relay: bool = False) -> str:
    """A reason as a label: "none" when absent, SDK reasons from a closed set, a relay's
    reason when it has the shape of Relay's codes (relays are trusted), else "other"."""
    if reason is None or reason == "":
        return "none"
    if not isinstance(reason, str):
        return "other"
    if reason in _SDK_REASONS:
        return reason
    return reason if from_relay and _RELAY_REASON.match(reason) else "other"


def _quantity(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return min(value, 2 ** 31)


def envelope_outcomes(items: list[EnvelopeItem], project_id: int) -> list[Outcome]:
    """What one stored envelope counts: its items as accepted, its client reports' outcomes."""
    counted: list[Outcome] = []
    for item in items:
        if item.type == "client_report":
            counted.extend(_client_report(item, project_id))
            continue
        category = _ITEM_CATEGORIES.get(item.type)
        if category == "error":
            category = _event_category(item)
        if category is not None:
            counted.append(Outcome("accepted", category, "none", 1, project_id))
    return counted


def _event_category(item: EnvelopeItem) -> str:
    try:
        event = item.json()
    except ValueError:
        return "error"
    kind = event.get("type") if isinstance(event, dict) else None
    return "default" if kind == "default" else "error"


def _client_report(item: EnvelopeItem, project_id: int) -> Iterator[Outcome]:
    try:
        report = item.json()
    except ValueError:
        return
    if not isinstance(report, dict):
        return
    for field, outcome in _CLIENT_REPORT_FIELDS.items():
        entries = report.get(field)
        if not isinstance(entries, list):
            continue
        for entry in entries[:MAX_OUTCOMES_PER_BATCH]:
            if not isinstance(entry, dict):
                continue
            quantity = _quantity(entry.get("quantity"))
            if quantity:
                yield Outcome(outcome, category_label(entry.get("category")), reason_label(entry.get("reason")),
                              quantity, project_id)


def relay_outcomes(body: bytes) -> list[Outcome]:
    """The outcomes of a `POST /api/0/relays/outcomes/` body; malformed entries are skipped."""
    try:
        data = json.loads(body)
    except ValueError:
        return []
    entries = data.get("outcomes") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return []
    result: list[Outcome] = []
    for entry in entries[:MAX_OUTCOMES_PER_BATCH]:
        if not isinstance(entry, dict):
            continue
        code = entry.get("outcome")
        outcome = OUTCOMES.get(code) if isinstance(code, int) else None
        project_id = entry.get("project_id")
        if outcome is None or isinstance(project_id, bool) or not isinstance(project_id, int):
            continue
        quantity = _quantity(entry.get("quantity", 1))
        if quantity:
            result.append(Outcome(outcome, category_label(entry.get("category")),
                                  reason_label(entry.get("reason"), from_relay=True), quantity, project_id))
    return result
