"""`up`, `down`, `status`, `worker` and `gateway`: running the system.

`up` provisions or connects: every service (nats, redis, each actor, the gateway) is a
separate OS process recorded with its pid in `<data dir>/services.json`. A service whose
process is alive is left alone ("already running") unless `--recreate`; a dead one is
started again. Independent services start in parallel, then each is health-checked with
retries; one that never turns healthy fails the command with its name and last error.

The NATS that `up` starts requires credentials (bus/embedded.py, "NATS roles"): each process
gets the URL of its own role in its environment (`RELAYCTL_NATS_URL`, not the command line,
which any local user can read in /proc), and the state file - holding the operator's URL -
is readable by this user only.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

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
from bus.runtime import connect
from cli.context import Context, emit, fail
from cli.stream_health import nats_write_error, stream_report
from gateway.binding import BindError, holder_system, parse_bind, port_problem, url_host

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
HEALTH_TIMEOUT = float(os.environ.get("RELAYCTL_HEALTH_TIMEOUT", "90"))


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


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


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
        import subprocess

        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, **(env or {})})
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
            return False, f"process {rec.get('pid')} is not running; log: {_log_tail(Path(rec.get('log', '')))}"
        if name == "llm":
            return _http_health(self.state["llm"] + "/health")
        if name in ("nats", "redis"):
            url = self.state.get(name, "")
            host, port = _host_port(url)
            if not port_open(host, port):
                return False, f"nothing listens on {host}:{port}"
            if name == "redis":
                return _redis_ping(url, bool(self.state.get("redis_cluster")))
            # A stream that hit a disk write error answers every append with silence: say why.
            write_error = nats_write_error(Path(rec["log"]), int(rec["pid"])) if rec.get("pid") else None
            return (False, write_error) if write_error else (True, "ok")
        if is_gateway(name):
            ok, detail = _http_health(self.state["gateway"] + "/_health/")
            # Another gateway of this system may share the port and answer for this one.
            port = _host_port(self.state["gateway"])[1]
            if ok and rec.get("pid") and _listens(int(rec["pid"]), port) is False:
                return False, f"process {rec['pid']} does not listen on port {port} yet"
            return ok, detail
        ok, detail = _ping_actor(self.state["nats"], name)
        if ok and name == "commands":
            write_error = stream_report(self.state["nats"], None)["write_error"]
            return (False, f"{detail}; {write_error}") if write_error else (ok, detail)
        return ok, detail

    def wait_healthy(self, name: str, timeout: float = HEALTH_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = "not checked"
        while time.monotonic() < deadline:
            ok, last = self.healthy(name)
            if ok:
                return
            rec = self.record(name)
            if rec and not pid_alive(rec.get("pid")):
                break
            time.sleep(0.2)
        raise Unhealthy(name, last)

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
            port = _host_port(self.state["llm"])[1]
            # Run through bus.local_model's `serve`, which says why llama-server died, if it does.
            self.spawn("llm", [sys.executable, "-m", "bus.local_model", "serve", "--port", str(port),
                               "--failure-file", str(self.llm_failure_file())],
                       marker=f"bus.local_model serve --port {port} ")
        elif name == "nats":
            port = _host_port(self.state.get("nats", ""))[1] or free_port()
            if port_open("127.0.0.1", port) and not self.running("nats"):
                port = free_port()
            passwords = nats_passwords(self.data_dir)
            config = write_nats_auth_config(self.data_dir / "nats", passwords)
            self.state["nats"] = role_url(f"nats://127.0.0.1:{port}", "operator", passwords)
            self.state["nats_roles"] = True
            self.spawn("nats", nats_command(self.data_dir / "nats", port, config=config), marker=f"relayctl-{port}")
        elif name == "redis":
            port = _host_port(self.state.get("redis", ""))[1] or free_port()
            if port_open("127.0.0.1", port) and not self.running("redis"):
                port = free_port()
            passwords = redis_passwords(self.data_dir)
            config = write_redis_config(self.data_dir / "redis", port, passwords)
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


class Supervisor:
    """What a foreground `up` does while it runs: a service it started that dies is started
    again, after 1 s, then 2, 4 ... up to 60 s while it keeps dying, and `up` says so."""

    MAX_DELAY = 60.0
    # Running this long counts as recovered: the next death waits 1 s again.
    STABLE = 60.0

    def __init__(self, orch: Orchestrator, names: list[str], bind: str, env: dict[str, str]) -> None:
        self.orch, self.names, self.bind, self.env = orch, names, bind, env
        self.failures: dict[str, int] = {}
        self.due: dict[str, float] = {}
        self.restarted: dict[str, float] = {}

    def check(self) -> bool:
        """One round; False once nothing is left to supervise (`down` elsewhere stopped it all)."""
        now = time.monotonic()
        on_disk = self.orch.ctx.load_state().get("services", {})
        for name in list(self.names):
            rec, theirs = self.orch.record(name), on_disk.get(name) or {}
            if theirs.get("pid") != rec.get("pid") and name not in self.due:
                if not theirs.get("pid"):
                    # Stopped on purpose by another command (`down`): not ours to bring back.
                    self.names.remove(name)
                    click.echo(f"relayctl: `{name}` was stopped by another command; no longer watching it",
                               err=True)
                    continue
                self.orch.state["services"][name] = rec = theirs  # restarted by another `up`
            if self.orch.running(name):
                if now - self.restarted.get(name, now) > self.STABLE:
                    self.failures.pop(name, None)
                continue
            if name not in self.due:
                count = self.failures[name] = self.failures.get(name, 0) + 1
                delay = min(self.MAX_DELAY, 2.0 ** (count - 1))
                self.due[name] = now + delay
                click.echo(f"relayctl: `{name}` (pid {rec.get('pid')}) {self._why(name)}; "
                           f"starting it again in {delay:.0f} s", err=True)
            elif now >= self.due[name]:
                del self.due[name]
                self.orch.start_service(name, self.bind, self.env)
                self.restarted[name] = time.monotonic()
                # Only this record changes: what other commands wrote meanwhile stays.
                latest = self.orch.ctx.load_state() or self.orch.state
                latest.setdefault("services", {})[name] = self.orch.record(name)
                self.orch.state = latest
                self.orch.save()
                click.echo(f"relayctl: started `{name}` again (pid {self.orch.record(name)['pid']}, "
                           f"restart {self.failures[name]})", err=True)
        return bool(self.names)

    def _why(self, name: str) -> str:
        proc = self.orch.procs.get(name)
        returncode = proc.poll() if proc is not None else None  # also reaps our child
        if name == "llm":
            reason = local_model.failure_reason(self.orch.llm_failure_file())
            if reason:
                return f"stopped: {reason}"
        if returncode is None:
            return "is not running"
        if returncode < 0:
            try:
                return f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                return f"was killed by signal {-returncode}"
        return f"exited with status {returncode}"


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


def _http_health(url: str) -> tuple[bool, str]:
    path = "/" + url.split("://", 1)[-1].split("/", 1)[-1]
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200, f"{path} answered {resp.status}"
    except Exception as exc:
        return False, f"{path}: {exc}"


def _listens(pid: int, port: int) -> bool | None:
    """Whether process `pid` has a socket listening on TCP `port` (None: /proc cannot tell)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "0A" and fields[9] in inodes:
                    return True
    except OSError:
        return None
    return False


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].split("@")[-1].split("/")[0]
    host, _, port = rest.rpartition(":")
    return (host or "127.0.0.1"), int(port) if port.isdigit() else 0


