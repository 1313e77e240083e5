"""Every NATS subject and JetStream name the system uses, in one place.

A subject with a variable token is given as its NATS pattern (`*` for the token, as the
permissions and subscriptions use it) plus a function that fills the token in. Who serves,
calls, publishes and subscribes each subject is in `messages/endpoints.py`.
"""

from __future__ import annotations

# JetStream: the event stream and the buckets
EVENT_STREAM = "RC_EVENTS"
EVENT_SUBJECTS = "rc.ev.>"
SNAPSHOT_BUCKET = "rc_snapshots"
ERROR_EVENT_BUCKET = "rc_error_events"
GATEWAY_BUCKET = "rc_gateway"
# per relay id, what the gateways saw of it lately (gateway/relay_activity.py)
RELAY_ACTIVITY_BUCKET = "rc_relay_activity"
# the MAC keys of the Redis entries (bus/cache_keys.py): relayauth:* and relayconfig:*
RELAY_AUTH_MAC_BUCKET = "rc_relayauth_mac"
CONFIG_MAC_BUCKET = "rc_config_mac"
# The data plane (bus/ingest_store.py): every envelope the gateway accepted, on
# `rc.in.<project id>`; what relays post to outcomes/ and metrics/ on `rc.in.relay.<kind>`
# (two tokens, so `rc.in.*` matches envelopes only). Envelopes too large for one NATS
# message are kept whole in the blob bucket, referenced from their stream message.
INGEST_STREAM = "RC_INGEST"
INGEST_SUBJECTS = "rc.in.>"
INGEST_ENVELOPES = "rc.in.*"  # .<project id>
INGEST_OUTCOMES = "rc.in.relay.outcomes"
INGEST_METRICS = "rc.in.relay.metrics"
INGEST_BLOB_BUCKET = "rc_ingest_blobs"
# What the forwarder (actors/forwarder.py) keeps: envelopes a downstream Sentry refused for good.
FORWARD_DEAD_LETTER_BUCKET = "rc_forward_dead"

# request/reply: `rc.ctl.<aggregate>.<command>` for every control message, and the queries
CONTROL_PREFIX = "rc.ctl"
# the management API's writes, sent by the gateway on behalf of the user whose bearer token
# each request carries: `rc.api.<aggregate>.<command>` (the command handlers check the token)
API_PREFIX = "rc.api"
KEYS_LOOKUP = "rc.keys.lookup"
ORG_ACCESS = "rc.org.access"
CONFIG_GET = "rc.config.get"
CONFIG_BUILD = "rc.config.build"
AI_SUGGEST = "rc.ai.suggest"
EVENTS_STORE = "rc.events.store"
METRICS_QUERY = "rc.metrics.query"
TRANSPORT_CONTROL = "rc.transport.control"
INGEST_QUERY = "rc.ingest.query"  # the forwarder: stream status, stats, error event listings
INGEST_REPLAY = "rc.ingest.replay"
# the forwarder's narrow reads for the management API: counts, and one project's events
INGEST_API = "rc.ingest.api"

# publish only
EVENTS_INGEST = "rc.events.ingest.*"  # .<project id>
TRANSPORT_ENVELOPE = "rc.transport.envelope"
METRICS_RECORD = "rc.metrics.record"
CONFIG_CHANGED = "rc.config.changed.*"  # .<project key>
RELAY_CHANGED = "rc.relay.changed"

# Replies and JetStream deliveries go to inboxes `<prefix>.<unique token>`. Each NATS role
# has its own prefix under the root (`_INBOX.<role>`), so a role may subscribe to its own
# replies only; a connection of no known role uses the root itself (nats-py's default).
INBOX_ROOT = "_INBOX"


def control(message_type: str) -> str:
    """The subject of the control message `<aggregate>.<command>`."""
    aggregate, _, command = message_type.partition(".")
    return f"{CONTROL_PREFIX}.{aggregate}.{command}"


def api(message_type: str) -> str:
    """The subject of the management API's write `<aggregate>.<command>`."""
    aggregate, _, command = message_type.partition(".")
    return f"{API_PREFIX}.{aggregate}.{command}"


def ingest_subject(project_id: int | str) -> str:
    return INGEST_ENVELOPES.replace("*", str(project_id))


def config_changed(public_key: str) -> str:
    return CONFIG_CHANGED.replace("*", public_key)


def inbox_prefix(role: str | None) -> str:
    """The inbox prefix of a connection made as `role` (None: no role, the root)."""
    return f"{INBOX_ROOT}.{role}" if role else INBOX_ROOT
