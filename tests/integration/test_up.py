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
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus.embedded import REDIS_ROLES
from cli.services import ACTORS, SERVICES, pid_alive
from tests.system import RelayctlProcess

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
    assert set(out) == {"gateway", "nats", "redis", "services", "skipped"}
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
    operator = redis.Redis.from_url(out["redis"], socket_timeout=5)
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
    assert "Nothing to do" in system.ok("up", "--detach", "--bind", system.bind)
    assert system.pids() == before


def test_a_killed_service_is_restarted_alone(system: Up) -> None:
    """After one service's process dies, `up` starts that one and leaves the rest alone."""
    before = system.pids()
    os.kill(before["keys"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(before["keys"]) and time.monotonic() < deadline:
        time.sleep(0.05)
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
