"""Probes of one running service, for `up`'s readiness checks and `status`: an HTTP health
endpoint, a Redis PING, an actor's NATS micro-service PING, whether a process listens on a
port. Each answers `(healthy, detail)`: what went wrong talking to the service is the detail.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import urllib.request
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from bus.runtime import connect
from cli.context import NATS_FAILURES


def host_port(url: str) -> tuple[str, int]:
    """The host and port of a service URL (credentials and path left out; port 0 if none)."""
    rest = url.split("://", 1)[-1].split("@")[-1].split("/")[0]
    host, _, port = rest.rpartition(":")
    return (host or "127.0.0.1"), int(port) if port.isdigit() else 0


def http_health(url: str) -> tuple[bool, str]:
    path = "/" + url.split("://", 1)[-1].split("/", 1)[-1]
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200, f"{path} answered {resp.status}"
    except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, timed out, an error status
        return False, f"{path}: {exc}"


def listens(pid: int, port: int) -> bool | None:
    """Whether process `pid` has a socket listening on TCP `port` (None: /proc cannot tell)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "0A" and fields[9] in inodes:
                    return True
    except OSError:
        return None
    return False


def redis_ping(url: str, cluster: bool) -> tuple[bool, str]:
    from bus import redis_clients

    try:
        client = redis_clients.sync_client(url, cluster=cluster, timeout=1)
        client.ping()
        return True, "ok"
    except (RedisError, OSError, ValueError) as exc:  # down, refused, a URL or credentials it cannot use
        return False, f"redis: {exc}"


def ping_actor(nats_url: str, name: str) -> tuple[bool, str]:
    """How many instances of actor `name` answer its micro service's $SRV.PING."""

    async def ping() -> int:
        nc = await connect(nats_url, name="relayctl-health", allow_reconnect=False, max_reconnect_attempts=1,
                           quiet=True)
        try:
            inbox = nc.new_inbox()
            replies: list[Any] = []

            async def collect(msg: Any) -> None:
                # Only a service's own ping response counts: with no service subscribed, the
                # server itself answers the inbox with a "503 no responders" status message.
                try:
                    body = json.loads(msg.data)
                except ValueError:
                    return
                if isinstance(body, dict) and body.get("name") == name:
                    replies.append(msg)

            sub = await nc.subscribe(inbox, cb=collect)
            await nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
            await asyncio.sleep(0.3)
            await sub.unsubscribe()
            return len(replies)
        finally:
            await nc.close()

    try:
        count = asyncio.run(ping())
    except NATS_FAILURES as exc:
        return False, f"nats: {exc}"
    return (count > 0), f"{count} instance(s) answered $SRV.PING.{name}"

