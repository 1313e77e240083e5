"""`up`, `down` and `status`: the system's services as one.

`up` provisions or connects: a service whose process is alive is left alone ("already
running") unless `--recreate`; a dead one is started again. Independent services start in
parallel (stores and the local model, then the actors, then the gateways), then each is
health-checked with retries; one that never turns healthy fails the command with its name
and last error, and what this `up` had started is stopped again. Without `--detach` it
stays in the foreground, supervising what it started, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import click
from click.core import ParameterSource

from bus import local_model
from bus.embedded import free_port
from cli import health
from cli.context import Context, check_redis_urls, emit, fail, parse_bind_option
from cli.services import (
    ACTORS,
    GATEWAYS_ENV,
    OPTIONAL,
    Orchestrator,
    Unhealthy,
    gateway_names,
    is_gateway,
    selected_services,
    service_names,
    without_credentials,
)
from cli.stream_health import stream_report
from cli.supervisor import Supervisor
from gateway.binding import holder_system, port_problem


@dataclass
class Up:
    """One `up`: what it was asked, what it found and what it did, step by step."""

    orch: Orchestrator
    selected: list[str]
    bind: str
    host: str
    port: int
    report: dict[str, str] = field(default_factory=dict)  # service -> running / already running / external
    skipped: dict[str, str] = field(default_factory=dict)  # service -> why it is not started
    failed: dict[str, str] = field(default_factory=dict)  # optional service -> why it did not come up
    to_start: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # what every service started gets besides its own

    def use_external(self, nats_url: str | None, redis_url: str | None) -> dict[str, str | None]:
        """A NATS or Redis given by URL is used as it is: none of ours is run for it."""
        external = {"nats": nats_url, "redis": redis_url}
        for name, url in external.items():
            if url:
                self.orch.state[name] = url
                self.orch.state["services"].pop(name, None)
                self.orch.state[f"{name}_roles"] = False
        return external

    def choose(self, external: dict[str, str | None], recreate: bool, bind_given: bool) -> None:
        """Which of the selected services to start: not an external one, not the local model
        when another backend is configured or its packages are missing, not one running
        already (unless `--recreate`, or a gateway that moves to another address)."""
        orch, settings = self.orch, self.orch.ctx.settings
        configured = local_model.backend_configured(settings)
        for name in self.selected:
            if external.get(name):
                self.report[name] = "external"
                continue
            if name == "llm" and (configured or not local_model.available(settings)):
                self.skipped[name] = ("not needed: an AI backend is configured" if configured
                                      else "not installed: " + local_model.install_command())
                orch.state.pop("llm", None)
                continue
            moved = is_gateway(name) and bind_given and orch.state.get("up", {}).get("bind") not in (None, self.bind)
            if orch.running(name) and not recreate and not moved:
                self.report[name] = "already running"
                continue
            self.to_start.append(name)

    def check_address(self) -> None:
        """Before anything starts: another system (or program) on the gateway's address is a
        clear error now, not a gateway that dies after every other service came up. Gateways
        of this system (recorded from their /_health/) may hold it: they share."""
        orch = self.orch
        if "gateway" in self.to_start and not (orch.running("gateway")
                                               and orch.state.get("up", {}).get("bind") == self.bind):
            problem = port_problem(self.host, self.port, orch.state.get("system_id"))
            if problem:
                fail(problem)

    def stop_replaced(self) -> None:
        """What is started again stops first; fewer gateways than last time: the ones beyond go."""
        for name in reversed(self.to_start):
            self.orch.stop_service(name)
        if "gateway" in self.selected:
            for name in service_names(self.orch.state):
                if is_gateway(name) and name not in self.selected:
                    self.orch.stop_service(name)
                    self.orch.state["services"].pop(name, None)

    def prepare_environment(self, redis_url: str | None, redis_cluster: bool | None,
                            redis_read_url: str | None) -> None:
        """What every service gets in its environment besides this process's own: the
        external Redis's kind (kept in the state for every later `up` and `status`) and where
        the local model answers."""
        orch = self.orch
        self.env = {}
        if redis_url:
            orch.state["redis_cluster"] = bool(redis_cluster)
            orch.state["redis_read_url"] = redis_read_url
        elif "redis" in self.to_start:  # its own Redis again: one server
            orch.state.pop("redis_cluster", None)
            orch.state.pop("redis_read_url", None)
        if orch.state.get("redis") and orch.state.get("redis_cluster"):
            self.env["RELAYCTL_REDIS_CLUSTER"] = "1"
        if orch.state.get("redis_read_url"):
            self.env["RELAYCTL_REDIS_READ_URL"] = str(orch.state["redis_read_url"])
        already = [n for n, st in self.report.items() if st == "already running"]
        if "llm" in self.selected and "llm" in self.to_start + already:
            port = health.host_port(orch.state.get("llm", ""))[1] or free_port()
            orch.state["llm"] = f"http://127.0.0.1:{port}"
            self.env.update(local_model.client_environment(port, orch.ctx.settings))
            self.env[local_model.FAILURE_ENV] = str(orch.llm_failure_file())

    def start(self) -> None:
        """Start in stages, each stage's services at once, then wait until each is healthy.
        A failed `up` leaves nothing behind: the next one starts afresh (with a corrected
        --bind, say) instead of finding half a system "already running"."""
        stages = [[s for s in self.to_start if s in ("nats", "redis", "llm")],
                  [s for s in self.to_start if s in ACTORS], [s for s in self.to_start if is_gateway(s)]]
        if self.to_start and not self.orch.state.get("nats") and "nats" not in self.to_start:
            fail("no NATS: start the nats service or pass --nats-url")
        try:
            for stage in stages:
                for name in stage:
                    self.orch.start_service(name, self.bind, self.env)
                    self.report[name] = "running"
                self.orch.save()
                with ThreadPoolExecutor(max_workers=max(1, len(stage))) as pool:
                    list(pool.map(self._wait, stage))
        except click.ClickException as exc:
            started_now = [n for n in self.to_start if self.report.get(n) == "running"]
            for name in reversed(started_now):
                self.orch.stop_service(name)
            self.orch.save()
            fail(exc.message + (f"\nStopped what this `up` had started: {', '.join(started_now)}"
                                if started_now else ""))

    def _wait(self, name: str) -> None:
        try:
            self.orch.wait_healthy(name)
        except Unhealthy as exc:
            if name not in OPTIONAL:
                raise
            self.failed[name] = self.orch.optional_failed(exc)
            self.report[name] = "failed"

    @property
    def started(self) -> list[str]:
        return [n for n, s in self.report.items() if s == "running"]

    def record(self) -> None:
        """What should run from now on (for `status`), and the system id of its gateways."""
        orch = self.orch
        if "gateway" in self.to_start:
            orch.state["system_id"] = holder_system(self.host, self.port)[1] or orch.state.get("system_id")
        meant = set(orch.state.get("up", {}).get("services", ())) | set(self.report)
        meant = {n for n in meant if not is_gateway(n) or n in self.selected or "gateway" not in self.selected}
        orch.state["up"] = {"bind": self.bind, "services": [n for n in service_names(orch.state) if n in meant]}
        orch.save()

    def summary(self) -> tuple[dict[str, Any], str]:
        """The JSON document and the text `up` prints.

        `--json` is for programs (INTERFACE.md): its `nats` and `redis` URLs are the
        operator's own, credentials included, so any client can connect with them. The text
        on screen (or in a CI log) shows no password: the URLs without credentials, and the
        file (0600) holding the operator's own."""
        state = self.orch.state
        credentials = self.orch.save_operator_credentials()
        out: dict[str, Any] = {"gateway": state.get("gateway"), "nats": state.get("nats"),
                               "redis": state.get("redis"), "credentials": str(credentials), "services": self.report}
        if state.get("llm"):
            out["llm"] = state["llm"]
        if self.skipped:
            out["skipped"] = self.skipped
        if self.failed:
            out["failed"] = self.failed
        lines = {**self.report, **self.skipped, **{n: f"FAILED: {reason}" for n, reason in self.failed.items()}}
        text = ("Nothing to do: every service is already running\n" if not self.started and not self.failed
                else "") + \
            "\n".join(f"  {n:<9} {s}" for n, s in lines.items()) + \
            f"\nGateway: {out['gateway']}\nNATS:    {without_credentials(state.get('nats'))}" + \
            f"\nRedis:   {without_credentials(state.get('redis'))}" + \
            f"\nCredentials (the operator's NATS and Redis URLs): {credentials}"
        if self.failed:
            text += ("\nOptional service(s) failed: " + ", ".join(self.failed) + "; everything else runs, and the AI "
                     "endpoints answer 503 with the reason until `relayctl up` starts it again")
        return out, text

    def supervise(self, ctx: Context) -> None:
        """In the foreground until Ctrl-C or SIGTERM, starting again what dies; then stop
        what this `up` started, keeping what other commands did meanwhile."""
        orch, started = self.orch, self.started
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        supervisor = Supervisor(orch, list(started), self.bind, self.env)
        try:
            while not stop.wait(1.0):
                if not supervisor.check():
                    click.echo("relayctl: every service this `up` started was stopped elsewhere; exiting", err=True)
                    break
        except KeyboardInterrupt:
            pass
        orch.state = ctx.load_state() or orch.state
        orch.state.setdefault("services", {})
        for name in reversed(supervisor.names):
            orch.stop_service(name)
        orch.state.get("up", {})["services"] = [n for n in orch.state.get("up", {}).get("services", ())
                                                if n not in started]
        orch.save()


