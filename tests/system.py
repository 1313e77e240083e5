"""Test helpers that run the real system: servers, a worker, a gateway, a relay.

`SystemUnderTest` runs every actor in-process (a `Worker`) and the gateway on its own
event loop thread, against a real nats-server and redis-server started for the test run.
`RelayClient` plays a real Sentry Relay: its keys, signatures and registration come from
`sentry_relay`, exactly as Relay makes them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sentry_relay
from aiohttp import web
from click.testing import CliRunner

from actors.worker import ACTOR_NAMES, Worker
from bus.embedded import free_port
from bus.settings import Settings
from cli.main import main as cli_main
from gateway.app import create_app
from gateway.keys import SETTINGS
from gateway.limits import HttpLimits, serve


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(nats_url: str, *args: str, data_dir: Path | None = None) -> CliResult:
    runner = CliRunner()
    base = ["--nats-url", nats_url] + (["--data-dir", str(data_dir)] if data_dir else [])
    result = runner.invoke(cli_main, base + list(args), catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


class GatewayThread:
    """The gateway app on a free loopback port, in a thread with its own loop."""

    def __init__(self, nats_url: str, redis_url: str | None, settings: Settings | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.app = create_app(nats_url, redis_url, settings=settings)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> GatewayThread:
        self.thread.start()

        async def go() -> None:
            await serve(self.runner, "127.0.0.1", self.port, HttpLimits.from_settings(self.app[SETTINGS]))

        asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class SystemUnderTest:
    nats_url: str
    redis_url: str
    actors: list[str] = field(default_factory=lambda: list(ACTOR_NAMES))
    worker: Worker | None = None
    gateway: GatewayThread | None = None
    # The gateway's own Redis credentials (read-only, bus/embedded.py REDIS_ROLES), so every
    # test shows the gateway works with no more than that; else it uses `redis_url`.
    gateway_redis_url: str | None = None
    # The processes' settings (a Redis Cluster: RELAYCTL_REDIS_CLUSTER); default their environment's.
    settings: Settings | None = None

    def start(self, with_gateway: bool = True) -> SystemUnderTest:
        self.worker = Worker(self.actors, self.nats_url, self.redis_url, process_name="test-worker",
                             settings=self.settings).start()
        if with_gateway:
            self.gateway = GatewayThread(self.nats_url, self.gateway_redis_url or self.redis_url,
                                         settings=self.settings).start()
        return self

    def stop(self) -> None:
        if self.gateway:
            self.gateway.stop()
        if self.worker:
            self.worker.stop()

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def cli(self, *args: str) -> CliResult:
        return run_cli(self.nats_url, *args)

    def cli_ok(self, *args: str) -> Any:
        result = self.cli(*args)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result.json() if "--json" in args else result.stdout

    def registered_relay(self, internal: bool = True) -> RelayClient:
        """A relay the operator allowed (internal by default) that has completed registration."""
        relay = RelayClient(self.url)
        self.cli_ok("relay", "allow", *(["--internal"] if internal else []), "--", relay.public_key_str)
        relay.register()
        return relay

    def new_project(self, org: str | None = None) -> dict[str, Any]:
        """A fresh org (unless given) and project with its first key."""
        org = org or "org-" + uuid.uuid4().hex[:10]
        if self.cli("org", "create", org).exit_code not in (0, 1):
            raise AssertionError("org create failed")
        return {"org": org, **self.cli_ok("project", "create", org, "p-" + uuid.uuid4().hex[:10], "--json")}


def http_request(url: str, method: str = "GET", body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class RelayClient:
    """A Sentry Relay, as far as the upstream can tell: keys, signatures, registration."""

    def __init__(self, base_url: str, version: str = "24.11.0") -> None:
        self.base_url = base_url
        self.secret_key, self.public_key = sentry_relay.generate_key_pair()
        self.relay_id = str(uuid.uuid4())
        self.version = version

    @property
    def public_key_str(self) -> str:
        return str(self.public_key)

    def post(self, path: str, body: bytes | dict[str, Any], *, sign: bool = True, relay_id: str | None = None,
             signature: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if sign:
            hdrs["X-Sentry-Relay-Id"] = relay_id or self.relay_id
            hdrs["X-Sentry-Relay-Signature"] = signature or self.secret_key.sign(raw)
        status, _, data = http_request(self.base_url + "/api/0/relays/" + path, "POST", raw, hdrs)
        try:
            return status, json.loads(data)
        except ValueError:
            return status, data

    def challenge(self, **overrides: Any) -> tuple[int, Any]:
        body = {"relay_id": self.relay_id, "public_key": self.public_key_str, "version": self.version, **overrides}
        return self.post("register/challenge/", body)

    def register(self) -> None:
        status, data = self.challenge()
        assert status == 200, (status, data)
        status, data = self.post("register/response/", {"relay_id": self.relay_id, "token": data["token"],
                                                        "version": self.version})
        assert status == 200, (status, data)

    def configs(self, keys: list[str], version: int = 3, revisions: list[str | None] | None = None,
                **extra: Any) -> tuple[int, Any]:
        body: dict[str, Any] = {"publicKeys": keys, "fullConfig": True, **extra}
        if revisions is not None:
            body["revisions"] = revisions
        return self.post(f"projectconfigs/?version={version}", body)

    def poll(self, keys: list[str], until: Callable[[dict[str, Any]], bool], timeout: float = 10.0,
             **kwargs: Any) -> dict[str, Any]:
        """Poll v3 like Relay does (about every 100 ms) until `until(response)` holds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            status, last = self.configs(keys, **kwargs)
            if status == 200 and until(last):
                return last  # type: ignore[no-any-return]
            time.sleep(0.1)
        raise AssertionError(f"condition not met within {timeout}s; last response: {last!r:.500}")


