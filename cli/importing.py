"""`relayctl import FILE`: orgs, projects, keys and options from a file, org by org.

An org is sent as one `import.org` when it fits in one NATS message (and `PIECE_BYTES`),
else in pieces of its projects, each within the server's max_payload, all naming one import id: a hash of the
org's part of the file, so running the same file again names the same import and resumes
it (the command handlers skip what its stored parts decided). The command handlers store
each piece as part commits within the event store's limit and fold the org, all at once,
when its last piece is stored (domain/importer.py, docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sys
import time
from typing import Any

import click
import msgpack

from bus.runtime import BUS_ERRORS, connect
from cli.context import Context, emit, fail
from messages.errors import RelayctlError

PIECE_TIMEOUT = 60.0
ENVELOPE_RESERVE = 4096  # bytes of a request besides its org's projects (envelope, ids, trace context)
# A piece is at most this large even when the server takes more: a step of progress, and of resuming.
PIECE_BYTES = 1024 * 1024


def import_id(spec: Any) -> str:
    """The id of an org's import: the same for the same org in the same file."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def pieces(spec: dict[str, Any], budget: int) -> list[tuple[int, dict[str, Any]]]:
    """The org as (index of the first project, piece) pairs, each piece's msgpack within
    `budget` bytes (a single project larger than that is a piece of its own, refused by
    the server as too large). The first piece carries the org's own fields."""
    projects = spec.get("projects") if isinstance(spec.get("projects"), list) else None
    whole = len(msgpack.packb(spec, default=str))
    if projects is None or whole <= budget:
        return [(0, spec)]
    head = {k: v for k, v in spec.items() if k != "projects"}
    slug_only = {"slug": spec.get("slug")}
    out: list[tuple[int, dict[str, Any]]] = []
    current: list[Any] = []
    first, used = 0, len(msgpack.packb(head, default=str))
    for i, project in enumerate(projects):
        need = len(msgpack.packb(project, default=str)) + 1
        if current and used + need > budget:
            out.append((first, {**(head if first == 0 else slug_only), "projects": current}))
            current, first, used = [], i, len(msgpack.packb(slug_only, default=str))
        current.append(project)
        used += need
    out.append((first, {**(head if first == 0 else slug_only), "projects": current}))
    return out


def server_max_payload(ctx: Context) -> int:
    async def ask() -> int:
        nc = await connect(ctx.nats_url, name="relayctl-cli", max_reconnect_attempts=1, allow_reconnect=False,
                           quiet=True)
        try:
            return int(nc.max_payload)
        finally:
            await nc.close()

    try:
        return asyncio.run(ask())
    except RelayctlError as exc:  # as every other command says it (cli/context.py)
        fail(exc.message, error_code=exc.code)
    except BUS_ERRORS as exc:
        fail(f"cannot reach NATS at {ctx.nats_url}: {exc}", error_code="unavailable")


