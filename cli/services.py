"""The services of one system and how they are run: the orchestrator of `up`, `down` and
`status` (the commands are cli/up.py; the processes they start, cli/run.py).

Every service (nats, redis, the local model, each actor, each gateway) is a separate OS
process recorded with its pid in `<data dir>/services.json`. `Orchestrator` starts one
(`start_service`), checks that it is ready (`healthy`, `wait_healthy`: the probes are
cli/health.py) and stops it (`stop_service`); a foreground `up` supervises what it started
(cli/supervisor.py).

The NATS that `up` starts requires credentials (bus/embedded.py, "NATS roles"): each process
gets the URL of its own role in its environment (`RELAYCTL_NATS_URL`, not the command line,
which any local user can read in /proc), and the state file - holding the operator's URL -
is readable by this user only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from actors.worker import ACTOR_NAMES
from bus import local_model
from bus.embedded import (
    REDIS_ROLES,
    free_port,
    nats_command,
    nats_passwords,
    port_open,
    redis_command,
    redis_passwords,
    redis_role_url,
    role_url,
    write_nats_auth_config,
    write_private,
    write_redis_config,
)
from bus.spawn import NotReady, describe_exit, log_tail, spawn, wait_ready
from cli import health
from cli.context import Context, fail
from cli.stream_health import nats_write_error, stream_report
from gateway.binding import parse_bind, url_host

ACTORS = ACTOR_NAMES
# "llm" is the embedded AI backend (bus/local_model.py): started only when its packages are
# installed and no OpenAI-compatible backend is configured.
SERVICES = ("nats", "redis", "llm") + ACTORS + ("gateway",)
# A service the system runs without: when it fails, `up` reports it and starts the rest,
# and `status` shows why (the AI endpoints answer 503 with the reason).
OPTIONAL = ("llm",)
OPERATOR_CREDENTIALS = "operator-credentials.json"
GATEWAYS_ENV = "RELAYCTL_GATEWAYS"


def is_gateway(name: str) -> bool:
    """`gateway` and its further instances `gateway-2` ... `gateway-<n>`: the same process,
    all on the one port (SO_REUSEPORT, gateway/binding.py)."""
    return name == "gateway" or (name.startswith("gateway-") and name[8:].isdigit())


def gateway_names(count: int) -> list[str]:
    return ["gateway"] + [f"gateway-{i}" for i in range(2, count + 1)]


def service_names(state: dict[str, Any]) -> list[str]:
    """SERVICES with every gateway instance recorded in `state` after `gateway`, in order."""
    extra = sorted((n for n in state.get("services", {}) if is_gateway(n) and n != "gateway"),
                   key=lambda n: int(n[8:]))
    return list(SERVICES) + extra


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text().split()
        if len(stat) > 2 and stat[2] == "Z":
            return False
    except OSError:
        return True
    return marker is None or marker in cmdline


def stop_pid(pid: int, timeout: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Orchestrator:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.data_dir = ctx.data_dir
        self.logs = self.data_dir / "logs"
        self.state = ctx.load_state()
        self.state.setdefault("services", {})
        self.procs: dict[str, Any] = {}  # the processes this command spawned (to reap, and learn why they ended)

    def check_data_dir(self) -> None:
        """The data dir is a directory this user can write, or a clear error (not a traceback)."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            probe = self.data_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            self._unusable(exc)

    def save(self) -> None:
        try:
            write_private(self.ctx.state_path, json.dumps(self.state, indent=2, sort_keys=True))
        except OSError as exc:
            self._unusable(exc)

    def _unusable(self, exc: OSError) -> None:
        fail(f"data dir {self.data_dir} is not usable: {exc.strerror or exc}"
             f"{f' ({exc.filename})' if exc.filename else ''}; "
             "pass a writable directory with --data-dir or RELAYCTL_DATA_DIR")

    def save_operator_credentials(self) -> Path:
        """`<data dir>/operator-credentials.json` (0600): the operator's NATS and Redis URLs,
        with their passwords, for other clients (`nats`, `redis-cli`, scripts)."""
        path = self.data_dir / OPERATOR_CREDENTIALS
        try:
            write_private(path, json.dumps({"nats": self.state.get("nats"), "redis": self.state.get("redis")},
                                           indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            self._unusable(exc)
        return path

    def nats_url_for(self, role: str) -> str:
        """The URL a service connects with: its role's credentials on the NATS `up` started,
        else the URL given (an external NATS: its operator knows its users)."""
        if self.state.get("nats_roles"):
            return role_url(self.state["nats"], role, nats_passwords(self.data_dir))
        return str(self.state["nats"])

    def redis_env(self, role: str) -> dict[str, str]:
        """`RELAYCTL_REDIS_URL` for a service: its role's credentials on the Redis `up`
        started (none for a role that needs no Redis), else the URL given, as it is."""
        if not self.state.get("redis"):
            return {}
        if not self.state.get("redis_roles"):
            return {"RELAYCTL_REDIS_URL": str(self.state["redis"])}
        if role not in REDIS_ROLES:
            return {}
        return {"RELAYCTL_REDIS_URL": redis_role_url(self.state["redis"], role, redis_passwords(self.data_dir))}

    def record(self, name: str) -> dict[str, Any]:
        return self.state["services"].get(name) or {}

    def running(self, name: str) -> bool:
        rec = self.record(name)
        return pid_alive(rec.get("pid"), rec.get("marker"))

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None, **extra: Any) -> None:
        """Start service `name` detached (it outlives this command), its output appended to
        `<data dir>/logs/<name>.log`, and record it."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        proc = spawn(cmd, log=log_path, detach=True, env={**os.environ, **(env or {})})
        self.procs[name] = proc
        self.state["services"][name] = {"pid": proc.pid, "cmd": cmd, "log": str(log_path),
                                        "marker": extra.pop("marker", None), "started": time.time(), **extra}

    def python_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cli", "--data-dir", str(self.data_dir), *args]

    # -- health ----------------------------------------------------------------------------

    def llm_failure_file(self) -> Path:
        """Why the local model stopped serving: written by its process or by `up`, read by
        `status` and the AI actor (bus/local_model.py)."""
        return self.data_dir / "llm.failure"

    def healthy(self, name: str) -> tuple[bool, str]:
        rec = self.record(name)
        # No marker check here: a process just spawned may not have exec'd its binary yet.
        if rec and not pid_alive(rec.get("pid")):
            reason = local_model.failure_reason(self.llm_failure_file()) if name == "llm" else None
            if not rec.get("pid"):
                return False, f"not running: {reason}" if reason else "not running"
            if reason:
                return False, f"process {rec.get('pid')} is not running: {reason}"
            return False, f"process {rec.get('pid')} is not running; log: {log_tail(Path(rec.get('log', '')))}"
        if name == "llm":
            return health.http_health(self.state["llm"] + "/health")
        if name in ("nats", "redis"):
            url = self.state.get(name, "")
            host, port = health.host_port(url)
            if not port_open(host, port):
                return False, f"nothing listens on {host}:{port}"
            if name == "redis":
                return health.redis_ping(url, bool(self.state.get("redis_cluster")))
            # A stream that hit a disk write error answers every append with silence: say why.
            write_error = nats_write_error(Path(rec["log"]), int(rec["pid"])) if rec.get("pid") else None
            return (False, write_error) if write_error else (True, "ok")
        if is_gateway(name):
            ok, detail = health.http_health(self.state["gateway"] + "/_health/")
            # Another gateway of this system may share the port and answer for this one.
            port = health.host_port(self.state["gateway"])[1]
            if ok and rec.get("pid") and health.listens(int(rec["pid"]), port) is False:
                return False, f"process {rec['pid']} does not listen on port {port} yet"
            return ok, detail
        ok, detail = health.ping_actor(self.state["nats"], name)
        if ok and name == "commands":
            write_error = stream_report(self.state["nats"], None)["write_error"]
            return (False, f"{detail}; {write_error}") if write_error else (ok, detail)
        return ok, detail

    def wait_healthy(self, name: str, timeout: float | None = None) -> None:
        """Until service `name`, just started by this command, is healthy (within `timeout`,
        default `RELAYCTL_HEALTH_TIMEOUT` seconds); else `Unhealthy` with its last check's
        answer, or how its process ended (the status, or the signal) and the end of its log."""
        if timeout is None:
            timeout = float(self.ctx.settings.value("RELAYCTL_HEALTH_TIMEOUT"))
        rec = self.record(name)
        log = Path(rec["log"]) if rec.get("log") else None
        try:
            wait_ready(self.procs[name], name, lambda: self.healthy(name), timeout=timeout, interval=0.2,
                       explain=lambda returncode: self._ended(name, returncode), log=log)
        except NotReady as exc:
            raise Unhealthy(name, exc.detail) from None

    def _ended(self, name: str, returncode: int) -> str:
        pid = self.record(name).get("pid")
        reason = local_model.failure_reason(self.llm_failure_file()) if name == "llm" else None
        return f"process {pid} is not running: {reason}" if reason else f"process {pid} {describe_exit(returncode)}"

    def optional_failed(self, failure: Unhealthy) -> str:
        """An optional service did not come up: stop what is left of it and keep the reason
        where `status` and the AI actor find it."""
        reason = local_model.failure_reason(self.llm_failure_file()) or failure.detail
        self.stop_service(failure.service)
        write_private(self.llm_failure_file(), reason + "\n")
        return reason

    # -- up / down -------------------------------------------------------------------------

    def start_service(self, name: str, bind: str, env: dict[str, str]) -> None:
        if name == "llm":
            port = health.host_port(self.state["llm"])[1]
            # Run through bus.local_model's `serve`, which says why llama-server died, if it does.
            self.spawn("llm", [sys.executable, "-m", "bus.local_model", "serve", "--port", str(port),
                               "--failure-file", str(self.llm_failure_file())],
                       marker=f"bus.local_model serve --port {port} ")
        elif name == "nats":
            port = health.host_port(self.state.get("nats", ""))[1] or free_port()
            if port_open("127.0.0.1", port) and not self.running("nats"):
                port = free_port()
            passwords = nats_passwords(self.data_dir)
            config = write_nats_auth_config(self.data_dir / "nats", passwords, self.ctx.settings)
            self.state["nats"] = role_url(f"nats://127.0.0.1:{port}", "operator", passwords)
            self.state["nats_roles"] = True
            self.spawn("nats", nats_command(self.data_dir / "nats", port, config=config), marker=f"relayctl-{port}")
        elif name == "redis":
            port = health.host_port(self.state.get("redis", ""))[1] or free_port()
            if port_open("127.0.0.1", port) and not self.running("redis"):
                port = free_port()
            passwords = redis_passwords(self.data_dir)
            config = write_redis_config(self.data_dir / "redis", port, passwords, settings=self.ctx.settings)
            self.state["redis"] = redis_role_url(f"redis://127.0.0.1:{port}/0", "operator", passwords)
            self.state["redis_roles"] = True
            # redis-server shows "<binary> 127.0.0.1:<port>" as its command line
            self.spawn("redis", redis_command(config), marker=f":{port}")
        elif is_gateway(name):
            host, port = parse_bind(bind)
            self.state["gateway"] = f"http://{url_host(host)}:{port}"
            self.spawn(name, self.python_cmd("gateway", "--bind", bind),
                       {**env, "RELAYCTL_NATS_URL": self.nats_url_for("gateway"), **self.redis_env("gateway")},
                       marker=str(self.data_dir))
        else:
            self.spawn(name, self.python_cmd("worker", name),
                       {**env, "RELAYCTL_NATS_URL": self.nats_url_for(name), **self.redis_env(name)},
                       marker=str(self.data_dir))

    def stop_service(self, name: str) -> None:
        rec = self.record(name)
        if rec and pid_alive(rec.get("pid"), rec.get("marker")):
            stop_pid(int(rec["pid"]))
        if rec:
            rec["pid"] = None


class Unhealthy(click.ClickException):
    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"service `{service}` did not become healthy: {detail}")
        self.service = service
        self.detail = detail


def without_credentials(url: str | None) -> str | None:
    """`url` (comma-separated URLs too) with any user:password@ taken out."""
    if not url:
        return url
    parts = []
    for one in url.split(","):
        scheme, sep, rest = one.strip().partition("://")
        parts.append(f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else one.strip())
    return ",".join(parts)


def selected_services(services: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    unknown = [s for s in services + exclude if s not in SERVICES]
    if unknown:
        fail(f"unknown service {', '.join(unknown)}; known services: {', '.join(SERVICES)}", 2)
    chosen = list(services) if services else list(SERVICES)
    return [s for s in SERVICES if s in chosen and s not in exclude]
