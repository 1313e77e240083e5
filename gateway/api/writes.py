"""The management API's writes: each a thin layer over the control commands the CLI sends.

A handler checks the scope (gateway/api/routes.py `org_access`), validates the body the way
Sentry answers it (400 `{"field": ["message"]}`, option values through the option
catalogue before anything is stored), sends the commands on the API's own subjects
(`rc.api.*`) with the client's bearer token, and answers with the object read back. The
gateway's check is the early answer; the command handlers check the token, the org and
the scope again on their own state (domain/authorization.py) and record the token's user
as the actor (so `relayctl config history` names who did it): the gateway's NATS
credentials alone can change nothing. The object is read
back at the last write's sequence (`after=`): the answer shows the write. Statuses as
Sentry's: 201 on create, 204 on delete, 409 for a slug in use, 404 for what does not exist
or is not visible.

A change that takes several commands (a project's name and its options) is stored one
command at a time; all of its input is checked first, so a bad field changes nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from domain import options as option_catalogue
from domain.access import ROLE_SCOPES, org_scopes, spans_orgs
from domain.management import FILTER_LIST_OPTIONS
from domain.model import TRUSTED_RELAYS
from gateway.api.auth import FieldErrors, bearer, principal, unauthorized
from gateway.api.routes import (
    NO_PERMISSION,
    NOT_FOUND,
    _slug,
    org_access,
    public_url,
    read,
    relay_admin,
    relay_row,
)
from gateway.ask import ask_sequence
from gateway.errors import HTTPFailure, json_response
from messages.commands import RELAY_KEY_RE, SLUG_RE
from messages.endpoints import TOKEN_FIELD, api_subject
from messages.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized

WRITE_TIMEOUT = 10.0
MAX_NAME = 64


async def body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise HTTPFailure(400, "Malformed JSON in the request body") from None
    if not isinstance(data, dict):
        raise HTTPFailure(400, "The request body must be a JSON object")
    return data


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-_")[:50] or "project"


def _name(data: dict[str, Any], field: str = "name", required: bool = False) -> str | None:
    value = data.get(field)
    if value is None:
        if required:
            raise FieldErrors({field: ["This field is required."]})
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise FieldErrors({field: [f"Ensure this field is a non-empty string of at most {MAX_NAME} characters."]})
    return value.strip()


def _slug_field(data: dict[str, Any], field: str = "slug") -> str | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not SLUG_RE.fullmatch(value):
        raise FieldErrors({field: ["Enter a valid slug consisting of lowercase letters, numbers, "
                                        "underscores or hyphens."]})
    return value


async def write(request: web.Request, who: dict[str, Any], message_type: str,
                payload: dict[str, Any]) -> tuple[Any, int]:
    """One command on behalf of the request's token (`who`: what it authenticated as): its
    result and the stream sequence it is at."""
    token = bearer(request)
    if token is None:
        raise unauthorized("Authentication credentials were not provided.")
    try:
        return await ask_sequence(request.app, message_type, {**payload, TOKEN_FIELD: token}, timeout=WRITE_TIMEOUT,
                                  subject=api_subject(message_type), actor=f"user:{who['username']}")
    except Unauthorized:
        raise unauthorized("Invalid token") from None
    except Forbidden as exc:
        raise HTTPFailure(403, exc.message) from None
    except NotFound:
        raise HTTPFailure(404, NOT_FOUND) from None
    except Conflict as exc:
        raise HTTPFailure(409, exc.message) from None
    except BadRequest as exc:
        raise FieldErrors(_fields(exc)) from None


def _fields(exc: BadRequest) -> dict[str, list[str]]:
    fields = exc.details.get("fields")
    if isinstance(fields, dict):
        return {str(k): [str(v)] for k, v in fields.items()}
    key = exc.details.get("key")
    return {str(key) if key else "detail": [exc.message]}


# -- orgs -------------------------------------------------------------------------------------

async def create_organization(request: web.Request) -> web.Response:
    """`POST /api/0/organizations/` {name, slug?}: superusers and `relayctl.admin` only;
    the creator is the org's owner."""
    who = await principal(request)
    assert who is not None
    if not spans_orgs(who):
        raise HTTPFailure(403, NO_PERMISSION)
    data = await body(request)
    name = _name(data, required=True)
    assert name is not None
    slug = _slug_field(data) or slugify(name)
    _, sequence = await write(request, who, "org.create", {"slug": slug, "name": name, "owner": who["username"]})
    return json_response(await read(request, "api.org", {"org": slug}, after=sequence), 201)


