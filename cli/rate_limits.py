"""`relayctl key rate-limit PUBLIC_KEY COUNT WINDOW_SECONDS` (and `--clear`).

A key's rate limit is Relay's key quota: relays enforce it from the project config, and the
gateway enforces it for SDKs that send straight to relayctl (bus/rate_limits.py).
"""

from __future__ import annotations

from typing import Any

import click

from cli.context import Context, emit

pass_ctx = click.make_pass_decorator(Context)


@click.command("rate-limit")
@click.argument("public_key")
@click.argument("count", type=int, required=False)
@click.argument("window", metavar="[WINDOW_SECONDS]", type=int, required=False)
@click.option("--clear", is_flag=True, help="Remove the key's rate limit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@pass_ctx
def key_rate_limit(ctx: Context, public_key: str, count: int | None, window: int | None, clear: bool,
                   as_json: bool) -> None:
    """Limit a key to COUNT events per WINDOW_SECONDS (relays and the gateway answer 429 past it)."""
    payload: dict[str, Any] = {"public_key": public_key, "clear": clear}
    if count is not None:
        payload["count"] = count
    if window is not None:
        payload["window"] = window
    result = ctx.request("key.rate_limit", payload)
    limit = result.get("rateLimit")
    emit(as_json, result, f"Key {public_key}: " + (f"at most {limit['count']} events per {limit['window']} s"
                                                   if limit else "no rate limit"))


def register(key_group: click.Group) -> None:
    key_group.add_command(key_rate_limit)
