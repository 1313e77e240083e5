"""`relayctl`: the command line of the system.

Change commands send a control message and return once its event is stored; read
commands see every change acknowledged before them. Every command that prints data takes
`--json` and then prints exactly one JSON document.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import structlog

from bus.embedded import write_private
from cli import rate_limits as _rate_limits
from cli.context import Context, emit, error_document, fail, parse_json_value, rfc3339, split_project
from cli.logging import setup_logging
from cli.option_docs import default_text, help_epilog, rows
from domain.options import OPTIONS, PREFIX_OPTIONS
from messages.commands import PUBLIC_KEY_RE

pass_ctx = click.make_pass_decorator(Context)


def catalogue_rows() -> list[dict[str, Any]]:
    return rows([*OPTIONS.values(), *PREFIX_OPTIONS.values()])


def scope_epilog(scope: str) -> str:
    return help_epilog([r for r in catalogue_rows() if scope in r["scopes"]])

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


class RelayKeyCommand(click.Command):
    """A command taking a relay key: about one key in 64 starts with "-", and such a key is
    read as the argument it is, not as an option. `-h` alone still asks for help: no relay
    key is two characters long."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, ["--help" if a == "-h" else a for a in args])


RELAY_KEY_ARGS = {"ignore_unknown_options": True, "help_option_names": ["--help"]}
RELAY_KEY_COMMAND: dict[str, Any] = {"cls": RelayKeyCommand, "context_settings": RELAY_KEY_ARGS}


class RelayctlGroup(click.Group):
    """The root command: with `--json` anywhere among the arguments, an error click itself
    raises (a usage error, a missing argument) is also one JSON document on stdout (stdout
    holds nothing else; the usual message still goes to stderr)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            kind = "usage" if isinstance(exc, click.UsageError) else "error"
            click.echo(error_document(kind, exc.format_message()))
            exc.show()  # on stderr too, as without --json
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo(error_document("aborted", "interrupted"))
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=RelayctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="RELAYCTL_DATA_DIR",
              default=Path(".relayctl"), show_default=True, help="Where `up` keeps data and state.")
@click.option("--nats-url", envvar="RELAYCTL_NATS_URL", default=None,
              help="NATS to talk to (default: the one `up` started for this data dir).")
@click.pass_context
def main(ctx: click.Context, data_dir: Path, nats_url: str | None) -> None:
    """An event-sourced upstream for Sentry Relay."""
    ctx.obj = Context(data_dir=data_dir.resolve(), nats_url_option=nats_url)
    if not structlog.is_configured():
        setup_logging(process="cli", level="warning", settings=ctx.obj.settings)


# -- orgs ---------------------------------------------------------------------------------------

@main.group()
def org() -> None:
    """Organizations, their options and trusted relays."""


@org.command("create")
@click.argument("slug")
@click.option("--name", help="A display name (default: the slug).")
@json_option
@pass_ctx
def org_create(ctx: Context, slug: str, name: str | None, as_json: bool) -> None:
    """Create an organization (SLUG: lowercase letters, digits, dashes)."""
    result = ctx.request("org.create", {"slug": slug, "name": name})
    emit(as_json, result, f"Created organization `{slug}` (id {result['id']})")


@org.group("option")
def org_option() -> None:
    """Organization options."""


@org_option.command("set", epilog=scope_epilog("org"))
@click.argument("org_slug", metavar="ORG")
@click.argument("key")
@click.argument("value", metavar="JSON")
@json_option
@pass_ctx
def org_option_set(ctx: Context, org_slug: str, key: str, value: str, as_json: bool) -> None:
    """Set an org option to a JSON value (validated; see `relayctl option list`)."""
    result = ctx.request("org.option_set", {"org": org_slug, "key": key, "value": parse_json_value(value)})
    emit(as_json, result, f"Set `{key}` on `{org_slug}`")


@org_option.command("get")
@click.argument("org_slug", metavar="ORG")
@click.argument("key")
@json_option
@pass_ctx
def org_option_get(ctx: Context, org_slug: str, key: str, as_json: bool) -> None:
    """Print an org option's value (its default when unset)."""
    result = ctx.request("org.option_get", {"org": org_slug, "key": key})
    emit(as_json, {"value": result["value"]}, json.dumps(result["value"]))


