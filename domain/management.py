"""The management API's reads: Sentry's shapes of orgs, teams, projects, keys and members.

Pure views of the domain state in the field names Sentry's own tools check (camelCase,
ids as strings, RFC 3339 UTC timestamps), and the queries the command actor answers for
the gateway (gateway/api/). Lists come a page at a time: `cursor` is Sentry's
`<value>:<offset>:<is_prev>`; an answer says whether a next page exists.

Every org has one team, its default team: slug and name of the org, holding every project
(the minimal team entity sentry-cli and the Terraform provider need).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from domain import options as option_catalogue
from domain.access import ROLE_SCOPES
from domain.model import DELETED, TRUSTED_RELAYS, Org, Project, ProjectKey
from domain.queries import QUERY_ANSWERS, require_org, require_project, require_user
from domain.state import DomainState
from messages.errors import BadRequest, NotFound

T = TypeVar("T")
MAX_PER_PAGE = 100

# Sentry's project endpoint takes these three as one string of newline-separated entries
# and stores them as the list options beside them; reads give the string back.
FILTER_LIST_OPTIONS = {
    "filters:blacklisted_ips": "sentry:blacklisted_ips",
    "filters:releases": "sentry:releases",
    "filters:error_messages": "sentry:error_messages",
}


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1_000_000):06d}Z"


def parse_cursor(cursor: str | None) -> int:
    """The offset a cursor names (a missing or empty cursor: the first page)."""
    if not cursor:
        return 0
    parts = cursor.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise BadRequest("invalid cursor", {"cursor": ["Invalid cursor parameter."]})
    return int(parts[1])


def page(items: Sequence[T], cursor: str | None, per_page: int, view: Callable[[T], Any]) -> dict[str, Any]:
    """One page of `items` as views, with the cursors of the pages around it."""
    per_page = max(1, min(MAX_PER_PAGE, per_page))
    offset = parse_cursor(cursor)
    chunk = items[offset:offset + per_page]
    return {"items": [view(item) for item in chunk],
            "next": f"0:{offset + per_page}:0" if offset + per_page < len(items) else None,
            "prev": f"0:{max(0, offset - per_page)}:1" if offset > 0 else None,
            "offset": offset, "perPage": per_page}


# -- views ------------------------------------------------------------------------------------

def org_view(org: Org) -> dict[str, Any]:
    return {"id": str(org.id), "slug": org.slug, "name": org.name, "dateCreated": rfc3339(org.created),
            "isEarlyAdopter": False, "require2FA": False, "requireEmailVerification": False,
            "status": {"id": "active", "name": "active"}, "avatar": {"avatarType": "letter_avatar", "avatarUuid": None},
            "features": list(org.options.get("sentry:features") or []), "hasAuthProvider": False,
            "links": {"organizationUrl": "", "regionUrl": ""}}


def org_detail(state: DomainState, org: Org) -> dict[str, Any]:
    roles = [{"id": role, "name": role.capitalize(), "desc": "", "scopes": sorted(scopes)}
             for role, scopes in ROLE_SCOPES.items()]
    return {**org_view(org), "orgRoleList": roles,
            "teamRoleList": [{"id": "contributor", "name": "Contributor"}, {"id": "admin", "name": "Team Admin"}],
            "teams": [team_view(state, org, slug) for slug in [org.slug, *sorted(org.teams)]],
            "projects": [project_summary(state, p) for p in active_projects(state, org)],
            "defaultRole": "member", "isDefault": False, "access": [],
            "trustedRelays": [{"publicKey": e["public_key"], "name": e.get("name"),
                               "description": e.get("description") or "", "created": e.get("created"),
                               "lastModified": e.get("created")}
                              for e in org.options.get(TRUSTED_RELAYS) or [] if isinstance(e, dict)]}


def team_ref(org: Org, slug: str) -> dict[str, Any]:
    """A team as a project names it: the default team's id is the org's, another's
    `<org id>-<slug>`."""
    if slug == org.slug:
        return {"id": str(org.id), "slug": org.slug, "name": org.name}
    return {"id": f"{org.id}-{slug}", "slug": slug, "name": org.teams.get(slug, slug)}


def project_teams(org: Org, project: Project) -> list[str]:
    """The teams a project is in: its own, else its org's default team."""
    return list(project.teams) or [org.slug]


