"""What the forwarder knows of the data SDKs and relays sent (actors/forwarder.py).

- `relayctl event list ORG/PROJECT [--limit N]`: the newest error events stored from the
  ingest stream (id, time received, title); `event show EVENT_ID`: one of them, scrubbed as
  stored (the event the AI suggestion endpoint reads).
- `relayctl ingest status`: the stream (envelopes, bytes, oldest), each consumer's backlog,
  the forward backlog per project and the dead letters; `ingest replay [--project ORG/PROJECT]
  [--sequence N]`: send dead letters to their project's downstream Sentry again.
- `relayctl project stats ORG/PROJECT`: accepted, filtered, rate limited and invalid counts
  (and by category) for the last hour and the last 24 hours.

Every command takes `--json` (one JSON document on stdout).
"""

from __future__ import annotations

import json
from typing import Any

import click

from cli.context import Context, emit, fail, split_project

pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def _event_lines(events: list[dict[str, Any]]) -> str:
    if not events:
        return "No error events."
    return "\n".join(f"{e['eventId']}  {e.get('received') or '-'}  {e.get('title') or ''}" for e in events)


def _status_text(status: dict[str, Any]) -> str:
    stream = status["stream"]
    lines = [f"Stream {stream['name']}: {stream['messages']} messages, {stream['bytes']} bytes, "
             f"oldest {stream.get('oldest') or '-'}"]
    for name, consumer in sorted(status.get("consumers", {}).items()):
        lines.append(f"  consumer {name}: {consumer['pending']} pending, {consumer['ackPending']} in delivery, "
                     f"{consumer['redelivered']} redelivered")
    backlog = status.get("backlog") or []
    lines.append("Forward backlog:" + ("" if backlog else " none"))
    lines += [f"  {row.get('org')}/{row.get('project')} (id {row['projectId']}): {row['envelopes']} envelopes"
              for row in backlog]
    letters = status.get("deadLetters", {})
    lines.append(f"Dead letters: {letters.get('count', 0)}")
    lines += [f"  #{x['sequence']} project {x['projectId']} event {x.get('eventId') or '-'}: "
              f"HTTP {x.get('status')} {x.get('detail') or ''}".rstrip() for x in letters.get("letters", [])]
    return "\n".join(lines)


def _stats_text(ref: str, stats: dict[str, Any]) -> str:
    lines = [f"{ref}:"]
    for window, label in (("lastHour", "last hour"), ("last24h", "last 24 h")):
        counts = stats[window]
        lines.append(f"  {label}: {counts['accepted']} accepted, {counts['filtered']} filtered, "
                     f"{counts['rate_limited']} rate limited, {counts['invalid']} invalid")
        for category, outcomes in counts.get("byCategory", {}).items():
            lines.append(f"    {category}: " + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())))
    return "\n".join(lines)


def register(main: click.Group) -> None:
    event = main.commands.get("event")
    project = main.commands.get("project")
    if not isinstance(event, click.Group) or not isinstance(project, click.Group):
        raise RuntimeError("cli.ingest registers after the `event` and `project` groups")

    @event.command("list")
    @click.argument("ref", metavar="ORG/PROJECT")
    @click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 200),
                  help="How many of the newest events.")
    @json_option
    @pass_ctx
    def event_list(ctx: Context, ref: str, limit: int, as_json: bool) -> None:
        """The newest error events SDKs sent to a project."""
        org, slug = split_project(ref)
        result = ctx.request("events.list", {"org": org, "project": slug, "limit": limit})
        emit(as_json, result["events"], _event_lines(result["events"]))

    @event.command("show")
    @click.argument("event_id")
    @json_option
    @pass_ctx
    def event_show(ctx: Context, event_id: str, as_json: bool) -> None:
        """One stored error event, as scrubbed."""
        result = ctx.request("events.show", {"event_id": event_id})
        text = (f"{result['eventId']} in {result.get('org')}/{result.get('project')}, received "
                f"{result.get('received')}\n{result.get('title')}\n"
                + json.dumps(result["event"], indent=2, sort_keys=True))
        emit(as_json, result, text)

    @main.group()
    def ingest() -> None:
        """The ingest stream: what SDKs and relays sent, and its forwarding."""

    @ingest.command("status")
    @json_option
    @pass_ctx
    def ingest_status(ctx: Context, as_json: bool) -> None:
        """Stream size, oldest envelope, forward backlog per project, dead letters."""
        status = ctx.request("ingest.status", {}, timeout=15.0)
        emit(as_json, status, _status_text(status))

    @ingest.command("replay")
    @click.option("--project", "ref", metavar="ORG/PROJECT", help="Only this project's dead letters.")
    @click.option("--sequence", type=int, help="Only the dead letter of this stream sequence.")
    @json_option
    @pass_ctx
    def ingest_replay(ctx: Context, ref: str | None, sequence: int | None, as_json: bool) -> None:
        """Send dead letters to their downstream Sentry again; delivered ones are removed."""
        payload: dict[str, Any] = {}
        if ref:
            payload["org"], payload["project"] = split_project(ref)
        if sequence is not None:
            payload["sequence"] = sequence
        result = ctx.request("ingest.replay", payload, timeout=60.0)
        text = (f"Replayed {len(result['replayed'])}, failed {len(result['failed'])}, "
                f"gone from the stream {len(result['gone'])}")
        for failed in result["failed"]:
            text += f"\n  #{failed['sequence']}: {failed['detail']}"
        emit(as_json, result, text)
        if result["failed"] or result["gone"]:
            if not as_json:
                fail("some dead letters were not delivered")
            raise SystemExit(1)

    @project.command("stats")
    @click.argument("ref", metavar="ORG/PROJECT")
    @json_option
    @pass_ctx
    def project_stats(ctx: Context, ref: str, as_json: bool) -> None:
        """Accepted, filtered, rate limited and invalid counts: last hour and last 24 h."""
        org, slug = split_project(ref)
        stats = ctx.request("ingest.stats", {"org": org, "project": slug})
        emit(as_json, stats, _stats_text(ref, stats))
