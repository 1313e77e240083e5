"""The management API's routes: Sentry's endpoints for orgs, teams, projects and keys.

Each handler is a thin layer: it checks the token (gateway/api/auth.py), decides from the
principal whether the org is visible and the scope granted (domain/access.py: an org the
caller may not see is 404, as Sentry answers, so existence does not leak; a visible org
without the scope is 403), then sends the same queries as the CLI (`api.*`,
domain/management.py) and the same commands, on the API's own subjects with the client's
token (gateway/api/writes.py: the command handlers check it again, authoritatively). A
write's reply carries its stream sequence; the read
that answers it passes that as `after`, so the answer shows the write.

Lists are paginated as Sentry's: `?cursor=` and a `Link` header with a `previous` and a
`next` link, each with `results="true|false"` and its `cursor`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from domain.access import org_scopes, spans_orgs, token_scopes, visible_orgs
from domain.management import rfc3339
from gateway.api.auth import FieldErrors, ask, principal
from gateway.errors import HTTPFailure, json_response
from gateway.keys import NC, SETTINGS
from messages.commands import SLUG_RE
from messages.errors import BadRequest, NotFound

PREFIX = "/api/0"
NOT_FOUND = "The requested resource does not exist"
NO_PERMISSION = "You do not have permission to perform this action."
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def public_url(request: web.Request) -> str:
    """`RELAYCTL_PUBLIC_URL`, else where this request came in: what keys' DSNs point at."""
    configured = request.app[SETTINGS].value("RELAYCTL_PUBLIC_URL")
    return (configured or f"{request.scheme}://{request.host}").rstrip("/")