def _check_redis_urls(url: str | None, read_url: str | None, cluster: bool) -> None:
    """A URL the Redis client cannot use is a usage error at start, not an actor that dies."""
    from bus.redis_clients import RedisUrlError, check_url

    for one in (url, read_url):
        if one:
            try:
                check_url(one, cluster=cluster)
            except RedisUrlError as exc:
                fail(str(exc), 2)


def _redis_ping(url: str, cluster: bool) -> tuple[bool, str]:
    from bus import redis_clients

    try:
        client = redis_clients.sync_client(url, cluster=cluster, timeout=1)
        client.ping()
        return True, "ok"
    except Exception as exc:
        return False, f"redis: {exc}"


def _ping_actor(nats_url: str, name: str) -> tuple[bool, str]:
    async def ping() -> int:
        nc = await connect(nats_url, name="relayctl-health", allow_reconnect=False, max_reconnect_attempts=1,
                           quiet=True)
        try:
            inbox = nc.new_inbox()
            replies: list[Any] = []
            async def collect(msg: Any) -> None:
                # Only a service's own ping response counts: with no service subscribed, the
                # server itself answers the inbox with a "503 no responders" status message.
                try:
                    body = json.loads(msg.data)
                except ValueError:
                    return
                if isinstance(body, dict) and body.get("name") == name:
                    replies.append(msg)

            sub = await nc.subscribe(inbox, cb=collect)
            await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
            await asyncio.sleep(0.3)
            await sub.unsubscribe()
            return len(replies)
        finally:
            await nc.close()

    try:
        count = asyncio.run(ping())
    except Exception as exc:
        return False, f"nats: {exc}"
    return (count > 0), f"{count} instance(s) answered $SRV.PING.{name}"


