"""What `relayctl status` says about the event store: can it write, and what was skipped.

Two sources, because neither alone knows everything:

- nats-server's own log (for the NATS `up` started). A stream that fails to write to disk
  (e.g. "no space left on device") is kept from writing by nats-server until it restarts,
  even once space is free, and it answers such an append not at all; the log is the one
  place that names the cause. Only lines of the running server's pid count.
- the command handlers (`stream.status`): the last append the store refused or left
  unanswered, how far they folded, and the commits they skipped because they could not
  be decoded (each is logged at error level and counted as `events.undecodable`).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from bus.client import request
from bus.replication import AssetCopies, copies
from bus.runtime import BUS_ERRORS, connect
from cli.context import NATS_FAILURES
from messages.subjects import EVENT_STREAM

LOG_TAIL_BYTES = 4 * 1024 * 1024
# nats-server logs these at error level when a stream's store failed to write; after either,
# that stream stores nothing until the server restarts (its filestore keeps the write error).
_WRITE_ERROR = re.compile(
    r"^\[(?P<pid>\d+)\] \S+ \S+ \[ERR\] JetStream (?:stream '[^']*> (?P<s1>[^']+)' critical write error"
    r"|failed to store a msg on stream '[^']*> (?P<s2>[^']+)'): (?P<error>.*)$")


def nats_write_error(log_path: Path, pid: int) -> str | None:
    """The reason the running nats-server (`pid`) cannot write a stream, from its log; None
    when it logged no such error since it started."""
    try:
        with open(log_path, "rb") as log:
            log.seek(0, 2)
            log.seek(max(0, log.tell() - LOG_TAIL_BYTES))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = _WRITE_ERROR.match(line)
        if match and int(match["pid"]) == pid:
            stream, error = match["s1"] or match["s2"], match["error"].strip()
            reason = error.rsplit(": ", 1)[-1]
            return (f"event store cannot write: {reason} (stream {stream}: {error}). nats-server writes that "
                    f"stream again only after it restarts: free space, then run `relayctl up --recreate nats`")
    return None


def stream_report(nats_url: str, nats_log_error: str | None, configured: int = 1) -> dict[str, Any]:
    """The `events` entry of `status`: the stream's last sequence and what the command
    handlers report, healthy unless the store cannot write; assets with fewer copies than
    `configured` (RELAYCTL_STREAM_REPLICAS) or than the event stream are warned of."""
    short: list[AssetCopies] = []

    async def ask() -> tuple[int | None, dict[str, Any] | None, str | None]:
        nc = await connect(nats_url, name="relayctl-status", allow_reconnect=False, max_reconnect_attempts=1,
                           quiet=True)
        try:
            try:
                last: int | None = int((await nc.jetstream(timeout=2).stream_info(EVENT_STREAM)).state.last_seq)
            except BUS_ERRORS:
                last = None
            try:  # fewer copies than configured, or than the event stream has (bus/replication.py)
                if last is not None:  # JetStream answers: a few more quick questions
                    short.extend(c for c in await copies(nc.jetstream(timeout=2),
                                                         configured if configured > 1 else None) if c.short)
            except BUS_ERRORS:
                pass  # a status without this warning, never a failed status
            try:
                return last, await request(nc, "stream.status", {}, timeout=2.0, retries=0), None
            except BUS_ERRORS as exc:
                return last, None, str(exc)
        finally:
            await nc.close()

    try:
        last, handlers, unanswered = asyncio.run(ask())
    except NATS_FAILURES as exc:  # no NATS, or a URL it cannot use
        return {"healthy": False, "detail": f"nats: {exc}", "last_sequence": None, "skipped": [], "write_error": None}
    handlers = handlers or {}
    write_error = nats_log_error or (handlers.get("write_error") or {}).get("message")
    skipped = list(handlers.get("skipped") or [])
    imports = list(handlers.get("imports") or [])
    parts = [f"last sequence {last if last is not None else '?'}"]
    if handlers:
        parts.append(f"the command handlers folded {handlers.get('folded')}")
    else:
        parts.append(f"no answer from the command handlers ({unanswered})")
    if write_error:
        parts.append(write_error)
    if short:
        parts.append(f"WARNING: {', '.join(f'{c.asset} has {c.replicas} of {c.wanted} copies' for c in short)}: "
                     f"run `relayctl stream replicate --replicas {short[0].wanted}`")
    if skipped:
        parts.append(f"WARNING: {len(skipped)} undecodable commit(s) skipped: " + "; ".join(
            f"#{s.get('sequence')} {s.get('subject')} ({s.get('error')})" for s in skipped[:5]))
    for pending in imports:
        parts.append(f"NOTE: org `{pending.get('org')}` has an unfinished import {pending.get('import_id')} "
                     f"({pending.get('projects_staged')} of {pending.get('projects')} projects staged, not visible, "
                     f"the org locked): run `relayctl import` again with its file to finish it, or "
                     f"`relayctl import --restart FILE` to replace it")
    return {"healthy": write_error is None, "detail": "; ".join(parts), "last_sequence": last,
            "folded": handlers.get("folded"), "skipped": skipped, "write_error": write_error,
            "short_copies": [c.to_dict() for c in short], "imports": imports}
