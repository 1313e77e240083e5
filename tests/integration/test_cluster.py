"""A three-node NATS cluster on loopback with the event stream replicated three times
(docs/production.md): losing a node, even the stream's leader, loses no acknowledged
command, and the system keeps accepting commands.

The command handlers run in a `Worker` of this process with `RELAYCTL_STREAM_REPLICAS=3`;
the worker and the client connect with all three URLs, comma-separated, as production
processes do.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.worker import Worker
from bus.client import request as bus_request
from bus.embedded import ServerProcess, free_port, nats_server_binary, wait_port
from bus.eventstore import JetStreamEventStore
from bus.runtime import BusRuntime
from messages.errors import RelayctlError
from messages.subjects import EVENT_STREAM

NODES = 3
COMMANDS_BEFORE_KILL = 10
COMMANDS_AFTER_KILL = 15


def node_config(name: str, port: int, cluster_port: int, routes: list[int], store: Path) -> str:
    """What every production node needs (docs/production.md), on loopback."""
    route_urls = ", ".join(f'"nats://127.0.0.1:{p}"' for p in routes)
    return f"""
server_name: {name}
listen: 127.0.0.1:{port}
max_payload: 8MB
jetstream {{ store_dir: "{store}" }}
cluster {{
  name: relayctl
  listen: 127.0.0.1:{cluster_port}
  routes: [{route_urls}]
}}
"""


def start_cluster(path: Path) -> list[ServerProcess]:
    ports = [free_port() for _ in range(NODES)]
    cluster_ports = [free_port() for _ in range(NODES)]
    nodes: list[ServerProcess] = []
    try:
        for i in range(NODES):
            name = f"n{i + 1}"
            conf = path / f"{name}.conf"
            conf.write_text(node_config(name, ports[i], cluster_ports[i], cluster_ports, path / name))
            with open(path / f"{name}.log", "ab") as log:
                proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            nodes.append(ServerProcess(name, proc, f"nats://127.0.0.1:{ports[i]}", ports[i]))
        for node in nodes:
            wait_port(node.process, node.name, node.port)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    nodes = start_cluster(tmp_path)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def wait_for_jetstream(runtime: BusRuntime, timeout: float = 30.0) -> None:
    """A fresh cluster answers JetStream requests once it has elected its meta leader."""
    assert runtime.nc is not None
    js = runtime.nc.jetstream(timeout=2)
    deadline = time.monotonic() + timeout
    while True:
        try:
            runtime.call(js.account_info(), timeout=5)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


class Commands:
    """Sends `org.create` commands one after another and remembers which were acknowledged."""

    def __init__(self, runtime: BusRuntime) -> None:
        self.runtime = runtime
        self.acked: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            slug = f"org-{self.sent}"
            self.sent += 1
            try:
                assert self.runtime.nc is not None
                self.runtime.call(bus_request(self.runtime.nc, "org.create", {"slug": slug, "name": None},
                                              timeout=10.0), timeout=15)
                self.acked.append(slug)
            except (RelayctlError, TimeoutError) as exc:
                self.failed.append((slug, type(exc).__name__))
                time.sleep(0.2)

    def wait_acked(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acked) >= count, f"only {len(self.acked)} of {count} acknowledged; failed: {self.failed}"

    def __enter__(self) -> Commands:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(20)


def test_losing_the_stream_leader_loses_no_acknowledged_command(
        cluster: list[ServerProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill the node leading the R3 event stream during a stream of commands: every
    acknowledged command is still stored, and commands keep being accepted."""
    monkeypatch.setenv("RELAYCTL_STREAM_REPLICAS", "3")
    urls = ",".join(node.url for node in cluster)
    client = BusRuntime(urls, name="cluster-test").start()
    worker: Worker | None = None
    try:
        wait_for_jetstream(client)
        worker = Worker(["commands"], urls, None, process_name="cluster-worker", instrument=False).start()
        assert client.nc is not None
        js = client.nc.jetstream(timeout=5)
        info = client.call(js.stream_info(EVENT_STREAM))
        assert info.config.num_replicas == 3 and info.cluster is not None
        leader = info.cluster.leader
        print(f"\nstream {EVENT_STREAM}: R{info.config.num_replicas}, leader {leader}, "
              f"replicas {[r.name for r in info.cluster.replicas or []]}")

        with Commands(client) as commands:
            commands.wait_acked(COMMANDS_BEFORE_KILL, 30)
            victim = next(node for node in cluster if node.name == leader)
            victim.kill()
            killed_at = len(commands.acked)
            commands.wait_acked(killed_at + COMMANDS_AFTER_KILL, 60)
        print(f"killed {victim.name} after {killed_at} acknowledged commands; sent {commands.sent}, "
              f"acknowledged {len(commands.acked)}, failed {len(commands.failed)} {commands.failed}")

        info = client.call(js.stream_info(EVENT_STREAM))
        assert info.cluster is not None
        print(f"new leader {info.cluster.leader}; stream holds {info.state.messages} commits")
        assert info.cluster.leader != victim.name
        store = JetStreamEventStore(client.nc)
        stored = {events[0].aggregate_id for _, events in client.call(store.read(), timeout=30)
                  if events[0].type == "OrgCreated"}
        assert set(commands.acked) <= stored, sorted(set(commands.acked) - stored)
        # The handlers' own projection agrees (read-your-writes after the failover too).
        exported = client.call(bus_request(client.nc, "export.orgs", {}, timeout=10.0))
        assert set(commands.acked) <= {org["slug"] for org in exported["orgs"]}
        print(f"all {len(commands.acked)} acknowledged commands are stored on the two remaining nodes")
    finally:
        if worker is not None:
            worker.stop()
        client.close()
