"""Configs going live, as server-sent events: `GET /api/0/relayctl/config-changes/`.

The config builder publishes `rc.config.changed.<key>` once a new revision is in the cache
(actors/configs.py: rev, project, org and the change's commit time). The gateway subscribes
once, at the first client, and hands each change to the clients whose principal may read
the org's projects (`project:read`, as every other read: domain/access.py), with the
propagation time: from the commit to the moment this gateway saw the revision live.

A client's queue is bounded (`QUEUE`): a slow reader loses the oldest changes, never grows
the gateway's memory, and is told how many it lost (`event: dropped`). A comment line every
`HEARTBEAT` seconds keeps proxies from closing an idle stream and finds a client gone;
the token is checked again then, so a revoked one ends its stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

import structlog
from aiohttp import web

from bus.runtime import BUS_ERRORS
from domain.access import org_scopes
from gateway.api.auth import principal
from gateway.errors import HTTPFailure
from gateway.keys import CONFIG_CHANGES, NC
from messages.errors import Unavailable
from messages.subjects import CONFIG_CHANGED

log = structlog.get_logger(__name__)

HEARTBEAT = 15.0
QUEUE = 256


class Client:
    """One stream's pending changes: the newest `QUEUE`, and how many older ones were lost."""

    def __init__(self, who: dict[str, Any], size: int = QUEUE) -> None:
        self.who = who
        self.pending: deque[dict[str, Any]] = deque(maxlen=size)
        self.dropped = 0
        self.closing = False  # the gateway is stopping: the stream ends
        self.ready = asyncio.Event()

    def visible(self, change: dict[str, Any]) -> bool:
        scopes = org_scopes(self.who, str(change.get("orgSlug") or ""))
        return scopes is not None and "project:read" in scopes

    def put(self, change: dict[str, Any]) -> None:
        if len(self.pending) == self.pending.maxlen:
            self.dropped += 1
        self.pending.append(change)
        self.ready.set()


class ConfigChanges:
    """The gateway's one subscription to `rc.config.changed.*`, fanned out to its clients."""

    def __init__(self) -> None:
        self.clients: set[Client] = set()
        self._subscribed: Any = None
        self._lock = asyncio.Lock()

    async def start(self, nc: Any) -> None:
        async with self._lock:
            if self._subscribed is None or self._subscribed is not nc:
                if nc is None or not nc.is_connected:
                    raise Unavailable("the control plane (NATS) is unavailable")
                await nc.subscribe(CONFIG_CHANGED, cb=self.received)
                await nc.flush()  # subscribed at the server before the stream says it is live
                self._subscribed = nc

    async def received(self, msg: Any) -> None:
        seen = time.time()
        try:
            data = json.loads(msg.data)
            change = {"publicKey": data["publicKey"], "projectId": data.get("projectId"),
                      "projectSlug": data.get("project"), "orgSlug": data.get("org"), "revision": data["rev"],
                      "propagationMs": (max(0, round((seen - data["ts"]) * 1000))
                                        if isinstance(data.get("ts"), (int, float)) else None)}
        except (ValueError, KeyError, TypeError):
            log.warning("config_changes.bad_message", subject=msg.subject)
            return
        for client in self.clients:
            if client.visible(change):
                client.put(change)


async def close_streams(app: web.Application) -> None:
    """on_shutdown: every open stream ends now (its client reconnects, to a sibling gateway
    if there is one), rather than holding the gateway's stop until its next heartbeat."""
    for client in app[CONFIG_CHANGES].clients:
        client.closing = True
        client.ready.set()


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _recheck(request: web.Request, client: Client) -> bool:
    """At each heartbeat, the token again: False once it is refused (revoked); a new role
    in an org applies from here on. The control plane unreachable: the stream goes on."""
    try:
        who = await principal(request)
    except HTTPFailure as exc:
        return exc.status != 401
    except BUS_ERRORS:
        return True
    if who is not None:
        client.who = who
    return True


async def config_changes(request: web.Request) -> web.StreamResponse:
    """Configs going live (server-sent events): one `config` event per revision of a key whose org the caller may read.

    Each event's data: `publicKey`, `projectId`, `projectSlug`, `orgSlug`, `revision` and
    `propagationMs` (commit to live at this gateway; null for a rebuild). `dropped` events
    say how many older changes a slow client lost; comment lines every 15 s keep it alive;
    `shutdown` ends the stream when this gateway stops (reconnect).
    """
    who = await principal(request)
    assert who is not None
    hub = request.app[CONFIG_CHANGES]
    await hub.start(request.app[NC])
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    client = Client(who)
    hub.clients.add(client)
    try:
        await response.write(b": live\n\n")
        while True:
            try:
                await asyncio.wait_for(client.ready.wait(), HEARTBEAT)
            except TimeoutError:
                if not await _recheck(request, client):
                    break  # the token was revoked: the stream ends as the next request would
                await response.write(b": heartbeat\n\n")
                continue
            client.ready.clear()
            if client.closing:
                await response.write(_event("shutdown", {}))
                break
            if client.dropped:
                dropped, client.dropped = client.dropped, 0
                await response.write(_event("dropped", {"dropped": dropped}))
            while client.pending:
                await response.write(_event("config", client.pending.popleft()))
    except (ConnectionResetError, ConnectionError):  # the client went away
        pass
    finally:
        hub.clients.discard(client)
    return response
