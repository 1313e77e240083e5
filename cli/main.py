"""`relayctl`: the command line of the system.

Change commands send a control message and return once its event is stored; read
commands see every change acknowledged before them. Every command that prints data takes
`--json` and then prints exactly one JSON document.
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import structlog

from cli.context import Context, emit, fail, parse_json_value, split_project
from cli.logging import setup_logging
from messages.commands import PUBLIC_KEY_RE

pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
# About one relay key in 64 starts with "-": read it as the argument it is, not as an option.
RELAY_KEY_ARGS = {"ignore_unknown_options": True, "help_option_names": ["--help"]}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="RELAYCTL_DATA_DIR",
              default=Path(".relayctl"), show_default=True, help="Where `up` keeps data and state.")
@click.option("--nats-url", envvar="RELAYCTL_NATS_URL", default=None,
              help="NATS to talk to (default: the one `up` started for this data dir).")
@click.pass_context
def main(ctx: click.Context, data_dir: Path, nats_url: str | None) -> None:
    """An event-sourced upstream for Sentry Relay."""
    ctx.obj = Context(data_dir=data_dir.resolve(), nats_url_option=nats_url)
    if not structlog.is_configured():
        setup_logging(process="cli", level="warning")


# -- orgs ---------------------------------------------------------------------------------------

@main.group()
def org() -> None:
    """Organizations, their options and trusted relays."""


@org.command("create")
@click.argument("slug")
@click.option("--name")
@json_option
@pass_ctx
def org_create(ctx: Context, slug: str, name: str | None, as_json: bool) -> None:
    result = ctx.request("org.create", {"slug": slug, "name": name})
    emit(as_json, result, f"Created organization `{slug}` (id {result['id']})")


@org.group("option")
def org_option() -> None:
    """Organization options."""


@org_option.command("set")
@click.argument("org_slug", metavar="ORG")
@click.argument("key")
@click.argument("value", metavar="JSON")
@json_option
@pass_ctx
def org_option_set(ctx: Context, org_slug: str, key: str, value: str, as_json: bool) -> None:
    result = ctx.request("org.option_set", {"org": org_slug, "key": key, "value": parse_json_value(value)})
    emit(as_json, result, f"Set `{key}` on `{org_slug}`")


@org_option.command("get")
@click.argument("org_slug", metavar="ORG")
@click.argument("key")
@json_option
@pass_ctx
def org_option_get(ctx: Context, org_slug: str, key: str, as_json: bool) -> None:
    result = ctx.request("org.option_get", {"org": org_slug, "key": key})
    emit(as_json, {"value": result["value"]}, json.dumps(result["value"]))


@org_option.command("unset")
@click.argument("org_slug", metavar="ORG")
@click.argument("key")
@pass_ctx
def org_option_unset(ctx: Context, org_slug: str, key: str) -> None:
    ctx.request("org.option_unset", {"org": org_slug, "key": key})
    click.echo(f"Unset `{key}` on `{org_slug}`")


@org.command("trust-relay", context_settings=RELAY_KEY_ARGS)
@click.argument("org_slug", metavar="ORG")
@click.argument("public_key")
@click.option("--name")
@click.option("--description")
@pass_ctx
def org_trust_relay(ctx: Context, org_slug: str, public_key: str, name: str | None,
                    description: str | None) -> None:
    ctx.request("org.trust_relay", {"org": org_slug, "public_key": public_key, "name": name,
                                    "description": description})
    click.echo(f"`{org_slug}` now trusts relay `{public_key}`")


@org.command("untrust-relay", context_settings=RELAY_KEY_ARGS)
@click.argument("org_slug", metavar="ORG")
@click.argument("public_key")
@pass_ctx
def org_untrust_relay(ctx: Context, org_slug: str, public_key: str) -> None:
    ctx.request("org.untrust_relay", {"org": org_slug, "public_key": public_key})
    click.echo(f"`{org_slug}` no longer trusts relay `{public_key}`")


# -- projects -----------------------------------------------------------------------------------

@main.group()
def project() -> None:
    """Projects and their options."""


@org.group("template")
def org_template() -> None:
    """Project templates: option values projects created from them fall back to."""


@org_template.command("set")
@click.argument("org_slug", metavar="ORG")
@click.argument("template")
@click.argument("options", metavar="JSON")
@pass_ctx
def org_template_set(ctx: Context, org_slug: str, template: str, options: str) -> None:
    value = parse_json_value(options)
    if not isinstance(value, dict):
        fail("template options must be a JSON object of option keys and values")
    ctx.request("org.template_set", {"org": org_slug, "template": template, "options": value})
    click.echo(f"Set template `{template}` on `{org_slug}`")


@project.command("create")
@click.argument("org_slug", metavar="ORG")
@click.argument("slug")
@click.option("--name")
@click.option("--template", help="A project template of the org (see `org template set`).")
@json_option
@pass_ctx
def project_create(ctx: Context, org_slug: str, slug: str, name: str | None, template: str | None,
                   as_json: bool) -> None:
    result = ctx.request("project.create", {"org": org_slug, "project": slug, "name": name, "template": template})
    emit(as_json, result, f"Created project `{org_slug}/{slug}` (id {result['id']}) with key {result['publicKey']}")


@project.group("option")
def project_option() -> None:
    """Project options."""


@project_option.command("set")
@click.argument("ref", metavar="ORG/PROJECT")
@click.argument("key")
@click.argument("value", metavar="JSON")
@json_option
@pass_ctx
def project_option_set(ctx: Context, ref: str, key: str, value: str, as_json: bool) -> None:
    org_slug, slug = split_project(ref)
    result = ctx.request("project.option_set", {"org": org_slug, "project": slug, "key": key,
                                                "value": parse_json_value(value)})
    emit(as_json, result, f"Set `{key}` on `{ref}`")


@project_option.command("get")
@click.argument("ref", metavar="ORG/PROJECT")
@click.argument("key")
@json_option
@pass_ctx
def project_option_get(ctx: Context, ref: str, key: str, as_json: bool) -> None:
    org_slug, slug = split_project(ref)
    result = ctx.request("project.option_get", {"org": org_slug, "project": slug, "key": key})
    emit(as_json, {"value": result["value"]}, json.dumps(result["value"]))


@project_option.command("unset")
@click.argument("ref", metavar="ORG/PROJECT")
@click.argument("key")
@pass_ctx
def project_option_unset(ctx: Context, ref: str, key: str) -> None:
    org_slug, slug = split_project(ref)
    ctx.request("project.option_unset", {"org": org_slug, "project": slug, "key": key})
    click.echo(f"Unset `{key}` on `{ref}`")


def _project_status_command(verb: str, past: str) -> None:
    @project.command(verb)
    @click.argument("ref", metavar="ORG/PROJECT")
    @pass_ctx
    def command(ctx: Context, ref: str) -> None:
        org_slug, slug = split_project(ref)
        ctx.request(f"project.{verb}", {"org": org_slug, "project": slug})
        click.echo(f"{past} project `{ref}`")

    command.__doc__ = f"{verb.capitalize()} a project."


for _verb, _past in (("disable", "Disabled"), ("enable", "Enabled"), ("delete", "Deleted")):
    _project_status_command(_verb, _past)


# -- keys ---------------------------------------------------------------------------------------

@main.group()
def key() -> None:
    """Project keys (DSN public keys)."""


@key.command("create")
@click.argument("ref", metavar="ORG/PROJECT")
@json_option
@pass_ctx
def key_create(ctx: Context, ref: str, as_json: bool) -> None:
    org_slug, slug = split_project(ref)
    result = ctx.request("key.create", {"org": org_slug, "project": slug})
    emit(as_json, result, f"Created key {result['publicKey']} (numeric id {result['numericId']})")


def _key_status_command(verb: str, past: str) -> None:
    @key.command(verb)
    @click.argument("public_key")
    @pass_ctx
    def command(ctx: Context, public_key: str) -> None:
        ctx.request(f"key.{verb}", {"public_key": public_key})
        click.echo(f"{past} key {public_key}")

    command.__doc__ = f"{verb.capitalize()} a key."


for _verb, _past in (("disable", "Disabled"), ("enable", "Enabled"), ("delete", "Deleted")):
    _key_status_command(_verb, _past)


@key.command("list")
@click.argument("ref", metavar="ORG/PROJECT")
@json_option
@pass_ctx
def key_list(ctx: Context, ref: str, as_json: bool) -> None:
    org_slug, slug = split_project(ref)
    result = ctx.request("key.list", {"org": org_slug, "project": slug})
    keys = [{k: v for k, v in item.items() if k in ("publicKey", "numericId", "status")} for item in result["keys"]]
    emit(as_json, {"keys": keys}, "\n".join(f"{k['publicKey']}  {k['numericId']:>6}  {k['status']}" for k in keys))


# -- relays -------------------------------------------------------------------------------------

@main.group()
def relay() -> None:
    """Relays allowed to register, banned relays, registered relays."""


@relay.command("allow", context_settings=RELAY_KEY_ARGS)
@click.argument("public_key")
@click.option("--internal", is_flag=True, help="May fetch every project's config.")
@pass_ctx
def relay_allow(ctx: Context, public_key: str, internal: bool) -> None:
    ctx.request("relay.allow", {"public_key": public_key, "internal": internal})
    click.echo(f"Allowed relay `{public_key}`" + (" (internal)" if internal else ""))


@relay.command("deny", context_settings=RELAY_KEY_ARGS)
@click.argument("public_key")
@pass_ctx
def relay_deny(ctx: Context, public_key: str) -> None:
    ctx.request("relay.deny", {"public_key": public_key})
    click.echo(f"Banned relay `{public_key}`")


@relay.command("list")
@json_option
@pass_ctx
def relay_list(ctx: Context, as_json: bool) -> None:
    result = ctx.request("relay.list", {})

    def when(ts: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"
    lines = [f"{r['publicKey']}  {'internal' if r['internal'] else 'external'}"
             f"{'  BANNED' if r['banned'] else ''}  id={r['relayId'] or '-'}  version={r['version'] or '-'}"
             f"  first={when(r['firstSeen'])}  last={when(r['lastSeen'])}" for r in result["relays"]]
    emit(as_json, result, "\n".join(lines) if lines else "No relays")


# -- users and permissions --------------------------------------------------------------------

@main.group()
def user() -> None:
    """Users of the HTTP API."""


@user.command("create")
@click.argument("username")
@click.option("--email")
@click.option("--superuser", is_flag=True)
@json_option
@pass_ctx
def user_create(ctx: Context, username: str, email: str | None, superuser: bool, as_json: bool) -> None:
    result = ctx.request("user.create", {"username": username, "email": email, "superuser": superuser})
    emit(as_json, result, f"Created user `{username}`")


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.argument("username")
@json_option
@pass_ctx
def token_create(ctx: Context, username: str, as_json: bool) -> None:
    result = ctx.request("user.token_create", {"username": username})
    emit(as_json, result, result["token"])


@main.group()
def permissions() -> None:
    """Permissions of users (they gate the admin side of the HTTP API)."""


@permissions.command("add")
@click.option("-u", "--user", "username", required=True)
@click.option("-p", "--permission", required=True)
@pass_ctx
def permissions_add(ctx: Context, username: str, permission: str) -> None:
    result = ctx.request("user.permission_add", {"username": username, "permission": permission})
    click.echo(f"Added permission `{permission}` to `{username}`" if result["added"]
               else f"Permission already exists for `{username}`")


@permissions.command("remove")
@click.option("-u", "--user", "username", required=True)
@click.option("-p", "--permission", required=True)
@pass_ctx
def permissions_remove(ctx: Context, username: str, permission: str) -> None:
    result = ctx.request("user.permission_remove", {"username": username, "permission": permission})
    click.echo(f"Removed permission `{permission}` from `{username}`" if result["removed"]
               else f"Permission does not exist for `{username}`")


@permissions.command("list")
@click.option("-u", "--user", "username", required=True)
@json_option
@pass_ctx
def permissions_list(ctx: Context, username: str, as_json: bool) -> None:
    result = ctx.request("user.permission_list", {"username": username})
    lines = [f"Permissions for `{username}`:"] + [f"- {p}" for p in result["permissions"]]
    emit(as_json, result, "\n".join(lines))


# -- configs ------------------------------------------------------------------------------------

@main.group()
def config() -> None:
    """Project configs as relays get them."""


@config.command("get")
@click.argument("public_key")
@json_option
@pass_ctx
def config_get(ctx: Context, public_key: str, as_json: bool) -> None:
    if not PUBLIC_KEY_RE.match(public_key):
        fail(f"`{public_key}` is not a project key (32 hex characters)")
    result = ctx.request("config.get", {"public_keys": [public_key], "version": 3})
    body = result["entries"][public_key][2]
    doc = json.loads(body)
    click.echo(json.dumps(doc) if as_json else json.dumps(doc, indent=2, sort_keys=True))


@config.command("history")
@click.argument("public_key")
@json_option
@pass_ctx
def config_history(ctx: Context, public_key: str, as_json: bool) -> None:
    result = ctx.request("config.history", {"public_key": public_key})
    lines = [f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e['ts']))}  #{e['sequence']:<6} "
             f"{e['type']:<20} by {e['actor']}  {json.dumps(e['payload'], sort_keys=True)}"
             for e in result["events"]]
    emit(as_json, {"events": result["events"]}, "\n".join(lines))


# -- import -------------------------------------------------------------------------------------

@main.command("import")
@click.argument("file", type=click.File("r"))
@json_option
@pass_ctx
def import_(ctx: Context, file: Any, as_json: bool) -> None:
    """Bulk-load orgs, projects, keys and options; all-or-nothing per org, idempotent."""
    try:
        data = json.load(file)
    except ValueError as exc:
        fail(f"{file.name} is not valid JSON: {exc}")
    orgs = data.get("orgs") if isinstance(data, dict) else None
    if not isinstance(orgs, list):
        fail(f"{file.name}: expected {{\"orgs\": [...]}}")
    started = time.monotonic()
    totals = {"orgs": 0, "projects": 0, "keys": 0, "events": 0}
    show_progress = not as_json and sys.stderr.isatty()
    progress_to = sys.stderr if show_progress else io.StringIO()
    with click.progressbar(orgs, label="Importing orgs", file=progress_to) as bar:
        for spec in bar:
            result = ctx.request("import.org", {"org": spec}, timeout=60.0)
            for k in totals:
                totals[k] += result[k]
    summary = {**totals, "seconds": round(time.monotonic() - started, 3)}
    emit(as_json, summary, f"Imported {summary['orgs']} orgs, {summary['projects']} projects, "
                           f"{summary['keys']} keys ({summary['events']} events) in {summary['seconds']}s")


from cli import observe as _observe  # noqa: E402  (registers metrics/transport)
from cli import services as _services  # noqa: E402  (registers up/down/status/worker/gateway)

_services.register(main)
_observe.register(main)
from cli import ai as _ai  # noqa: E402  (registers event store/openai)

_ai.register(main)
from cli import export as _export  # noqa: E402  (registers export)

_export.register(main)
