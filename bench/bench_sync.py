"""What JetStream's `sync_interval: always` costs: acknowledged appends per second to a
file stream like RC_EVENTS, one at a time (as the command handlers append: each waits for
its ack) and 64 in flight, on a three-node cluster with an R3 stream, with the default
`sync_interval` (2 min: an ack means "in the memory of two nodes", fsync later) and with
`always` (an ack means "on the disk of two nodes").

    python -m bench.bench_sync [--seconds 5]

Figures in docs/production.md. The machine's disk decides the `always` figure: an fsync
per append on each node.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

import nats
from nats.js import api

from bus.embedded import free_port, nats_server_binary, wait_port

PAYLOAD = b"x" * 600  # about one small commit


def _config(name: str, port: int, cluster_port: int, routes: list[int], store: Path, sync: str | None) -> str:
    route_urls = ", ".join(f'"nats://127.0.0.1:{p}"' for p in routes)
    sync_line = f"\n  sync_interval: {sync}" if sync else ""
    return (f'server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: "{store}"{sync_line}\n}}\n'
            f"cluster {{\n  name: bench\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{route_urls}]\n}}\n")


async def _rates(url: str, seconds: float) -> tuple[float, float]:
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    for _ in range(100):
        try:
            await js.add_stream(api.StreamConfig(name="BENCH", subjects=["bench.>"], num_replicas=3,
                                                 storage=api.StorageType.FILE))
            break
        except Exception:
            await asyncio.sleep(0.2)  # the cluster elects its meta leader first
    serial = 0
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        await js.publish("bench.one", PAYLOAD)
        serial += 1
    parallel = 0
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        acks = [await js.publish_async("bench.many", PAYLOAD) for _ in range(64)]
        await asyncio.gather(*acks)
        parallel += 64
    await nc.close()
    return serial / seconds, parallel / seconds


def run(sync: str | None, seconds: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="relayctl-sync-") as tmp:
        ports = [free_port() for _ in range(3)]
        cports = [free_port() for _ in range(3)]
        procs = []
        try:
            for i in range(3):
                conf = Path(tmp) / f"n{i}.conf"
                conf.write_text(_config(f"n{i}", ports[i], cports[i], cports, Path(tmp) / f"n{i}", sync))
                procs.append(subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            for proc, port in zip(procs, ports):
                wait_port(proc, "nats-server", port)
            return asyncio.run(_rates(f"nats://127.0.0.1:{ports[0]}", seconds))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    for label, sync in (("default (2m)", None), ("always", "always")):
        serial, parallel = run(sync, args.seconds)
        print(f"sync_interval {label:<13} R3: {serial:8.0f} appends/s one at a time, {parallel:8.0f} appends/s 64 in flight")


if __name__ == "__main__":
    main()