async def update_organization(request: web.Request) -> web.Response:
    """`PUT /api/0/organizations/{org}/` {name, trustedRelays?: [{publicKey, name, description?}]}."""
    who, org = await org_access(request, "org:write")
    data = await body(request)
    slug = _slug_field(data)
    if slug is not None and slug != org:
        raise FieldErrors({"slug": ["An organization's slug cannot be changed here."]})
    wanted = _trusted_relays(data)
    _, sequence = await write(request, who, "org.update", {"org": org, "name": _name(data)})
    if wanted is not None:
        current = {r["publicKey"]: r for r in (await read(request, "api.org", {"org": org}))["trustedRelays"]}
        for public_key in current.keys() - wanted.keys():
            _, sequence = await write(request, who, "org.untrust_relay", {"org": org, "public_key": public_key})
        for public_key, relay in wanted.items():
            old = current.get(public_key)
            if old is None or (old["name"], old["description"]) != (relay["name"], relay.get("description") or ""):
                _, sequence = await write(request, who, "org.trust_relay", {"org": org, "public_key": public_key,
                                                                            "name": relay["name"],
                                                                            "description": relay.get("description")})
    return json_response(await read(request, "api.org", {"org": org}, after=sequence))


def _trusted_relays(data: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """Sentry's `trustedRelays` as the catalogue checks `sentry:trusted-relays` (None: not
    asked to change), by public key."""
    if "trustedRelays" not in data:
        return None
    relays = data["trustedRelays"]
    if not isinstance(relays, list) or not all(isinstance(r, dict) for r in relays):
        raise FieldErrors({"trustedRelays": ["Expected a list of {publicKey, name, description}."]})
    entries = [{"public_key": r.get("publicKey"), "name": r.get("name"),
                **({"description": r["description"]} if r.get("description") else {})} for r in relays]
    try:
        checked = option_catalogue.validate_option("org", TRUSTED_RELAYS, entries)
    except option_catalogue.InvalidOption as exc:
        raise FieldErrors({"trustedRelays": [exc.message]}) from None
    return {e["public_key"]: e for e in checked}


# -- members ----------------------------------------------------------------------------------

def _role(data: dict[str, Any], who: dict[str, Any], org: str) -> str:
    """The role a member write asks for: one that grants no scope the caller lacks in the
    org (a manager cannot make an owner), as Sentry allows."""
    role = data.get("role") or data.get("orgRole") or "member"
    if not isinstance(role, str) or role not in ROLE_SCOPES:
        raise FieldErrors({"role": [f"Invalid role (one of {', '.join(ROLE_SCOPES)})."]})
    if not ROLE_SCOPES[role] <= (org_scopes(who, org) or frozenset()):
        raise HTTPFailure(403, f"You may not give the role {role!r}: it grants more than yours.")
    return role


async def add_member(request: web.Request) -> web.Response:
    """`POST /api/0/organizations/{org}/members/` {username or email, role}: a user of this
    system (relayctl sends no invitations)."""
    who, org = await org_access(request, "member:write")
    data = await body(request)
    username = data.get("username") or data.get("email")
    if not isinstance(username, str) or not username:
        raise FieldErrors({"email": ["This field is required."]})
    _, sequence = await write(request, who, "org.member_add", {"org": org, "username": username,
                                                                "role": _role(data, who, org)})
    return json_response(await _member(request, org, username, sequence), 201)


async def _member(request: web.Request, org: str, username: str, after: int) -> dict[str, Any]:
    members = (await read(request, "org.member_list", {"org": org}, after=after))["members"]
    found = [m for m in members if m["id"] == username]
    if not found:
        raise HTTPFailure(404, NOT_FOUND)
    return found[0]  # type: ignore[no-any-return]


async def update_member(request: web.Request) -> web.Response:
    who, org = await org_access(request, "member:write")
    username = request.match_info["member_id"]
    await _member(request, org, username, 0)
    data = await body(request)
    _, sequence = await write(request, who, "org.member_add", {"org": org, "username": username,
                                                                "role": _role(data, who, org)})
    return json_response(await _member(request, org, username, sequence))


async def remove_member(request: web.Request) -> web.Response:
    who, org = await org_access(request, "member:admin")
    await write(request, who, "org.member_remove", {"org": org, "username": request.match_info["member_id"]})
    return web.Response(status=204)


# -- teams (every org has its default team: the org's slug and name) ----------------------------

async def _team(request: web.Request, org: str, after: int = 0) -> dict[str, Any]:
    """The path's team (404 when the org has none of that slug)."""
    team = _slug(request, "team")
    found = [t for t in (await read(request, "api.org", {"org": org}, after=after))["teams"] if t["slug"] == team]
    if not found:
        raise HTTPFailure(404, NOT_FOUND)
    return found[0]  # type: ignore[no-any-return]


async def create_team(request: web.Request) -> web.Response:
    """`POST /api/0/organizations/{org}/teams/` {name, slug?}: 201 and the team."""
    who, org = await org_access(request, "team:write")
    data = await body(request)
    name = _name(data, required=data.get("slug") is None)
    slug = _slug_field(data) or slugify(name or "")
    _, sequence = await write(request, who, "team.create", {"org": org, "team": slug, "name": name})
    found = [t for t in (await read(request, "api.org", {"org": org}, after=sequence))["teams"] if t["slug"] == slug]
    return json_response(found[0], 201)


async def delete_team(request: web.Request) -> web.Response:
    who, org = await org_access(request, "team:admin")
    await _team(request, org)
    await write(request, who, "team.delete", {"org": org, "team": request.match_info["team"]})
    return web.Response(status=204)


async def add_project_team(request: web.Request) -> web.Response:
    """`POST /api/0/projects/{org}/{project}/teams/{team}/`: 201 and the project."""
    who, org = await org_access(request, "project:write")
    project = _slug(request, "project")
    _, sequence = await write(request, who, "project.team_add", {"org": org, "project": project,
                                                                  "team": _slug(request, "team")})
    return json_response(await read(request, "api.project", {"org": org, "project": project}, after=sequence), 201)


async def remove_project_team(request: web.Request) -> web.Response:
    """`DELETE /api/0/projects/{org}/{project}/teams/{team}/`: 200 and the project (with no
    team left it is in the org's default team)."""
    who, org = await org_access(request, "project:write")
    project = _slug(request, "project")
    _, sequence = await write(request, who, "project.team_remove", {"org": org, "project": project,
                                                                     "team": _slug(request, "team")})
    return json_response(await read(request, "api.project", {"org": org, "project": project}, after=sequence))


# -- projects ---------------------------------------------------------------------------------

def _options(data: dict[str, Any]) -> dict[str, Any]:
    """The option changes a project PUT asks for, checked by the option catalogue (a value
    of None unsets): Sentry's filter strings map to the list options they stand for."""
    wanted: dict[str, Any] = {}
    sent_as: dict[str, str] = {}  # stored key -> the name the client used (errors name that)
    options = data.get("options")
    if options is not None and not isinstance(options, dict):
        raise FieldErrors({"options": ["Expected a JSON object."]})
    for name, value in (options or {}).items():
        key = FILTER_LIST_OPTIONS.get(str(name), str(name))
        wanted[key], sent_as[key] = value, str(name)
    if "allowedDomains" in data:
        wanted["sentry:origins"], sent_as["sentry:origins"] = data["allowedDomains"], "allowedDomains"
    problems: dict[str, list[str]] = {}
    checked: dict[str, Any] = {}
    for key, value in wanted.items():
        try:
            if value is None:
                option_catalogue.check_option_key("project", key)
                checked[key] = None
            else:
                checked[key] = option_catalogue.validate_option("project", key, value)
        except option_catalogue.InvalidOption as exc:
            problems[sent_as[key]] = [exc.message]
    if problems:
        raise FieldErrors(problems)
    return checked


async def create_project(request: web.Request) -> web.Response:
    """`POST /api/0/teams/{org}/{team}/projects/` {name, slug?, platform?}: 201 and the
    project, in that team."""
    who, org = await org_access(request, "project:write")
    team = (await _team(request, org))["slug"]
    data = await body(request)
    name = _name(data, required=True)
    assert name is not None
    slug = _slug_field(data) or slugify(name)
    platform = data.get("platform")
    if platform is not None and (not isinstance(platform, str) or len(platform) > MAX_NAME):
        raise FieldErrors({"platform": ["Invalid platform."]})
    _, sequence = await write(request, who, "project.create", {"org": org, "project": slug, "name": name})
    if team != org:
        _, sequence = await write(request, who, "project.team_add", {"org": org, "project": slug, "team": team})
    if platform:
        _, sequence = await write(request, who, "project.update", {"org": org, "project": slug, "platform": platform})
    return json_response(await read(request, "api.project", {"org": org, "project": slug}, after=sequence), 201)


async def update_project(request: web.Request) -> web.Response:
    """`PUT /api/0/projects/{org}/{project}/` {name, slug, platform, options, allowedDomains}."""
    who, org = await org_access(request, "project:write")
    project = _slug(request, "project")
    data = await body(request)
    name, slug, options = _name(data), _slug_field(data), _options(data)
    platform = data.get("platform")
    if platform is not None and (not isinstance(platform, str) or len(platform) > MAX_NAME):
        raise FieldErrors({"platform": ["Invalid platform."]})
    await read(request, "api.project", {"org": org, "project": project})  # 404 before anything is stored
    sequence = 0
    for key, value in options.items():
        if value is None:
            _, sequence = await write(request, who, "project.option_unset",
                                      {"org": org, "project": project, "key": key})
        else:
            _, sequence = await write(request, who, "project.option_set",
                                      {"org": org, "project": project, "key": key, "value": value})
    if name is not None or slug is not None or platform is not None:
        result, sequence = await write(request, who, "project.update", {"org": org, "project": project, "name": name,
                                                                          "slug": slug, "platform": platform})
        project = result["slug"]
    return json_response(await read(request, "api.project", {"org": org, "project": project}, after=sequence))


async def delete_project(request: web.Request) -> web.Response:
    who, org = await org_access(request, "project:admin")
    project = _slug(request, "project")
    await write(request, who, "project.delete", {"org": org, "project": project})
    return web.Response(status=204)


# -- keys -------------------------------------------------------------------------------------

def _rate_limit(data: dict[str, Any]) -> dict[str, Any] | None:
    """The key.rate_limit payload a body asks for (None: leave it as it is)."""
    if "rateLimit" not in data:
        return None
    limit = data["rateLimit"]
    if limit is None or (isinstance(limit, dict) and not limit.get("count") and not limit.get("window")):
        return {"count": None, "window": None, "clear": True}
    if not isinstance(limit, dict):
        raise FieldErrors({"rateLimit": ["Expected {\"window\": seconds, \"count\": n} or null."]})
    count, window = limit.get("count"), limit.get("window")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (count, window)):
        raise FieldErrors({"rateLimit": ["window and count must be integers."]})
    return {"count": count, "window": window, "clear": False}


