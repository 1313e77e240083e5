"""Every metric the system records: its kind, its tags and what it means.

The metrics actor gives these texts to the Prometheus exposition as HELP lines (a name not
listed here gets a generic one), docs/metrics.md and the Grafana dashboard are written from
it, and a test scans the code so that no recorded name is missing. Names are dotted; the
exposition prefixes them with `relayctl_` and turns dots into underscores (counters end in
`_total`, timers are histograms `<name>_seconds`).

`WATCHED_COUNTERS` are the counters docs/production.md tells operators to alert on: each
process that can move one reports it at 0 from its start, so an alert on `increase(...)`
has a series to look at before the first incident.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from messages.metrics import COUNTER, DISTRIBUTION, GAUGE, TIMER


class MetricDoc(NamedTuple):
    kind: str
    help: str
    tags: tuple[str, ...] = ()


METRICS: Final[dict[str, MetricDoc]] = {
    # relays and the config cache (gateway)
    "gateway.requests": MetricDoc(TIMER, "HTTP requests the gateway answered, by route and status",
                                  ("route", "status", "version")),
    "relay.keys": MetricDoc(COUNTER, "Project keys in relay config requests, by outcome (requested, served, "
                            "pending, unchanged)", ("outcome",)),
    "relay.cache": MetricDoc(COUNTER, "Project config cache lookups in Redis, by result (hit, miss)", ("result",)),
    "gateway.dependency_up": MetricDoc(GAUGE, "1 while the gateway reaches this dependency (nats, redis), else 0",
                                       ("dependency",)),
    "relay.cache_forged": MetricDoc(COUNTER, "Redis entries whose MAC did not verify, treated as misses",
                                    ("kind",)),
    # configs
    "config.built": MetricDoc(COUNTER, "Project configs built and written to the cache"),
    "config.build_failures": MetricDoc(COUNTER, "Project configs that could not be built (left pending)"),
    "config.build_per_key": MetricDoc(TIMER, "Time to build one project config"),
    "config.propagation": MetricDoc(TIMER, "From a change's event to its configs being in the cache"),
    # the event log
    "events.append": MetricDoc(TIMER, "Appending a command's events to the stream, by command and result",
                               ("command", "result")),
    "events.append_conflicts": MetricDoc(COUNTER, "Appends refused because another writer was first (retried)"),
    "events.append_failed": MetricDoc(COUNTER, "Appends that failed, by exception", ("reason",)),
    "commands.refused": MetricDoc(COUNTER, "Management API writes the command handlers refused for their "
                                  "token, org or scope, by error code", ("reason",)),
    "events.folded": MetricDoc(COUNTER, "Events folded into an actor's state", ("actor",)),
    "events.undecodable": MetricDoc(COUNTER, "Stored events an actor could not decode and skipped", ("actor",)),
    "snapshots.rejected": MetricDoc(COUNTER, "State snapshots refused (bad signature or format)", ("name",)),
    # actors and the bus
    "actor.inbox_depth": MetricDoc(GAUGE, "Messages waiting in an actor's inbox", ("actor",)),
    "actor.restarts": MetricDoc(COUNTER, "Actor restarts by the worker's supervisor", ("actor",)),
    "nats.reconnects": MetricDoc(COUNTER, "Reconnections of a process to NATS"),
    "metrics.malformed_batches": MetricDoc(COUNTER, "Metric batches the metrics actor could not decode"),
    "internal.metrics.dropped_points": MetricDoc(COUNTER, "Metric points a process dropped, by reason",
                                                 ("reason",)),
    "build.info": MetricDoc(GAUGE, "Always 1; the relayctl and Python versions a process runs",
                            ("version", "python")),
    # AI suggestions
    "ai.suggestions": MetricDoc(COUNTER, "AI fix suggestion requests, by result", ("result",)),
    "ai.model_call": MetricDoc(TIMER, "Calls to the AI model", ("stream", "result")),
    "ai.events.ingested": MetricDoc(COUNTER, "Error events offered for AI suggestions, by result and reason",
                                    ("result", "reason")),
    # ingest and forwarding
    "ingest.envelopes": MetricDoc(COUNTER, "Envelopes sent to the gateway's ingest endpoints, by outcome",
                                  ("outcome", "endpoint")),
    "ingest.relay_reports": MetricDoc(COUNTER, "Outcome and metric reports received from relays", ("kind",)),
    "ingest.rate_limit_unavailable": MetricDoc(COUNTER, "Quota checks skipped because Redis did not answer"),
    "ingest.relay_unproven": MetricDoc(COUNTER, "Envelopes with relay headers that prove no relay (taken as an "
                                       "SDK's), by reason", ("reason",)),
    "ingest.outcomes": MetricDoc(COUNTER, "Outcomes of ingested items", ("outcome", "category", "reason")),
    "ingest.error_events": MetricDoc(COUNTER, "Error events taken from the ingest stream, by result",
                                     ("result",)),
    "ingest.consumer_errors": MetricDoc(COUNTER, "Failures of an ingest stream consumer", ("consumer",)),
    "ingest.blob_missing": MetricDoc(COUNTER, "Stored envelopes whose blob (too large for one message) was gone"),
    "forward.envelopes": MetricDoc(COUNTER, "Envelopes forwarded downstream, by result", ("result",)),
    # the system's own error reports
    "internal.captured.envelopes": MetricDoc(COUNTER, "Envelopes of the system's own errors submitted"),
    "internal.uncaptured.envelopes": MetricDoc(COUNTER, "Own envelopes that could not be parsed", ("reason",)),
    "internal.captured.events": MetricDoc(COUNTER, "Own envelopes handed to a DSN", ("dsn",)),
    "internal.uncaptured.events": MetricDoc(COUNTER, "Own envelopes not delivered to a DSN, by reason",
                                            ("dsn", "reason")),
    "internal.sent_requests": MetricDoc(COUNTER, "HTTP requests made to a DSN (retries included)", ("dsn",)),
}

HELP: Final[dict[str, str]] = {name: doc.help for name, doc in METRICS.items()}

# (name, tags) of the counters reported at 0 from the start: every process reconnects to NATS
# and may drop metric points, gateways look configs up in Redis, the command handlers may
# lose an append race; `actor.restarts` is declared by workers per actor.
Counters = tuple[tuple[str, dict[str, str]], ...]
WATCHED_COUNTERS: Final[Counters] = (
    ("nats.reconnects", {}),
    ("internal.metrics.dropped_points", {"reason": "queue_full"}),
    ("internal.metrics.dropped_points", {"reason": "publish_failed"}),
)
GATEWAY_COUNTERS: Final[Counters] = (("relay.cache", {"result": "hit"}), ("relay.cache", {"result": "miss"}))
ACTOR_COUNTERS: Final[dict[str, Counters]] = {"commands": (("events.append_conflicts", {}),)}

__all__ = ["ACTOR_COUNTERS", "COUNTER", "DISTRIBUTION", "GATEWAY_COUNTERS", "GAUGE", "HELP", "METRICS", "TIMER",
           "WATCHED_COUNTERS", "MetricDoc"]
