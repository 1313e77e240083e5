"""Every key of the gateway's `web.Application` (and of a request's storage), typed, in one
place: `app[NC]`, `request.app[MAC_KEYS]`. A string key would be unchecked (aiohttp warns:
NotAppKeyWarning), and a typo in one would read as a missing value.

What each holds is set in gateway/app.py `create_app` (and its startup), or by the module
named beside it. Nothing here is imported at run time from the rest of the gateway, so any
gateway module may import this one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from bus.ingest_store import IngestStore
    from bus.settings import Settings
    from gateway.api.changes import ConfigChanges
    from gateway.app import AccessSampler, OwnSeries, RequestTimers
    from gateway.ask import NatsWatch
    from gateway.console.session import SessionStore
    from gateway.ingest import IngestEndpoints
    from gateway.limits import TokenBuckets
    from gateway.mac_keys import MacKeys
    from gateway.project_configs import BodyCache, ProjectConfigs
    from gateway.relay_activity import RelayActivity
    from gateway.relay_auth import RelayAuth, RelayAuthCache

# -- the process: its settings, its connections (None until startup, or without Redis)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
NC: web.AppKey[Any] = web.AppKey("nc")  # the NATS client
NATS_WATCH: web.AppKey[NatsWatch] = web.AppKey("nats_watch")  # whether NATS is up (gateway/ask.py)
REDIS: web.AppKey[Any] = web.AppKey("redis")  # the config cache's Redis (rate-limit counts too)
REDIS_READ: web.AppKey[Any] = web.AppKey("redis_read")  # the cache reads (replicas with a read URL); None without Redis
SECRET: web.AppKey[str] = web.AppKey("secret")  # the relay registration secret (shared in JetStream KV)
SYSTEM_ID: web.AppKey[str] = web.AppKey("system_id")  # which system this gateway serves (`/_health/`)
DEPENDENCY_REPORTER: web.AppKey[asyncio.Task[None]] = web.AppKey("dependency_reporter")
MAC_KEY_PREFETCH: web.AppKey[asyncio.Task[None]] = web.AppKey("mac_key_prefetch")
TOPOLOGY: web.AppKey[asyncio.Task[None]] = web.AppKey("topology")  # the read cluster's slot table, followed

# -- requests: logs, metrics, limits
ACCESS_SAMPLER: web.AppKey[AccessSampler] = web.AppKey("access_sampler")
REQUEST_TIMERS: web.AppKey[RequestTimers] = web.AppKey("request_timers")
OWN_SERIES: web.AppKey[OwnSeries] = web.AppKey("own_series")
RELAY_ACTIVITY: web.AppKey[RelayActivity] = web.AppKey("relay_activity")
REGISTRATIONS: web.AppKey[TokenBuckets] = web.AppKey("registrations")  # registration calls per client IP

# -- the relay protocol (gateway/relay_auth.py, gateway/project_configs.py)
MAC_KEYS: web.AppKey[MacKeys] = web.AppKey("mac_keys")
RELAY_AUTH_CACHE: web.AppKey[RelayAuthCache] = web.AppKey("relay_auth_cache")
RELAY_AUTH: web.AppKey[RelayAuth] = web.AppKey("relay_auth")
BODIES: web.AppKey[BodyCache] = web.AppKey("bodies")
PROJECT_CONFIGS: web.AppKey[ProjectConfigs] = web.AppKey("project_configs")

# -- ingest (gateway/ingest.py)
INGEST: web.AppKey[IngestEndpoints] = web.AppKey("ingest")
INGEST_STORE: web.AppKey[IngestStore | None] = web.AppKey("ingest_store")  # None until startup
INGEST_OUTCOME_TASK: web.AppKey[asyncio.Future[None]] = web.AppKey("ingest_outcome_task")
INGEST_HELD: web.RequestKey[int] = web.RequestKey("ingest_held")  # decompressed bytes a request holds

# -- the user API, AI suggestions, the console
AI_LIMITER: web.AppKey[TokenBuckets] = web.AppKey("ai_user_limiter")  # AI suggestions per user
API_AUTH_FAILURES: web.AppKey[TokenBuckets] = web.AppKey("api_auth_failures")  # bad tokens per client IP
CONFIG_CHANGES: web.AppKey[ConfigChanges] = web.AppKey("config_changes")
CONSOLE_SESSIONS: web.AppKey[SessionStore] = web.AppKey("console_sessions")
