"""Bulk import of orgs: the `import.org` command (used by `relayctl import`).

The decision compares the file with the current state and emits only what differs, which
makes importing the same file twice a no-op the second time. Every problem is reported
with its path in the file. Ids are taken from the decider's `ids` like any command's; keys
named in the file are claimed first (`Decision.explicit_keys`), so a key can never end up
under two orgs.

An org whose events fit in one commit is stored as one commit, whole or not at all. A
larger one is imported in parts (docs/architecture.md "Imports in parts"): the client
sends the org's projects in pieces, each `import.org` naming the import (`part`: its id,
the index in the file of the piece's first project, the file's project count, whether it
is the last piece), and each piece is stored as one or more part commits, each within the
event store's limit (`ImportDecision.commits`): `ImportStarted` in the first, `ImportPart`
(which file projects it decided) in each, `ImportCommitted` at the end of the last. The
fold stages the parts and folds them only at `ImportCommitted`, so readers see the whole
org at once or nothing of it. A piece is decided on the state and on what the import's
stored parts staged (`PendingImport`): the projects they decided are skipped, which is how
an interrupted import is resumed - the same file again, the same import id. A pending import
of another id is refused (`Conflict`) unless the command asks to `restart`: then it is
abandoned (`ImportAbandoned`) in the first commit of the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from domain.decisions import Decision, IdDraw, checked_option, checked_rate_limit
from domain.model import ACTIVE, DISABLED, TRUSTED_RELAYS
from domain.project_config import check_pii_import
from domain.state import DomainState, PendingImport
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


@dataclass(frozen=True)
class ImportSession:
    """The import in parts a piece belongs to."""

    import_id: str
    first: int  # the file index of the piece's first project
    projects: int  # projects in the whole file's org
    last: bool  # the last piece: commit the import once it is stored
    start: bool  # no part of it is stored yet: its first commit starts it
    resumed: bool  # parts of it were stored before this piece
    parts_before: int = 0


@dataclass
class Unit:
    """What one file project decided (`index` None: the org's own fields): its events go
    into one part commit together."""

    index: int | None
    path: str
    events: list[DomainEvent] = field(default_factory=list)


@dataclass
class ImportDecision(Decision):
    session: ImportSession | None = None
    units: list[Unit] = field(default_factory=list)
    abandon: DomainEvent | None = None  # the pending import of another id this one drops
    event_of: Callable[..., DomainEvent] | None = None

    @property
    def whole(self) -> bool:
        """The whole org is in this command and nothing of it is staged: one plain commit if it fits."""
        return self.session is None or (self.session.first == 0 and self.session.last and self.session.start)

    def with_session(self, import_id: str) -> ImportDecision:
        """This whole org as an import in parts (its events did not fit in one commit)."""
        projects = sum(1 for u in self.units if u.index is not None)
        self.session = ImportSession(import_id, 0, projects, True, True, False)
        return self

    def commits(self, budget: int, size: Callable[[DomainEvent], int]) -> list[list[DomainEvent]]:
        """The part commits of an import in parts: whole units packed in file order while
        their events' encoded `size` stays within `budget` bytes (the markers come on top:
        the caller leaves room for them). None when there is nothing to store."""
        session, make = self.session, self.event_of
        assert session is not None and make is not None
        if not any(u.events for u in self.units) and session.start and self.abandon is None:
            return []  # nothing differs: no import to start
        groups: list[list[Unit]] = [[]]
        used = 0
        for unit in self.units:
            need = sum(size(e) for e in unit.events)
            if need > budget:
                raise BadRequest(f"{unit.path}: its events take {need:,} bytes, over the {budget:,} bytes one "
                                 f"commit may hold (the event store's limit); import it with fewer keys or "
                                 f"options", {"path": unit.path, "size": need, "limit": budget})
            if groups[-1] and used + need > budget:
                groups.append([])
                used = 0
            groups[-1].append(unit)
            used += need
        slug, out = self.aggregate_id, []
        for n, group in enumerate(groups):
            events: list[DomainEvent] = []
            if n == 0:
                if self.abandon is not None:
                    events.append(self.abandon)
                if session.start:
                    events.append(make("ImportStarted", slug, import_id=session.import_id,
                                       projects=session.projects))
            indices = [u.index for u in group if u.index is not None]
            first = min(indices) if indices else session.first
            events.append(make("ImportPart", slug, import_id=session.import_id, part=session.parts_before + n + 1,
                               first=first, count=max(indices) - first + 1 if indices else 0,
                               header=any(u.index is None for u in group)))
            for unit in group:
                events.extend(unit.events)
            if n == len(groups) - 1 and session.last:
                events.append(make("ImportCommitted", slug, import_id=session.import_id,
                                   parts=session.parts_before + len(groups)))
            out.append(events)
        return out


def _session(state: DomainState, slug: str, part: dict[str, Any] | None, restart: bool,
             n_projects: int) -> tuple[ImportSession | None, PendingImport | None, PendingImport | None]:
    """The session of this piece, the pending import it continues and the one it abandons."""
    pending = state.pending_import(slug)
    if part is None:
        ours = None
    else:
        import_id, first, total, last = part.get("id"), part.get("first"), part.get("projects"), part.get("last")
        if not isinstance(import_id, str) or not 1 <= len(import_id) <= 64 or not isinstance(first, int) \
                or not isinstance(total, int) or not isinstance(last, bool) or not 0 <= first <= total \
                or first + n_projects > total:
            raise BadRequest("part: must be {id: 1-64 characters, first: n, projects: n, last: bool} with "
                             "first + len(projects) <= projects", {"path": "part"})
        ours = pending if pending is not None and pending.import_id == import_id else None
    other = pending if pending is not None and pending is not ours else None
    if other is not None and not restart:
        raise Conflict(
            f"org `{slug}` has an unfinished import {other.import_id} ({other.decided()} of {other.projects} "
            f"projects staged, not visible yet): run `relayctl import` again with the file that started it to "
            f"finish it, or `relayctl import --restart FILE` to drop it and import FILE",
            {"org": slug, "import_id": other.import_id, "projects_staged": other.decided(),
             "projects": other.projects})
    if part is None:
        return None, None, other
    session = ImportSession(str(part["id"]), int(part["first"]), int(part["projects"]), bool(part["last"]),
                            start=ours is None, resumed=ours is not None,
                            parts_before=ours.parts if ours is not None else 0)
    return session, ours, other


def decide_import(decider: EventMaker, spec: dict[str, Any], part: dict[str, Any] | None = None,
                  restart: bool = False) -> ImportDecision:
    state = decider.state
    slug = spec.get("slug")
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise _problem("org.slug", "required, lowercase letters, digits, - and _")
    projects = spec.get("projects") or []
    if not isinstance(projects, list):
        raise _problem(f"{slug}.projects", "must be a list")
    session, pending, abandoned = _session(state, slug, part, restart, len(projects))
    first = session.first if session is not None else 0
    header = first == 0 and (pending is None or not pending.header)
    org_options = _options("org", f"{slug}.options", spec.get("options")) if header else {}
    if header and spec.get("trustedRelays") is not None:
        org_options[TRUSTED_RELAYS] = _options("org", f"{slug}.trustedRelays",
                                               {TRUSTED_RELAYS: spec["trustedRelays"]})[TRUSTED_RELAYS]

    org = state.org(slug)
    if org is None and not header and (pending is None or not pending.creates_org):
        raise BadRequest(f"org `{slug}` does not exist and the part of its import that creates it (from its "
                         f"first project, with the org's own fields) is not stored: import the file from its start",
                         {"path": f"{slug}.projects[{first}]"})
    units: list[Unit] = []
    counts = {"orgs": 0, "projects": 0, "keys": 0}
    explicit_keys: list[str] = []
    if header:
        head = Unit(None, slug)
        if org is None:
            head.events.append(decider.event("OrgCreated", slug, name=spec.get("name") or slug,
                                             id=decider.ids.take("org")))
            counts["orgs"] = 1
        for key, value in org_options.items():
            if org is None or org.options.get(key, object()) != value:
                head.events.append(decider.event("OrgOptionSet", slug, key=key, value=value))
        units.append(head)

    seen_projects: set[str] = set()
    all_project_options: dict[str, dict[str, Any]] = {}
    seen_keys: set[str] = set()
    for i, project_spec in enumerate(projects, start=first):
        if pending is not None and pending.covers(i):
            continue  # decided by a part stored before: resumed after it
        path = f"{slug}.projects[{i}]"
        if not isinstance(project_spec, dict):
            raise _problem(path, "must be a map")
        project_slug = project_spec.get("slug")
        if not isinstance(project_slug, str) or not SLUG_RE.fullmatch(project_slug):
            raise _problem(f"{path}.slug", "required, lowercase letters, digits, - and _")
        if project_slug in seen_projects or (pending is not None and project_slug in pending.created):
            raise _problem(f"{path}.slug", f"duplicate project `{project_slug}`")
        seen_projects.add(project_slug)
        project_options = _options("project", f"{path}.options", project_spec.get("options"))
        all_project_options[project_slug] = project_options
        keys = project_spec.get("keys")
        if keys is not None and not isinstance(keys, list):
            raise _problem(f"{path}.keys", "must be a list")
        unit = Unit(i, path)
        units.append(unit)
        events = unit.events

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
            if public_key in seen_keys or (named and pending is not None and public_key in pending.keys):
                raise _problem(f"{kpath}.publicKey", "duplicate key")
            seen_keys.add(public_key)
            rate_limit = _rate_limit(f"{kpath}.rateLimit", key_spec.get("rateLimit"))
            existing = state.keys.get(public_key)
            if existing is None:
                holder = state.import_holding_key(public_key) if named else None
                if holder is not None and holder.org != slug:
                    raise Conflict(f"{kpath}.publicKey: key `{public_key}` is being imported into organization "
                                   f"`{holder.org}` (import {holder.import_id}, not committed yet)",
                                   {"public_key": public_key, "org": holder.org})
                events.append(decider.event("KeyCreated", slug, project=project_slug, public_key=public_key,
                                            status=status, rate_limit=rate_limit, numeric_id=decider.ids.take("key")))
                counts["keys"] += 1
                if named:
                    explicit_keys.append(public_key)  # claimed before the commit: see domain/decider.py
                continue
            if project is None or existing.project_id != project.id:
                holder_org = state.org_of_key(public_key)
                owner = state.projects.get(existing.project_id)
                where = f"`{holder_org.slug}/{owner.slug}`" if holder_org and owner else "another project"
                raise Conflict(f"{kpath}.publicKey: key `{public_key}` belongs to another project: {where}")
            if existing.status != status:
                events.append(decider.event("KeyDisabled" if status == DISABLED else "KeyEnabled", slug,
                                            public_key=public_key))
            # an existing key keeps its rate limit unless the spec names one (null: none)
            if "rateLimit" in key_spec and existing.rate_limit != rate_limit:
                events.append(decider.event("KeyRateLimitSet", slug, public_key=public_key, rate_limit=rate_limit))
    staged_options = pending.org_options if pending is not None else {}
    check_pii_import(state, slug, {**staged_options, **org_options}, all_project_options)

    abandon = None
    if abandoned is not None:
        abandon = decider.event("ImportAbandoned", slug, import_id=abandoned.import_id,
                                reason="restarted by another import")
    flat = ([abandon] if abandon is not None else []) + [e for u in units for e in u.events]
    summary = {**counts, "events": sum(len(u.events) for u in units)}
    decision = ImportDecision(ORG, slug, flat, explicit_keys=explicit_keys, session=session, units=units,
                              abandon=abandon, event_of=decider.event)

    def result(after: DomainState) -> dict[str, Any]:
        out: dict[str, Any] = dict(summary)
        made = decision.session  # also one the command handler made for a whole org too large for one commit
        if made is not None:
            still = after.pending_import(slug)
            ongoing = still is not None and still.import_id == made.import_id
            out["import"] = {"id": made.import_id, "resumed": made.resumed, "committed": not ongoing,
                             "projects_staged": still.decided() if ongoing and still else None,
                             "abandoned": abandoned.import_id if abandoned is not None else None}
        return out

    decision.result = result
    return decision
