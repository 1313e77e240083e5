"""The HTTP gateway: relay endpoints, health, metrics and the user API, on aiohttp.

One gateway process holds a NATS connection (requests to actors) and an async Redis
client (the config cache). Any number of gateway processes may run, on one port with
SO_REUSEPORT or on many machines: they share nothing but NATS and Redis. The relay
registration secret lives in a JetStream KV bucket, created once by whichever gateway
comes first, so every gateway validates every other's challenge tokens, across restarts.
The same bucket holds the system id that `/_health/` answers with: a gateway shares its
port only with gateways of the same system (gateway/binding.py).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    ServiceUnavailableError,
)

from bus import metrics, otel, redis_clients
from bus.cache_keys import CONFIG_MAC_BUCKET, RELAY_AUTH_MAC_BUCKET
from bus.metric_catalogue import GATEWAY_COUNTERS, HELP
from bus.process import instrument
from bus.retry import Backoff, retry
from bus.runtime import BUS_ERRORS, connect
from bus.settings import Settings
from domain.metrics_store import MetricsStore, TimerStats
from gateway.ai import add_ai_routes
from gateway.api import add_management_routes
from gateway.ask import NatsWatch, ask
from gateway.binding import PortLock, port_problem
from gateway.console import add_console_routes
from gateway.errors import REDIS_ERRORS, HTTPFailure, error_response, from_error, json_response
from gateway.ingest import add_ingest_routes
from gateway.keys import (
    ACCESS_SAMPLER,
    BODIES,
    DEPENDENCY_REPORTER,
    MAC_KEY_PREFETCH,
    MAC_KEYS,
    NATS_WATCH,
    NC,
    OWN_SERIES,
    PROJECT_CONFIGS,
    REDIS,
    REDIS_READ,
    REGISTRATIONS,
    RELAY_ACTIVITY,
    RELAY_AUTH,
    RELAY_AUTH_CACHE,
    REQUEST_TIMERS,
    SECRET,
    SETTINGS,
    SYSTEM_ID,
    TOPOLOGY,
)
from gateway.limits import HttpLimits, limits_middleware, registration_buckets, serve
from gateway.mac_keys import MacKeys
from gateway.project_configs import BodyCache, ProjectConfigs
from gateway.registration import Registration
from gateway.relay_activity import RelayActivity
from gateway.relay_auth import RelayAuth, RelayAuthCache
from gateway.relay_lookups import RelayLookups
from messages import tracing
from messages.errors import RelayctlError
from messages.subjects import GATEWAY_BUCKET, RELAY_CHANGED

log = structlog.get_logger(__name__)
MAX_BODY = 10 * 1024 * 1024
SECRET_KEY = "registration_secret"
SYSTEM_KEY = "system_id"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Protocol versions a metric may be tagged with; anything else a client sends is "other".
TAGGED_VERSIONS = frozenset({"1", "2", "3"})
access_log = structlog.get_logger("gateway.access")
# A relay id as logged: a UUID is 36 characters; anything a client sends is cut to this.
MAX_LOGGED_RELAY_ID = 64
SLOW_REQUEST = 1.0  # seconds: a request this slow is logged whatever the sample rate


class AccessSampler:
    """Which fast successful requests the access log writes: every one up to `full_rate` a
    second, past that a share `rate` of them (a relay polls every 100 ms, so a busy gateway
    would spend a large part of its time writing log lines). Errors and slow requests are
    always written, elsewhere."""

    def __init__(self, full_rate: int, rate: float) -> None:
        self.full_rate = max(0, full_rate)
        self.rate = min(1.0, max(0.0, rate))
        self._second = 0
        self._written = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessSampler:
        """`RELAYCTL_ACCESS_LOG_FULL_RATE` and `RELAYCTL_ACCESS_LOG_SAMPLE`."""
        return cls(int(settings.value("RELAYCTL_ACCESS_LOG_FULL_RATE")),
                   float(settings.value("RELAYCTL_ACCESS_LOG_SAMPLE")))

    def keep(self) -> float | None:
        """None: skip this request's line; else the sample rate to write in it (1: all)."""
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._written = second, 0
        if self._written < self.full_rate:
            self._written += 1
            return 1.0
        if self.rate >= 1.0 or (self.rate > 0.0 and random.random() < self.rate):
            return self.rate
        return None


