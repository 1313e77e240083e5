"""Reads of the domain: the lookups that raise the errors users see, the views replies are
made of, and the queries the command handlers answer from their projection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain import options as option_catalogue
from domain.decisions import checked_key, token_hash
from domain.model import DELETED, TRUSTED_RELAYS, Org, Project, ProjectKey, Relay
from domain.project_config import merge_pii_configs
from domain.state import DomainState, trusted_relay_keys
from messages.errors import BadRequest, NotFound, Unauthorized


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


def relay_view(relay: Relay) -> dict[str, Any]:
    return {"publicKey": relay.public_key, "relayId": relay.relay_id, "internal": relay.internal,
            "banned": relay.banned, "version": relay.version, "firstSeen": relay.first_seen,
            "lastSeen": relay.last_seen, "usage": [dict(u) for u in relay.usage]}


# -- the read side's queries (answered by the key lookup and org access actors) --------------

def keys_lookup(state: DomainState, public_keys: list[Any]) -> dict[str, Any]:
    """`keys.lookup`: what the gateway needs of each key (None: no such key)."""
    out: dict[str, Any] = {}
    for public_key in public_keys:
        key = state.keys.get(public_key) if isinstance(public_key, str) else None
        project = state.projects.get(key.project_id) if key else None
        if key is None or project is None:
            out[str(public_key)] = None
            continue
        out[key.public_key] = {"projectId": project.id, "organizationId": project.org_id,
                               "numericId": key.numeric_id, "status": key.status,
                               "projectStatus": project.status, "rateLimit": key.rate_limit,
                               "active": key.is_active and project.is_active}
    return out


def has_org_access(state: DomainState, relay_public_key: str, org_id: int, internal: bool) -> bool:
    """Internal relays see every org; others only orgs listing their key as trusted."""
    if internal:
        return True
    org = state.orgs.get(org_id)
    return org is not None and relay_public_key in trusted_relay_keys(org.options)


def relay_auth(state: DomainState, relay: Relay | None, relay_id: str | None = None) -> dict[str, Any] | None:
    """What the gateway needs to authenticate a relay (under `relay_id`, one of the ids it
    registered under; default the last) and decide what it may fetch."""
    if relay is None:
        return None
    return {"relayId": relay_id or relay.relay_id, "publicKey": relay.public_key, "internal": relay.internal,
            "banned": relay.banned, "version": relay.version,
            "trusted": state.trusted_by_any_org(relay.public_key)}


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


def _org_option_get(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    org = require_org(state, payload["org"])
    key = payload["key"]
    checked_key("org", key, org.options)
    return {"key": key, "value": org.options.get(key, option_catalogue.OPTION_DEFAULTS.get(key)),
            "isSet": key in org.options}


def _project_option_get(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    project = require_project(state, payload["org"], payload["project"])
    org = state.orgs[project.org_id]
    key = payload["key"]
    checked_key("project", key, project.options)
    return {"key": key, "value": option_catalogue.get_option(project, key, org=org),
            "isSet": key in project.options}


# How the config builder (domain/project_config.py `_config`) combines an org's value of an
# option with the project's: the org's entries first ("append"), both sets ("union"), the
# PII rules of both, org rules first ("pii"), or the org's only when the project (and its
# template) set none ("fallback", the forwarder's DSN).
ORG_COMBINES: dict[str, str] = {
    "sentry:sensitive_fields": "append",
    "sentry:safe_fields": "append",
    "sentry:features": "union",
    "sentry:relay_pii_config": "pii",
    "relayctl:forward_dsn": "fallback",
}
# Project options an org option turns on whatever the project says (the builder ORs them).
ORG_FORCES: dict[str, str] = {
    "sentry:scrub_data": "sentry:require_scrub_data",
    "sentry:scrub_defaults": "sentry:require_scrub_defaults",
    "sentry:scrub_ip_address": "sentry:require_scrub_ip_address",
}


def _layer(values: dict[str, Any] | None, key: str, readable: bool) -> dict[str, Any] | None:
    """One place an option may be set: whether it is, and (when readable) its value."""
    if values is None:
        return None
    if key not in values:
        return {"isSet": False}
    return {"isSet": True, "value": values[key]} if readable else {"isSet": True}


def option_sources(org: Org, project: Project, *, private: bool = False) -> list[dict[str, Any]]:
    """Each project option of the catalogue (and each prefixed one set on the project or its
    template): its type and default, the template's, the org's and the project's own value,
    and the value the config is built from with where it comes from (`source`: "project",
    "template", "org", "default", or "org+project" / "org+template" when the builder
    combines both). Values of options outside the public ones only when `private`."""
    template = org.templates.get(project.template, {}) if project.template is not None else None
    keys = [key for key, spec in option_catalogue.OPTIONS.items() if "project" in spec.scopes]
    extra = {key for key in (*project.options, *(template or {})) if key not in option_catalogue.OPTIONS}
    keys += sorted(k for k in extra if option_catalogue.option_spec(k) is not None)
    out = []
    for key in sorted(keys):
        spec = option_catalogue.option_spec(key)
        assert spec is not None
        readable = private or key in option_catalogue.PUBLIC_OPTION_KEYS
        kind, described = option_catalogue.option_type(spec)
        org_scoped = "org" in spec.scopes
        if key in project.options:
            base, source = project.options[key], "project"
        elif template is not None and key in template:
            base, source = template[key], "template"
        else:
            base, source = option_catalogue.default_value(key), "default"
        combine = ORG_COMBINES.get(key) if org_scoped else None
        value = base
        if combine is not None and key in org.options:
            org_value = org.options[key]
            if combine == "fallback":
                if source == "default":
                    value, source = org_value, "org"
            else:
                if combine == "append":
                    value = list(org_value or []) + list(base or [])
                elif combine == "union":
                    value = sorted(set(org_value or []) | set(base or []))
                elif base:
                    value = merge_pii_configs([("organization:", org_value), ("project:", base)]) or None
                else:
                    value = org_value
                source = "org" if source == "default" else f"org+{source}"
        forced_by = ORG_FORCES.get(key)
        if forced_by is not None and org.options.get(forced_by):
            value, source = True, "org"
        else:
            forced_by = None
        entry: dict[str, Any] = {
            "key": key, "kind": kind, "type": described, "default": spec.default,
            "scopes": sorted(spec.scopes), "readable": readable, "combine": combine,
            "template": _layer(template, key, readable), "org": _layer(org.options, key, readable)
            if org_scoped else None, "project": _layer(project.options, key, readable),
            "forcedBy": forced_by, "source": source}
        if readable:
            entry["value"] = value
        out.append(entry)
    return out


def _project_options(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    """`api.project_options`: the project's options with where each value comes from."""
    project = require_project(state, payload["org"], payload["project"])
    org = state.orgs[project.org_id]
    return {"project": project.slug, "template": project.template,
            "options": option_sources(org, project, private=bool(payload.get("private")))}


