"""Every JetStream asset replicated on a three-node NATS cluster (issue 15, bus/replication.py).

A system whose `rc_gateway` bucket (the registration secret) was made with one copy - as
relayctl did before every asset followed `RELAYCTL_STREAM_REPLICAS` - runs with R3: the
assets it creates now have three copies, `relayctl status` names the one that has not,
`relayctl stream replicate` raises it, and then the node leading it is killed: a new
gateway still starts, with the same secret.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from actors.worker import Worker
from bus.runtime import BusRuntime
from bus.settings import Settings
from cli.stream_health import stream_report
from gateway.keys import SECRET
from messages.subjects import EVENT_STREAM, GATEWAY_BUCKET
from tests.integration.test_cluster import start_cluster, wait_for_jetstream
from tests.system import GatewayThread, run_cli


def _replicas_current(runtime: BusRuntime, stream: str, count: int, timeout: float = 30.0) -> Any:
    """The stream's info once it has `count` copies, all caught up."""
    assert runtime.nc is not None
    js = runtime.nc.jetstream(timeout=5)
    deadline = time.monotonic() + timeout
    while True:
        info = runtime.call(js.stream_info(stream))
        peers = info.cluster.replicas or [] if info.cluster else []
        if info.config.num_replicas == count and len(peers) == count - 1 and all(p.current for p in peers):
            return info
        assert time.monotonic() < deadline, f"{stream}: {info.config.num_replicas} copies, peers {peers}"
        time.sleep(0.2)


def test_a_single_copy_secret_is_replicated_and_survives_its_node(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYCTL_STREAM_REPLICAS", "3")
    nodes = start_cluster(tmp_path)
    urls = ",".join(n.url for n in nodes)
    client = BusRuntime(urls, name="assets-test").start()
    worker: Worker | None = None
    gateways: list[GatewayThread] = []
    try:
        wait_for_jetstream(client)
        assert client.nc is not None
        js = client.nc.jetstream(timeout=5)
        # what an older relayctl left: the gateways' bucket with one copy
        client.call(js.create_key_value(bucket=GATEWAY_BUCKET, history=1, replicas=1))
        settings = Settings.load()
        worker = Worker(["commands", "configs", "orgs"], urls, None, process_name="assets-worker",
                        instrument=False, settings=settings).start()
        gateways.append(GatewayThread(urls, None, settings=settings).start())
        secret = gateways[0].app[SECRET]

        copies = run_cli(urls, "stream", "copies", "--json")
        assert copies.exit_code == 0, copies.stderr
        found = {a["asset"]: a["replicas"] for a in copies.json()["assets"] if a["replicas"] is not None}
        assert found[GATEWAY_BUCKET] == 1 and copies.json()["short"] == [GATEWAY_BUCKET]
        assert found[EVENT_STREAM] == 3 and len(found) >= 3, found  # made now: three copies each
        assert all(n == 3 for a, n in found.items() if a != GATEWAY_BUCKET), found
        report = stream_report(urls, None)
        assert [c["asset"] for c in report["short_copies"]] == [GATEWAY_BUCKET]
        assert "relayctl stream replicate --replicas 3" in report["detail"]

        replicated = run_cli(urls, "stream", "replicate", "--json")
        assert replicated.exit_code == 0, replicated.stderr
        assert [c["asset"] for c in replicated.json()["changed"]] == [GATEWAY_BUCKET]
        info = _replicas_current(client, f"KV_{GATEWAY_BUCKET}", 3)
        assert stream_report(urls, None)["short_copies"] == []
        again = run_cli(urls, "stream", "replicate", "--json")
        assert again.exit_code == 0 and again.json()["changed"] == []

        victim = next(n for n in nodes if n.name == info.cluster.leader)
        for gateway in gateways:
            gateway.stop()
        gateways.clear()
        victim.kill()
        survivors = ",".join(n.url for n in nodes if n is not victim)
        gateways.append(GatewayThread(survivors, None, settings=settings).start())
        assert gateways[0].app[SECRET] == secret
    finally:
        for gateway in gateways:
            gateway.stop()
        if worker is not None:
            worker.stop()
        client.close()
        for node in nodes:
            node.stop()
