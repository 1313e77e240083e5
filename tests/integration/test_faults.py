"""Faults under load: actor processes killed, Redis down, NATS down - what relays see.

One system started with the real console script (`relayctl up`), plus one more
`relayctl worker` running every actor, so each queue group has two instances. Relays keep
polling (v3 from the cache, v2 built by the actors) while a test breaks something; every
answer is recorded with its status and how long it took, and each test prints what it saw.
The tests run in file order and share the system; each one leaves it whole again (`up`
restarts what died). Bounds: Relay gives a request 5 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web

from bus.config_cache import RELAY_AUTH_PREFIX, cache_key
from bus.embedded import start_nats
from bus.runtime import connect
from cli.services import ACTORS, pid_alive
from gateway.ask import ask_for_relay
from gateway.keys import NC
from messages.envelope import decode_request, encode_result
from tests.system import RELAYCTL, RelayClient, RelayctlProcess, http_request

RELAY_BUDGET = 5.0  # seconds Relay gives each request
KEYS = 12
ORG = "faults"  # projects p0..p11, one key each


@dataclass
class Answer:
    version: int
    status: int  # 0: no answer (connection error or past Relay's budget)
    seconds: float
    retry_after: str | None
    body: Any


class Up(RelayctlProcess):
    """`relayctl up` in a data dir of its own, plus one extra `relayctl worker` process."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.worker: subprocess.Popen[bytes] | None = None

    def up(self) -> dict[str, Any]:
        self.out = self.ok("up", "--detach", "--bind", self.bind, "--json", "--exclude", "llm")
        self.out.update(self.operator_credentials())  # the URLs with the operator's passwords
        return self.out

    @property
    def gateway(self) -> str:
        return str(self.out["gateway"])

    def start_worker(self) -> None:
        log = open(self.data_dir / "extra-worker.log", "ab")
        try:
            self.worker = subprocess.Popen(
                [RELAYCTL, "--data-dir", str(self.data_dir), "worker", "--nats-url", self.out["nats"],
                 "--redis-url", self.out["redis"]], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        finally:
            log.close()
        self.wait(lambda: all(s.get("instances") == 2 for n, s in self.status().items() if n in ACTORS),
                  60, "the extra worker's actors to answer pings")

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(15)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(5)

    def status(self) -> dict[str, Any]:
        return self.ok("status", "--json")["services"]  # type: ignore[no-any-return]

    def pids(self) -> dict[str, int]:
        return {name: s["pid"] for name, s in self.status().items()}

    @staticmethod
    def wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = condition()
            except Exception:
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    Up.wait(lambda: not pid_alive(pid), 10, f"pid {pid} to die")


class Load:
    """Relays polling like Relay: v3 (cached keys) and v2 (built by the actors) in parallel."""

    def __init__(self, relay: RelayClient, keys: list[str], versions: tuple[int, ...] = (2, 3)) -> None:
        self.relay = relay
        self.keys = keys
        self.versions = versions
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(v,), daemon=True) for v in versions]

    def ask(self, version: int) -> Answer:
        body = json.dumps({"publicKeys": self.keys, "fullConfig": True}).encode()
        headers = {"Content-Type": "application/json", "X-Sentry-Relay-Id": self.relay.relay_id,
                   "X-Sentry-Relay-Signature": self.relay.secret_key.sign(body)}
        started = time.monotonic()
        try:
            status, hdrs, raw = http_request(f"{self.relay.base_url}/api/0/relays/projectconfigs/?version={version}",
                                             "POST", body, headers, timeout=RELAY_BUDGET)
        except OSError as exc:
            return Answer(version, 0, time.monotonic() - started, None, repr(exc))
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw
        return Answer(version, status, time.monotonic() - started, hdrs.get("retry-after"), data)

    def _run(self, version: int) -> None:
        while not self._stop.is_set():
            self.answers.append(self.ask(version))
            time.sleep(0.05)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(RELAY_BUDGET + 5)

    def report(self, label: str) -> dict[str, Any]:
        out: dict[str, Any] = {"requests": len(self.answers)}
        for version in self.versions:
            mine = [a for a in self.answers if a.version == version]
            out[f"v{version}"] = {"statuses": dict(Counter(a.status for a in mine)),
                                  "max_s": round(max((a.seconds for a in mine), default=0.0), 3)}
        print(f"\n{label}: {out}")
        return out