def _selection(services: tuple[str, ...], exclude: tuple[str, ...], gateways: int | None) -> list[str]:
    selected = selected_services(services, exclude)
    if "gateway" in selected:  # its instances after it, where SERVICES has it (last)
        selected += gateway_names(gateways or os.cpu_count() or 1)[1:]
    return selected


def up_command(ctx: Context, services: tuple[str, ...], bind: str, nats_url: str | None, redis_url: str | None,
               redis_cluster: bool | None, redis_read_url: str | None, gateways: int | None,
               exclude: tuple[str, ...], recreate: bool, detach: bool, as_json: bool) -> None:
    if (redis_cluster or redis_read_url) and not redis_url:
        fail("--redis-cluster and --redis-read-url need --redis-url: `up` runs one Redis, not a cluster", 2)
    check_redis_urls(redis_url, redis_read_url, bool(redis_cluster))
    selected = _selection(services, exclude, gateways)
    host, port = parse_bind_option(bind)
    Orchestrator(ctx).check_data_dir()
    bind_given = click.get_current_context().get_parameter_source("bind") != ParameterSource.DEFAULT
    run = Up(Orchestrator(ctx), selected, f"[{host}]:{port}" if ":" in host else f"{host}:{port}", host, port)
    external = run.use_external(nats_url or ctx.nats_url_option, redis_url)
    run.choose(external, recreate, bind_given)
    run.check_address()
    run.stop_replaced()
    run.prepare_environment(redis_url, redis_cluster, redis_read_url)
    run.start()
    run.record()
    out, text = run.summary()
    emit(as_json, out, text)
    if detach:
        return
    if not as_json:
        click.echo("Running; press Ctrl-C to stop what this command started.")
    run.supervise(ctx)


