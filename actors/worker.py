"""Run actor instances in this process: `relayctl worker` and `relayctl up` use this.

`_kinds()` lists every actor: how to start it and what it is for; the NATS subjects (and
message types) each serves come from the endpoint table (messages/endpoints.py). A
`Worker` connects once, makes sure the event stream exists, starts each actor under a
`Supervisor`, waits for its replay, then registers its micro service in the actor's queue
group, so a new instance only takes requests once it can answer them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
import structlog

from actors.base import wait_ready
from actors.supervision import Supervisor
from bus import metrics
from bus.cache import ConfigCache, RedisConfigCache
from bus.eventstore import JetStreamEventStore
from bus.metric_catalogue import ACTOR_COUNTERS
from bus.process import instrument
from bus.runtime import BUS_ERRORS, BusRuntime
from bus.seams import NatsBus
from bus.service import ActorService
from bus.settings import Settings
from messages.endpoints import ACTORS, served_by
from messages.schema import Schema

log = structlog.get_logger(__name__)


@dataclass
class Deps:
    """What an actor is given: the loop, the bus, the config cache (None without Redis)."""

    runtime: BusRuntime
    bus: NatsBus
    redis_url: str | None
    settings: Settings

    @property
    def nc(self) -> Any:
        return self.bus.nc

    def cache(self) -> ConfigCache | None:
        """A client of its own for each actor (instance) that writes the cache."""
        return RedisConfigCache(self.redis_url, cluster=self.redis_cluster) if self.redis_url else None

    @property
    def redis_cluster(self) -> bool:
        """Whether `redis_url` names Redis Cluster start nodes (`--redis-cluster`)."""
        return bool(self.settings.value("RELAYCTL_REDIS_CLUSTER"))


@dataclass
class ActorKind:
    name: str
    start: Callable[[Deps], pykka.ActorRef[Any]]
    endpoints: dict[str, dict[str, Schema]]
    description: str


def _kinds() -> dict[str, ActorKind]:
    from actors.ai import ai_actor_factory
    from actors.commands import CommandActor, snapshot_interval
    from actors.configs import ConfigActor
    from actors.forwarder import forwarder_factory
    from actors.lookup import KeyLookupActor, OrgAccessActor
    from actors.metrics import MetricsActor
    from actors.transport import TransportActor, TransportConfig

    return {
        "commands": ActorKind(
            "commands", lambda d: CommandActor.start(d.runtime, d.bus, snapshot_every=snapshot_interval(d.settings)),
            served_by("commands"),
            "control messages in, domain events out"),
        "keys": ActorKind(
            "keys", lambda d: KeyLookupActor.start(d.runtime, d.bus),
            served_by("keys"), "public key -> project, status, rate limits"),
        "orgs": ActorKind(
            "orgs", lambda d: OrgAccessActor.start(d.runtime, d.bus, d.cache()),
            served_by("orgs"), "org access, trusted and registered relays"),
        "configs": ActorKind(
            "configs", lambda d: ConfigActor.start(d.runtime, d.bus, d.cache()),
            served_by("configs"),
            "builds project configs and materializes them into Redis"),
        "metrics": ActorKind(
            "metrics", lambda d: MetricsActor.start(d.runtime, d.bus, ttl=d.settings.value("RELAYCTL_METRICS_TTL")),
            served_by("metrics"), "aggregated internal metrics"),
        "transport": ActorKind(
            "transport", lambda d: TransportActor.start(d.runtime, d.bus, TransportConfig.from_settings(d.settings)),
            served_by("transport"), "forwards the system's own error reports"),
        "ai": ActorKind(
            "ai", ai_actor_factory(), served_by("ai"),
            "AI fix suggestions and the error events they are for"),
        "forwarder": ActorKind(
            "forwarder", forwarder_factory(), served_by("forwarder"),
            "consumes the ingest stream: forwards envelopes, stores error events, counts outcomes"),
    }


ACTOR_NAMES = ACTORS


class Worker:
    def __init__(self, names: list[str], nats_url: str, redis_url: str | None = None, *,
                 process_name: str = "worker", on_give_up: Callable[[str], None] | None = None,
                 instrument: bool = True, settings: Settings | None = None) -> None:
        """`settings`: the process's (bus/settings.py), built where it starts; by default from
        its environment."""
        kinds = _kinds()
        unknown = [n for n in names if n not in kinds]
        if unknown:
            raise ValueError(f"unknown actor {', '.join(unknown)}; known: {', '.join(kinds)}")
        self.kinds = [kinds[n] for n in names]
        self.nats_url = nats_url
        self.redis_url = redis_url
        self.process_name = process_name
        self.on_give_up = on_give_up
        self.instrument = instrument
        self.settings = settings or Settings.load()
        self.runtime: BusRuntime | None = None
        self.supervisors: dict[str, Supervisor] = {}
        self.services: list[ActorService] = []
        self.stopped = threading.Event()

    def start(self, ready_timeout: float = 120.0) -> Worker:
        runtime = self.runtime = BusRuntime(self.nats_url, name=self.process_name).start()
        assert runtime.nc is not None
        if self.instrument:
            instrument(runtime.nc, runtime.loop, f"worker:{self.process_name}", settings=self.settings)
            # At 0 from the start, so an alert on restarts has a series before the first one.
            metrics.declare([("actor.restarts", {"actor": kind.name}) for kind in self.kinds]
                            + [c for kind in self.kinds for c in ACTOR_COUNTERS.get(kind.name, ())])
        bus = NatsBus(runtime.nc, JetStreamEventStore(
            runtime.nc, replicas=self.settings.value("RELAYCTL_STREAM_REPLICAS")))
        runtime.call(bus.events.ensure())
        deps = Deps(runtime, bus, self.redis_url, self.settings)
        def count_restart(name: str) -> None:
            metrics.incr("actor.restarts", tags={"actor": name})

        for kind in self.kinds:
            supervisor = Supervisor(kind.name, functools.partial(kind.start, deps), on_give_up=self.on_give_up,
                                    on_restart=count_restart)
            self.supervisors[kind.name] = supervisor.start()
        for kind in self.kinds:
            ref = self.supervisors[kind.name].ref
            assert ref is not None
            wait_ready(ref, ready_timeout)
            service = ActorService(kind.name, self.supervisors[kind.name], kind.endpoints,
                                   description=kind.description)
            runtime.call(bus.serve(service))
            self.services.append(service)
            log.info("worker.actor_ready", actor=kind.name)
        return self

    def stop(self) -> None:
        if self.runtime is None:
            return
        for service in self.services:
            try:
                self.runtime.call(service.stop(), timeout=5)
            except BUS_ERRORS:
                pass  # stopping anyway
        for supervisor in self.supervisors.values():
            supervisor.stop()
        self.runtime.close()
        self.runtime = None
        self.stopped.set()
