"""Reads of the domain: the lookups that raise the errors users see, the views replies are
made of, and the queries the command handlers answer from their projection."""

from __future__ import annotations

from typing import Any

from domain import options as option_catalogue
from domain.decisions import checked_key, token_hash
from domain.model import DELETED, TRUSTED_RELAYS, Org, Project, ProjectKey
from domain.state import DomainState
from messages.errors import BadRequest, NotFound, Unauthorized

QUERY_TYPES = {"org.option_get", "project.option_get", "key.list", "relay.list",
               "user.permission_list", "user.authenticate", "export.orgs"}


def require_org(state: DomainState, slug: str) -> Org:
    org = state.org(slug)
    if org is None:
        raise NotFound(f"No organization matching `{slug}`")
    return org


def require_project(state: DomainState, org_slug: str, project_slug: str) -> Project:
    require_org(state, org_slug)
    project = state.project(org_slug, project_slug)
    if project is None:
        raise NotFound(f"No project matching `{org_slug}/{project_slug}`")
    return project


def require_key(state: DomainState, public_key: str) -> tuple[ProjectKey, Org]:
    key = state.keys.get(public_key)
    org = state.org_of_key(public_key)
    if key is None or org is None:
        raise NotFound(f"No key matching `{public_key}`")
    return key, org


def require_user(state: DomainState, username: str) -> Any:
    user = state.users.get(username)
    if user is None:
        raise NotFound(f"No user matching `{username}`")
    return user


def key_view(key: ProjectKey) -> dict[str, Any]:
    return {"publicKey": key.public_key, "numericId": key.numeric_id, "status": key.status,
            "projectId": key.project_id}


def relay_view(relay: Any) -> dict[str, Any]:
    return {"publicKey": relay.public_key, "relayId": relay.relay_id, "internal": relay.internal,
            "banned": relay.banned, "version": relay.version, "firstSeen": relay.first_seen,
            "lastSeen": relay.last_seen}


def export_orgs(state: DomainState) -> dict[str, Any]:
    """Every org in the shape `import.org` reads, in id order (an import into an empty system
    then hands out the same ids when the orgs were made one after another). Deleted projects
    and keys are left out: there is nothing to import for them."""
    orgs = []
    for org in sorted(state.orgs.values(), key=lambda o: o.id):
        options = {k: v for k, v in org.options.items() if k != TRUSTED_RELAYS}
        projects = []
        for project_id in sorted(state.projects_of_org.get(org.id, [])):
            project = state.projects[project_id]
            if project.status == DELETED:
                continue
            keys = [{"publicKey": k.public_key, "status": k.status, **({"rateLimit": dict(k.rate_limit)}
                                                                         if k.rate_limit else {})}
                    for k in sorted(state.keys_of(project.id), key=lambda k: k.numeric_id)]
            projects.append({"slug": project.slug, "name": project.name, "options": dict(project.options),
                             "keys": keys})
        orgs.append({"slug": org.slug, "name": org.name, "options": options,
                     "trustedRelays": list(org.options.get(TRUSTED_RELAYS, [])), "projects": projects})
    return {"orgs": orgs}


def answer_query(state: DomainState, message_type: str, payload: dict[str, Any]) -> Any:
    if message_type == "org.option_get":
        org = require_org(state, payload["org"])
        key = payload["key"]
        checked_key("org", key, org.options)
        return {"key": key, "value": org.options.get(key, option_catalogue.OPTION_DEFAULTS.get(key)),
                "isSet": key in org.options}
    if message_type == "project.option_get":
        project = require_project(state, payload["org"], payload["project"])
        org = state.orgs[project.org_id]
        key = payload["key"]
        checked_key("project", key, project.options)
        return {"key": key, "value": option_catalogue.get_option(project, key, org=org),
                "isSet": key in project.options}
    if message_type == "key.list":
        project = require_project(state, payload["org"], payload["project"])
        return {"keys": [key_view(k) for k in state.keys_of(project.id)]}
    if message_type == "relay.list":
        return {"relays": [relay_view(r) for r in sorted(state.relays.values(), key=lambda r: r.public_key)]}
    if message_type == "user.permission_list":
        user = require_user(state, payload["username"])
        return {"username": user.username, "permissions": sorted(user.permissions)}
    if message_type == "export.orgs":
        return export_orgs(state)
    if message_type == "user.authenticate":
        digest = token_hash(payload["token"])
        for user in state.users.values():
            if digest in user.token_hashes:
                return {"username": user.username, "superuser": user.superuser,
                        "permissions": sorted(user.permissions)}
        raise Unauthorized("invalid token")
    raise BadRequest(f"unknown query {message_type}")