def down_command(ctx: Context, as_json: bool) -> None:
    orch = Orchestrator(ctx)
    if orch.data_dir.exists() and not orch.data_dir.is_dir():
        orch.check_data_dir()
    if not orch.state["services"]:
        emit(as_json, {"stopped": []}, "Nothing was running")
        return
    stopped = []
    for name in reversed(service_names(orch.state)):
        if orch.running(name):
            orch.stop_service(name)
            stopped.append(name)
        elif orch.record(name):
            orch.record(name)["pid"] = None  # crashed: nothing to stop, nothing meant to run
    orch.state.get("up", {}).pop("services", None)
    orch.save()
    emit(as_json, {"stopped": stopped}, "Stopped " + ", ".join(stopped) if stopped else "Nothing was running")


def _status_names(orch: Orchestrator) -> list[str]:
    """What should run: what `up` started and `down` (or the end of a foreground `up`) has
    not stopped - a crashed service keeps its pid, a stopped one has none."""
    meant = set(orch.state.get("up", {}).get("services", ()))
    return [n for n in service_names(orch.state)
            if (orch.record(n).get("pid") or n in meant
                or (n in ("nats", "redis") and orch.state.get(n) and not orch.record(n)))
            and not (n in ACTORS and not orch.state.get("nats"))]