def log_access(request: web.Request, route: str, status: int, seconds: float, sampler: AccessSampler | None) -> None:
    """One JSON line per request (past the sampler's full rate a share of the fast
    successful ones, with `sample_rate`; errors and slow ones always)."""
    rate = 1.0
    if status < 400 and seconds < SLOW_REQUEST and sampler is not None:
        kept = sampler.keep()
        if kept is None:
            return
        rate = kept
    fields: dict[str, Any] = {"method": request.method, "route": route, "status": status,
                              "duration_ms": round(seconds * 1000, 2)}
    relay_id = request.headers.get("X-Sentry-Relay-Id")
    if relay_id:
        fields["relay_id"] = relay_id[:MAX_LOGGED_RELAY_ID]
    if rate < 1.0:
        fields["sample_rate"] = rate
    access_log.info("http.request", **fields)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Not uuid4: an id, not a secret, and os.urandom is a system call on every request.
    cid = request.headers.get("X-Request-Id") or f"{random.getrandbits(128):032x}"
    structlog.contextvars.clear_contextvars()
    # This request's span: a child of the caller's W3C traceparent, or a new trace. Every log
    # line of it (the access log too) and every NATS request it makes carry the trace on.
    parent = tracing.parse(request.headers.get(tracing.HEADER))
    span = tracing.child(parent)
    structlog.contextvars.bind_contextvars(correlation_id=cid, path=request.path, **tracing.fields(span, parent))
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    if not otel.enabled():
        return await _answer(request, handler, cid, route)
    # Exported only with the `otel` extra and an OTLP endpoint (bus/otel.py).
    with otel.span(f"{request.method} {route}", span.trace_id, span.span_id, parent and parent.span_id,
                   {"http.request.method": request.method, "http.route": route}) as exported:
        response = await _answer(request, handler, cid, route)
        if exported is not None:
            exported.set_attribute("http.response.status_code", response.status)
    return response