def register(main: click.Group) -> None:
    @main.command("import")
    @click.argument("file", type=click.File("r"), required=False)
    @click.option("--restart", is_flag=True,
                  help="Drop an unfinished import of an org in FILE (one started by another file) and import FILE.")
    @click.option("--abandon", "abandon", metavar="ORG",
                  help="Drop ORG's unfinished import (nothing of it is ever visible); no FILE.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def import_(ctx: Context, file: Any, restart: bool, abandon: str | None, as_json: bool) -> None:
        """Bulk-load orgs, projects, keys and options from FILE (`-`: stdin).

        All-or-nothing per org: an org too large for one message is sent in parts, which
        readers see only once the last is stored. Running it again skips what is stored
        already, so an import that was interrupted completes when run again (an org
        interrupted between its parts is resumed; until then it is locked, and `relayctl
        status` names it; `--abandon ORG` drops it instead). `relayctl export` writes this format.

        \b
        FILE is one JSON object:
        {"orgs": [{
            "slug": "acme",                        required, an org slug
            "name": "Acme Inc",                    optional, default: the slug
            "options": {"KEY": VALUE, ...},        optional, org options
            "trustedRelays": [{"public_key": "...", "name": "edge"}],   optional
            "projects": [{
                "slug": "web",                     required
                "name": "Web",                     optional
                "options": {"KEY": VALUE, ...},    optional, project options
                "keys": [{"publicKey": "<32 hex>", "status": "active" | "disabled"}]
            }]                                     optional; a project without "keys" gets one
        }]}

        Option keys and values as `relayctl option list` describes them.

        Ids are not carried: orgs, projects and numeric key ids get this system's next free ids,
        in file order; public keys are kept. Into an empty system, a file from `relayctl
        export` gets the ids it had (export lists in id order, if they were made one after
        another); otherwise project ids change, and a DSN names its project id
        (https://KEY@HOST/PROJECT_ID): give SDKs the new DSNs, or import into an empty system.
        """
        if abandon is not None:
            if file is not None or restart:
                fail("--abandon ORG takes no FILE and no --restart", 2)
            dropped = ctx.request("import.abandon", {"org": abandon})
            emit(as_json, dropped, f"Dropped the unfinished import {dropped['import_id']} of org `{abandon}` "
                                   f"({dropped['projects_staged']} of {dropped['projects']} projects were staged)")
            return
        if file is None:
            fail("missing FILE (or --abandon ORG)", 2)
        try:
            data = json.load(file)
        except ValueError as exc:
            fail(f"{file.name} is not valid JSON: {exc}")
        orgs = data.get("orgs") if isinstance(data, dict) else None
        if not isinstance(orgs, list):
            fail(f"{file.name}: expected {{\"orgs\": [...]}}")
        started = time.monotonic()
        budget = min(server_max_payload(ctx) - ENVELOPE_RESERVE, PIECE_BYTES)
        totals = {"orgs": 0, "projects": 0, "keys": 0, "events": 0}
        resumed: list[dict[str, Any]] = []
        abandoned: list[str] = []
        in_parts = 0
        show_progress = not as_json and sys.stderr.isatty()
        progress_to = sys.stderr if show_progress else io.StringIO()
        done = 0
        current: dict[str, Any] = {}
        try:
            with click.progressbar(orgs, label="Importing orgs", file=progress_to) as bar:
                for spec in bar:
                    split = pieces(spec, budget) if isinstance(spec, dict) else [(0, spec)]
                    ident = import_id(spec)
                    n_projects = len(spec.get("projects") or []) if isinstance(spec, dict) else 0
                    current = {"slug": spec.get("slug") if isinstance(spec, dict) else None,
                               "parts": len(split), "sent": 0}
                    in_parts += len(split) > 1
                    for n, (first, piece) in enumerate(split):
                        payload: dict[str, Any] = {"org": piece, "restart": restart and n == 0}
                        if isinstance(spec, dict):  # resumable by its id if it must be stored in parts
                            payload["part"] = {"id": ident, "first": first, "projects": n_projects,
                                               "last": n == len(split) - 1}
                        result = ctx.request("import.org", payload, timeout=PIECE_TIMEOUT)
                        current["sent"] = n + 1
                        for k in totals:
                            totals[k] += result[k]
                        info = result.get("import") or {}
                        if n == 0 and info.get("resumed"):
                            resumed.append({"org": current["slug"], "import_id": ident})
                        if info.get("abandoned"):
                            abandoned.append(f"{current['slug']} (import {info['abandoned']})")
                    current = {}
                    done += 1
        except KeyboardInterrupt:
            # What Ctrl-C cut off half made (an event loop interrupted in its constructor)
            # would print a finalizer's traceback at exit: the message below says it all.
            sys.unraisablehook = lambda _unraisable: None
            # Each org is stored whole or not at all: say where it stopped and that a rerun
            # finishes the job (orgs stored already are skipped, an org in parts is resumed).
            partly = ""
            if current.get("parts", 1) > 1:
                partly = (f" Org `{current['slug']}` was being imported in {current['parts']} pieces, "
                          f"{current['sent']} of them stored: what is stored of it is staged and not visible, "
                          f"and running the same import again resumes it (`relayctl import --restart` drops it "
                          f"instead).")
            fail(f"interrupted: the first {done} of {len(orgs)} orgs in {file.name} are stored "
                 f"({totals['orgs']} new, {totals['projects']} projects, {totals['keys']} keys); the org being "
                 "imported when it stopped is stored whole or not at all. Run the same `relayctl import` again "
                 "to import the rest: what is stored already is skipped." + partly, 130, error_code="interrupted")
        # INTERFACE.md's document, and only when they happened: orgs imported in parts, resumed, dropped
        extra = {"in_parts": in_parts, "resumed": resumed, "abandoned": abandoned}
        summary = {**totals, "seconds": round(time.monotonic() - started, 3), **{k: v for k, v in extra.items() if v}}
        note = ("\nIds are this system's own (public keys are kept): a project's id, which its DSNs name, may "
                "differ from the source system's; see `relayctl import --help`" if totals["projects"] else "")
        lines = [f"Imported {summary['orgs']} orgs, {summary['projects']} projects, "
                 f"{summary['keys']} keys ({summary['events']} events) in {summary['seconds']}s"]
        lines += [f"Resumed the unfinished import of org `{r['org']}` (import {r['import_id']}): the parts "
                  f"stored before were kept" for r in resumed]
        if in_parts:
            lines.append(f"{in_parts} org(s) were too large for one message: imported in parts, each visible "
                         f"only once all of it was stored")
        lines += [f"Dropped the unfinished import of org {a} (--restart)" for a in abandoned]
        emit(as_json, summary, "\n".join(lines) + note)