def _service_health(orch: Orchestrator, names: list[str]) -> dict[str, dict[str, Any]]:
    # Checked in parallel: each actor check waits for ping answers, one after the other is slow.
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        health_of = dict(zip(names, pool.map(orch.healthy, names)))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        ok, detail = health_of[name]
        entry: dict[str, Any] = {"healthy": ok, "detail": detail, "pid": orch.record(name).get("pid")}
        if name in ACTORS:
            # the actor check's detail is "<n> instance(s) answered ..."
            entry["instances"] = int(detail.split()[0]) if ok else 0
        out[name] = entry
    return out


def status_command(ctx: Context, as_json: bool) -> None:
    orch = Orchestrator(ctx)
    names = _status_names(orch)
    meant = set(orch.state.get("up", {}).get("services", ()))
    if not any(orch.record(n).get("pid") or n in meant for n in names):
        # As `systemctl status` of a stopped unit: exit 3.
        emit(as_json, {"services": {}, "running": False},
             f"Nothing is running (data dir {orch.data_dir}); start it with `relayctl up`")
        sys.exit(3)
    out = _service_health(orch, names)
    report: dict[str, Any] = {"services": out}
    if orch.state.get("nats"):
        # the event stream itself: last sequence, undecodable commits skipped, write errors
        nats_detail = "" if out.get("nats", {}).get("healthy", True) else out["nats"]["detail"]
        report["events"] = stream_report(orch.state["nats"], nats_detail if nats_detail.startswith(
            "event store cannot write") else None, int(ctx.settings.value("RELAYCTL_STREAM_REPLICAS")))
    lines = [f"{n:<9} {'healthy' if e['healthy'] else 'UNHEALTHY'}  pid={e['pid'] or '-'}  {e['detail']}"
             for n, e in out.items()]
    if "events" in report:
        lines.append(f"{'events':<9} {'healthy' if report['events']['healthy'] else 'UNHEALTHY'}  "
                     f"{report['events']['detail']}")
    emit(as_json, report, "\n".join(lines))
    if not all(e["healthy"] for e in out.values()) or not report.get("events", {}).get("healthy", True):
        sys.exit(1)


def register(main: click.Group) -> None:
    @main.command()
    @click.argument("services", nargs=-1)
    @click.option("--bind", default="127.0.0.1:3000", show_default=True, help="Gateway HOST:PORT.")
    @click.option("--nats-url", "nats_url", default=None, help="Use this NATS instead of starting one.")
    @click.option("--redis-url", envvar="RELAYCTL_REDIS_URL", default=None,
                  help="Use this Redis instead of starting one.")
    @click.option("--redis-cluster", is_flag=True, default=None, envvar="RELAYCTL_REDIS_CLUSTER",
                  help="The Redis URL names Redis Cluster start nodes (comma-separated).")
    @click.option("--redis-read-url", envvar="RELAYCTL_REDIS_READ_URL", default=None,
                  help="Gateways read the config cache here (replicas); writes go to --redis-url.")
    @click.option("--gateways", type=click.IntRange(1, 256), envvar=GATEWAYS_ENV, default=None,
                  help="Gateway processes, all on the --bind port  [default: one per core]")
    @click.option("--exclude", multiple=True, help="Leave this service out (repeatable).")
    @click.option("--recreate", is_flag=True, help="Restart services that are already running.")
    @click.option("--detach", is_flag=True, help="Return once every service is healthy.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def up(ctx: Context, services: tuple[str, ...], bind: str, nats_url: str | None, redis_url: str | None,
           redis_cluster: bool | None, redis_read_url: str | None, gateways: int | None,
           exclude: tuple[str, ...], recreate: bool, detach: bool, as_json: bool) -> None:
        """Start the system: NATS, Redis, every actor and the gateways (one per core)."""
        up_command(ctx, services, bind, nats_url, redis_url, redis_cluster, redis_read_url, gateways,
                   exclude, recreate, detach, as_json)

    @main.command()
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def down(ctx: Context, as_json: bool) -> None:
        """Stop everything `up` started for this data dir."""
        down_command(ctx, as_json)

    @main.command()
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def status(ctx: Context, as_json: bool) -> None:
        """Health of every service and actor instance."""
        status_command(ctx, as_json)