async def _answer(request: web.Request, handler: Handler, cid: str, route: str) -> web.StreamResponse:
    """The handler's response, any error turned into its HTTP answer; metrics and logs."""
    started = time.perf_counter()
    try:
        response = await handler(request)
    except HTTPFailure as failure:
        response = failure.response()
    except RelayctlError as exc:
        response = from_error(exc)
    except web.HTTPRequestEntityTooLarge:
        response = error_response(413, "Request body too large")
    except web.HTTPException as exc:
        if exc.status >= 500:
            raise
        response = error_response(exc.status, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:  # one request's boundary: a bug is logged and answered, never a 500 page
        log.exception("gateway.unhandled")
        response = error_response(503, "Temporary failure; retry")
    response.headers["X-Request-Id"] = cid
    tags: tuple[str, ...] = (route, str(response.status))
    if route.endswith("/projectconfigs/"):
        # Never the raw query value: any client could mint one series per request.
        version = request.query.get("version") or "1"
        tags += (version if version in TAGGED_VERSIONS else "other",)
    elapsed = time.perf_counter() - started
    request.app[REQUEST_TIMERS].add(elapsed, tags)
    log_access(request, route, response.status, elapsed, request.app.get(ACCESS_SAMPLER))
    activity: RelayActivity | None = request.app.get(RELAY_ACTIVITY)
    if activity is not None:
        relay_id = request.headers.get("X-Sentry-Relay-Id", "")
        known = bool(relay_id) and request.app[RELAY_AUTH_CACHE].get(relay_id) is not None
        activity.observe(request, route, response, known)
    return response


async def registration_secret(nc: Any, replicas: int = 1) -> str:
    return await _shared_value(nc, SECRET_KEY, lambda: secrets.token_urlsafe(48), replicas)


async def system_id(nc: Any, replicas: int = 1) -> str:
    """This system's id: one per NATS (JetStream) the gateways share, kept across restarts."""
    return await _shared_value(nc, SYSTEM_KEY, lambda: uuid.uuid4().hex, replicas)


# Right after a NATS node is lost JetStream elects new leaders for its streams, and a
# gateway starting then gets timeouts or 503s for a few seconds: it waits, up to this long.
SHARED_VALUE_DEADLINE = 30.0


async def _shared_value(nc: Any, key: str, make: Callable[[], str], replicas: int) -> str:
    """The value of `key` in the gateways' KV bucket, created (with `replicas` copies: the
    event stream's) by whichever gateway comes first."""
    deadline = time.monotonic() + SHARED_VALUE_DEADLINE
    return await retry(lambda _n: _shared_value_once(nc, key, make, replicas), deadline=deadline,
                       retry_on=(NatsTimeoutError, NoRespondersError, ServiceUnavailableError),
                       backoff=Backoff(initial=0.2, maximum=2.0))


async def _shared_value_once(nc: Any, key: str, make: Callable[[], str], replicas: int) -> str:
    js = nc.jetstream()
    try:
        kv = await js.key_value(GATEWAY_BUCKET)
    except BucketNotFoundError:
        # as many copies as the event stream: losing the node that holds the secret must
        # not stop every new gateway (bus/replication.py)
        kv = await js.create_key_value(bucket=GATEWAY_BUCKET, history=1, replicas=replicas)
    try:
        entry = await kv.get(key)
        return entry.value.decode()  # type: ignore[no-any-return]
    except KeyNotFoundError:
        pass
    try:
        await kv.create(key, make().encode())
    except KeyWrongLastSequenceError:
        pass  # another gateway created it first; use theirs
    except NatsError as exc:  # the same, as some servers word it
        if "wrong last sequence" not in str(exc):
            raise
    return (await kv.get(key)).value.decode()  # type: ignore[no-any-return]


async def dependencies(app: web.Application) -> dict[str, str]:
    """The state of NATS and Redis as this gateway sees them now."""
    nc = app[NC]
    state: dict[str, str] = {"nats": "ok" if nc is not None and nc.is_connected else "unavailable"}
    if app[REDIS] is None:
        state["redis"] = "not configured"
    else:
        try:
            await asyncio.wait_for(app[REDIS].ping(), 1.0)
            state["redis"] = "ok"
        except REDIS_ERRORS:
            state["redis"] = "unavailable"
    return state


DEPENDENCY_EVERY = 5.0  # seconds between two `gateway.dependency_up` gauges


async def report_dependencies(app: web.Application) -> None:
    """Record NATS and Redis as this gateway sees them (`gateway.dependency_up`, 1 or 0),
    so a dashboard shows an outage per gateway, not only the reconnects after it."""
    while True:
        try:
            for name, state in (await dependencies(app)).items():
                if state != "not configured":
                    metrics.gauge("gateway.dependency_up", 1 if state == "ok" else 0, {"dependency": name})
        except Exception:  # a background task's boundary: this round is lost, not the task
            log.debug("gateway.dependency_report_failed", exc_info=True)
        await asyncio.sleep(DEPENDENCY_EVERY)


async def health_live(request: web.Request) -> web.Response:
    """Liveness: the process runs and its event loop answers. Nothing else is checked, so a
    NATS or Redis outage never gets a gateway restarted (as Relay's own `/live/`)."""
    return json_response({"is_healthy": True})


async def health_ready(request: web.Request) -> web.Response:
    """Readiness: this gateway can serve configs - from Redis (cached configs, relay
    authentication) or from NATS (the actors). 503 only when it can do neither: the one
    case in which a load balancer should take it out of the pool (docs/production.md)."""
    state = await dependencies(request.app)
    ready = state["redis"] == "ok" or state["nats"] == "ok"
    return json_response({"is_healthy": ready, "dependencies": state}, 200 if ready else 503)


async def health(request: web.Request) -> web.Response:
    """Everything healthy: NATS and Redis both (what `relayctl up` and `status` wait for)."""
    app = request.app
    state = await dependencies(app)
    healthy = state["nats"] == "ok" and state["redis"] in ("ok", "not configured")
    # "system": which system this gateway serves, so another gateway (or `up`) about to
    # listen on this port can tell its own system's gateways from another's.
    return json_response({"healthy": healthy, "dependencies": state, "system": app.get(SYSTEM_ID)},
                         200 if healthy else 503)


class RequestTimers(metrics.FlushedEvery):
    """`gateway.requests` (route, status, version), folded in the process and recorded
    every `every` seconds as one `timer_summary` point per series (the same histogram the
    metrics actor shows) instead of a point per request: a queued point costs the request
    a few microseconds and the flusher thread a fold, and a relay polls every 100 ms."""

    TAGS = ("route", "status", "version")

    def __init__(self, every: float = 1.0) -> None:
        super().__init__(every)
        self._series: dict[tuple[str, ...], TimerStats] = {}

    def add(self, seconds: float, tags: tuple[str, ...]) -> None:
        stats = self._series.get(tags)
        if stats is None:
            stats = self._series[tags] = TimerStats()
        stats.add(seconds)
        self._due()

    def _record(self) -> None:
        series, self._series = self._series, {}
        for tags, stats in series.items():
            metrics.timer_summary("gateway.requests", stats.summary(), dict(zip(self.TAGS, tags)))


class OwnSeries:
    """This gateway's own metric points, folded as the metrics actor folds everyone's: what
    `/metrics` answers when the aggregate cannot be had (NATS down, no metrics actor)."""

    def __init__(self) -> None:
        self.store = MetricsStore(help=HELP)
        self.lock = threading.Lock()

    def tap(self, process: str, points: list[Any]) -> None:
        with self.lock:  # called on the metrics flusher thread
            self.store.apply_batch({"process": process, "points": points}, now=time.time())

    def text(self) -> bytes:
        with self.lock:
            return self.store.prometheus_text()


PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OWN_SERIES_NOTE = b"# relayctl: the metrics actor did not answer; this gateway's own series only\n"


async def prometheus(request: web.Request) -> web.Response:
    """Every process's metrics, as the metrics actor aggregates them - scrape one gateway,
    not each (every gateway serves the same aggregate). Without NATS or the metrics actor,
    this gateway's own series, marked as such."""
    try:
        text = await ask(request.app, "metrics.snapshot", {"format": "prometheus"}, timeout=3.0, retries=1)
    except BUS_ERRORS as exc:  # NATS down, reconnecting, no metrics actor: all the same here
        own: OwnSeries = request.app[OWN_SERIES]
        log.warning("gateway.metrics_local_only", error=str(exc))
        return web.Response(body=OWN_SERIES_NOTE + own.text(),
                            headers={"Content-Type": PROMETHEUS_TYPE, "X-Relayctl-Metrics": "gateway-only"})
    return web.Response(body=text, headers={"Content-Type": PROMETHEUS_TYPE})


async def live(request: web.Request) -> web.Response:
    return json_response({"is_healthy": True})


def create_app(nats_url: str, redis_url: str | None, *, instrument_process: bool = True,
               limits: HttpLimits | None = None, settings: Settings | None = None) -> web.Application:
    """`settings`: the process's (bus/settings.py), built where it starts; by default from
    its environment."""
    settings = settings or Settings.load()
    limits = limits or HttpLimits.from_settings(settings)
    # handler_args carries the header limits to whichever runner serves the app.
    registrations = registration_buckets(limits)
    app = web.Application(client_max_size=MAX_BODY,
                          middlewares=[errors_middleware, limits_middleware(limits, registrations)],
                          handler_args=limits.handler_args())
    app[REGISTRATIONS] = registrations
    app[SETTINGS] = settings
    app[NC] = None
    app[NATS_WATCH] = NatsWatch()
    app[REDIS] = None
    app[REDIS_READ] = None
    app[ACCESS_SAMPLER] = AccessSampler.from_settings(settings)
    app[REQUEST_TIMERS] = RequestTimers()
    app[OWN_SERIES] = OwnSeries()
    app[RELAY_ACTIVITY] = RelayActivity()
    app[RELAY_AUTH_CACHE] = RelayAuthCache()
    app[BODIES] = BodyCache()
    # One of each per gateway: the relay routes and ingest check and cache with the same ones.
    app[MAC_KEYS] = MacKeys()
    auth = app[RELAY_AUTH] = RelayAuth(app, app[RELAY_AUTH_CACHE], app[MAC_KEYS])
    configs = app[PROJECT_CONFIGS] = ProjectConfigs(app, auth, app[MAC_KEYS], app[BODIES])
    registration = Registration(app)
    lookups = RelayLookups(app, auth)

    async def startup(app: web.Application) -> None:
        watch = app[NATS_WATCH]  # requests in flight fail at once when the connection drops
        watch.start()
        app[NC] = await connect(nats_url, name="gateway", on_disconnect=watch.dropped, on_reconnect=watch.restored)
        replicas = int(settings.value("RELAYCTL_STREAM_REPLICAS"))
        app[SECRET] = await registration_secret(app[NC], replicas)
        app[SYSTEM_ID] = await system_id(app[NC], replicas)
        try:
            await app[RELAY_ACTIVITY].open(app[NC], replicas)
        except BUS_ERRORS:  # `relay status` then lacks this gateway's news; serving goes on
            log.warning("gateway.relay_activity_unavailable", exc_info=True)
        async def relay_changed(msg: Any) -> None:
            app[RELAY_AUTH_CACHE].drop(msg.data.decode() or None)

        await app[NC].subscribe(RELAY_CHANGED, cb=relay_changed)
        if instrument_process:
            instrument(app[NC], asyncio.get_running_loop(), "gateway", settings=settings)
            metrics.declare(GATEWAY_COUNTERS)
            if metrics.metrics.instance is not None:
                metrics.metrics.instance.add_tap(app[OWN_SERIES].tap)
        if redis_url:
            # On a cluster (--redis-cluster) the URL names start nodes; with a read URL the
            # config cache is read there (replicas), rate-limit counts still go to `redis`.
            cluster = bool(settings.value("RELAYCTL_REDIS_CLUSTER"))
            app[REDIS] = redis_clients.async_client(redis_url, cluster=cluster)
            # The config cache and relay auth are read by a client of their own, whose
            # timeout bounds each read as a whole (bus/redis_clients.async_client `deadline`).
            read_url = settings.value("RELAYCTL_REDIS_READ_URL")
            app[REDIS_READ] = redis_clients.async_client(read_url or redis_url, cluster=cluster,
                                                         replicas=bool(read_url), deadline=True)
            if read_url:  # replicas added or removed later are read from, or no longer
                app[TOPOLOGY] = asyncio.get_running_loop().create_task(
                    redis_clients.follow_topology(app[REDIS_READ]))
        app[DEPENDENCY_REPORTER] = asyncio.get_running_loop().create_task(report_dependencies(app))
        app[MAC_KEY_PREFETCH] = asyncio.get_running_loop().create_task(
            app[MAC_KEYS].prefetch(app[NC], (CONFIG_MAC_BUCKET, RELAY_AUTH_MAC_BUCKET)))

    async def cleanup(app: web.Application) -> None:
        app[REQUEST_TIMERS].flush()  # what was timed since the last flush, before the process ends
        for task_key in (DEPENDENCY_REPORTER, MAC_KEY_PREFETCH, TOPOLOGY):
            task = app.get(task_key)
            if task is not None:
                task.cancel()
        if app[REDIS_READ] is not None:
            await app[REDIS_READ].aclose()
        if app[REDIS] is not None:
            await app[REDIS].aclose()
        nc = app[NC]
        if nc is not None:
            # Drained when connected; during a NATS outage there is nothing to drain to, and
            # a gateway stopped then must still stop cleanly.
            try:
                await (nc.drain() if nc.is_connected else nc.close())
            except BUS_ERRORS:
                log.warning("gateway.nats_close_failed", exc_info=True)
                await nc.close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    prefix = "/api/0/relays"
    app.router.add_get(f"{prefix}/live/", live)
    app.router.add_post(f"{prefix}/register/challenge/", registration.challenge)
    app.router.add_post(f"{prefix}/register/response/", registration.response)
    app.router.add_post(f"{prefix}/projectconfigs/", configs.project_configs)
    app.router.add_post(f"{prefix}/publickeys/", lookups.public_keys)
    app.router.add_post(f"{prefix}/projectids/", lookups.project_ids)
    app.router.add_get("/_health/", health)
    app.router.add_get("/_health/live", health_live)
    app.router.add_get("/_health/ready", health_ready)
    add_ai_routes(app)
    add_ingest_routes(app)
    add_management_routes(app)
    add_console_routes(app)
    app.router.add_get("/metrics", prometheus)
    return app


class PortInUse(Exception):
    """The gateway may not listen where it was told to (gateway/binding.py says why)."""


def run_gateway(host: str, port: int, nats_url: str, redis_url: str | None, *, data_dir: Path | None = None,
                settings: Settings | None = None) -> None:
    """Serve until SIGTERM/SIGINT; raises `PortInUse` when host:port belongs to another system."""
    settings = settings or Settings.load()
    limits = HttpLimits.from_settings(settings)
    app = create_app(nats_url, redis_url, limits=limits, settings=settings)
    lock = PortLock(port)

    async def claim_port(app: web.Application) -> None:
        # After the other startup hooks (the system id is known), right before the bind:
        # the lock is held from this check until the socket listens.
        await asyncio.to_thread(lock.acquire)
        problem = await asyncio.to_thread(port_problem, host, port, app[SYSTEM_ID])
        if problem:
            lock.release()
            raise PortInUse(problem)

    app.on_startup.append(claim_port)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        try:
            await serve(runner, host, port, limits, reuse_port=True)
        except BaseException:
            try:
                await runner.cleanup()
            except Exception:  # the process's boundary: the start failed, that error is raised
                log.warning("gateway.cleanup_failed", exc_info=True)
            raise
        finally:
            lock.release()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
