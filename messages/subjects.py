"""Every NATS subject and JetStream name the system uses, in one place."""

from __future__ import annotations

PREFIX = "rc"
EVENT_STREAM = "RC_EVENTS"
EVENT_SUBJECTS = "rc.ev.>"
SNAPSHOT_BUCKET = "rc_snapshots"
ERROR_EVENT_BUCKET = "rc_error_events"

# request/reply
CONTROL = "rc.ctl.{aggregate}.{command}"
CONTROL_ALL = "rc.ctl.>"
KEYS_LOOKUP = "rc.keys.lookup"
ORG_ACCESS = "rc.org.access"
CONFIG_GET = "rc.config.get"
CONFIG_BUILD = "rc.config.build"
AI_SUGGEST = "rc.ai.suggest"
METRICS_QUERY = "rc.metrics.query"

# publish
EVENTS_INGEST = "rc.events.ingest.{project_id}"
TRANSPORT_ENVELOPE = "rc.transport.envelope"
METRICS_RECORD = "rc.metrics.record"
CONFIG_CHANGED = "rc.config.changed.{public_key}"
RELAY_CHANGED = "rc.relay.changed"


def control(aggregate: str, command: str) -> str:
    return CONTROL.format(aggregate=aggregate, command=command)
