"""The ingest stream (bus/ingest_store.py) on a real nats-server: what the gateway appends
is what a consumer reads back, a retry is stored once, an envelope larger than one NATS
message is kept whole in the blob bucket."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from nats.js import api

from bus.embedded import ServerProcess
from bus.ingest_store import HEADER_BLOB, HEADER_SIZE, IngestSettings, IngestStore, read_envelope
from bus.runtime import connect
from messages.subjects import INGEST_STREAM, ingest_subject


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coro, 60))


async def read_back(nc: Any, seq: int) -> tuple[Any, bytes]:
    js = nc.jetstream()
    msg = await js.get_msg(INGEST_STREAM, seq)
    return msg, await read_envelope(js, msg)


def test_an_appended_envelope_reads_back_with_its_headers(nats_server: ServerProcess,
                                                          loop: asyncio.AbstractEventLoop) -> None:
    async def go() -> None:
        nc = await connect(nats_server.url)
        try:
            store = IngestStore(nc, IngestSettings())
            await store.ensure()
            body = b'{"event_id":"%s"}\n{"type":"event","length":2}\n{}' % uuid.uuid4().hex.encode()
            seq = await store.append_envelope(42, body, {"Nats-Msg-Id": "42:" + uuid.uuid4().hex,
                                                         "Rc-Project-Id": "42"})
            msg, data = await read_back(nc, seq)
            assert data == body and msg.subject == ingest_subject(42)
            assert msg.headers["Rc-Project-Id"] == "42" and msg.headers[HEADER_SIZE] == str(len(body))
            assert HEADER_BLOB not in msg.headers
            info = await nc.jetstream().stream_info(INGEST_STREAM)
            assert info.config.discard == api.DiscardPolicy.NEW and info.config.duplicate_window == 600
        finally:
            await nc.close()

    run(loop, go())


def test_a_retry_with_the_same_message_id_is_stored_once(nats_server: ServerProcess,
                                                         loop: asyncio.AbstractEventLoop) -> None:
    async def go() -> None:
        nc = await connect(nats_server.url)
        try:
            store = IngestStore(nc, IngestSettings())
            headers = {"Nats-Msg-Id": "7:" + uuid.uuid4().hex}
            first = await store.append_envelope(7, b"{}\n", headers)
            assert await store.append_envelope(7, b"{}\n", headers) == first
        finally:
            await nc.close()

    run(loop, go())


def test_an_envelope_larger_than_a_nats_message_is_kept_whole(nats_server: ServerProcess,
                                                              loop: asyncio.AbstractEventLoop) -> None:
    async def go() -> None:
        nc = await connect(nats_server.url)
        try:
            store = IngestStore(nc, IngestSettings())
            body = os.urandom(nc.max_payload + 12345)
            msg_id = "9:" + uuid.uuid4().hex
            seq = await store.append_envelope(9, body, {"Nats-Msg-Id": msg_id})
            msg, data = await read_back(nc, seq)
            assert not msg.data and msg.headers[HEADER_BLOB] == msg_id
            assert msg.headers[HEADER_SIZE] == str(len(body)) and data == body
            assert await store.append_envelope(9, body, {"Nats-Msg-Id": msg_id}) == seq  # a retry: once
        finally:
            await nc.close()

    run(loop, go())
