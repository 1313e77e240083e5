"""Every setting relayctl reads from its environment, in one catalogue, and the `Settings`
of one process: built once, where the process starts, from the environment and its
command-line flags (a flag wins), then passed down to what needs a value.

`CATALOGUE` is the one list of variables: the README's configuration table is checked
against it (tests/unit/test_settings.py), and so is every `RELAYCTL_*` name in the code, so
a setting cannot be read without being listed and documented. A value that does not parse
is refused when the settings are built, naming the variable - never silently replaced by
its default at the moment it is first used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from messages.errors import BadRequest

TEXT, INT, FLOAT, FLAG = "text", "int", "float", "flag"


@dataclass(frozen=True)
class Setting:
    env: str
    kind: str
    default: str | None  # as the variable would be written; None: unset
    help: str


def _s(env: str, kind: str, default: str | None, help_: str) -> Setting:
    return Setting(env, kind, default, help_)


CATALOGUE: tuple[Setting, ...] = (
    # where the system is
    _s("RELAYCTL_DATA_DIR", TEXT, None, "the data dir (`--data-dir`)"),
    _s("RELAYCTL_NATS_URL", TEXT, None, "the NATS to use (`--nats-url`)"),
    _s("RELAYCTL_REDIS_URL", TEXT, None, "the Redis of the config cache (`--redis-url`)"),
    _s("RELAYCTL_REDIS_CLUSTER", FLAG, "0", "`1`: the Redis URL names Redis Cluster start nodes (`--redis-cluster`)"),
    _s("RELAYCTL_REDIS_READ_URL", TEXT, None, "where gateways read the config cache: replicas (`--redis-read-url`)"),
    _s("RELAYCTL_NATS_CONF", TEXT, None, "a nats.conf for the NATS `up` runs"),
    _s("RELAYCTL_REDIS_MAXMEMORY", TEXT, None, "maxmemory of the Redis `up` runs (256mb)"),
    _s("RELAYCTL_STREAM_REPLICAS", INT, "1", "copies of every stream and bucket when a process creates it"),
    _s("RELAYCTL_HEALTH_TIMEOUT", FLOAT, "90", "seconds `up` waits for a service to be healthy"),
    _s("RELAYCTL_SNAPSHOT_EVERY", INT, "10000",
       "commits the command handlers fold between two snapshots of the state (0: none)"),
    _s("RELAYCTL_GATEWAYS", INT, None, "gateway processes `up` runs on the one port (`--gateways`; one per core)"),
    # the system's own errors and metrics
    _s("RELAYCTL_SENTRY", FLAG, "1", "`0`: no sentry-sdk in the system's processes"),
    _s("RELAYCTL_DSN_UPSTREAM", TEXT, None, "where the system's own errors go first"),
    _s("RELAYCTL_DSN_RELAY", TEXT, None, "where the system's own errors go second"),
    _s("RELAYCTL_UPSTREAM_METRICS", FLAG, "0", "`1`: keep statsd items in the upstream copy"),
    _s("RELAYCTL_INTERNAL_PROJECT_ID", INT, None,
       "events raised while processing this project never go to the relay DSN"),
    _s("RELAYCTL_METRICS_TTL", FLOAT, "120", "seconds a silent process keeps its metric series"),
    _s("RELAYCTL_LOG_LEVEL", TEXT, "info", "log level"),
    _s("RELAYCTL_LOG_JSON", FLAG, "0", "`1`: JSON log lines even on a terminal"),
    _s("RELAYCTL_ACCESS_LOG_FULL_RATE", INT, "50",
       "fast successful requests a second the gateway's access log writes every one of"),
    _s("RELAYCTL_ACCESS_LOG_SAMPLE", FLOAT, "0.01",
       "share (0-1) of the fast successful requests past that rate the access log writes"),
    # HTTP limits of the gateway (gateway/limits.py)
    _s("RELAYCTL_HTTP_MAX_LINE_SIZE", INT, "8190", "longest request line"),
    _s("RELAYCTL_HTTP_MAX_FIELD_SIZE", INT, "8190", "longest header"),
    _s("RELAYCTL_HTTP_MAX_HEADERS", INT, "64", "most headers"),
    _s("RELAYCTL_HTTP_BODY_TIMEOUT", FLOAT, "10", "seconds to receive a request body"),
    _s("RELAYCTL_HTTP_HEADER_TIMEOUT", FLOAT, "10", "seconds to receive a request head"),
    _s("RELAYCTL_HTTP_REGISTER_RATE", FLOAT, "5", "relay registrations per second and address"),
    _s("RELAYCTL_HTTP_REGISTER_BURST", INT, "100", "registration burst per address"),
    _s("RELAYCTL_HTTP_MAX_CONNECTIONS_PER_IP", INT, "256", "open connections per client address"),
    # the management API (gateway/api/)
    _s("RELAYCTL_PUBLIC_URL", TEXT, None, "the gateway's public URL: keys' DSNs, org auth tokens"),
    _s("RELAYCTL_API_AUTH_FAILURES", INT, "10", "bad API tokens one client address may send at once"),
    # ingest (gateway/ingest.py, bus/ingest_store.py) and forwarding (actors/forwarder.py)
    _s("RELAYCTL_INGEST_MAX_ENVELOPE_SIZE", INT, None, "decompressed envelope cap (200 MiB)"),
    _s("RELAYCTL_INGEST_BODY_TIMEOUT", FLOAT, "60", "seconds to receive an envelope body"),
    _s("RELAYCTL_INGEST_MAX_AGE", FLOAT, None, "seconds RC_INGEST keeps envelopes (7 days)"),
    _s("RELAYCTL_INGEST_MAX_BYTES", INT, None, "bytes RC_INGEST holds (1 GiB)"),
    _s("RELAYCTL_INGEST_PUBLISH_TIMEOUT", FLOAT, "3", "seconds to wait for RC_INGEST's ack before a 503"),
    _s("RELAYCTL_INGEST_KEY_CACHE_SECONDS", FLOAT, "1", "how long ingest uses a key's config read from Redis"),
    _s("RELAYCTL_INGEST_MAX_IN_FLIGHT", INT, None, "decompressed bytes a gateway's ingest requests may hold (800 MiB)"),
    _s("RELAYCTL_FORWARD_ACK_WAIT", FLOAT, "30", "seconds before an unacknowledged delivery goes to another"),
    _s("RELAYCTL_FORWARD_TIMEOUT", FLOAT, "10", "seconds per forwarded request"),
    _s("RELAYCTL_FORWARD_CONCURRENCY", INT, "32", "envelopes in flight per forwarder instance"),
    _s("RELAYCTL_FORWARD_BACKOFF_BASE", FLOAT, "1", "first wait before forwarding again"),
    _s("RELAYCTL_FORWARD_BACKOFF_MAX", FLOAT, "60", "longest wait before forwarding again"),
    _s("RELAYCTL_FORWARD_MAX_ACK_PENDING", INT, "10000",
       "envelopes delivered and not yet acknowledged, per consumer for all instances"),
    _s("RELAYCTL_FORWARD_CONSUMERS", TEXT, None, "which of the forwarder's consumers an instance pulls for (all)"),
    # AI suggestions
    _s("OPENAI_BASE_URL", TEXT, None, "the AI backend (any OpenAI-compatible server)"),
    _s("OPENAI_API_KEY", TEXT, None, "its API key"),
    _s("RELAYCTL_AI_MODEL", TEXT, None, "the model to ask"),
    _s("RELAYCTL_AI_TIMEOUT", FLOAT, None, "seconds a model call may take"),
    _s("RELAYCTL_AI_MAX_TOKENS", INT, "1024", "the longest suggestion a model may write, in tokens"),
    _s("RELAYCTL_LLAMA_SERVER", TEXT, None, "a llama-server binary for the local model"),
    _s("RELAYCTL_LLAMA_MODEL", TEXT, None, "a GGUF file for the local model"),
    _s("RELAYCTL_LOCAL_MODEL_FAILURE", TEXT, None, "set by `up`: why the local model is not running"),
    # OpenTelemetry's own variables (bus/otel.py; the exporter reads its other OTEL_* itself)
    _s("OTEL_TRACES_EXPORTER", TEXT, None, "`console`: print spans; `none`: export none"),
    _s("OTEL_EXPORTER_OTLP_ENDPOINT", TEXT, None, "export spans over OTLP/HTTP here"),
    _s("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", TEXT, None, "the same, for traces only"),
)

_BY_ENV: dict[str, Setting] = {s.env: s for s in CATALOGUE}
assert len(_BY_ENV) == len(CATALOGUE), "a variable is listed twice"


class InvalidSetting(BadRequest):
    """A variable whose value does not parse as its kind."""


def _parse(setting: Setting, raw: str) -> Any:
    try:
        if setting.kind == INT:
            return int(raw)
        if setting.kind == FLOAT:
            return float(raw)
    except ValueError:
        raise InvalidSetting(f"{setting.env}={raw!r} is not a{'n integer' if setting.kind == INT else ' number'}",
                             {"setting": setting.env}) from None
    if setting.kind == FLAG:
        return raw.strip().lower() in ("1", "true", "yes", "on")
    return raw


class Settings:
    """The values of one process. Read them by variable name: `settings.value(NAME)` (the
    parsed value, or the catalogue default, or None); a name not in the catalogue is a
    KeyError, so every setting read is a documented one."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """From `environ` (default the process's) and `flags`, keyed by variable name
        (`RELAYCTL_NATS_URL=...`); a flag that is None is not given."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in CATALOGUE:
            raw = env.get(setting.env)
            if raw is None or raw == "":
                raw = setting.default
            if raw is not None:
                values[setting.env] = _parse(setting, raw)
        for name, value in flags.items():
            if name not in _BY_ENV:
                raise KeyError(f"{name} is not a setting (bus/settings.py CATALOGUE)")
            if value is not None:
                values[name] = _parse(_BY_ENV[name], value) if isinstance(value, str) else value
        return cls(values)

    def value(self, name: str, default: Any = None) -> Any:
        """`name`'s value, else `default` (a setting the catalogue gives no default)."""
        if name not in _BY_ENV:
            raise KeyError(f"{name} is not a setting (bus/settings.py CATALOGUE)")
        return self._values.get(name, default)

    def environment(self) -> dict[str, str]:
        """The values as variables, for a process this one starts."""
        out = {}
        for name, value in self._values.items():
            if _BY_ENV[name].kind == FLAG:
                out[name] = "1" if value else "0"
            else:
                out[name] = str(value)
        return out
