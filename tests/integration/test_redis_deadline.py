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
