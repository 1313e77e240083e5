"""`relayctl stream copies` and `relayctl stream replicate`: the JetStream copies of every
asset the system creates (bus/replication.py), and raising them to the configured count.

An asset made before `RELAYCTL_STREAM_REPLICAS` was raised keeps its copies; only the
operator may update a stream, so this command - run with the operator's credentials, as
every CLI command is - is how a single-copy `rc_gateway` (the registration secret) or
snapshot store becomes R3. `relayctl status` names the assets this would change.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from bus.replication import AssetCopies, copies, replicate
from bus.runtime import connect
from cli.context import NATS_FAILURES, Context, emit, fail


def _run(nats_url: str, work: Any) -> Any:
    async def go() -> Any:
        nc = await connect(nats_url, name="relayctl-replicas", allow_reconnect=False, max_reconnect_attempts=1,
                           quiet=True)
        try:
            return await work(nc.jetstream(timeout=10))
        finally:
            await nc.close()

    try:
        return asyncio.run(go())
    except NATS_FAILURES as exc:  # NATS's answer (or none), said plainly
        fail(f"nats: {exc}")


def short_copies(nats_url: str, wanted: int | None) -> list[AssetCopies]:
    """The existing assets with fewer copies than `wanted` (None: than the event stream)."""
    return [c for c in _run(nats_url, lambda js: copies(js, wanted)) if c.short]


def _line(c: AssetCopies) -> str:
    have = "not created yet" if c.replicas is None else f"{c.replicas} of {c.wanted}"
    return f"  {c.asset:<24} {c.stream:<28} {have}"


def register(main: click.Group) -> None:
    @main.group()
    def stream() -> None:
        """The JetStream assets of the system: their copies."""

    @stream.command("copies")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def stream_copies(ctx: Context, as_json: bool) -> None:
        """Copies of every stream, KV bucket and object store (wanted: RELAYCTL_STREAM_REPLICAS)."""
        wanted = int(ctx.settings.value("RELAYCTL_STREAM_REPLICAS"))
        found: list[AssetCopies] = _run(ctx.nats_url, lambda js: copies(js, wanted))
        emit(as_json, {"assets": [c.to_dict() for c in found], "short": [c.asset for c in found if c.short]},
             "\n".join(_line(c) for c in found))

    @stream.command("replicate")
    @click.option("--replicas", type=click.IntRange(1, 5), default=None,
                  help="Copies to keep (default RELAYCTL_STREAM_REPLICAS).")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def stream_replicate(ctx: Context, replicas: int | None, as_json: bool) -> None:
        """Raise every existing asset with fewer copies to --replicas (a stream update; never lowers one)."""
        wanted = replicas or int(ctx.settings.value("RELAYCTL_STREAM_REPLICAS"))
        changed: list[AssetCopies] = _run(ctx.nats_url, lambda js: replicate(js, wanted))
        emit(as_json, {"replicas": wanted, "changed": [c.to_dict() for c in changed]},
             (f"Now {wanted} copies of:\n" + "\n".join(_line(c) for c in changed)) if changed
             else f"Every existing asset has at least {wanted} copies")