@org_option.command("unset")
@click.argument("org_slug", metavar="ORG")
@click.argument("key")
@json_option
@pass_ctx
def org_option_unset(ctx: Context, org_slug: str, key: str, as_json: bool) -> None:
    """Remove an org option, so its default applies again."""
    ctx.request("org.option_unset", {"org": org_slug, "key": key})
    emit(as_json, {"org": org_slug, "key": key, "unset": True}, f"Unset `{key}` on `{org_slug}`")


@org.command("trust-relay", **RELAY_KEY_COMMAND)
@click.argument("org_slug", metavar="ORG")
@click.argument("public_key")
@click.option("--name", help="A name for the relay (default: the key's first 8 characters).")
@click.option("--description", help="What the relay is, for people.")
@json_option
@pass_ctx
def org_trust_relay(ctx: Context, org_slug: str, public_key: str, name: str | None,
                    description: str | None, as_json: bool) -> None:
    """Let the relay with PUBLIC_KEY fetch this org's configs (adds it to `sentry:trusted-relays`)."""
    ctx.request("org.trust_relay", {"org": org_slug, "public_key": public_key, "name": name,
                                    "description": description})
    emit(as_json, {"org": org_slug, "publicKey": public_key, "trusted": True},
         f"`{org_slug}` now trusts relay `{public_key}`")


@org.command("untrust-relay", **RELAY_KEY_COMMAND)
@click.argument("org_slug", metavar="ORG")
@click.argument("public_key")
@json_option
@pass_ctx
def org_untrust_relay(ctx: Context, org_slug: str, public_key: str, as_json: bool) -> None:
    """Stop trusting a relay for this org (removes it from `sentry:trusted-relays`)."""
    ctx.request("org.untrust_relay", {"org": org_slug, "public_key": public_key})
    emit(as_json, {"org": org_slug, "publicKey": public_key, "trusted": False},
         f"`{org_slug}` no longer trusts relay `{public_key}`")


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
@json_option
@pass_ctx
def org_template_set(ctx: Context, org_slug: str, template: str, options: str, as_json: bool) -> None:
    """Set project template TEMPLATE: a JSON object of project option keys and values."""
    value = parse_json_value(options)
    if not isinstance(value, dict):
        fail("template options must be a JSON object of option keys and values")
    ctx.request("org.template_set", {"org": org_slug, "template": template, "options": value})
    emit(as_json, {"org": org_slug, "template": template, "options": value},
         f"Set template `{template}` on `{org_slug}`")


@project.command("create")
@click.argument("org_slug", metavar="ORG")
@click.argument("slug")
@click.option("--name", help="A display name (default: the slug).")
@click.option("--template", help="A project template of the org (see `org template set`).")
@json_option
@pass_ctx
def project_create(ctx: Context, org_slug: str, slug: str, name: str | None, template: str | None,
                   as_json: bool) -> None:
    """Create a project in ORG, with its first key (DSN public key)."""
    result = ctx.request("project.create", {"org": org_slug, "project": slug, "name": name, "template": template})
    emit(as_json, result, f"Created project `{org_slug}/{slug}` (id {result['id']}) with key {result['publicKey']}")


@project.group("option")
def project_option() -> None:
    """Project options."""


@project_option.command("set", epilog=scope_epilog("project"))
@click.argument("ref", metavar="ORG/PROJECT")
@click.argument("key")
@click.argument("value", metavar="JSON")
@json_option
@pass_ctx
def project_option_set(ctx: Context, ref: str, key: str, value: str, as_json: bool) -> None:
    """Set a project option to a JSON value (validated; see `relayctl option list`)."""
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
    """Print a project option's value (template or default when unset)."""
    org_slug, slug = split_project(ref)
    result = ctx.request("project.option_get", {"org": org_slug, "project": slug, "key": key})
    emit(as_json, {"value": result["value"]}, json.dumps(result["value"]))


@project_option.command("unset")
@click.argument("ref", metavar="ORG/PROJECT")
@click.argument("key")
@json_option
@pass_ctx
def project_option_unset(ctx: Context, ref: str, key: str, as_json: bool) -> None:
    """Remove a project option, so its template value or default applies again."""
    org_slug, slug = split_project(ref)
    ctx.request("project.option_unset", {"org": org_slug, "project": slug, "key": key})
    emit(as_json, {"org": org_slug, "project": slug, "key": key, "unset": True}, f"Unset `{key}` on `{ref}`")


