"""Fixtures: a real nats-server (JetStream) and redis-server per test session, on free
loopback ports in temp dirs, and a running system (every actor + the gateway) per module.
Redis requires credentials as `relayctl up` runs it (bus/embedded.py REDIS_ROLES): the
actors use the operator's, the gateway its own read-only role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from bus.embedded import ServerProcess, redis_role_url, start_nats, start_redis
from cli.logging import setup_logging
from tests.system import SystemUnderTest

# Not cached, so tests can swap processors to capture structured log events.
setup_logging(process="tests", level="warning", cache=False)


@pytest.fixture(autouse=True)
def _no_leaked_actors() -> Iterator[None]:
    """After each test, no actor it started is still running: a leaked actor is stopped and
    the test fails naming it. Module-scoped systems are set up before this and stay (their
    actors, and those restarted in their place, belong to the system, not to the test)."""
    before = list(pykka.ActorRegistry.get_all())
    yield
    urns = {ref.actor_urn for ref in before}
    # an actor of the system the test restarted (or its supervisor did) replaces one it had
    replaced = {ref.actor_class for ref in before if not ref.is_alive()}
    leaked = [ref for ref in pykka.ActorRegistry.get_all()
              if ref.actor_urn not in urns and ref.is_alive() and ref.actor_class not in replaced]
    for ref in leaked:
        ref.stop(block=True, timeout=5)
    if leaked:
        pytest.fail("the test left actors running: " + ", ".join(sorted(ref.actor_class.__name__ for ref in leaked)))


@pytest.fixture(autouse=True, scope="session")
def _stop_every_actor() -> Iterator[None]:
    """No test run leaves actor threads behind, whatever a test forgot to stop."""
    yield
    pykka.ActorRegistry.stop_all(timeout=10)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("nats")
    server = start_nats(path, log_path=path / "nats.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("redis")
    server = start_redis(path, log_path=path / "redis.log")
    yield server
    server.stop()


def gateway_redis_url(redis_server: ServerProcess) -> str:
    """The gateway role's URL on a Redis of `start_redis`."""
    assert redis_server.passwords is not None
    return redis_role_url(redis_server.url, "gateway", redis_server.passwords)


@pytest.fixture(scope="module")
def system(nats_server: ServerProcess, redis_server: ServerProcess) -> Iterator[SystemUnderTest]:
    sut = SystemUnderTest(nats_server.url, redis_server.url, gateway_redis_url=gateway_redis_url(redis_server)).start()
    yield sut
    sut.stop()


@pytest.fixture
def fresh_servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A nats-server and redis-server of the test's own (for tests that stop or break them)."""
    nats = start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log")
    redis = start_redis(tmp_path / "redis", log_path=tmp_path / "redis.log")
    yield nats, redis
    nats.stop()
    redis.stop()