async def _key_of(request: web.Request, org: str, project: str) -> dict[str, Any]:
    """The path's key, 404 unless it is a key of the path's project."""
    payload = {"org": org, "project": project, "key_id": request.match_info["key_id"],
               "base_url": public_url(request)}
    return await read(request, "api.key", payload)  # type: ignore[no-any-return]


async def _set_key(request: web.Request, who: dict[str, Any], public_key: str, data: dict[str, Any]) -> int:
    sequence = 0
    name = _name(data)
    limit = _rate_limit(data)
    active = data.get("isActive")
    if active is not None and not isinstance(active, bool):
        raise FieldErrors({"isActive": ["Must be a valid boolean."]})
    if name is not None:
        _, sequence = await write(request, who, "key.update", {"public_key": public_key, "name": name})
    if limit is not None:
        _, sequence = await write(request, who, "key.rate_limit", {"public_key": public_key, **limit})
    if active is not None:
        _, sequence = await write(request, who, "key.enable" if active else "key.disable", {"public_key": public_key})
    return sequence


async def create_key(request: web.Request) -> web.Response:
    """`POST /api/0/projects/{org}/{project}/keys/` {name, rateLimit?}: 201 and the key."""
    who, org = await org_access(request, "project:write")
    project = _slug(request, "project")
    data = await body(request)
    _name(data), _rate_limit(data)  # checked before the key exists
    created, sequence = await write(request, who, "key.create", {"org": org, "project": project})
    public_key = created["publicKey"]
    sequence = await _set_key(request, who, public_key, data) or sequence
    payload = {"org": org, "project": project, "key_id": public_key, "base_url": public_url(request)}
    return json_response(await read(request, "api.key", payload, after=sequence), 201)


