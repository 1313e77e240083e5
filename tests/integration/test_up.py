"""`relayctl up` / `down` / `status`: the real console script, real OS processes, one data dir.

The tests of this module share one running system and run in file order: start, start
again, lose a process, stop and start again. `down` always runs at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus.embedded import REDIS_ROLES, free_port
from cli.services import ACTORS, SERVICES, pid_alive
from tests.ai_helpers import error_event
from tests.system import RELAYCTL, RelayctlProcess, http_request
from tests.waiting import wait_for

# The embedded model (service "llm") is left out: these tests configure an AI backend of
# their own, so `up` skips it whether or not the local-AI packages are installed.
STARTED = tuple(s for s in SERVICES if s != "llm")



class Up(RelayctlProcess):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"  # a backend of "our own": no llm service

    def up(self, *args: str) -> dict[str, Any]:
        return self.ok("up", "--detach", "--bind", self.bind, "--json", *args)  # type: ignore[no-any-return]

    def pids(self) -> dict[str, int]:
        services = self.ok("status", "--json")["services"]
        assert all(s["healthy"] for s in services.values()), services
        return {name: s["pid"] for name, s in services.items()}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(tmp_path_factory.mktemp("up") / "data")
    try:
        yield up
    finally:
        up.run("down", timeout=60)


def test_up_starts_every_service_and_reports_it(system: Up) -> None:
    """`up --detach --json` starts every service as its own healthy process and prints the URLs."""
    out = system.up()
    assert set(out) == {"gateway", "nats", "redis", "credentials", "services", "skipped"}
    assert out["skipped"] == {"llm": "not needed: an AI backend is configured"}
    assert out["services"] == {name: "running" for name in STARTED}
    assert out["gateway"] == f"http://{system.bind}" and out["nats"].startswith("nats://")
    assert out["redis"].startswith("redis://")
    with urllib.request.urlopen(out["gateway"] + "/_health/", timeout=5) as resp:
        assert resp.status == 200
    status = system.ok("status", "--json")["services"]
    assert all(status[name]["instances"] == 1 for name in STARTED if name in ACTORS)
    pids = system.pids()
    assert set(pids) == set(STARTED)
    assert len(set(pids.values())) == len(STARTED) and all(pid_alive(pid) for pid in pids.values())


def test_up_runs_redis_with_credentials_kept_private(system: Up) -> None:
    """The Redis that `up` starts refuses clients without credentials (NOAUTH); its role
    passwords are kept in 0600 files of the data dir, each service gets its own role's URL
    in its environment - none that needs no Redis gets one - and no password is on any
    command line."""
    out = system.up()
    port = int(out["redis"].rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(100).startswith(b"-NOAUTH")
    operator = redis.Redis.from_url(system.operator_credentials()["redis"], socket_timeout=5)
    assert operator.ping() and int(operator.config_get("maxmemory")["maxmemory"]) > 0
    operator.close()
    credentials, config = system.data_dir / "redis-credentials.json", system.data_dir / "redis" / "redis.conf"
    for path in (credentials, config):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    passwords = json.loads(credentials.read_text())
    assert set(passwords) == set(REDIS_ROLES)
    for name, pid in system.pids().items():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert not any(p in cmdline for p in passwords.values()), name
        environ = dict(line.split("=", 1) for line in
                       Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in line)
        url = environ.get("RELAYCTL_REDIS_URL")
        if name in REDIS_ROLES:
            assert url is not None and url.startswith(f"redis://{name}:{passwords[name]}@"), name
        elif name not in ("nats", "redis"):
            assert url is None, name


def test_up_again_changes_nothing(system: Up) -> None:
    """`up` on a running system reports every service as already running and starts nothing."""
    before = system.pids()
    out = system.up()
    assert out["services"] == {name: "already running" for name in STARTED}
    text = system.ok("up", "--detach", "--bind", system.bind)
    assert "Nothing to do" in text
    # No password on screen: the URLs without credentials and where the operator's are kept.
    credentials = system.operator_credentials()
    assert f"Credentials (the operator's NATS and Redis URLs): {system.data_dir / 'operator-credentials.json'}" \
        in text
    assert credentials["nats"].rpartition("@")[0] not in text and credentials["redis"].rpartition("@")[0] not in text
    assert system.pids() == before


def test_a_killed_service_is_restarted_alone(system: Up) -> None:
    """After one service's process dies, `up` starts that one and leaves the rest alone."""
    before = system.pids()
    os.kill(before["keys"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(before["keys"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    # `status` exits 1 when anything is unhealthy, and says which.
    result = system.run("status")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert [line.split()[:2] for line in result.stdout.splitlines() if "UNHEALTHY" in line] == \
        [["keys", "UNHEALTHY"]], result.stdout
    out = system.up()
    assert out["services"] == {name: "running" if name == "keys" else "already running" for name in STARTED}
    after = system.pids()
    assert after["keys"] != before["keys"]
    assert {n: p for n, p in after.items() if n != "keys"} == {n: p for n, p in before.items() if n != "keys"}


def test_unknown_services_abort_with_the_known_ones(system: Up) -> None:
    """An unknown service name (positional or --exclude) exits 2 listing every known service."""
    for args in (("up", "--detach", "nosuch"), ("up", "--detach", "--exclude", "nosuch")):
        result = system.run(*args)
        assert result.returncode == 2, result.stderr
        assert "unknown service nosuch" in result.stderr
        assert "known services: " + ", ".join(SERVICES) in result.stderr
        assert "Traceback" not in result.stderr


def test_state_survives_down_and_up(system: Up) -> None:
    """Orgs and projects outlive `down` + `up` (JetStream file storage); --exclude leaves a service out."""
    created = system.ok("project", "create", system.ok("org", "create", "persist", "--json")["slug"], "web", "--json")
    pids = system.pids()
    assert system.ok("down").startswith("Stopped ")
    assert not any(pid_alive(pid) for pid in pids.values())
    assert system.ok("down") == "Nothing was running\n"
    # After `down`: "nothing is running" and exit 3 (as `systemctl status`), not a line per service.
    result = system.run("status")
    assert result.returncode == 3 and result.stdout.startswith("Nothing is running"), (result.stdout, result.stderr)
    result = system.run("status", "--json")
    assert result.returncode == 3 and json.loads(result.stdout) == {"services": {}, "running": False}

    out = system.up("--exclude", "gateway")
    assert out["services"] == {name: "running" for name in STARTED if name != "gateway"}
    keys = system.ok("key", "list", "persist/web", "--json")["keys"]
    assert keys == [{"publicKey": created["publicKey"], "numericId": created["numericId"], "status": "active"}]
    status = system.ok("status", "--json")["services"]
    assert not status.get("gateway", {}).get("healthy")

    out = system.up()
    assert out["services"] == {name: "running" if name == "gateway" else "already running" for name in STARTED}
    config = system.ok("config", "get", created["publicKey"], "--json")
    assert config["disabled"] is False


def test_up_runs_the_gateways_asked_for_on_one_port(system: Up) -> None:
    """RELAYCTL_GATEWAYS / --gateways (default: one per core) gateway processes share the
    --bind port, each its own service in `status`; asked for fewer, `up` stops the ones beyond."""
    system.env["RELAYCTL_GATEWAYS"] = "2"
    try:
        out = system.up()
    finally:
        system.env["RELAYCTL_GATEWAYS"] = "1"
    assert out["services"] == {**{name: "already running" for name in STARTED}, "gateway-2": "running"}
    status = system.ok("status", "--json")["services"]
    assert status["gateway-2"]["healthy"] and status["gateway-2"]["pid"] != status["gateway"]["pid"]
    assert listeners(int(system.bind.rpartition(":")[2])) == 2
    assert "gateway-2 healthy" in system.ok("status")
    second = status["gateway-2"]["pid"]

    out = system.up("--gateways", "1")
    assert out["services"] == {name: "already running" for name in STARTED}
    wait_for(lambda: not pid_alive(second), 10, "the second gateway to stop")
    assert "gateway-2" not in system.ok("status", "--json")["services"]
    assert listeners(int(system.bind.rpartition(":")[2])) == 1


# -- a second system on this machine, whose optional local model fails ------------------------

# What a llama-server built for another CPU does the moment it runs.
FAKE_LLAMA_SERVER = "#!/bin/sh\nkill -ILL $$\n"


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_health/", timeout=5) as resp:
        assert resp.status == 200
        return json.loads(resp.read())  # type: ignore[no-any-return]


def listeners(port: int) -> int:
    """How many sockets listen on this TCP port (IPv4)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A")


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """Another system (its own data dir), with no AI backend configured and a local model
    binary that dies of SIGILL, found through RELAYCTL_LLAMA_SERVER."""
    root = tmp_path_factory.mktemp("other")
    fake = root / "llama-server"
    fake.write_text(FAKE_LLAMA_SERVER)
    fake.chmod(0o755)
    (root / "model.gguf").write_bytes(b"GGUF")
    up = Up(root / "data")
    for key in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        up.env.pop(key, None)
    up.env.update({"RELAYCTL_LLAMA_SERVER": str(fake), "RELAYCTL_LLAMA_MODEL": str(root / "model.gguf")})
    try:
        yield up
    finally:
        up.run("down", timeout=60)


def test_a_failing_optional_llm_is_reported_and_everything_else_runs(other: Up, tmp_path: Path) -> None:
    """`up` with a local model that dies of SIGILL starts every other service, exits 0 and says
    why the model died and what to do; `status` shows it (exit 1); the AI endpoint answers 503
    with the reason. `--bind PORT` alone listens on 127.0.0.1."""
    port = other.bind.rsplit(":", 1)[1]
    result = other.run("up", "--detach", "--bind", port, "--json")
    assert result.returncode == 0, (result.stdout, result.stderr)
    out = json.loads(result.stdout)
    assert out["gateway"] == f"http://127.0.0.1:{port}"
    assert out["services"] == {name: "failed" if name == "llm" else "running" for name in SERVICES}
    reason = out["failed"]["llm"]
    assert "SIGILL (illegal instruction)" in reason and "built for another CPU" in reason, reason
    assert "GGML_NATIVE=OFF" in reason and "--no-cache-dir" in reason, reason

    result = other.run("status", "--json")
    assert result.returncode == 1, (result.stdout, result.stderr)
    services = json.loads(result.stdout)["services"]
    assert not services["llm"]["healthy"] and "SIGILL (illegal instruction)" in services["llm"]["detail"]
    assert all(s["healthy"] for name, s in services.items() if name != "llm"), services

    org = other.ok("org", "create", "ai-org", "--json")["slug"]
    other.ok("project", "create", org, "web")
    other.ok("user", "create", "ai-user", "--superuser")
    token = other.ok("token", "create", "ai-user", "--json")["token"]
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(error_event()))
    event_id = other.ok("event", "store", str(event_file), "--project", f"{org}/web", "--json")["eventId"]
    for stream in ("no", "yes"):
        status, _, body = http_request(
            f"{out['gateway']}/api/0/projects/{org}/web/events/{event_id}/ai-fix-suggest/?stream={stream}",
            headers={"Authorization": f"Bearer {token}"}, timeout=60)
        assert status == 503, body
        detail = json.loads(body)["detail"]
        assert "the local AI model (service `llm`) is not running" in detail and "SIGILL" in detail, detail

    # The text form says the same; `up` tries the model again, the rest is left alone.
    result = other.run("up", "--detach", "--bind", port)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "llm       FAILED: llama-server was killed by SIGILL (illegal instruction)" in result.stdout
    assert "everything else runs" in result.stdout


def test_an_explicit_new_bind_moves_the_gateway(other: Up) -> None:
    """A running gateway asked to listen elsewhere (`up --bind` another address) moves there."""
    old_port = int(other.bind.rsplit(":", 1)[1])
    new_bind = f"127.0.0.1:{free_port()}"
    out = other.ok("up", "--detach", "--bind", new_bind, "--json")
    assert out["services"]["gateway"] == "running" and out["gateway"] == f"http://{new_bind}"
    assert health(out["gateway"])["healthy"]
    wait_for(lambda: listeners(old_port) == 0, 10, "the old address to be free")
    other.bind = new_bind


def test_a_second_system_on_a_taken_port_fails_clearly(system: Up, other: Up, tmp_path: Path) -> None:
    """A second system's `up` on the first one's address fails at once, exit 1, with nothing
    left running; the first keeps serving alone. A gateway of another system refuses the
    port too, while a second gateway of the first system shares it."""
    url = f"http://{system.bind}"
    own = health(url)["system"]
    assert isinstance(own, str) and own

    third = Up(tmp_path / "third")
    result = third.run("up", "--detach", "--bind", system.bind)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"{system.bind} is in use by the gateway of another relayctl system" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert third.run("status").returncode == 3
    assert [health(url)["system"] for _ in range(6)] == [own] * 6

    # A gateway of the other system (its own NATS, so another system id) refuses the address.
    result = other.run("gateway", "--bind", system.bind, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"{system.bind} is in use by the gateway of another relayctl system" in result.stderr, result.stderr
    assert [health(url)["system"] for _ in range(6)] == [own] * 6

    # A second gateway of the first system shares the port, and serves it when the first dies.
    port = int(system.bind.rsplit(":", 1)[1])
    with open(tmp_path / "gateway2.log", "wb") as log:
        extra = subprocess.Popen([RELAYCTL, "--data-dir", str(system.data_dir), "gateway", "--bind", system.bind],
                                 env=system.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: listeners(port) == 2 or extra.poll() is not None, 60, "a second listener")
        assert extra.poll() is None, (tmp_path / "gateway2.log").read_text()
        os.kill(system.pids()["gateway"], signal.SIGKILL)
        wait_for(lambda: listeners(port) == 1, 10, "the first gateway to be gone")
        assert health(url)["system"] == own
        # `up` starts the first system's gateway again beside it: its own system's port.
        assert system.up()["services"]["gateway"] == "running"
        assert listeners(port) == 2
    finally:
        extra.terminate()
        extra.wait(30)


# -- mistakes and state --------------------------------------------------------------------------

def test_an_unusable_data_dir_or_bind_is_a_clear_error(tmp_path: Path) -> None:
    """A data dir that is a file (or under one), or a malformed --bind, fails with a message."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for data_dir, args in ((blocker, ("up", "--detach")), (blocker / "sub", ("up", "--detach")),
                           (blocker, ("down",))):
        result = Up(data_dir).run(*args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert f"data dir {data_dir} is not usable" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    for bind in ("nonsense", "host:port", "127.0.0.1:70000"):
        result = Up(tmp_path / "bind").run("up", "--detach", "--bind", bind)
        assert result.returncode == 2 and "--bind" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_failed_up_leaves_nothing_running_and_foreground_up_supervises(tmp_path: Path) -> None:
    """An `up` that fails stops what it started and says so (nothing "already running" next
    time). A foreground `up` starts a killed worker again and says so; Ctrl-C stops it all."""
    node = Up(tmp_path / "data")
    node.env["RELAYCTL_HEALTH_TIMEOUT"] = "0"  # no service can be healthy in no time
    result = node.run("up", "--detach", "--bind", node.bind)
    assert result.returncode == 1 and "did not become healthy" in result.stderr, result.stderr
    assert "Stopped what this `up` had started: " in result.stderr, result.stderr
    assert node.run("status").returncode == 3
    records = json.loads((node.data_dir / "services.json").read_text())["services"]
    assert records and not any(pid_alive(r["pid"]) for r in records.values() if r.get("pid"))

    del node.env["RELAYCTL_HEALTH_TIMEOUT"]
    errors, output = tmp_path / "up.err", tmp_path / "up.out"
    with open(errors, "wb") as err, open(output, "wb") as out:
        up = subprocess.Popen([RELAYCTL, "--data-dir", str(node.data_dir), "up", "--bind", node.bind],
                              env=node.env, stdout=out, stderr=err)
    try:
        wait_for(lambda: "Running; press Ctrl-C" in output.read_text() or up.poll() is not None, 120,
                 "every service to be up")
        assert up.poll() is None, errors.read_text()
        before = node.pids()
        assert "already running" not in errors.read_text()
        os.kill(before["keys"], signal.SIGKILL)
        wait_for(lambda: "started `keys` again" in errors.read_text(), 30, "the restart message")
        assert f"`keys` (pid {before['keys']}) was killed by SIGKILL" in errors.read_text(), errors.read_text()
        wait_for(lambda: node.run("status").returncode == 0, 60, "keys to be healthy again")
        after = node.pids()
        assert after["keys"] != before["keys"] and pid_alive(after["keys"])
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0, errors.read_text()
    assert not any(pid_alive(pid) for pid in after.values())
    assert node.run("status").returncode == 3
