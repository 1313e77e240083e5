"""Redis as a local attacker meets it: credentials, what each role may touch, and a
memory limit that evicts instead of refusing.

The fixtures run Redis exactly as `relayctl up` does (bus/embedded.py `REDIS_ROLES`); the
gateway of the module's system connects with its own read-only role.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest
import redis

from bus.embedded import ServerProcess
from tests.system import SystemUnderTest


@pytest.fixture(scope="module")
def cache(system: SystemUnderTest) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(system.redis_url)
    yield client
    client.close()


def role_client(server: ServerProcess, role: str) -> redis.Redis:
    from bus.embedded import redis_role_url

    assert server.passwords is not None
    return redis.Redis.from_url(redis_role_url(server.url, role, server.passwords), socket_timeout=2)


def raw_command(port: int, command: bytes) -> bytes:
    """What Redis answers a client that sends `command` without any credentials."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command)
        return sock.recv(200)


# -- credentials and roles ------------------------------------------------------------------------

@pytest.mark.parametrize("command", [b"PING\r\n", b"*2\r\n$3\r\nGET\r\n$22\r\nrelayauth:does-not-matter\r\n",
                                     b"*3\r\n$3\r\nSET\r\n$13\r\nrelayconfig:x\r\n$1\r\n1\r\n", b"KEYS *\r\n"])
def test_redis_refuses_clients_without_credentials(redis_server: ServerProcess, command: bytes) -> None:
    """A client that does not authenticate gets NOAUTH for everything, reads and writes alike."""
    assert raw_command(redis_server.port, command).startswith(b"-NOAUTH")


def test_a_wrong_password_is_refused(redis_server: ServerProcess) -> None:
    """The role users exist only with their own passwords."""
    url = f"redis://gateway:{uuid.uuid4().hex}@127.0.0.1:{redis_server.port}/0"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url).ping()


# (role, key, may read, may write)
ROLE_ACCESS = [
    ("gateway", "relayconfig:0", True, False), ("gateway", "relayauth:0", True, False),
    ("gateway", "ai:suggestion:0", False, False), ("gateway", "other", False, False),
    ("configs", "relayconfig:0", True, True), ("configs", "relayauth:0", False, False),
    ("orgs", "relayauth:0", True, True), ("orgs", "relayconfig:0", False, False),
    ("ai", "ai:suggestion:0", True, True), ("ai", "relayauth:0", False, False),
    ("ai", "relayconfig:0", False, False),
]


@pytest.mark.parametrize(("role", "key", "may_read", "may_write"), ROLE_ACCESS)
def test_each_redis_role_touches_only_its_own_keys(redis_server: ServerProcess, role: str, key: str,
                                                   may_read: bool, may_write: bool) -> None:
    """The gateway only reads the cache; each actor writes its own prefix and nothing else."""
    client = role_client(redis_server, role)
    name = f"{key}-{uuid.uuid4().hex}"
    try:
        for allowed, attempt in ((may_read, lambda: client.get(name)), (may_write, lambda: client.set(name, b"x"))):
            if allowed:
                attempt()
            else:
                with pytest.raises(redis.exceptions.NoPermissionError):
                    attempt()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()
    finally:
        client.close()


def test_the_ai_role_pattern_is_the_ai_cache_prefix() -> None:
    """The AI actor's Redis role covers exactly the prefix its suggestion cache uses."""
    from actors.ai import CACHE_PREFIX
    from bus.embedded import AI_CACHE_PATTERN

    assert AI_CACHE_PATTERN == CACHE_PREFIX + "*"


# -- memory -------------------------------------------------------------------------------------------

def test_redis_has_a_memory_limit_and_evicts(cache: redis.Redis) -> None:
    """Redis runs with a memory limit and evicts least recently used keys when it is full
    (never `noeviction`, which would refuse the writes that keep configs current)."""
    settings = cache.config_get("maxmemory*")
    assert int(settings["maxmemory"]) > 0
    assert settings["maxmemory-policy"] == "allkeys-lru"