RELAYCTL = str(Path(sys.executable).parent / "relayctl")


class RelayctlProcess:
    """The real `relayctl` console script, run in subprocesses against a data dir of its own."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.bind = f"127.0.0.1:{free_port()}"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("RELAYCTL_NATS_URL", "RELAYCTL_DATA_DIR", "RELAYCTL_REDIS_URL")}
        self.env["RELAYCTL_SENTRY"] = "0"
        # One gateway process, not one per core: the tests that want more ask (test_up.py).
        self.env["RELAYCTL_GATEWAYS"] = "1"
        self.out: dict[str, Any] = {}

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RELAYCTL, "--data-dir", str(self.data_dir), *args], capture_output=True,
                              text=True, timeout=timeout, env=self.env)

    def ok(self, *args: str) -> Any:
        result = self.run(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return json.loads(result.stdout) if "--json" in args else result.stdout

    def operator_credentials(self) -> dict[str, str]:
        """The operator's NATS and Redis URLs (with passwords) that `up` keeps in the data dir."""
        return json.loads((self.data_dir / "operator-credentials.json").read_text())  # type: ignore[no-any-return]


class Relayctl:
    """The console script, in a subprocess, talking to the test system's NATS."""

    def __init__(self, nats_url: str, data_dir: Path) -> None:
        self.nats_url = nats_url
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("RELAYCTL_NATS_URL", "RELAYCTL_DATA_DIR", "RELAYCTL_REDIS_URL")}
        self.env["RELAYCTL_SENTRY"] = "0"

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RELAYCTL, "--data-dir", str(self.data_dir), "--nats-url", self.nats_url, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def ok(self, *args: str) -> Any:
        result = self.run(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return json.loads(result.stdout) if "--json" in args else result.stdout

    def json_error(self, *args: str, exit_code: int = 1) -> dict[str, Any]:
        """The command failed with `exit_code` and printed exactly one JSON error document."""
        result = self.run(*args)
        assert result.returncode == exit_code, (args, result.returncode, result.stdout, result.stderr)
        doc = json.loads(result.stdout)
        assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
        assert isinstance(doc["error"]["code"], str) and doc["error"]["message"]
        # the same message on stderr, as without --json (INTERFACE.md: errors go to stderr)
        assert doc["error"]["message"] in result.stderr, result.stderr
        return doc["error"]  # type: ignore[no-any-return]