def ping_instances(nats_url: str, name: str) -> int:
    ok, text = _ping_actor(nats_url, name)
    return int(text.split()[0]) if ok else 0


def _parse_bind(bind: str) -> tuple[str, int]:
    try:
        return parse_bind(bind)
    except BindError as exc:
        fail(str(exc), 2)


def _selected(services: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    unknown = [s for s in services + exclude if s not in SERVICES]
    if unknown:
        fail(f"unknown service {', '.join(unknown)}; known services: {', '.join(SERVICES)}", 2)
    chosen = list(services) if services else list(SERVICES)
    return [s for s in SERVICES if s in chosen and s not in exclude]


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
        if (redis_cluster or redis_read_url) and not redis_url:
            fail("--redis-cluster and --redis-read-url need --redis-url: `up` runs one Redis, not a cluster", 2)
        _check_redis_urls(redis_url, redis_read_url, bool(redis_cluster))
        selected = _selected(services, exclude)
        gateway_count = gateways or os.cpu_count() or 1
        if "gateway" in selected:  # its instances after it, where SERVICES has it (last)
            selected += gateway_names(gateway_count)[1:]
        host, port = _parse_bind(bind)
        Orchestrator(ctx).check_data_dir()
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        bind_given = click.get_current_context().get_parameter_source("bind") != ParameterSource.DEFAULT
        nats_url = nats_url or ctx.nats_url_option
        orch = Orchestrator(ctx)
        external = {"nats": nats_url, "redis": redis_url}
        for name, url in external.items():
            if url:
                orch.state[name] = url
                orch.state["services"].pop(name, None)
                if name == "nats":
                    orch.state["nats_roles"] = False
                if name == "redis":
                    orch.state["redis_roles"] = False
        report: dict[str, str] = {}
        skipped: dict[str, str] = {}
        to_start: list[str] = []
        for name in selected:
            if external.get(name):
                report[name] = "external"
                continue
            if name == "llm" and (local_model.backend_configured() or not local_model.available()):
                skipped[name] = ("not needed: an AI backend is configured" if local_model.backend_configured()
                                 else "not installed: " + local_model.install_command())
                orch.state.pop("llm", None)
                continue
            # A gateway on another address than the one asked for moves there.
            moved = (is_gateway(name) and bind_given and orch.state.get("up", {}).get("bind") not in (None, bind))
            if orch.running(name) and not recreate and not moved:
                report[name] = "already running"
                continue
            to_start.append(name)
        if "gateway" in to_start and not (orch.running("gateway") and orch.state.get("up", {}).get("bind") == bind):
            # Before anything starts: another system (or program) on this address is a clear
            # error now, not a gateway that dies after every other service came up.
            # Gateways of this system (recorded from their /_health/) may hold it: they share.
            problem = port_problem(host, port, orch.state.get("system_id"))
            if problem:
                fail(problem)
        for name in reversed(to_start):
            orch.stop_service(name)
        if "gateway" in selected:  # fewer gateways than last time: the ones beyond go
            for name in service_names(orch.state):
                if is_gateway(name) and name not in selected:
                    orch.stop_service(name)
                    orch.state["services"].pop(name, None)
        env = {k: v for k, v in os.environ.items() if k.startswith(("OPENAI_", "RELAYCTL_"))}
        if redis_url:  # an external Redis: kept with its kind for every later `up` and `status`
            orch.state["redis_cluster"] = bool(redis_cluster)
            orch.state["redis_read_url"] = redis_read_url
        elif "redis" in to_start:  # its own Redis again: one server
            orch.state.pop("redis_cluster", None)
            orch.state.pop("redis_read_url", None)
        if orch.state.get("redis") and orch.state.get("redis_cluster"):
            env["RELAYCTL_REDIS_CLUSTER"] = "1"
        if orch.state.get("redis_read_url"):
            env["RELAYCTL_REDIS_READ_URL"] = str(orch.state["redis_read_url"])
        if "llm" in selected and "llm" in to_start + [n for n, st in report.items() if st == "already running"]:
            port = _host_port(orch.state.get("llm", ""))[1] or free_port()
            orch.state["llm"] = f"http://127.0.0.1:{port}"
            env.update(local_model.client_environment(port))
            env[local_model.FAILURE_ENV] = str(orch.llm_failure_file())
        stages = [[s for s in to_start if s in ("nats", "redis", "llm")],
                  [s for s in to_start if s in ACTORS], [s for s in to_start if is_gateway(s)]]
        if to_start and not orch.state.get("nats") and "nats" not in to_start:
            fail("no NATS: start the nats service or pass --nats-url")
        failed: dict[str, str] = {}

        def wait(name: str) -> None:
            try:
                orch.wait_healthy(name)
            except Unhealthy as exc:
                if name not in OPTIONAL:
                    raise
                failed[name] = orch.optional_failed(exc)
                report[name] = "failed"

        try:
            for stage in stages:
                for name in stage:
                    orch.start_service(name, bind, env)
                    report[name] = "running"
                orch.save()
                with ThreadPoolExecutor(max_workers=max(1, len(stage))) as pool:
                    list(pool.map(wait, stage))
        except click.ClickException as exc:
            # Leave nothing of a failed `up` behind: the next one starts afresh (with a
            # corrected --bind, say) instead of finding half a system "already running".
            started_now = [n for n in to_start if report.get(n) == "running"]
            for name in reversed(started_now):
                orch.stop_service(name)
            orch.save()
            fail(exc.message + (f"\nStopped what this `up` had started: {', '.join(started_now)}"
                                if started_now else ""))
        if "gateway" in to_start:
            orch.state["system_id"] = holder_system(host, port)[1] or orch.state.get("system_id")
        meant = set(orch.state.get("up", {}).get("services", ())) | set(report)
        meant = {n for n in meant if not is_gateway(n) or n in selected or "gateway" not in selected}
        orch.state["up"] = {"bind": bind, "services": [n for n in service_names(orch.state) if n in meant]}
        orch.save()
        credentials = orch.save_operator_credentials()
        # `--json` is for programs (INTERFACE.md): its `nats` and `redis` URLs are the
        # operator's own, credentials included, so any client can connect with them. The
        # text on screen (or in a CI log) shows no password: the URLs without credentials,
        # and the file (0600) holding the operator's own.
        out = {"gateway": orch.state.get("gateway"), "nats": orch.state.get("nats"),
               "redis": orch.state.get("redis"), "credentials": str(credentials), "services": report}
        if orch.state.get("llm"):
            out["llm"] = orch.state["llm"]
        if skipped:
            out["skipped"] = skipped
        if failed:
            out["failed"] = failed
        started = [n for n, s in report.items() if s == "running"]
        lines = {**report, **skipped, **{n: f"FAILED: {reason}" for n, reason in failed.items()}}
        text = ("Nothing to do: every service is already running\n" if not started and not failed else "") + \
            "\n".join(f"  {n:<9} {s}" for n, s in lines.items()) + \
            f"\nGateway: {out['gateway']}\nNATS:    {without_credentials(orch.state.get('nats'))}" + \
            f"\nRedis:   {without_credentials(orch.state.get('redis'))}" + \
            f"\nCredentials (the operator's NATS and Redis URLs): {credentials}"
        if failed:
            text += ("\nOptional service(s) failed: " + ", ".join(failed) + "; everything else runs, and the AI "
                     "endpoints answer 503 with the reason until `relayctl up` starts it again")
        emit(as_json, out, text)
        if detach:
            return
        if not as_json:
            click.echo("Running; press Ctrl-C to stop what this command started.")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        supervisor = Supervisor(orch, list(started), bind, env)
        try:
            while not stop.wait(1.0):
                if not supervisor.check():
                    click.echo("relayctl: every service this `up` started was stopped elsewhere; exiting", err=True)
                    break
        except KeyboardInterrupt:
            pass
        orch.state = ctx.load_state() or orch.state  # what other commands did meanwhile stays
        orch.state.setdefault("services", {})
        for name in reversed(supervisor.names):
            orch.stop_service(name)
        orch.state.get("up", {})["services"] = [n for n in orch.state.get("up", {}).get("services", ())
                                                if n not in started]
        orch.save()

    @main.command()
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def down(ctx: Context, as_json: bool) -> None:
        """Stop everything `up` started for this data dir."""
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

    @main.command()
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def status(ctx: Context, as_json: bool) -> None:
        """Health of every service and actor instance."""
        orch = Orchestrator(ctx)
        out: dict[str, Any] = {}
        # What should run: what `up` started and `down` (or the end of a foreground `up`) has
        # not stopped - a crashed service keeps its pid, a stopped one has none.
        meant = set(orch.state.get("up", {}).get("services", ()))
        names = [n for n in service_names(orch.state)
                 if (orch.record(n).get("pid") or n in meant
                     or (n in ("nats", "redis") and orch.state.get(n) and not orch.record(n)))
                 and not (n in ACTORS and not orch.state.get("nats"))]
        if not any(orch.record(n).get("pid") or n in meant for n in names):
            # As `systemctl status` of a stopped unit: exit 3.
            emit(as_json, {"services": {}, "running": False},
                 f"Nothing is running (data dir {orch.data_dir}); start it with `relayctl up`")
            sys.exit(3)
        # Checked in parallel: each actor check waits for ping answers, one after the other is slow.
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            health = dict(zip(names, pool.map(orch.healthy, names)))
        for name in names:
            ok, detail = health[name]
            entry: dict[str, Any] = {"healthy": ok, "detail": detail, "pid": orch.record(name).get("pid")}
            if name in ACTORS:
                # the actor check's detail is "<n> instance(s) answered ..."
                entry["instances"] = int(detail.split()[0]) if ok else 0
            out[name] = entry
        report: dict[str, Any] = {"services": out}
        if orch.state.get("nats"):
            # the event stream itself: last sequence, undecodable commits skipped, write errors
            nats_detail = "" if out.get("nats", {}).get("healthy", True) else out["nats"]["detail"]
            report["events"] = stream_report(orch.state["nats"], nats_detail if nats_detail.startswith(
                "event store cannot write") else None)
        lines = [f"{n:<9} {'healthy' if e['healthy'] else 'UNHEALTHY'}  pid={e['pid'] or '-'}  {e['detail']}"
                 for n, e in out.items()]
        if "events" in report:
            lines.append(f"{'events':<9} {'healthy' if report['events']['healthy'] else 'UNHEALTHY'}  "
                         f"{report['events']['detail']}")
        emit(as_json, report, "\n".join(lines))
        if not all(e["healthy"] for e in out.values()) or not report.get("events", {}).get("healthy", True):
            sys.exit(1)

    @main.command()
    @click.argument("actors", nargs=-1)
    @click.option("--nats-url", "nats_url", default=None, help="The NATS to serve (default: the global option).")
    @click.option("--redis-url", envvar="RELAYCTL_REDIS_URL", default=None, help="The Redis of the config cache.")
    @click.option("--redis-cluster", is_flag=True, default=None, envvar="RELAYCTL_REDIS_CLUSTER",
                  help="The Redis URL names Redis Cluster start nodes (comma-separated).")
    @click.pass_obj
    def worker(ctx: Context, actors: tuple[str, ...], nats_url: str | None, redis_url: str | None,
               redis_cluster: bool | None) -> None:
        """Run actor instances (default: all) in this process."""
        from actors.worker import ACTOR_NAMES, Worker
        from cli.logging import setup_logging

        names = list(actors) or list(ACTOR_NAMES)
        unknown = [n for n in names if n not in ACTOR_NAMES]
        if unknown:
            fail(f"unknown actor {', '.join(unknown)}; known: {', '.join(ACTOR_NAMES)}", 2)
        setup_logging(process="worker:" + ",".join(names))
        from bus import otel

        otel.configure("relayctl-worker")  # spans exported only with the `otel` extra and an endpoint
        if nats_url:
            ctx.nats_url_option = nats_url
        exit_code = []

        def give_up(name: str) -> None:
            exit_code.append(1)
            os.kill(os.getpid(), signal.SIGTERM)

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        from bus.settings import InvalidSetting, Settings

        try:  # the process's settings, once: its flags over its environment (bus/settings.py)
            settings = Settings.load(RELAYCTL_NATS_URL=ctx.nats_url, RELAYCTL_REDIS_URL=redis_url or ctx.redis_url,
                                     RELAYCTL_REDIS_CLUSTER=redis_cluster)
        except InvalidSetting as exc:
            fail(exc.message)
        _check_redis_urls(settings.value("RELAYCTL_REDIS_URL"), None, settings.value("RELAYCTL_REDIS_CLUSTER"))
        try:
            running = Worker(names, settings.value("RELAYCTL_NATS_URL"), settings.value("RELAYCTL_REDIS_URL"),
                             process_name=",".join(names), on_give_up=give_up, settings=settings).start()
        except Exception as exc:
            fail(f"worker failed to start: {exc}")
        stop.wait()
        running.stop()
        sys.exit(exit_code[0] if exit_code else 0)

    @main.command()
    @click.option("--bind", default="127.0.0.1:3000", show_default=True, help="HOST:PORT to listen on.")
    @click.option("--nats-url", "nats_url", default=None, help="The NATS to serve (default: the global option).")
    @click.option("--redis-url", envvar="RELAYCTL_REDIS_URL", default=None, help="The Redis of the config cache.")
    @click.option("--redis-cluster", is_flag=True, default=None, envvar="RELAYCTL_REDIS_CLUSTER",
                  help="The Redis URL names Redis Cluster start nodes (comma-separated).")
    @click.option("--redis-read-url", envvar="RELAYCTL_REDIS_READ_URL", default=None,
                  help="Gateways read the config cache here (replicas); writes go to --redis-url.")
    @click.pass_obj
    def gateway(ctx: Context, bind: str, nats_url: str | None, redis_url: str | None, redis_cluster: bool | None,
                redis_read_url: str | None) -> None:
        """Run one gateway process."""
        from cli.logging import setup_logging
        from gateway.app import PortInUse, run_gateway

        setup_logging(process="gateway")
        from bus import otel

        otel.configure("relayctl-gateway")
        if nats_url:
            ctx.nats_url_option = nats_url
        host, port = _parse_bind(bind)
        from bus.settings import InvalidSetting, Settings

        try:  # the process's settings, once: its flags over its environment (bus/settings.py)
            settings = Settings.load(RELAYCTL_NATS_URL=ctx.nats_url, RELAYCTL_REDIS_URL=redis_url or ctx.redis_url,
                                     RELAYCTL_REDIS_CLUSTER=redis_cluster, RELAYCTL_REDIS_READ_URL=redis_read_url)
        except InvalidSetting as exc:
            fail(exc.message)
        _check_redis_urls(settings.value("RELAYCTL_REDIS_URL"), settings.value("RELAYCTL_REDIS_READ_URL"),
                          settings.value("RELAYCTL_REDIS_CLUSTER"))
        try:
            run_gateway(host, port, settings.value("RELAYCTL_NATS_URL"), settings.value("RELAYCTL_REDIS_URL"),
                        data_dir=ctx.data_dir, settings=settings)
        except PortInUse as exc:
            fail(str(exc))
