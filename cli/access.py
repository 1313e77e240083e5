"""`relayctl token list/revoke` and `relayctl org member add/remove/list`: who may use the
management API, and with which role in which org (domain/access.py)."""

from __future__ import annotations

import click

from cli.context import Context, emit

pass_ctx = click.make_pass_decorator(Context)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
ROLES = ("member", "admin", "manager", "owner")


@click.command("list")
@click.argument("username")
@json_option
@pass_ctx
def token_list(ctx: Context, username: str, as_json: bool) -> None:
    """USERNAME's API tokens: id, name, scopes, org, when made (never a token nor its hash)."""
    result = ctx.request("token.list", {"username": username})
    lines = [f"Tokens of `{username}`:"] + [
        f"- {t['id']}  {t['name'] or '-'}  {'org ' + t['org'] if t['org'] else 'user'}  "
        f"{' '.join(t['scopes']) if t['scopes'] else 'every scope'}  {t['dateCreated'] or ''}".rstrip()
        for t in result["tokens"]]
    emit(as_json, result, "\n".join(lines))


@click.command("revoke")
@click.argument("token_id")
@json_option
@pass_ctx
def token_revoke(ctx: Context, token_id: str, as_json: bool) -> None:
    """Revoke the token TOKEN_ID (from `token list`): refused from the next request on."""
    result = ctx.request("token.revoke", {"token_id": token_id})
    emit(as_json, result, f"Revoked token `{token_id}`")


@click.group("member")
def member() -> None:
    """Members of an org and their roles (member, admin, manager, owner)."""


@member.command("add")
@click.argument("org_slug", metavar="ORG")
@click.argument("username", metavar="USER")
@click.option("--role", type=click.Choice(ROLES), default="member", show_default=True,
              help="Bounds the scopes of the user's tokens in this org.")
@json_option
@pass_ctx
def member_add(ctx: Context, org_slug: str, username: str, role: str, as_json: bool) -> None:
    """Make USER a member of ORG with a role (a member's new role replaces the old)."""
    result = ctx.request("org.member_add", {"org": org_slug, "username": username, "role": role})
    emit(as_json, result, f"`{username}` is {role} of `{org_slug}`")


@member.command("remove")
@click.argument("org_slug", metavar="ORG")
@click.argument("username", metavar="USER")
@json_option
@pass_ctx
def member_remove(ctx: Context, org_slug: str, username: str, as_json: bool) -> None:
    """Remove USER from ORG: their tokens no longer see it."""
    result = ctx.request("org.member_remove", {"org": org_slug, "username": username})
    emit(as_json, result, f"Removed `{username}` from `{org_slug}`")


@member.command("list")
@click.argument("org_slug", metavar="ORG")
@json_option
@pass_ctx
def member_list(ctx: Context, org_slug: str, as_json: bool) -> None:
    """ORG's members and their roles."""
    result = ctx.request("org.member_list", {"org": org_slug})
    members = [{"username": m["id"], "role": m["role"], "email": m["email"] or None} for m in result["members"]]
    emit(as_json, {"members": members},
         "\n".join([f"Members of `{org_slug}`:"] + [f"- {m['username']}  {m['role']}" for m in members]))


def register(main: click.Group) -> None:
    token = main.commands["token"]
    org = main.commands["org"]
    assert isinstance(token, click.Group) and isinstance(org, click.Group)
    token.add_command(token_list)
    token.add_command(token_revoke)
    org.add_command(member)
