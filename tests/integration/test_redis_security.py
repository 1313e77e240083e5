"""Redis as a local attacker meets it: credentials, what each role may touch, sealed entries,
and a memory limit that evicts instead of refusing.

The fixtures run Redis exactly as `relayctl up` does (bus/embedded.py `REDIS_ROLES`); the
gateway of the module's system connects with its own read-only role. An attacker here is
anyone who can reach Redis - with no password, or with one role's password - but holds
no MAC key (those live in JetStream KV, bus/cache_keys.py): whatever they write must give
no relay access and serve no config of theirs.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bus.config_cache import RELAY_AUTH_PREFIX, cache_key, encode_entry
from bus.embedded import ServerProcess, start_nats, start_redis
from gateway.keys import MAC_KEYS, RELAY_AUTH_CACHE
from tests.system import RelayClient, SystemUnderTest

DISABLED = {"disabled": True}
FAKE_MAC = b"0123456789abcdef0123456789abcdef"


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


def forged_auth(relay: RelayClient, **fields: object) -> bytes:
    return json.dumps({"relayId": relay.relay_id, "publicKey": relay.public_key_str, "internal": True,
                       "banned": False, "trusted": True, "version": None,
                       "expires": int(time.time()) + 3600, **fields}).encode()


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


def test_the_gateway_counts_rate_limits_under_its_own_prefix_only(redis_server: ServerProcess) -> None:
    """Ingest rate limits (bus/rate_limits.py): the gateway may INCRBY and EXPIRE
    `ratelimit:*` counters, but neither SET them nor count under another role's prefix."""
    from bus.rate_limits import RATE_LIMIT_PREFIX

    client = role_client(redis_server, "gateway")
    name = f"{RATE_LIMIT_PREFIX}key:1:k:60:{uuid.uuid4().hex}"
    try:
        assert client.incr(name) == 1 and client.expire(name, 61)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set(name, b"0")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.incr(f"ai:suggestion:{uuid.uuid4().hex}")
    finally:
        client.close()


def test_the_ai_role_pattern_is_the_ai_cache_prefix() -> None:
    """The AI actor's Redis role covers exactly the prefix its suggestion cache uses."""
    from actors.ai import CACHE_PREFIX
    from bus.embedded import AI_CACHE_PATTERN

    assert AI_CACHE_PATTERN == CACHE_PREFIX + "*"


# -- sealed entries ---------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["plain", "fake_mac"])
def test_a_forged_relayauth_entry_gives_no_access(system: SystemUnderTest, cache: redis.Redis, layout: str) -> None:
    """An entry written with a Redis password but without the MAC key - as plain JSON, or
    behind a made-up MAC - is a miss: a relay nobody allowed stays unknown (401), and a
    banned one stays banned."""
    stranger = RelayClient(system.url)
    banned = system.registered_relay()
    system.cli_ok("relay", "deny", "--", banned.public_key_str)
    for relay, detail in ((stranger, "Unknown relay"), (banned, "Relay is banned")):
        content = forged_auth(relay)
        # (neither relay made a signed call yet: the gateway holds nothing of them itself)
        cache.set(RELAY_AUTH_PREFIX + relay.relay_id, content if layout == "plain" else FAKE_MAC + b"\n" + content)
        status, data = relay.configs([uuid.uuid4().hex])
        assert (status, data.get("detail")) == (401, detail), data


@pytest.mark.parametrize("layout", ["plain", "fake_mac"])
def test_a_forged_config_entry_is_never_served(system: SystemUnderTest, cache: redis.Redis, layout: str) -> None:
    """A config entry written without the MAC key (say, one with scrubbing off) is never
    served: the relay gets the real config, which the builder writes back."""
    relay = system.registered_relay()
    project = system.new_project()
    key = project["publicKey"]
    real = relay.poll([key], lambda r: key in r["configs"])["configs"][key]
    assert real["config"]["datascrubbingSettings"]["scrubData"] is True
    forged = dict(real, slug="forged", config=dict(real["config"], datascrubbingSettings={"scrubData": False}))
    payload = encode_entry("forged-rev", (), json.dumps(forged).encode())
    cache.set(cache_key(key), payload if layout == "plain" else FAKE_MAC + b"\n" + payload)
    for _ in range(3):
        status, data = relay.configs([key])
        assert status == 200
        assert data["configs"].get(key, {}).get("slug") != "forged"
        assert key in data["configs"] or data["pending"] == [key]
    doc = relay.poll([key], lambda r: key in r["configs"])["configs"][key]
    assert doc["slug"] == project["slug"] and doc["config"]["datascrubbingSettings"]["scrubData"] is True
    assert b"forged" not in cache.get(cache_key(key))


