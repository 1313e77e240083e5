"""A relay request's W3C trace, from the gateway through NATS into an actor's log lines
(issue 16 item 17): real `relayctl gateway` and `relayctl worker` processes, their logs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.embedded import ServerProcess
from messages import tracing
from tests.conftest import gateway_redis_url
from tests.integration.test_gateway_ops import GatewayProcess
from tests.system import RELAYCTL, RelayClient, Relayctl

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


@pytest.fixture
def processes(tmp_path: Path, fresh_servers: tuple[ServerProcess, ServerProcess]) -> Iterator[dict[str, Any]]:
    nats, redis = fresh_servers
    worker_log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYCTL_")}
    env.update(RELAYCTL_SENTRY="0", RELAYCTL_LOG_LEVEL="info", RELAYCTL_REDIS_URL=redis.url)
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen([RELAYCTL, "--data-dir", str(tmp_path / "data"), "--nats-url", nats.url, "worker",
                                   "commands", "orgs"], stdout=log, stderr=subprocess.STDOUT, env=env)
    gateway = None
    try:
        gateway = GatewayProcess(tmp_path, nats.url, gateway_redis_url(redis))
        cli = Relayctl(nats.url, tmp_path / "cli")
        deadline = time.monotonic() + 60
        while cli.run("relay", "list").returncode != 0:  # the command handlers are up
            assert worker.poll() is None and time.monotonic() < deadline, worker_log.read_text()
            time.sleep(0.2)
        yield {"gateway": gateway, "worker_log": worker_log, "cli": cli}
    finally:
        if gateway is not None:
            gateway.stop()
        worker.terminate()
        worker.wait(20)


def test_a_relay_registration_is_one_trace_in_the_gateway_and_the_actor(processes: dict[str, Any]) -> None:
    gateway, cli = processes["gateway"], processes["cli"]
    relay = RelayClient(gateway.url)
    cli.ok("relay", "allow", "--", relay.public_key_str)
    status, data = relay.post("register/challenge/", {"relay_id": relay.relay_id, "public_key": relay.public_key_str,
                                                      "version": relay.version}, headers={"traceparent": CALLER})
    assert status == 200, data
    status, data = relay.post("register/response/", {"relay_id": relay.relay_id, "token": data["token"],
                                                     "version": relay.version}, headers={"traceparent": CALLER})
    assert status == 200, data
    caller = tracing.parse(CALLER)
    assert caller is not None

    deadline = time.monotonic() + 10
    while True:
        access = [e for e in gateway.access_lines() if e["route"] == "/api/0/relays/register/response/"]
        stored = [e for e in lines(processes["worker_log"])
                  if e.get("event") == "commands.stored" and e.get("type") == "relay.register"]
        if (access and stored) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # The gateway's span is a child of the caller's; the actor's, of a request the gateway made.
    [line] = access
    assert line["trace_id"] == caller.trace_id and line["parent_span_id"] == caller.span_id
    assert stored, processes["worker_log"].read_text()[-2000:]
    actor = stored[-1]
    assert actor["trace_id"] == caller.trace_id
    assert actor["parent_span_id"] == line["span_id"]  # one tree: the gateway's span is the parent
    assert actor["span_id"] not in (line["span_id"], caller.span_id)

    # Without a traceparent the gateway starts a trace, and the actor's lines are in it.
    before = len(lines(processes["worker_log"]))
    other = RelayClient(gateway.url)
    cli.ok("relay", "allow", "--", other.public_key_str)
    other.register()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        fresh = [e for e in lines(processes["worker_log"])[before:] if e.get("event") == "commands.stored"
                 and e.get("type") == "relay.register"]
        if fresh:
            break
        time.sleep(0.1)
    traces = {e["trace_id"] for e in gateway.access_lines() if e["route"] == "/api/0/relays/register/response/"}
    assert fresh and fresh[-1]["trace_id"] in traces - {caller.trace_id}
