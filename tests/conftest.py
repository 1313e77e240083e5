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
