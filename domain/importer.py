"""Bulk import of orgs: the `import.org` command (used by `relayctl import`).

One org of the import file becomes one commit, so it is stored whole or not at all. The
decision compares the file with the current state and emits only what differs, which
makes importing the same file twice a no-op the second time. The whole org is validated
before any event is made; every problem is reported with its path in the file. Ids are
taken from the decider's `ids` like any command's; keys named in the file are claimed
first (`Decision.explicit_keys`), so a key can never end up under two orgs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from domain.decisions import Decision, IdDraw, checked_option, checked_rate_limit
from domain.model import ACTIVE, DISABLED, TRUSTED_RELAYS
from domain.project_config import check_pii_import
from domain.state import DomainState
from messages.commands import PUBLIC_KEY_RE, SLUG_RE
from messages.errors import BadRequest, Conflict
from messages.events import ORG, DomainEvent


class EventMaker(Protocol):
    """What the import needs of the decider: its state, its ids and its event factory."""

    state: DomainState
    ids: IdDraw
    new_key: Callable[[], str]

    def event(self, type_: str, aggregate_id: str, **payload: Any) -> DomainEvent: ...


def _problem(path: str, text: str) -> BadRequest:
    return BadRequest(f"{path}: {text}", {"path": path})


def _rate_limit(path: str, raw: Any) -> dict[str, int] | None:
    """A key's `rateLimit` (`{"count", "window"}` as `export.orgs` writes it, or null)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"count", "window"} or not all(
            isinstance(raw[k], int) and not isinstance(raw[k], bool) for k in raw):
        raise _problem(path, 'must be {"count": n, "window": seconds} or null')
    try:
        return checked_rate_limit(raw["count"], raw["window"], False)
    except BadRequest as exc:
        raise _problem(path, exc.message) from None


def _options(scope: str, path: str, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _problem(path, "options must be a map")
    out = {}
    for key, value in raw.items():
        try:
            out[key] = checked_option(scope, str(key), value)
        except BadRequest as exc:
            raise _problem(f"{path}.{key}", exc.message) from None
    return out


def decide_import(decider: EventMaker, spec: dict[str, Any]) -> Decision:
    state = decider.state
    slug = spec.get("slug")
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise _problem("org.slug", "required, lowercase letters, digits, - and _")
    org_options = _options("org", f"{slug}.options", spec.get("options"))
    if spec.get("trustedRelays") is not None:
        org_options[TRUSTED_RELAYS] = _options("org", f"{slug}.trustedRelays",
                                               {TRUSTED_RELAYS: spec["trustedRelays"]})[TRUSTED_RELAYS]
    projects = spec.get("projects") or []
    if not isinstance(projects, list):
        raise _problem(f"{slug}.projects", "must be a list")

    org = state.org(slug)
    events = []
    counts = {"orgs": 0, "projects": 0, "keys": 0}
    explicit_keys: list[str] = []
    if org is None:
        events.append(decider.event("OrgCreated", slug, name=spec.get("name") or slug, id=decider.ids.take("org")))
        counts["orgs"] = 1
    for key, value in org_options.items():
        if org is None or org.options.get(key, object()) != value:
            events.append(decider.event("OrgOptionSet", slug, key=key, value=value))

    seen_projects: set[str] = set()
    all_project_options: dict[str, dict[str, Any]] = {}
    seen_keys: set[str] = set()
    for i, project_spec in enumerate(projects):
        path = f"{slug}.projects[{i}]"
        if not isinstance(project_spec, dict):
            raise _problem(path, "must be a map")
        project_slug = project_spec.get("slug")
        if not isinstance(project_slug, str) or not SLUG_RE.fullmatch(project_slug):
            raise _problem(f"{path}.slug", "required, lowercase letters, digits, - and _")
        if project_slug in seen_projects:
            raise _problem(f"{path}.slug", f"duplicate project `{project_slug}`")
        seen_projects.add(project_slug)
        project_options = _options("project", f"{path}.options", project_spec.get("options"))
        all_project_options[project_slug] = project_options
        keys = project_spec.get("keys")
        if keys is not None and not isinstance(keys, list):
            raise _problem(f"{path}.keys", "must be a list")

        project = state.project(slug, project_slug) if org is not None else None
        if project is None:
            events.append(decider.event("ProjectCreated", slug, project=project_slug,
                                        name=project_spec.get("name") or project_slug, template=None,
                                        id=decider.ids.take("project")))
            counts["projects"] += 1
        for key, value in project_options.items():
            if project is None or project.options.get(key, object()) != value:
                events.append(decider.event("ProjectOptionSet", slug, project=project_slug, key=key, value=value))

        key_specs = keys if keys else ([{}] if project is None or not state.keys_of(project.id) else [])
        for j, key_spec in enumerate(key_specs):
            kpath = f"{path}.keys[{j}]"
            if not isinstance(key_spec, dict):
                raise _problem(kpath, "must be a map")
            status = key_spec.get("status", ACTIVE)
            if status not in (ACTIVE, DISABLED):
                raise _problem(f"{kpath}.status", "must be active or disabled")
            public_key = key_spec.get("publicKey")
            named = public_key is not None
            if public_key is None:
                if project is not None:
                    continue  # an unnamed key of an existing project: already imported
                public_key = decider.new_key()
            elif not isinstance(public_key, str) or not PUBLIC_KEY_RE.fullmatch(public_key):
                raise _problem(f"{kpath}.publicKey", "must be 32 hex characters")
            if public_key in seen_keys:
                raise _problem(f"{kpath}.publicKey", "duplicate key")
            seen_keys.add(public_key)
            rate_limit = _rate_limit(f"{kpath}.rateLimit", key_spec.get("rateLimit"))
            existing = state.keys.get(public_key)
            if existing is None:
                events.append(decider.event("KeyCreated", slug, project=project_slug, public_key=public_key,
                                            status=status, rate_limit=rate_limit, numeric_id=decider.ids.take("key")))
                counts["keys"] += 1
                if named:
                    explicit_keys.append(public_key)  # claimed before the commit: see domain/decider.py
                continue
            if project is None or existing.project_id != project.id:
                holder = state.org_of_key(public_key)
                owner = state.projects.get(existing.project_id)
                where = f"`{holder.slug}/{owner.slug}`" if holder and owner else "another project"
                raise Conflict(f"{kpath}.publicKey: key `{public_key}` belongs to another project: {where}")
            if existing.status != status:
                events.append(decider.event("KeyDisabled" if status == DISABLED else "KeyEnabled", slug,
                                            public_key=public_key))
            # an existing key keeps its rate limit unless the spec names one (null: none)
            if "rateLimit" in key_spec and existing.rate_limit != rate_limit:
                events.append(decider.event("KeyRateLimitSet", slug, public_key=public_key, rate_limit=rate_limit))
    check_pii_import(state, slug, org_options, all_project_options)
    summary = {**counts, "events": len(events)}
    return Decision(ORG, slug, events, lambda s: summary, explicit_keys=explicit_keys)
