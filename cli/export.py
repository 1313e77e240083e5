"""`relayctl export FILE`: every org, project, key and option, in the format `import` reads.

The command handlers answer `export.orgs` from their projection (read-your-writes: it
includes every change acknowledged before it was sent). Importing the file into an empty
system serves the same configs; ids are handed out again in file order, which is the
original id order: the same ids only in an empty system whose orgs were made one after
another (ids are not carried - see `relayctl import --help`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.context import Context, emit, fail


def register(main: click.Group) -> None:
    @main.command("export")
    @click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.pass_obj
    def export(ctx: Context, file: Path, as_json: bool) -> None:
        """Write every org, project, key and option to FILE (`-`: stdout) for `relayctl import`."""
        data = ctx.request("export.orgs", {}, timeout=60.0)
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        projects = [p for o in data["orgs"] for p in o["projects"]]
        summary = {"orgs": len(data["orgs"]), "projects": len(projects),
                   "keys": sum(len(p["keys"]) for p in projects), "file": str(file)}
        if str(file) == "-":
            click.echo(text, nl=False)
            return
        try:
            tmp = file.with_name(file.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(file)  # a crash never leaves half an export behind
        except OSError as exc:
            fail(f"cannot write {file}: {exc.strerror or exc}")
        emit(as_json, summary, f"Exported {summary['orgs']} orgs, {summary['projects']} projects, "
                               f"{summary['keys']} keys to {file}")