def _project_status_command(verb: str, past: str, status: str, help_text: str) -> None:
    @project.command(verb, help=help_text)
    @click.argument("ref", metavar="ORG/PROJECT")
    @json_option
    @pass_ctx
    def command(ctx: Context, ref: str, as_json: bool) -> None:
        org_slug, slug = split_project(ref)
        ctx.request(f"project.{verb}", {"org": org_slug, "project": slug})
        emit(as_json, {"org": org_slug, "project": slug, "status": status}, f"{past} project `{ref}`")


for _args in (("disable", "Disabled", "disabled", "Disable a project: relays get `{\"disabled\": true}` for its keys."),
              ("enable", "Enabled", "active", "Enable a disabled project again."),
              ("delete", "Deleted", "deleted", "Delete a project: its keys serve `{\"disabled\": true}` for good.")):
    _project_status_command(*_args)


# -- keys ---------------------------------------------------------------------------------------

@main.group()
def key() -> None:
    """Project keys (DSN public keys)."""


@key.command("create")
@click.argument("ref", metavar="ORG/PROJECT")
@json_option
@pass_ctx
def key_create(ctx: Context, ref: str, as_json: bool) -> None:
    """Create another key (DSN public key) for a project."""
    org_slug, slug = split_project(ref)
    result = ctx.request("key.create", {"org": org_slug, "project": slug})
    emit(as_json, result, f"Created key {result['publicKey']} (numeric id {result['numericId']})")


def _key_status_command(verb: str, past: str, status: str, help_text: str) -> None:
    @key.command(verb, help=help_text)
    @click.argument("public_key")
    @json_option
    @pass_ctx
    def command(ctx: Context, public_key: str, as_json: bool) -> None:
        ctx.request(f"key.{verb}", {"public_key": public_key})
        emit(as_json, {"publicKey": public_key, "status": status}, f"{past} key {public_key}")


for _args in (("disable", "Disabled", "disabled", "Disable a key: relays get `{\"disabled\": true}` for it."),
              ("enable", "Enabled", "active", "Enable a disabled key again."),
              ("delete", "Deleted", "deleted", "Delete a key for good.")):
    _key_status_command(*_args)


_rate_limits.register(key)


@key.command("list")
@click.argument("ref", metavar="ORG/PROJECT")
@json_option
@pass_ctx
def key_list(ctx: Context, ref: str, as_json: bool) -> None:
    """List a project's keys with numeric id and status."""
    org_slug, slug = split_project(ref)
    result = ctx.request("key.list", {"org": org_slug, "project": slug})
    keys = [{k: v for k, v in item.items() if k in ("publicKey", "numericId", "status")} for item in result["keys"]]
    emit(as_json, {"keys": keys}, "\n".join(f"{k['publicKey']}  {k['numericId']:>6}  {k['status']}" for k in keys))


# -- relays -------------------------------------------------------------------------------------

@main.group()
def relay() -> None:
    """Relays allowed to register, banned relays, registered relays."""


@relay.command("allow", **RELAY_KEY_COMMAND)
@click.argument("public_key")
@click.option("--internal", is_flag=True, help="May fetch every project's config.")
@json_option
@pass_ctx
def relay_allow(ctx: Context, public_key: str, internal: bool, as_json: bool) -> None:
    """Allow the relay with PUBLIC_KEY to register (see `relayctl relay keygen`)."""
    ctx.request("relay.allow", {"public_key": public_key, "internal": internal})
    emit(as_json, {"publicKey": public_key, "allowed": True, "internal": internal},
         f"Allowed relay `{public_key}`" + (" (internal)" if internal else ""))


@relay.command("deny", **RELAY_KEY_COMMAND)
@click.argument("public_key")
@json_option
@pass_ctx
def relay_deny(ctx: Context, public_key: str, as_json: bool) -> None:
    """Ban a relay: registration answers 403, its signed calls 401."""
    ctx.request("relay.deny", {"public_key": public_key})
    emit(as_json, {"publicKey": public_key, "banned": True}, f"Banned relay `{public_key}`")