def complete(answer: Answer, keys: list[str]) -> bool:
    """A 200 that serves every key (none pending)."""
    return answer.status == 200 and isinstance(answer.body, dict) and set(answer.body["configs"]) == set(keys) \
        and not answer.body.get("pending")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(tmp_path_factory.mktemp("faults") / "data")
    try:
        up.up()
        up.start_worker()
        yield up
    finally:
        up.stop_worker()
        up.run("down", timeout=60)


@pytest.fixture(scope="module")
def relay(system: Up) -> RelayClient:
    relay = RelayClient(system.gateway)
    system.ok("relay", "allow", "--internal", "--", relay.public_key_str)
    relay.register()
    return relay


@pytest.fixture(scope="module")
def keys(system: Up, relay: RelayClient) -> list[str]:
    system.ok("org", "create", ORG)
    out = [system.ok("project", "create", ORG, f"p{i}", "--json")["publicKey"] for i in range(KEYS)]
    relay.poll(out, lambda r: set(r["configs"]) == set(out))  # every config is in the cache
    return out


def cache_hits(system: Up) -> float:
    text = system.ok("metrics", "--prometheus")
    assert "relay_cache_forged" not in text, "the gateway rejected entries the actors wrote"
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("relayctl_relay_cache_total{") and 'result="hit"' in line)


def test_the_gateway_checks_and_serves_the_cache_with_its_own_credentials(system: Up, relay: RelayClient,
                                                                        keys: list[str]) -> None:
    """Under `up`'s per-role credentials (NATS and Redis) the gateway reads the MAC keys the
    actors made and serves every config from Redis: cache hits, no entry rejected."""
    before = cache_hits(system)
    for _ in range(5):
        status, data = relay.configs(keys)
        assert status == 200 and set(data["configs"]) == set(keys)
    system.wait(lambda: cache_hits(system) >= before + 5 * len(keys), 15, "the gateway's cache hits")


def test_killing_every_up_actor_fails_no_request(system: Up, relay: RelayClient, keys: list[str]) -> None:
    """kill -9 of every actor process `up` started, while another worker runs: every v2 and
    v3 request is still answered 200 with every config (queries retried on the other
    instance within Relay's 5 s)."""
    victims = {name: pid for name, pid in system.pids().items() if name in ACTORS}
    with Load(relay, keys, versions=(2, 2, 2, 3)) as load:  # three v2 pollers: some are in flight
        time.sleep(1.0)
        for pid in victims.values():
            os.kill(pid, signal.SIGKILL)
        for pid in victims.values():
            Up.wait(lambda dead=pid: not pid_alive(dead), 10, f"pid {pid} to die")  # type: ignore[misc]
        time.sleep(4.0)
    report = load.report(f"killed {len(victims)} actor processes ({', '.join(victims)})")
    assert report["v2"]["statuses"] and report["v3"]["statuses"]
    failed = [a for a in load.answers if not complete(a, keys)]
    assert not failed, failed[:3]
    assert all(a.seconds < RELAY_BUDGET for a in load.answers)

    out = system.up()  # `up` starts the killed actors again, the rest is left alone
    assert {n for n, s in out["services"].items() if s == "running"} == set(victims)
    system.wait(lambda: all(s.get("instances") == 2 for n, s in system.status().items() if n in ACTORS),
                30, "both instances of every actor")


def test_redis_outage_answers_200_or_503_and_the_cache_is_rebuilt(system: Up, relay: RelayClient,
                                                                   keys: list[str]) -> None:
    """With Redis dead, relays get 200 (built through the actors) or 503 with Retry-After,
    each within 5 s, never a 500; once `up` restarts it, every config and relay auth entry
    is back in Redis, rebuilt from the event log, including a change made during the outage."""
    cache = redis.Redis.from_url(system.out["redis"], socket_timeout=2)
    try:
        assert cache.exists(cache_key(keys[0]), RELAY_AUTH_PREFIX + relay.relay_id) == 2
        kill9(system.pids()["redis"])
        with Load(relay, keys) as load:
            time.sleep(1.0)
            health = http_request(system.gateway + "/_health/")
            # a change during the outage: its config cannot be written now, must be later
            system.ok("project", "option", "set", f"{ORG}/p0", "sentry:origins", '["outage.example"]')
            time.sleep(2.0)
        report = load.report("redis down")
        print(f"/_health/ during the outage: {health[0]} {health[2].decode()}")
        assert health[0] == 503
        assert all(a.status in (200, 503) for a in load.answers), Counter(a.status for a in load.answers)
        assert all(a.retry_after for a in load.answers if a.status == 503)
        assert all(a.seconds < RELAY_BUDGET for a in load.answers)
        assert all(complete(a, keys) for a in load.answers if a.status == 200 and a.version == 2)
        assert report["v2"]["statuses"].get(200), "v2 is built through the actors without Redis"

        out = system.up()
        assert out["services"]["redis"] == "running"
        started = time.monotonic()
        names = [cache_key(k) for k in keys] + [RELAY_AUTH_PREFIX + relay.relay_id]
        system.wait(lambda: cache.exists(*names) == len(names), 15, "the cache to be rebuilt")
        print(f"cache rebuilt ({len(names)} entries checked) {time.monotonic() - started:.2f}s after `up`")
        doc = relay.poll(keys[:1], lambda r: keys[0] in r["configs"])["configs"][keys[0]]
        assert doc["config"]["allowedDomains"] == ["outage.example"]
        with Load(relay, keys, versions=(3,)) as load:
            time.sleep(1.0)
        assert all(complete(a, keys) for a in load.answers)
        load.report("redis back")
    finally:
        cache.close()