def _slug(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not SLUG_RE.fullmatch(value):
        raise HTTPFailure(404, NOT_FOUND)
    return value


async def org_access(request: web.Request, scope: str) -> tuple[dict[str, Any], str]:
    """The principal and the org of the path, once `scope` is granted there (404: not visible)."""
    who = await principal(request)
    assert who is not None
    org = _slug(request, "org")
    scopes = org_scopes(who, org)
    if scopes is None:
        raise HTTPFailure(404, NOT_FOUND)
    if scope not in scopes:
        raise HTTPFailure(403, NO_PERMISSION)
    return who, org


async def read(request: web.Request, message_type: str, payload: dict[str, Any], after: int = 0) -> Any:
    try:
        return await ask(request, message_type, payload, after=after)
    except NotFound:
        raise HTTPFailure(404, NOT_FOUND) from None
    except BadRequest as exc:
        fields = exc.details.get("fields")
        if isinstance(fields, dict):
            raise FieldErrors({k: [str(v)] for k, v in fields.items()}) from None
        raise


def paging(request: web.Request) -> dict[str, Any]:
    try:
        per_page = int(request.query.get("per_page", "100"))
    except ValueError:
        raise FieldErrors({"per_page": ["A valid integer is required."]}) from None
    cursor = request.query.get("cursor") or None
    return {"cursor": cursor, "per_page": per_page}


def link_header(request: web.Request, answer: dict[str, Any]) -> str:
    offset, per_page = answer["offset"], answer["perPage"]
    links = []
    for rel, cursor, results in (("previous", answer["prev"] or f"0:{offset}:1", answer["prev"] is not None),
                                 ("next", answer["next"] or f"0:{offset + per_page}:0", answer["next"] is not None)):
        url = request.url.update_query({"cursor": cursor})
        links.append(f'<{url}>; rel="{rel}"; results="{"true" if results else "false"}"; cursor="{cursor}"')
    return ", ".join(links)


def listed(request: web.Request, answer: dict[str, Any]) -> web.Response:
    return json_response(answer["items"], headers={"Link": link_header(request, answer)})


def one_page(request: web.Request, items: list[Any]) -> web.Response:
    """A list that is always whole (members, teams): one page, the same `Link` header."""
    return listed(request, {"items": items, "offset": 0, "perPage": max(1, len(items)), "next": None, "prev": None})


# -- reads ------------------------------------------------------------------------------------

async def api_index(request: web.Request) -> web.Response:
    """`GET /api/0/`: the token's user and scopes (what `sentry-cli info` prints)."""
    who = await principal(request, required=False)
    if who is None:
        return json_response({"version": "0", "auth": None, "user": None})
    username = who["username"]
    user = {"id": username, "username": username, "name": username, "email": who.get("email") or "",
            "isSuperuser": bool(who.get("superuser")), "isStaff": False}
    return json_response({"version": "0", "user": user,
                          "auth": {"scopes": sorted(token_scopes(who)), "org": who.get("org")}})


async def internal_health(request: web.Request) -> web.Response:
    """`GET /api/0/internal/health/`: 200 when the API can serve (the Terraform provider's
    first call; anything else fails its whole run)."""
    nc = request.app[NC]
    if nc is None or not nc.is_connected:
        return json_response({"healthy": {"nats": False}, "problems": [{"message": "NATS is unavailable"}]}, 503)
    return json_response({"healthy": {"nats": True}, "problems": []})


async def organizations(request: web.Request) -> web.Response:
    who = await principal(request)
    assert who is not None
    slugs = visible_orgs(who)
    answer = await read(request, "api.orgs", {"slugs": slugs, **paging(request)})
    return listed(request, answer)


async def organization(request: web.Request) -> web.Response:
    _, org = await org_access(request, "org:read")
    return json_response(await read(request, "api.org", {"org": org}))


async def org_projects(request: web.Request) -> web.Response:
    _, org = await org_access(request, "project:read")
    return listed(request, await read(request, "api.projects", {"org": org, **paging(request)}))


async def org_teams(request: web.Request) -> web.Response:
    _, org = await org_access(request, "team:read")
    detail = await read(request, "api.org", {"org": org})
    return one_page(request, detail["teams"])


async def team(request: web.Request) -> web.Response:
    _, org = await org_access(request, "team:read")
    detail = await read(request, "api.org", {"org": org})
    found = [t for t in detail["teams"] if t["slug"] == request.match_info["team"]]
    if not found:
        raise HTTPFailure(404, NOT_FOUND)
    slug = found[0]["slug"]
    return json_response({**found[0], "organization": {k: detail[k] for k in ("id", "slug", "name")},
                          "projects": [p for p in detail["projects"] if slug in {t["slug"] for t in p["teams"]}]})


async def org_members(request: web.Request) -> web.Response:
    _, org = await org_access(request, "member:read")
    return one_page(request, (await read(request, "org.member_list", {"org": org}))["members"])


async def project(request: web.Request) -> web.Response:
    _, org = await org_access(request, "project:read")
    return json_response(await read(request, "api.project", {"org": org, "project": _slug(request, "project")}))


async def project_keys(request: web.Request) -> web.Response:
    _, org = await org_access(request, "project:read")
    payload = {"org": org, "project": _slug(request, "project"), "base_url": public_url(request),
               "status": request.query.get("status") or None, **paging(request)}
    return listed(request, await read(request, "api.keys", payload))


async def project_key(request: web.Request) -> web.Response:
    _, org = await org_access(request, "project:read")
    payload = {"org": org, "project": _slug(request, "project"), "key_id": request.match_info["key_id"],
               "base_url": public_url(request)}
    return json_response(await read(request, "api.key", payload))


# -- relayctl's own ---------------------------------------------------------------------------

async def _key_path(request: web.Request) -> tuple[str, str]:
    """The org and the public key of a key path, once the key is known to be the project's."""
    _, org = await org_access(request, "project:read")
    payload = {"org": org, "project": _slug(request, "project"), "key_id": request.match_info["key_id"],
               "base_url": public_url(request)}
    return org, str((await read(request, "api.key", payload))["id"])


async def key_config(request: web.Request) -> web.Response:
    """The project config a relay gets now for this key (relayctl's own)."""
    _, public_key = await _key_path(request)
    result = await read(request, "config.get", {"public_keys": [public_key], "version": 3})
    return json_response(json.loads(result["entries"][public_key][2]))


async def key_history(request: web.Request) -> web.Response:
    """The events that shaped this key's config, oldest first, each with who did it (relayctl's own)."""
    _, public_key = await _key_path(request)
    result = await read(request, "config.history", {"public_key": public_key})
    events = [{"sequence": e["sequence"], "type": e["type"], "actor": e["actor"], "dateCreated": rfc3339(e["ts"]),
               "payload": e["payload"]} for e in result["events"]]
    return one_page(request, events)


def relay_admin(who: dict[str, Any]) -> None:
    """Relays span orgs: superusers and `relayctl.admin` with a user token, else 403."""
    if not spans_orgs(who):
        raise HTTPFailure(403, NO_PERMISSION)


async def relay_rows(request: web.Request, after: int = 0) -> list[dict[str, Any]]:
    """`relay.list` with RFC 3339 times (read at `after`: a write's own sequence)."""
    rows: list[dict[str, Any]] = (await read(request, "relay.list", {}, after=after))["relays"]
    for relay in rows:
        for field in ("firstSeen", "lastSeen"):
            relay[field] = rfc3339(relay[field]) if relay.get(field) else None
    return rows


async def relay_row(request: web.Request, public_key: str, after: int = 0) -> dict[str, Any]:
    """One relay by its public key; 404 when relayctl knows no such key."""
    found = [r for r in await relay_rows(request, after) if r["publicKey"] == public_key]
    if not found:
        raise HTTPFailure(404, NOT_FOUND)
    return found[0]


async def relays(request: web.Request) -> web.Response:
    """The relays allowed or registered, with versions and first/last seen (relayctl's own;
    superusers and `relayctl.admin`)."""
    who = await principal(request)
    assert who is not None
    relay_admin(who)
    return one_page(request, await relay_rows(request))


async def relay(request: web.Request) -> web.Response:
    """One relay: allowed (internal or not), banned, versions, first/last seen (superusers
    and `relayctl.admin`; 404 for a key relayctl does not know)."""
    who = await principal(request)
    assert who is not None
    relay_admin(who)
    return json_response(await relay_row(request, request.match_info["public_key"]))