@relay.command("list")
@json_option
@pass_ctx
def relay_list(ctx: Context, as_json: bool) -> None:
    """Relays allowed or registered: versions, first and last seen."""
    result = ctx.request("relay.list", {})

    def when(ts: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"
    lines = [f"{r['publicKey']}  {'internal' if r['internal'] else 'external'}"
             f"{'  BANNED' if r['banned'] else ''}  id={r['relayId'] or '-'}  version={r['version'] or '-'}"
             f"  first={when(r['firstSeen'])}  last={when(r['lastSeen'])}" for r in result["relays"]]
    relays = [{**r, "firstSeen": rfc3339(r["firstSeen"]), "lastSeen": rfc3339(r["lastSeen"])}
              for r in result["relays"]]
    emit(as_json, {**result, "relays": relays}, "\n".join(lines) if lines else "No relays")


@relay.command("keygen")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the credentials to this file (mode 0600), e.g. Relay's credentials.json.")
@json_option
def relay_keygen(output: Path | None, as_json: bool) -> None:
    """Make a relay key pair and id, as Relay's `relay credentials generate` does.

    Prints (or writes with --output) Relay's credentials.json: {"secret_key", "public_key",
    "id"}. Put the file in the relay's config directory and allow its key with `relayctl
    relay allow PUBLIC_KEY`. Needs no running system.
    """
    import uuid

    import sentry_relay

    secret, public = sentry_relay.generate_key_pair()
    credentials = {"secret_key": str(secret), "public_key": str(public), "id": str(uuid.uuid4())}
    if output is not None:
        try:
            if output.exists():
                fail(f"{output} exists already; not overwriting a relay's credentials")
            write_private(output, json.dumps(credentials, indent=2) + "\n")
        except OSError as exc:
            fail(f"cannot write {output}: {exc.strerror or exc}")
        emit(as_json, {"public_key": credentials["public_key"], "id": credentials["id"], "file": str(output)},
             f"Wrote {output}\nPublic key: {credentials['public_key']}\n"
             f"Allow it with: relayctl relay allow -- {credentials['public_key']}")
        return
    emit(as_json, credentials, json.dumps(credentials, indent=2))


# -- option catalogue ---------------------------------------------------------------------------

@main.group("option")
def option_group() -> None:
    """The option catalogue: every org and project option key."""


@option_group.command("list")
@click.option("--scope", type=click.Choice(["org", "project"]), default=None, help="Only keys of this scope.")
@json_option
def option_list(scope: str | None, as_json: bool) -> None:
    """Every option key with its scope, type, default and meaning. Needs no running system."""
    listed = [r for r in catalogue_rows() if scope is None or scope in r["scopes"]]
    width = max(len(r["key"]) for r in listed)
    lines = []
    for r in listed:
        lines.append(f"{r['key']:<{width}}  {'/'.join(r['scopes'])}  {r['type']}  "
                     f"default {default_text(r['default'])}")
        lines.append(f"{'':<{width}}  {r['meaning']}")
    emit(as_json, {"options": listed}, "\n".join(lines))


# -- users and permissions --------------------------------------------------------------------

@main.group()
def user() -> None:
    """Users of the HTTP API."""


@user.command("create")
@click.argument("username")
@click.option("--email", help="The user's email address.")
@click.option("--superuser", is_flag=True, help="May do everything, in every org.")
@json_option
@pass_ctx
def user_create(ctx: Context, username: str, email: str | None, superuser: bool, as_json: bool) -> None:
    """Create a user of the HTTP API."""
    result = ctx.request("user.create", {"username": username, "email": email, "superuser": superuser})
    emit(as_json, result, f"Created user `{username}`")


@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.argument("username")
@click.option("--scope", "scopes", multiple=True, help="A scope the token has (repeatable; default: every "
              "scope). The user's role in each org bounds it: org:read, project:write, member:admin, ...")
@click.option("--org", "org_slug", help="An org auth token (sntrys_...) for this org only, naming --url.")
@click.option("--url", envvar="RELAYCTL_PUBLIC_URL", default="http://127.0.0.1:3000", show_default=True,
              help="The API's base URL an org auth token names (sentry-cli configures itself from it).")
@click.option("--name", help="What the token is for (shown by `token list`).")
@json_option
@pass_ctx
def token_create(ctx: Context, username: str, scopes: tuple[str, ...], org_slug: str | None, url: str,
                 name: str | None, as_json: bool) -> None:
    """Create an API token for USERNAME, in a format sentry-cli recognizes (printed once;
    only its hash is stored)."""
    result = ctx.request("token.create", {"username": username, "scopes": list(scopes) or None, "org": org_slug,
                                          "url": url if org_slug else None, "name": name})
    # INTERFACE.md: {"token": str}; `token list` names its id
    emit(as_json, {"token": result["token"]}, result["token"])


@main.group()
def permissions() -> None:
    """Permissions of users (they gate the admin side of the HTTP API)."""


@permissions.command("add")
@click.option("-u", "--user", "username", required=True, help="The user's name.")
@click.option("-p", "--permission", required=True, help="The permission's name.")
@json_option
@pass_ctx
def permissions_add(ctx: Context, username: str, permission: str, as_json: bool) -> None:
    """Give a user a permission."""
    result = ctx.request("user.permission_add", {"username": username, "permission": permission})
    emit(as_json, {"username": username, "permission": permission, "added": bool(result["added"])},
         f"Added permission `{permission}` to `{username}`" if result["added"]
         else f"Permission already exists for `{username}`")


@permissions.command("remove")
@click.option("-u", "--user", "username", required=True, help="The user's name.")
@click.option("-p", "--permission", required=True, help="The permission's name.")
@json_option
@pass_ctx
def permissions_remove(ctx: Context, username: str, permission: str, as_json: bool) -> None:
    """Take a permission from a user."""
    result = ctx.request("user.permission_remove", {"username": username, "permission": permission})
    emit(as_json, {"username": username, "permission": permission, "removed": bool(result["removed"])},
         f"Removed permission `{permission}` from `{username}`" if result["removed"]
         else f"Permission does not exist for `{username}`")


@permissions.command("list")
@click.option("-u", "--user", "username", required=True, help="The user's name.")
@json_option
@pass_ctx
def permissions_list(ctx: Context, username: str, as_json: bool) -> None:
    """List a user's permissions."""
    result = ctx.request("user.permission_list", {"username": username})
    lines = [f"Permissions for `{username}`:"] + [f"- {p}" for p in result["permissions"]]
    emit(as_json, result, "\n".join(lines))


def check_project_key(public_key: str) -> None:
    if not PUBLIC_KEY_RE.match(public_key):
        fail(f"`{public_key}` is not a project key (32 hex characters)", error_code="bad_request")


# -- configs ------------------------------------------------------------------------------------

@main.group()
def config() -> None:
    """Project configs as relays get them."""


@config.command("get")
@click.argument("public_key")
@json_option
@pass_ctx
def config_get(ctx: Context, public_key: str, as_json: bool) -> None:
    """Print the project config a relay gets now for PUBLIC_KEY."""
    check_project_key(public_key)
    result = ctx.request("config.get", {"public_keys": [public_key], "version": 3})
    body = result["entries"][public_key][2]
    doc = json.loads(body)
    if doc == {"disabled": True}:
        # Relays get this for a key nobody created too; a person asking is told apart, with
        # the answer of `config history` (which fails for a key that never existed).
        ctx.request("config.history", {"public_key": public_key})
    click.echo(json.dumps(doc) if as_json else json.dumps(doc, indent=2, sort_keys=True))


@config.command("history")
@click.argument("public_key")
@json_option
@pass_ctx
def config_history(ctx: Context, public_key: str, as_json: bool) -> None:
    """The events that shaped PUBLIC_KEY's config, oldest first."""
    check_project_key(public_key)
    result = ctx.request("config.history", {"public_key": public_key})
    lines = [f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e['ts']))}  #{e['sequence']:<6} "
             f"{e['type']:<20} by {e['actor']}  {json.dumps(e['payload'], sort_keys=True)}"
             for e in result["events"]]
    emit(as_json, {"events": [{**e, "ts": rfc3339(e["ts"])} for e in result["events"]]}, "\n".join(lines))


from cli import observe as _observe  # noqa: E402  (registers metrics/transport)
from cli import run as _run  # noqa: E402  (registers worker/gateway)
from cli import up as _up  # noqa: E402  (registers up/down/status)

_up.register(main)
_run.register(main)
_observe.register(main)
from cli import ai as _ai  # noqa: E402  (registers event store/openai)

_ai.register(main)
from cli import export as _export  # noqa: E402  (registers export)

_export.register(main)
from cli import importing as _importing  # noqa: E402  (registers import)

_importing.register(main)
from cli import ingest as _ingest  # noqa: E402  (registers event list/show, ingest, project stats)

_ingest.register(main)
from cli import relay_status as _relay_status  # noqa: E402  (registers relay status)

_relay_status.register(relay, RELAY_KEY_COMMAND)
from cli import access as _access  # noqa: E402  (registers token list/revoke, org member)

_access.register(main)
from cli import replicas as _replicas  # noqa: E402  (registers stream copies/replicate)

_replicas.register(main)
