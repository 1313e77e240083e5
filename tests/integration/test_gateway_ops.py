"""What an operator reads from a gateway (issue 16 items 12 and 15): the JSON access log of
the real `relayctl gateway` process, and liveness apart from readiness."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.embedded import ServerProcess, free_port
from tests.conftest import gateway_redis_url
from tests.system import RELAYCTL, GatewayThread, RelayClient, SystemUnderTest, http_request


class GatewayProcess:
    """`relayctl gateway` in a subprocess, its log (stderr, as `up` keeps it) in a file."""

    def __init__(self, tmp_path: Path, nats_url: str, redis_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"gateway-{self.port}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("RELAYCTL_")}
        environ.update(RELAYCTL_SENTRY="0", RELAYCTL_REDIS_URL=redis_url, **env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [RELAYCTL, "--data-dir", str(tmp_path / "data"), "--nats-url", nats_url, "gateway", "--bind",
                 f"127.0.0.1:{self.port}"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=environ)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if http_request(self.url + "/_health/live", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("gateway did not start: " + self.log_path.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def access_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "http.request":
                lines.append(event)
        return lines


@pytest.fixture
def gateways(tmp_path: Path, system: SystemUnderTest, nats_server: ServerProcess,
             redis_server: ServerProcess) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for gateway in started:
        gateway.stop()


def test_access_log_has_one_json_line_per_request(tmp_path: Path, system: SystemUnderTest,
                                                  nats_server: ServerProcess, redis_server: ServerProcess,
                                                  gateways: list[GatewayProcess]) -> None:
    """Every request is a JSON line in the gateway's log: method, route (the pattern, not the
    raw path), status, duration, the relay id when a relay sent one."""
    gateway = GatewayProcess(tmp_path, nats_server.url, gateway_redis_url(redis_server))
    gateways.append(gateway)
    relay = RelayClient(gateway.url)
    system.cli_ok("relay", "allow", "--internal", "--", relay.public_key_str)
    relay.register()
    project = system.new_project()
    status, _ = relay.configs([project["publicKey"]])
    assert status == 200
    assert http_request(gateway.url + "/no/such/path")[0] == 404
    stranger = RelayClient(gateway.url)
    assert stranger.configs([project["publicKey"]])[0] == 401
    deadline = time.monotonic() + 10
    while len(gateway.access_lines()) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = gateway.access_lines()
    for line in lines:
        assert {"method", "route", "status", "duration_ms", "timestamp", "level"} <= set(line), line
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    configs = [e for e in lines if e["route"] == "/api/0/relays/projectconfigs/"]
    assert {(e["status"], e["relay_id"]) for e in configs} == {(200, relay.relay_id), (401, stranger.relay_id)}
    assert all(e["method"] == "POST" for e in configs)
    assert {"route": "unmatched", "status": 404} in [{"route": e["route"], "status": e["status"]} for e in lines]
    assert any(e["route"] == "/api/0/relays/register/challenge/" and e["status"] == 200 for e in lines)


def test_access_log_sampling_keeps_every_error(tmp_path: Path, system: SystemUnderTest,
                                               nats_server: ServerProcess, redis_server: ServerProcess,
                                               gateways: list[GatewayProcess]) -> None:
    """Past the full rate (here 1 a second) with RELAYCTL_ACCESS_LOG_SAMPLE=0 no fast success
    is logged, every error still is."""
    gateway = GatewayProcess(tmp_path, nats_server.url, gateway_redis_url(redis_server),
                             RELAYCTL_ACCESS_LOG_SAMPLE="0", RELAYCTL_ACCESS_LOG_FULL_RATE="1")
    gateways.append(gateway)
    for _ in range(50):
        assert http_request(gateway.url + "/_health/")[0] == 200
    assert http_request(gateway.url + "/nothing-here")[0] == 404
    deadline = time.monotonic() + 10
    while not any(e["status"] == 404 for e in gateway.access_lines()) and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [(e["route"], e["status"]) for e in gateway.access_lines()]
    assert lines[-1] == ("unmatched", 404), lines
    # at most the full rate of each second the 50 requests spanned, never all of them
    health = [line for line in lines[:-1] if line == ("/_health/", 200)]
    assert len(health) < 50 and all(route.startswith("/_health/") and status == 200
                                    for route, status in lines[:-1]), lines


def test_liveness_and_readiness(fresh_servers: tuple[ServerProcess, ServerProcess]) -> None:
    """`/_health/live` answers 200 while the process runs; `/_health/ready` 200 while it can
    serve configs from Redis or NATS, 503 once neither; `/_health/` wants both."""
    nats, redis = fresh_servers
    assert redis.passwords is not None
    gateway = GatewayThread(nats.url, gateway_redis_url(redis)).start()
    try:
        def get(path: str) -> tuple[int, Any]:
            status, _, body = http_request(gateway.url + path)
            return status, json.loads(body)

        assert get("/_health/live") == (200, {"is_healthy": True})
        assert get("/_health/ready") == (200, {"is_healthy": True, "dependencies": {"nats": "ok", "redis": "ok"}})
        assert get("/_health/")[0] == 200
        nats.stop()
        deadline = time.monotonic() + 10
        while get("/_health/")[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get("/_health/")[0] == 503
        assert get("/_health/ready") == (200, {"is_healthy": True,
                                               "dependencies": {"nats": "unavailable", "redis": "ok"}})
        redis.stop()
        assert get("/_health/ready") == (503, {"is_healthy": False,
                                               "dependencies": {"nats": "unavailable", "redis": "unavailable"}})
        assert get("/_health/live") == (200, {"is_healthy": True})
    finally:
        gateway.stop()
