"""The gateway's cache reads are bounded as a whole (bus/redis_clients.async_client
`deadline`): a Redis that stops answering (SIGSTOP: alive, connected, silent) costs a read
its timeout and a clear redis.TimeoutError - the hot path then builds through NATS - and
once it answers again the next read gets its own answer, not the late one of the read
that was cut off."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bus import redis_clients
from bus.embedded import ServerProcess, start_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[ServerProcess, redis.Redis]]:
    """A redis-server of the test's own (it is stopped or has its clients killed) and a writer."""
    server = start_redis(tmp_path)
    writer = redis.Redis.from_url(server.url)
    try:
        yield server, writer
    finally:
        writer.close()
        server.stop()


def test_a_silent_redis_costs_a_read_its_deadline_and_nothing_after(own_redis: tuple[ServerProcess, redis.Redis]) -> None:
    server, writer = own_redis
    writer.mset({"a": b"1", "b": b"2"})

    async def main() -> None:
        reader = redis_clients.async_client(server.url, timeout=0.5, deadline=True)
        try:
            assert await redis_clients.get_many(reader, ["a", "b", "c"]) == [b"1", b"2", None]
            server.process.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(redis.TimeoutError, match="within 0.5 s"):
                    await redis_clients.get_one(reader, "a")
            finally:
                server.process.send_signal(signal.SIGCONT)
            assert await redis_clients.get_one(reader, "b") == b"2"
            assert await redis_clients.get_many(reader, ["b", "a"]) == [b"2", b"1"]
        finally:
            await reader.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_connection_the_server_closed_costs_no_read(own_redis: tuple[ServerProcess, redis.Redis]) -> None:
    """After a Redis restart every pooled connection is dead: the first read on each must not
    fail (the gateway would answer that relay request from NATS, or 503 while NATS is down);
    here the server closes the reader's connections (CLIENT KILL) between two reads."""
    server, writer = own_redis
    writer.set("a", b"1")

    async def main() -> None:
        reader = redis_clients.async_client(server.url, deadline=True)
        try:
            await asyncio.gather(*(redis_clients.get_one(reader, "a") for _ in range(4)))  # a pool of several
            assert writer.client_kill_filter(_type="normal", skipme=True) >= 1
            for _ in range(4):
                assert await redis_clients.get_one(reader, "a") == b"1"
        finally:
            await reader.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))


NAME_SHAPES = [
    ["relayconfig:" + "a" * 32],
    ["relayconfig:" + f"{i:032x}" for i in range(100)],
    ["relayconfig:" + f"{i:032x}" for i in range(5)] + ["relayconfig:__global__"],
    ["a", "bb", "ccc", "a"],
    ["clé-é", "ключ", "plain"],
    ["x" * 70_000, "y"],
]


@pytest.mark.parametrize("names", NAME_SHAPES, ids=["one", "uniform", "global-last", "mixed", "non-ascii", "long"])
def test_the_packed_mget_is_the_command_redis_py_would_send(names: list[str]) -> None:
    """The deadline client packs MGET itself (bus/redis_clients._pack_mget): byte for byte
    what redis-py's own packing sends, for every shape of names."""
    from redis.asyncio.connection import Connection

    assert bytes(redis_clients._pack_mget(names)) == b"".join(Connection().pack_command("MGET", *names))


def test_a_deadline_client_reads_every_shape_of_names(own_redis: tuple[ServerProcess, redis.Redis]) -> None:
    server, writer = own_redis
    every = [name for shape in NAME_SHAPES for name in shape]
    writer.mset({name: name.encode()[::-1] for name in every[::2]})

    async def main() -> None:
        reader = redis_clients.async_client(server.url, deadline=True)
        assert reader.connection_pool.connection_class.__name__ == "PrepackingConnection"  # the packed path
        try:
            for names in NAME_SHAPES:
                expected = [writer.get(name) for name in names]
                assert await redis_clients.get_many(reader, names) == expected
            assert await redis_clients.get_many(reader, []) == []
            await reader.set("other", b"v")  # any other command is packed by redis-py as before
            assert await reader.get("other") == b"v"
        finally:
            await reader.aclose()

    asyncio.run(asyncio.wait_for(main(), 20))
