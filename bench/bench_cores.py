"""Every core: throughput with 1 and 2 gateway processes on one port, and with 1 and 2
config-builder workers in their queue group.

    python -m bench.bench_cores [--seconds 5]

Load comes from `wrk` when it is installed (`apt-get install wrk`: a C load generator,
so the Python processes under test get the cores) or else from an aiohttp client.
1. v3, 100 cached keys per request (64 pre-signed bodies over 2000 projects, rotated, as
   bench_relay): 1 gateway process, then 2 on the same port
   (SO_REUSEPORT; the kernel spreads connections).
2. v2 (built on the spot by the config builder), 10 keys per request, 2 gateways: 1
   `configs` worker process, then 2 (NATS queue group `rc-configs`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from bench import _wrk
from bench._servers import import_keys, servers, wait_instances
from bench.bench_relay import load, served_all
from bus.embedded import free_port, port_open
from cli.health import listens as _listens
from tests.system import RelayClient


def start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", port):
        if time.monotonic() > deadline:
            raise RuntimeError("gateway did not start")
        time.sleep(0.05)


def measure(url: str, relay: RelayClient, keys: list[str], version: int, seconds: int) -> float:
    """Keys per second over `seconds` of load from 8 connections."""
    if version == 3 and shutil.which("wrk"):  # as bench_relay: 64 signed bodies of 100 keys, rotated
        lua = _wrk.script(relay.relay_id, _wrk.signed_bodies(relay, keys, 100))
        result = _wrk.run(url + _wrk.PATH, lua, seconds)
        if result.errors:
            raise RuntimeError(f"{result.errors} errors under load")
        return result.keys_per_s(100)
    body = json.dumps({"publicKeys": keys}).encode()
    path = f"/api/0/relays/projectconfigs/?version={version}"
    wrk = shutil.which("wrk")
    if wrk is None:
        n = int(seconds * 200)
        rate, _ = asyncio.run(load(url, relay, keys, n, 8)) if version == 3 else (0.0, [])
        return rate
    headers = {"Content-Type": "application/json", "X-Sentry-Relay-Id": relay.relay_id,
               "X-Sentry-Relay-Signature": relay.secret_key.sign(body)}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n')
        for name, value in headers.items():
            script.write(f'wrk.headers["{name}"] = "{value}"\n')
    try:
        out = subprocess.run([wrk, "-t2", "-c8", f"-d{seconds}s", "-s", script.name, url + path],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    if "Non-2xx" in out:
        raise RuntimeError("errors under load:\n" + out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps * len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    with servers() as (nats_server, redis_server):
        urls = ["--nats-url", nats_server.url, "--redis-url", redis_server.url]
        workers = [start(["worker", "commands", "keys", "orgs", *urls]), start(["worker", "configs", *urls])]
        gateways: list[subprocess.Popen[bytes]] = []
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(wait_instances(nats_server.url, "configs", 1))
            gateways.append(start(["gateway", "--bind", f"127.0.0.1:{port}", *urls]))
            wait_port(port)
            relay = RelayClient(url)

            keys = asyncio.run(import_keys(nats_server.url, "cores", 2000, relay.public_key_str))
            relay.register()
            for i in range(0, len(keys), 500):
                relay.poll(keys[i:i + 500], served_all(len(keys[i:i + 500])), timeout=60)
            print(f"load: {'wrk -t2 -c8' if shutil.which('wrk') else 'aiohttp, 8 concurrent'}; machine: {os.cpu_count()} cores")
            measure(url, relay, keys, 3, 1)  # warm-up, as for the second
            one = measure(url, relay, keys, 3, args.seconds)
            gateways.append(start(["gateway", "--bind", f"127.0.0.1:{port}", *urls]))
            deadline = time.monotonic() + 60
            while not _listens(gateways[-1].pid, port):  # the kernel spreads only over listeners
                if time.monotonic() > deadline:
                    raise RuntimeError("the second gateway did not listen")
                time.sleep(0.1)
            measure(url, relay, keys, 3, 1)  # warm-up: its cache of verified entries fills
            two = measure(url, relay, keys, 3, args.seconds)
            print(f"v3 100 keys of 2000  1 gateway {one:9.0f} keys/s   2 gateways {two:9.0f} keys/s"
                  f"   scaling {two / one:.2f}x   (load average {os.getloadavg()[0]:.2f})")
            if shutil.which("wrk"):
                v2_one = measure(url, relay, keys[:10], 2, args.seconds)
                workers.append(start(["worker", "configs", *urls]))
                asyncio.run(wait_instances(nats_server.url, "configs", 2))
                v2_two = measure(url, relay, keys[:10], 2, args.seconds)
                print(f"v2 10 keys   1 configs worker {v2_one:7.0f} keys/s   2 workers {v2_two:7.0f} keys/s"
                      f"   scaling {v2_two / v2_one:.2f}x")
        finally:
            for proc in gateways + workers:
                proc.terminate()


if __name__ == "__main__":
    main()
