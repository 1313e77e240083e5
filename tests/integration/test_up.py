"""`relayctl up` / `down` / `status`: the real console script, real OS processes, one data dir.

The tests of this module share one running system and run in file order: start, start
again, lose a process, stop and start again. `down` always runs at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.embedded import free_port
from cli.services import ACTORS, SERVICES, pid_alive

# The embedded model (service "llm") is left out: these tests configure an AI backend of
# their own, so `up` skips it whether or not the local-AI packages are installed.
STARTED = tuple(s for s in SERVICES if s != "llm")

RELAYCTL = str(Path(sys.executable).parent / "relayctl")


class Up:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.bind = f"127.0.0.1:{free_port()}"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("RELAYCTL_NATS_URL", "RELAYCTL_DATA_DIR", "RELAYCTL_REDIS_URL")}
        self.env["RELAYCTL_SENTRY"] = "0"
        self.env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"  # a backend of "our own": no llm service

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RELAYCTL, "--data-dir", str(self.data_dir), *args], capture_output=True,
                              text=True, timeout=timeout, env=self.env)

    def ok(self, *args: str) -> Any:
        result = self.run(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return json.loads(result.stdout) if "--json" in args else result.stdout

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
