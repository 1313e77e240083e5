"""The config-changes stream's logic (gateway/api/changes.py): who sees a change, the bounded
queue of a slow client, and a client that goes away leaving nothing behind. NATS and the
token check are replaced by fakes here; tests/integration/test_management_api.py runs the
real stream against a real system."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api import changes
from gateway.errors import HTTPFailure
from gateway.keys import CONFIG_CHANGES, NC

ANN = {"username": "ann", "scopes": ["project:read"], "memberships": {"acme": "member"}}
ROOT = {"username": "root", "superuser": True}


def message(org: str, rev: str = "r1", ts: float | None = None) -> Any:
    data = {"rev": rev, "publicKey": "a" * 32, "projectId": 7, "project": "web", "org": org, "ts": ts}
    return SimpleNamespace(subject="rc.config.changed." + "a" * 32, data=json.dumps(data).encode())


def test_a_change_reaches_the_members_of_its_org_and_superusers_only() -> None:
    async def run() -> None:
        hub = changes.ConfigChanges()
        ann, root = changes.Client(ANN), changes.Client(ROOT)
        hub.clients |= {ann, root}
        await hub.received(message("other"))
        assert not ann.pending and len(root.pending) == 1
        await hub.received(message("acme", ts=time.time() - 0.5))
        change = ann.pending[-1]
        assert change["orgSlug"] == "acme" and change["projectSlug"] == "web" and change["revision"] == "r1"
        assert change["propagationMs"] >= 500
        await hub.received(SimpleNamespace(subject="rc.config.changed.x", data=b"not json"))  # ignored
        assert len(ann.pending) == 1

    asyncio.run(run())


def test_a_slow_client_keeps_the_newest_changes_and_counts_the_rest() -> None:
    async def run() -> None:
        client = changes.Client(ROOT, size=3)
        for n in range(5):
            client.put({"revision": str(n)})
        assert [c["revision"] for c in client.pending] == ["2", "3", "4"] and client.dropped == 2

    asyncio.run(run())


class FakeNats:
    is_connected = True

    def __init__(self) -> None:
        self.subscribed: list[str] = []

    async def subscribe(self, subject: str, cb: Any) -> None:
        self.subscribed.append(subject)

    async def flush(self) -> None:
        pass


def test_the_stream_sends_drops_and_heartbeats_and_forgets_a_client_that_left(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def who(request: web.Request) -> dict[str, Any]:
        return ROOT

    monkeypatch.setattr(changes, "principal", who)
    monkeypatch.setattr(changes, "HEARTBEAT", 0.05)

    async def run() -> None:
        app = web.Application()
        hub = changes.ConfigChanges()
        app[CONFIG_CHANGES] = hub
        app[NC] = FakeNats()
        app.router.add_get("/changes/", changes.config_changes)
        async with TestClient(TestServer(app)) as http:
            response = await http.get("/changes/")
            assert response.headers["Content-Type"] == "text/event-stream"
            assert await response.content.readline() == b": live\n"
            assert await response.content.readline() == b"\n"
            assert app[NC].subscribed == ["rc.config.changed.*"]
            (client,) = hub.clients
            client.pending = type(client.pending)(maxlen=2)
            for rev in ("r1", "r2", "r3"):
                client.put({"revision": rev})
            lines: list[bytes] = []
            while len(lines) < 6:  # the events, heartbeats between them skipped
                line = await response.content.readline()
                if line.startswith((b"event: ", b"data: ")):
                    lines.append(line)
            assert lines[0] == b"event: dropped\n" and json.loads(lines[1][6:]) == {"dropped": 1}
            assert [json.loads(line[6:])["revision"] for line in (lines[3], lines[5])] == ["r2", "r3"]
            while (line := await response.content.readline()) == b"\n":
                pass
            assert line == b": heartbeat\n"
            response.close()
            for _ in range(100):  # the next heartbeat finds it gone
                if not hub.clients:
                    break
                await asyncio.sleep(0.02)
            assert not hub.clients

    asyncio.run(run())


def test_a_revoked_token_ends_its_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Any] = [ROOT]

    async def who(request: web.Request) -> dict[str, Any]:
        if not answers:
            raise HTTPFailure(401, "Invalid token")
        return answers.pop()

    monkeypatch.setattr(changes, "principal", who)
    monkeypatch.setattr(changes, "HEARTBEAT", 0.05)

    async def run() -> None:
        app = web.Application()
        app[CONFIG_CHANGES] = changes.ConfigChanges()
        app[NC] = FakeNats()
        app.router.add_get("/changes/", changes.config_changes)
        async with TestClient(TestServer(app)) as http:
            response = await http.get("/changes/")
            assert await asyncio.wait_for(response.content.read(), 5) == b": live\n\n"  # then the end
            assert not app[CONFIG_CHANGES].clients

    asyncio.run(run())


def test_a_gateway_shutting_down_ends_its_streams_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """On shutdown every open stream ends with an `event: shutdown` (clients reconnect to a
    sibling gateway) instead of keeping the gateway's stop waiting for its next heartbeat
    and being cut off when the shutdown timeout runs out."""
    async def who(request: web.Request) -> dict[str, Any]:
        return ROOT

    monkeypatch.setattr(changes, "principal", who)  # HEARTBEAT stays 15 s

    async def run() -> None:
        app = web.Application()
        app[CONFIG_CHANGES] = changes.ConfigChanges()
        app[NC] = FakeNats()
        app.on_shutdown.append(changes.close_streams)
        app.router.add_get("/changes/", changes.config_changes)
        server = TestServer(app)
        async with TestClient(server) as http:
            response = await http.get("/changes/")
            assert await response.content.readline() == b": live\n"
            shutdown = asyncio.ensure_future(app.shutdown())
            rest = await asyncio.wait_for(response.content.read(), 5)
            await asyncio.wait_for(shutdown, 5)
            assert rest == b"\nevent: shutdown\ndata: {}\n\n" and not app[CONFIG_CHANGES].clients

    asyncio.run(run())