def test_nats_outage_serves_cached_configs_and_recovers(system: Up, relay: RelayClient, keys: list[str]) -> None:
    """With NATS dead, cached configs are still served from Redis, anything else is a fast
    503 and /_health/ says 503; once `up` restarts NATS, every process reconnects by itself
    (same pids) and every acknowledged change is still there."""
    before = system.pids()
    exported = system.ok("export", "-")
    kill9(before["nats"])
    with Load(relay, keys) as load:
        time.sleep(3.0)
        health = http_request(system.gateway + "/_health/")
        status, _ = relay.challenge()
    report = load.report("nats down")
    print(f"/_health/ during the outage: {health[0]} {health[2].decode()}; registration: {status}")
    assert health[0] == 503 and status == 503
    v3 = [a for a in load.answers if a.version == 3]
    assert v3 and all(complete(a, keys) for a in v3), "cached configs are served from Redis"
    v2 = [a for a in load.answers if a.version == 2]
    assert v2 and all(a.status == 503 and a.retry_after and a.seconds < RELAY_BUDGET for a in v2), report

    out = system.up()
    assert {n for n, s in out["services"].items() if s == "running"} == {"nats"}
    started = time.monotonic()
    system.wait(lambda: http_request(system.gateway + "/_health/")[0] == 200, 30, "/_health/ to be 200")
    system.wait(lambda: all(s.get("instances") == 2 for n, s in system.status().items() if n in ACTORS),
                30, "every actor instance to answer again")
    print(f"every process reconnected {time.monotonic() - started:.2f}s after `up`")
    after = system.pids()
    assert {n: p for n, p in after.items() if n != "nats"} == {n: p for n, p in before.items() if n != "nats"}
    assert system.ok("export", "-") == exported, "every acknowledged change is still there"
    status, data = relay.configs(keys, version=2)
    assert status == 200 and set(data["configs"]) == set(keys)
    new_key = system.ok("project", "create", ORG, "after-outage", "--json")["publicKey"]
    relay.poll([new_key], lambda r: new_key in r["configs"] and not r["configs"][new_key].get("disabled"))
    print("a project made after the outage is served by v3")


def test_a_query_lost_with_its_instance_is_retried_within_relays_budget(tmp_path: Path) -> None:
    """An instance that took a gateway query and died with it costs the gateway one try, not
    the whole deadline: the retry, answered by another instance, comes within Relay's 5 s."""
    nats = start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log")

    async def run() -> tuple[Any, float, int]:
        nc = await connect(nats.url, name="lost-query-test")
        taken: list[str] = []

        async def instance(msg: Any) -> None:
            taken.append(decode_request(msg.data).id)
            if len(taken) > 1:  # the first try vanished with the instance that took it
                await msg.respond(encode_result({"entries": {}, "global": None}))

        try:
            await nc.subscribe("rc.config.get", queue="rc-configs", cb=instance)
            app = web.Application()
            app[NC] = nc
            started = time.monotonic()
            result = await ask_for_relay(app, "config.get", {"public_keys": []})
            return result, time.monotonic() - started, len(taken)
        finally:
            await nc.close()

    try:
        result, seconds, tries = asyncio.run(run())
    finally:
        nats.stop()
    print(f"\nanswered after {tries} tries in {seconds:.2f}s")
    assert result == {"entries": {}, "global": None} and tries == 2
    assert seconds < RELAY_BUDGET