def _key_list(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    project = require_project(state, payload["org"], payload["project"])
    return {"keys": [key_view(k) for k in state.keys_of(project.id)]}


def _relay_list(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    return {"relays": [relay_view(r) for r in sorted(state.relays.values(), key=lambda r: r.public_key)]}


# At most this many org slugs in a `relay.status` answer (the count is always whole).
MAX_LISTED_ORGS = 100


def _relay_status(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    """One relay, by public key or by any id it registered under: the relay's view, every id
    it used, its state in words, and what it may see (every org, or the orgs trusting it)."""
    wanted = payload["relay"]
    relay = state.relays.get(wanted) or next(
        (r for r in state.relays.values() if wanted in r.relay_ids or wanted == r.relay_id), None)
    if relay is None:
        raise NotFound(f"No relay matching `{wanted}`")
    trusting = sorted(o.slug for o in state.orgs.values() if relay.public_key in trusted_relay_keys(o.options))
    if relay.banned:
        status = "banned"
    elif relay.relay_id is None:
        status = "allowed, never registered"
    else:
        status = "registered"
    return {**relay_view(relay), "relayIds": list(relay.relay_ids), "state": status,
            "sees": {"everyOrg": relay.internal and not relay.banned,
                     "trustedBy": trusting[:MAX_LISTED_ORGS], "trustedByCount": len(trusting)}}


def _user_permission_list(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    user = require_user(state, payload["username"])
    return {"username": user.username, "permissions": sorted(user.permissions)}


def _user_authenticate(state: DomainState, payload: dict[str, Any]) -> dict[str, Any]:
    digest = token_hash(payload["token"])
    for user in state.users.values():
        if digest in user.token_hashes:
            # what the management API decides access with (domain/access.py): the token's
            # scopes (None: every scope) and org, the user's role in each org
            token = user.tokens.get(digest) or {}
            return {"username": user.username, "superuser": user.superuser, "permissions": sorted(user.permissions),
                    "email": user.email, "tokenId": token.get("id") or digest[:12], "scopes": token.get("scopes"),
                    "org": token.get("org"),
                    "memberships": dict(state.member_orgs.get(user.username, {}))}
    raise Unauthorized("invalid token")


def org_has_access(state: DomainState, payload: dict[str, Any]) -> dict[str, bool]:
    """`org.has_access`: for each org id, whether the relay may fetch that org's configs."""
    relay_public_key = payload["relay_public_key"]
    relay = state.relays.get(relay_public_key)
    internal = bool(relay and relay.internal and not relay.banned)
    return {str(org_id): has_org_access(state, relay_public_key, org_id, internal)
            for org_id in payload["org_ids"] if isinstance(org_id, int)}


Answer = Callable[[DomainState, dict[str, Any]], Any]

# Every query the domain answers, by message type: the command actor serves some of them,
# the key lookup and org access actors others (messages/endpoints.py says who serves what).
QUERY_ANSWERS: dict[str, Answer] = {
    "org.option_get": _org_option_get,
    "project.option_get": _project_option_get,
    "api.project_options": _project_options,
    "key.list": _key_list,
    "relay.list": _relay_list,
    "relay.status": _relay_status,
    "user.permission_list": _user_permission_list,
    "user.authenticate": _user_authenticate,
    "export.orgs": lambda state, payload: export_orgs(state),
    "keys.lookup": lambda state, payload: keys_lookup(state, payload["public_keys"]),
    "org.has_access": org_has_access,
}


def answer_query(state: DomainState, message_type: str, payload: dict[str, Any]) -> Any:
    answer = QUERY_ANSWERS.get(message_type)
    if answer is None:
        raise BadRequest(f"unknown query {message_type}")
    return answer(state, payload)


import domain.management  # noqa: E402,F401  (adds the management API's queries to QUERY_ANSWERS)