def team_view(state: DomainState, org: Org, slug: str | None = None) -> dict[str, Any]:
    """One of the org's teams (default: its default team)."""
    return {**team_ref(org, slug or org.slug), "dateCreated": rfc3339(org.created),
            "isMember": True, "memberCount": len(org.members), "hasAccess": True, "isPending": False,
            "avatar": {"avatarType": "letter_avatar", "avatarUuid": None}}


def active_projects(state: DomainState, org: Org) -> list[Project]:
    return [state.projects[p] for p in state.projects_of_org.get(org.id, [])
            if p in state.projects and state.projects[p].status != DELETED]


def project_summary(state: DomainState, project: Project) -> dict[str, Any]:
    org = state.orgs[project.org_id]
    teams = [team_ref(org, slug) for slug in project_teams(org, project)]
    return {"id": str(project.id), "slug": project.slug, "name": project.name, "platform": project.platform,
            "dateCreated": rfc3339(project.created), "isBookmarked": False, "isMember": True,
            "hasAccess": True, "status": "active" if project.is_active else project.status,
            "team": teams[0], "teams": teams, "features": [],
            "organization": {"id": str(org.id), "slug": org.slug, "name": org.name}}


def api_options(project: Project, org: Org) -> dict[str, Any]:
    """The project's options as Sentry's project endpoint answers them: every public one
    (own, template, default), the filter lists also as newline-joined strings."""
    values = {key: option_catalogue.get_option(project, key, org=org) for key in option_catalogue.PUBLIC_OPTION_KEYS}
    values.update({k: v for k, v in project.options.items()})
    for alias, key in FILTER_LIST_OPTIONS.items():
        values[alias] = "\n".join(option_catalogue.get_option(project, key, org=org) or [])
    return values


def project_detail(state: DomainState, project: Project) -> dict[str, Any]:
    org = state.orgs[project.org_id]
    opts = api_options(project, org)
    return {**project_summary(state, project), "options": opts,
            "allowedDomains": list(opts.get("sentry:origins") or ["*"]),
            "resolveAge": 0, "scrapeJavaScript": True, "securityToken": "", "securityTokenHeader": None,
            "verifySSL": False, "dataScrubber": bool(opts.get("sentry:scrub_data")),
            "dataScrubberDefaults": bool(opts.get("sentry:scrub_defaults")),
            "scrubIPAddresses": bool(opts.get("sentry:scrub_ip_address")),
            "sensitiveFields": list(opts.get("sentry:sensitive_fields") or []),
            "safeFields": list(opts.get("sentry:safe_fields") or []),
            "fingerprintingRules": "", "groupingEnhancements": str(opts.get("sentry:grouping_enhancements") or ""),
            "groupingConfig": opts.get("sentry:grouping_config"),
            "subjectTemplate": "$shortID - $title", "subjectPrefix": "", "color": "#3f70bf", "isPublic": False,
            "digestsMinDelay": 300, "digestsMaxDelay": 1800, "defaultEnvironment": None,
            "relayPiiConfig": None}


def key_dsns(base_url: str, public_key: str, project_id: int) -> dict[str, str]:
    """A key's `dsn` map: where an SDK sends to this system (its public `base_url`)."""
    parts = urlsplit(base_url.rstrip("/"))
    origin = f"{parts.scheme}://{parts.netloc}{parts.path}"
    public = f"{parts.scheme}://{public_key}@{parts.netloc}{parts.path}/{project_id}"
    return {"public": public, "secret": public,
            "csp": f"{origin}/api/{project_id}/csp-report/?sentry_key={public_key}",
            "security": f"{origin}/api/{project_id}/security/?sentry_key={public_key}",
            "minidump": f"{origin}/api/{project_id}/minidump/?sentry_key={public_key}",
            "unreal": f"{origin}/api/{project_id}/unreal/{public_key}/",
            "crons": f"{origin}/api/{project_id}/cron/___MONITOR_SLUG___/{public_key}/",
            "cdn": f"{origin}/js-sdk-loader/{public_key}.min.js"}