def test_a_genuine_relayauth_entry_is_good_only_until_it_expires(system: SystemUnderTest,
                                                                  cache: redis.Redis) -> None:
    """Sealed with the real key, an entry is believed (the MAC key is what counts) - but
    only until its `expires`: a genuine entry kept from before a ban and put back later
    grants nothing once it has expired."""
    from bus.cache_keys import RELAY_AUTH_MAC_BUCKET, reader_key
    from bus.config_cache import seal
    from bus.runtime import connect

    async def mac_key() -> bytes | None:
        nc = await connect(system.nats_url, name="test-mac-key")
        try:
            return await reader_key(nc, RELAY_AUTH_MAC_BUCKET)
        finally:
            await nc.close()

    key = asyncio.run(mac_key())
    assert key is not None
    for expires, expected in ((int(time.time()) - 1, 401), (int(time.time()) + 600, 200)):
        stranger = RelayClient(system.url)
        name = RELAY_AUTH_PREFIX + stranger.relay_id
        cache.set(name, seal(key, name, forged_auth(stranger, expires=expires)))
        status, data = stranger.configs([uuid.uuid4().hex])
        assert status == expected, data


def test_relayauth_entries_are_sealed_and_expire(system: SystemUnderTest, cache: redis.Redis) -> None:
    """What the org access actor writes: a MAC line, then the entry with its `expires`,
    and Redis drops the entry then too."""
    from actors.lookup import RELAY_AUTH_VALIDITY

    relay = system.registered_relay()
    name = RELAY_AUTH_PREFIX + relay.relay_id
    raw = cache.get(name)
    assert raw is not None
    mac, _, content = raw.partition(b"\n")
    assert len(mac) == 32 and int(mac, 16) >= 0
    info = json.loads(content)
    assert info["relayId"] == relay.relay_id and info["internal"] is True
    assert time.time() < info["expires"] <= time.time() + RELAY_AUTH_VALIDITY
    assert 0 < cache.ttl(name) <= RELAY_AUTH_VALIDITY


# -- memory -------------------------------------------------------------------------------------------

def test_redis_has_a_memory_limit_and_evicts(cache: redis.Redis) -> None:
    """Redis runs with a memory limit and evicts least recently used keys when it is full
    (never `noeviction`, which would refuse the writes that keep configs current)."""
    settings = cache.config_get("maxmemory*")
    assert int(settings["maxmemory"]) > 0
    assert settings["maxmemory-policy"] == "allkeys-lru"


def test_evicted_entries_fall_back_and_are_written_again(tmp_path: Path) -> None:
    """Redis full: writes still succeed (older keys are evicted), a relay whose relayauth
    and config entries were evicted still authenticates and gets its config (asked over
    NATS, built on demand), and both entries are written again."""
    nats = start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log")
    small = start_redis(tmp_path / "redis", log_path=tmp_path / "redis.log", maxmemory="4mb")
    sut = SystemUnderTest(nats.url, small.url).start()
    cache = redis.Redis.from_url(small.url)
    try:
        relay = sut.registered_relay()
        project = sut.new_project()
        key = project["publicKey"]
        relay.poll([key], lambda r: key in r["configs"])
        names = [RELAY_AUTH_PREFIX + relay.relay_id, cache_key(key)]
        assert cache.exists(*names) == 2
        junk = b"x" * 100_000
        for i in range(2000):
            cache.set(f"junk:{i}", junk)  # raises if Redis refused the write for memory
            if cache.exists(*names) == 0:
                break
        assert cache.exists(*names) == 0, "the entries were never evicted"
        assert sut.gateway is not None
        sut.gateway.app[RELAY_AUTH_CACHE].drop()  # forget what the gateway itself holds
        doc = relay.poll([key], lambda r: key in r["configs"], timeout=5)["configs"][key]
        assert doc["slug"] == project["slug"]
        assert cache.exists(*names) == 2
    finally:
        cache.close()
        sut.stop()
        small.stop()
        nats.stop()



def test_a_gateway_holds_the_mac_keys_before_its_first_request(system: SystemUnderTest) -> None:
    """A new gateway fetches both MAC keys at start, not on its first request: a sibling
    gateway that has served nothing yet must still check cached entries when NATS goes away."""
    from bus.cache_keys import CONFIG_MAC_BUCKET, RELAY_AUTH_MAC_BUCKET
    from tests.system import GatewayThread
    from tests.waiting import wait_for

    system.registered_relay()  # the org access actor has made its key by now
    gateway = GatewayThread(system.nats_url, system.gateway_redis_url or system.redis_url).start()
    try:
        keys = gateway.app[MAC_KEYS]
        wait_for(lambda: keys.known(CONFIG_MAC_BUCKET) and keys.known(RELAY_AUTH_MAC_BUCKET), 20,
                 "both MAC keys fetched by a gateway that served nothing")
    finally:
        gateway.stop()
