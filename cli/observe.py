"""`relayctl metrics` and `relayctl transport send-test-event`: looking at the system."""

from __future__ import annotations

import asyncio
import json
import uuid

import click

from bus.client import request as bus_request
from bus.process import loop_publisher
from bus.runtime import connect
from cli.context import Context, emit, fail
from messages.errors import RelayctlError
from messages.subjects import TRANSPORT_ENVELOPE


def register(main: click.Group) -> None:
    @main.command("metrics")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.option("--prometheus", is_flag=True, help="Print Prometheus text instead.")
    @click.pass_obj
    def metrics_command(ctx: Context, as_json: bool, prometheus: bool) -> None:
        """Current metric values, aggregated over every process."""
        if prometheus:
            text = ctx.request("metrics.snapshot", {"format": "prometheus"})
            click.echo(text.decode() if isinstance(text, bytes) else text, nl=False)
            return
        snap = ctx.request("metrics.snapshot", {"format": "json"})
        out = {k: snap.get(k, {}) for k in ("counters", "timers", "gauges", "distributions")}
        lines = []
        for kind in ("counters", "gauges", "timers", "distributions"):
            for name, value in sorted(out[kind].items()):
                lines.append(f"{kind[:-1]:<12} {name}  {json.dumps(value)}")
        emit(as_json, out, "\n".join(lines) or "No metrics recorded yet")

    @main.group()
    def transport() -> None:
        """The multiplexing transport of the system's own error reports."""

    @transport.command("send-test-event")
    @click.option("--message", default="relayctl test event", show_default=True, help="The event's message.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def send_test_event(ctx: Context, message: str, as_json: bool) -> None:
        """Report a test error through the SDK transport, then wait until it is forwarded."""
        import sentry_sdk

        from bus.sentry_transport import init_sentry

        async def run() -> str:
            nc = await connect(ctx.nats_url, name="relayctl-cli", allow_reconnect=False,
                               max_reconnect_attempts=1, quiet=True)
            try:
                loop = asyncio.get_running_loop()
                init_sentry(loop_publisher(nc, loop, TRANSPORT_ENVELOPE), process="cli")
                event_id = sentry_sdk.capture_message(f"{message} ({uuid.uuid4().hex[:8]})", level="error")
                sentry_sdk.flush(timeout=2)
                await asyncio.sleep(0.05)
                await nc.flush()
                result = await bus_request(nc, "transport.flush", {}, timeout=10.0)
                if not result.get("flushed"):
                    raise RelayctlError("the transport did not finish forwarding in time")
                return str(event_id)
            finally:
                await nc.close()

        try:
            event_id = asyncio.run(run())
        except RelayctlError as exc:
            fail(exc.message)
        emit(as_json, {"eventId": event_id}, f"Sent test event {event_id}")