def key_detail(key: ProjectKey, base_url: str) -> dict[str, Any]:
    name = key.name or "Default"
    return {"id": key.public_key, "name": name, "label": name, "public": key.public_key, "secret": "",
            "projectId": key.project_id, "isActive": key.is_active, "status": key.status,
            "rateLimit": dict(key.rate_limit) if key.rate_limit else None,
            "dsn": key_dsns(base_url, key.public_key, key.project_id), "browserSdkVersion": "latest",
            "browserSdk": {"choices": [["latest", "latest"]]},
            "dynamicSdkLoaderOptions": {"hasDebug": False, "hasPerformance": False, "hasReplay": False},
            "dateCreated": rfc3339(key.created), "numericId": key.numeric_id}


def member_view(state: DomainState, org: Org, username: str, role: str) -> dict[str, Any]:
    user = state.users.get(username)
    email = (user.email if user else None) or ""
    return {"id": username, "email": email, "name": username, "role": role, "orgRole": role,
            "roleName": role.capitalize(), "pending": False, "expired": False, "flags": {},
            "user": {"id": username, "username": username, "email": email, "name": username}}


# -- queries ----------------------------------------------------------------------------------

def _orgs(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    wanted = payload.get("slugs")
    orgs = sorted(state.orgs.values(), key=lambda o: o.id)
    if wanted is not None:
        slugs = set(wanted)
        orgs = [o for o in orgs if o.slug in slugs]
    return page(orgs, payload.get("cursor"), payload["per_page"], org_view)


def _org(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    return org_detail(state, require_org(state, payload["org"]))


def _projects(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    org = require_org(state, payload["org"])
    return page(active_projects(state, org), payload.get("cursor"), payload["per_page"],
                lambda p: project_summary(state, p))


def _project(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    return project_detail(state, require_project(state, payload["org"], payload["project"]))


def _keys(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    project = require_project(state, payload["org"], payload["project"])
    keys = sorted(state.keys_of(project.id), key=lambda k: k.numeric_id)
    status = payload.get("status")
    if status == "active":
        keys = [k for k in keys if k.is_active]
    elif status == "inactive":
        keys = [k for k in keys if not k.is_active]
    return page(keys, payload.get("cursor"), payload["per_page"], lambda k: key_detail(k, payload["base_url"]))


def _key(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    project = require_project(state, payload["org"], payload["project"])
    key = state.keys.get(payload["key_id"])
    if key is None or key.project_id != project.id:
        raise NotFound(f"No key matching `{payload['key_id']}`")
    return key_detail(key, payload["base_url"])


def _member_list(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    org = require_org(state, payload["org"])
    return {"members": [member_view(state, org, u, r) for u, r in sorted(org.members.items())]}


def _token_list(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    """A user's tokens: never a hash nor a token, only what names them."""
    user = require_user(state, payload["username"])
    tokens = []
    for digest in sorted(user.token_hashes):
        info = user.tokens.get(digest) or {"id": digest[:12], "name": None, "scopes": None, "org": None, "created": 0}
        tokens.append({"id": info["id"], "name": info["name"], "scopes": info["scopes"], "org": info["org"],
                       "dateCreated": rfc3339(info["created"]) if info["created"] else None})
    return {"username": user.username, "tokens": sorted(tokens, key=lambda t: t["dateCreated"] or "")}


MANAGEMENT_ANSWERS: dict[str, Callable[[DomainState, dict[str, Any]], Any]] = {
    "api.orgs": _orgs,
    "api.org": _org,
    "api.projects": _projects,
    "api.project": _project,
    "api.keys": _keys,
    "api.key": _key,
    "org.member_list": _member_list,
    "token.list": _token_list,
}

QUERY_ANSWERS.update(MANAGEMENT_ANSWERS)