async def update_key(request: web.Request) -> web.Response:
    who, org = await org_access(request, "project:write")
    project = _slug(request, "project")
    key = await _key_of(request, org, project)
    data = await body(request)
    sequence = await _set_key(request, who, key["id"], data)
    payload = {"org": org, "project": project, "key_id": key["id"], "base_url": public_url(request)}
    return json_response(await read(request, "api.key", payload, after=sequence))


async def delete_key(request: web.Request) -> web.Response:
    who, org = await org_access(request, "project:write")
    key = await _key_of(request, org, _slug(request, "project"))
    await write(request, who, "key.delete", {"public_key": key["id"]})
    return web.Response(status=204)


# -- relays (relayctl's own; they span orgs: superusers and `relayctl.admin`) -------------------

async def allow_relay(request: web.Request) -> web.Response:
    """`POST /api/0/relayctl/relays/` {publicKey, internal?}: allow a relay key (internal: it
    may fetch every project's config); 201 and the relay."""
    who = await principal(request)
    assert who is not None
    relay_admin(who)
    data = await body(request)
    public_key = data.get("publicKey")
    if not isinstance(public_key, str) or not RELAY_KEY_RE.fullmatch(public_key):
        raise FieldErrors({"publicKey": ["A relay public key (43 url-safe base64 characters) is required."]})
    internal = data.get("internal", False)
    if not isinstance(internal, bool):
        raise FieldErrors({"internal": ["Must be a valid boolean."]})
    _, sequence = await write(request, who, "relay.allow", {"public_key": public_key, "internal": internal})
    return json_response(await relay_row(request, public_key, after=sequence), 201)


async def deny_relay(request: web.Request) -> web.Response:
    """`DELETE /api/0/relayctl/relays/{public_key}/`: deny (ban) a relay key: it is refused
    from the next request on and told to stop registering; 204. The relay stays listed,
    `banned`."""
    who = await principal(request)
    assert who is not None
    relay_admin(who)
    public_key = request.match_info["public_key"]
    if not RELAY_KEY_RE.fullmatch(public_key):
        raise HTTPFailure(404, NOT_FOUND)
    await relay_row(request, public_key)  # 404 for a key relayctl does not know
    await write(request, who, "relay.deny", {"public_key": public_key})
    return web.Response(status=204)
