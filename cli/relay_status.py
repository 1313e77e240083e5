"""`relayctl relay status RELAY_ID_OR_KEY`: one relay, as the operator needs to see it.

What the system decided and recorded comes from the `relay.status` query (state, internal
or not, every id and version it registered with, first and last registration, the orgs
that trust it); what its requests did lately - the last config fetch, the last error -
from the gateways' `rc_relay_activity` bucket (gateway/relay_activity.py), at most 10 s old.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click

from bus.runtime import connect
from cli.context import NATS_FAILURES, Context, emit, rfc3339
from gateway.relay_activity import read_activity


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "never"


def latest(records: list[dict[str, Any]], field: str) -> dict[str, Any] | None:
    """The newest `field` entry over the records of every id the relay used."""
    found = [r[field] for r in records if isinstance(r.get(field), dict) and "at" in r[field]]
    return max(found, key=lambda e: e["at"], default=None)


def _activity(ctx: Context, relay_ids: list[str]) -> dict[str, dict[str, Any]]:
    async def run() -> dict[str, dict[str, Any]]:
        nc = await connect(ctx.nats_url, name="relayctl-cli", max_reconnect_attempts=1, allow_reconnect=False,
                           quiet=True)
        try:
            return await read_activity(nc, relay_ids)
        finally:
            await nc.close()

    try:
        return asyncio.run(run())
    except NATS_FAILURES:  # the relay's own record is still worth printing
        return {}


def _json_times(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if entry is None else {**entry, "at": rfc3339(entry["at"])}


def register(relay: click.Group, settings: dict[str, Any]) -> None:
    """Add `status` to the relay group (`settings`: a relay key may start with "-")."""

    @relay.command("status", **settings)
    @click.argument("relay_ref", metavar="RELAY_ID_OR_KEY")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def relay_status(ctx: Context, relay_ref: str, as_json: bool) -> None:
        """One relay: registration state, versions, last registration and config fetch,
        last error, and what it may see."""
        status = ctx.request("relay.status", {"relay": relay_ref})
        ids = list(dict.fromkeys([*status["relayIds"], *([status["relayId"]] if status["relayId"] else [])]))
        records = list(_activity(ctx, ids).values())
        fetch, error = latest(records, "lastConfigFetch"), latest(records, "lastError")
        registration = latest(records, "lastRegistration")
        last_registered = max(filter(None, [status["lastSeen"], registration and registration["at"]]),
                              default=None)
        sees = status["sees"]
        doc = {
            "publicKey": status["publicKey"], "state": status["state"], "internal": status["internal"],
            "banned": status["banned"], "relayId": status["relayId"], "relayIds": ids,
            "version": status["version"],
            "usage": [{**u, "firstSeen": rfc3339(u.get("firstSeen")), "lastSeen": rfc3339(u.get("lastSeen"))}
                      for u in status["usage"]],
            "firstSeen": rfc3339(status["firstSeen"]), "lastRegistration": rfc3339(last_registered),
            "lastConfigFetch": _json_times(fetch), "lastError": _json_times(error), "sees": sees,
        }
        if sees["everyOrg"]:
            seen = "every org (internal relay)"
        elif sees["trustedByCount"]:
            more = sees["trustedByCount"] - len(sees["trustedBy"])
            seen = f"{sees['trustedByCount']} org(s) trusting it: " + ", ".join(sees["trustedBy"]) + \
                (f" and {more} more" if more > 0 else "")
        else:
            seen = "no org (not internal, and no org lists it in sentry:trusted-relays)"
        versions = ", ".join(f"{u.get('version') or '?'} (id {u.get('relayId')}, last {_when(u.get('lastSeen'))})"
                             for u in status["usage"]) or "-"
        lines = [
            f"Relay {status['publicKey']}",
            f"  state:              {status['state']}{' (internal)' if status['internal'] else ''}",
            f"  relay id:           {status['relayId'] or '-'}" + (f" (also {', '.join(ids[:-1])})"
                                                                   if len(ids) > 1 else ""),
            f"  version:            {status['version'] or '-'}",
            f"  versions seen:      {versions}",
            f"  first registration: {_when(status['firstSeen'])}",
            f"  last registration:  {_when(last_registered)}",
            "  last config fetch:  " + (f"{_when(fetch['at'])} (protocol v{fetch.get('version')})" if fetch
                                         else "none seen by a gateway"),
            "  last error:         " + (f"{_when(error['at'])} {error.get('route')} answered {error.get('status')}"
                                         + (f": {error['detail']}" if error.get("detail") else "") if error
                                         else "none"),
            f"  may see:            {seen}",
        ]
        emit(as_json, doc, "\n".join(lines))
