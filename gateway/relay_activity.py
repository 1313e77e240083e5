"""What the gateways saw of each relay lately, for `relayctl relay status`.

The event log knows what the operator decided about a relay and when it last registered;
how its requests go - its last config fetch, its last error - is nothing to store as
events (a relay polls every 100 ms). Each gateway keeps, per relay id, its last
registration, config fetch, request and error in memory and writes the record to the
JetStream KV bucket `rc_relay_activity` (key: the relay id): at once for the first request,
then at most every `WRITE_EVERY` seconds (`ERROR_WRITE_EVERY` after an error), the last
change always written when its time comes - so what `relay status` shows is at most that
old. Gateways behind one balancer overwrite each other's record (the latest writer wins):
the newest news of a relay, from whichever gateway had it.

Only relays the gateway knows are recorded - an id it holds authentication data for, or
one that just registered - so a client sending made-up relay ids cannot fill the bucket.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog
from aiohttp import web
from nats.js.errors import BucketNotFoundError

from bus.runtime import BUS_ERRORS
from messages.subjects import RELAY_ACTIVITY_BUCKET

log = structlog.get_logger(__name__)
WRITE_EVERY = 10.0  # seconds between two writes of one relay's record, errors aside
ERROR_WRITE_EVERY = 1.0
MAX_DETAIL = 300  # characters of an error's detail kept
RECORD_TTL = 30 * 24 * 3600  # a relay silent for a month is forgotten
REGISTRATION_ROUTES = ("/api/0/relays/register/challenge/", "/api/0/relays/register/response/")
CONFIG_ROUTE = "/api/0/relays/projectconfigs/"
RELAY_PREFIX = "/api/0/relays/"


def _detail(response: web.StreamResponse) -> str | None:
    body = getattr(response, "body", None)
    if not isinstance(body, (bytes, bytearray)):
        return None
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return None
    return str(detail)[:MAX_DETAIL] if detail is not None else None


class RelayActivity:
    """One gateway's recent view of each relay, written through to the KV bucket."""

    def __init__(self, max_relays: int = 10_000, write_every: float = WRITE_EVERY,
                 error_write_every: float = ERROR_WRITE_EVERY) -> None:
        self.max_relays = max_relays
        self.write_every = write_every
        self.error_write_every = error_write_every
        self.records: dict[str, dict[str, Any]] = {}
        self._written: dict[str, float] = {}
        self._error_since_write: set[str] = set()
        self._due: dict[str, asyncio.TimerHandle] = {}
        self._kv: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, nc: Any, replicas: int = 1) -> None:
        """Open the activity bucket, made (with `replicas` copies) when it does not exist yet."""
        js = nc.jetstream()
        try:
            self._kv = await js.key_value(RELAY_ACTIVITY_BUCKET)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(bucket=RELAY_ACTIVITY_BUCKET, history=1, ttl=RECORD_TTL,
                                                 replicas=replicas)

    def observe(self, request: web.Request, route: str, response: web.StreamResponse, known: bool) -> None:
        """Note one answered request (the middleware calls this for every request)."""
        if not route.startswith(RELAY_PREFIX) or route.endswith("/live/"):
            return
        relay_id = request.headers.get("X-Sentry-Relay-Id")
        if not relay_id or len(relay_id) > 64:
            return
        registered = route in REGISTRATION_ROUTES and response.status == 200
        if not (known or registered):
            return
        if relay_id not in self.records and len(self.records) >= self.max_relays:
            return
        now = time.time()
        record = self.records.setdefault(relay_id, {"relayId": relay_id})
        record["lastRequest"] = {"at": now, "route": route, "status": response.status}
        if route == CONFIG_ROUTE and response.status == 200:
            record["lastConfigFetch"] = {"at": now, "version": request.query.get("version") or "1"}
        if route == REGISTRATION_ROUTES[1] and response.status == 200:
            record["lastRegistration"] = {"at": now}
        if response.status >= 400:
            record["lastError"] = {"at": now, "route": route, "status": response.status, "detail": _detail(response)}
            self._error_since_write.add(relay_id)
        self._maybe_write(relay_id, now)

    def _maybe_write(self, relay_id: str, now: float) -> None:
        if self._kv is None:
            return
        due = self._due.get(relay_id)
        errored = relay_id in self._error_since_write
        if due is not None and not errored:
            return  # a write is due already, and writes the record as it is then
        every = self.error_write_every if errored else self.write_every
        wait = self._written.get(relay_id, float("-inf")) + every - now
        if wait > 0:
            if due is None or due.when() - asyncio.get_running_loop().time() > wait:
                # Written when its time comes, with whatever is newest then.
                if due is not None:
                    due.cancel()
                self._due[relay_id] = asyncio.get_running_loop().call_later(wait, self._write_due, relay_id)
            return
        self._write(relay_id, now)

    def _write_due(self, relay_id: str) -> None:
        self._due.pop(relay_id, None)
        self._write(relay_id, time.time())

    def _write(self, relay_id: str, now: float) -> None:
        due = self._due.pop(relay_id, None)
        if due is not None:
            due.cancel()
        self._written[relay_id] = now
        self._error_since_write.discard(relay_id)
        data = json.dumps(self.records[relay_id], sort_keys=True).encode()
        task = asyncio.get_running_loop().create_task(self._put(relay_id, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, relay_id: str, data: bytes) -> None:
        try:
            await self._kv.put(relay_id, data)
        except BUS_ERRORS as exc:  # NATS down: the next write carries it
            self._written.pop(relay_id, None)
            log.debug("gateway.relay_activity_not_written", relay_id=relay_id, error=str(exc))


async def read_activity(nc: Any, relay_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The records of these relay ids (those the gateways wrote), for the CLI."""
    js = nc.jetstream()
    try:
        kv = await js.key_value(RELAY_ACTIVITY_BUCKET)
    except BUS_ERRORS:  # no gateway wrote any yet, or NATS away: nothing to tell
        return {}
    out: dict[str, dict[str, Any]] = {}
    for relay_id in relay_ids:
        try:
            entry = await kv.get(relay_id)
        except BUS_ERRORS:  # KeyNotFoundError: this relay was not seen
            continue
        if entry.value:
            try:
                out[relay_id] = json.loads(entry.value)
            except ValueError:
                continue
    return out
