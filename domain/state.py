"""The domain projection: every event folded into orgs, projects, keys, relays and users.

`DomainState.apply(sequence, events)` is the only way state changes, for replay and for
live events alike. It returns what changed (`Changes`), so the config builder can
recompute exactly the affected configs.

Integer ids come from the events (decided by the command handler, see domain/decider.py
`IdPool`), so a commit that is lost or cannot be read changes no other object's id. Events
stored before ids were (payload id None) get the next id of a fold-order counter, which
every stored id and every claimed block of ids (`IdsClaimed`) pushes past itself: a legacy
stream folds exactly as it did, and the ids decided from then on never repeat one.

An undecodable commit (`UndecodableCommit`) is recorded in `skipped` and as its aggregate's
last sequence, and changes nothing else.

An org imported in parts (domain/importer.py) is staged: a commit holding `ImportPart`
folds nothing of its other events but keeps them in the org's `PendingImport`;
`ImportCommitted` folds every staged event at once, so no reader ever sees part of the
import. `ImportAbandoned` drops them. Any other commit of that org while its import is
pending (only possible in the moment before the import's start is folded by every command
handler: the decider refuses changes to an org being imported) also drops the staged
events - they were decided on a state that no longer holds - which `Changes.problems` reports.
"""

from __future__ import annotations

import sys
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from domain.model import ACTIVE, DELETED, DISABLED, TRUSTED_RELAYS, Org, Project, ProjectKey, Relay, User
from domain.projections import (
    CLAIMS,
    EVERYTHING,
    KEYS,
    ORG_OPTIONS,
    PROJECT_OPTIONS,
    PROJECTS,
    RELAYS,
    USERS,
    VERSIONS,
    Projection,
)
from messages.events import ID_KINDS, IMPORT_EVENTS, ORG, DomainEvent, UndecodableCommit, decode_commit, encode_commit

# 2: relays carry every id they registered under (Relay.relay_ids)
# 3: key claims and skipped (undecodable) commits
# 4: imports in parts not yet committed (a format 3 snapshot has none)
# 5: projects and keys as rows of values (their names in "columns"), empty options and teams None:
#    a million of each is made and packed in seconds, at a third of the size of maps
SNAPSHOT_FORMAT = 5
READABLE_SNAPSHOT_FORMATS = (3, 4, 5)
PROJECT_COLUMNS = tuple(f.name for f in fields(Project))
KEY_COLUMNS = tuple(f.name for f in fields(ProjectKey))
# `to_snapshot` writes the rows in these orders: a new field must be added there too
assert PROJECT_COLUMNS == ("id", "org_id", "slug", "name", "status", "options", "template", "created",
                           "last_change", "platform", "teams"), PROJECT_COLUMNS
assert KEY_COLUMNS == ("public_key", "numeric_id", "project_id", "status", "rate_limit", "created", "last_change",
                       "name"), KEY_COLUMNS
_UNSET: Any = object()


MAX_RELAY_USAGE = 50  # (relay id, version) entries kept per relay key


# Memory layout (a million projects are held by several processes at once, bench_scale):
# strings that repeat across objects (statuses, option keys) are interned, a project whose
# name is its slug holds one string, the keys of a project are a tuple, and projects are
# found by slug in a dict per org (no (org id, slug) tuple per project).
_intern = sys.intern


def _interned_keys(options: dict[str, Any]) -> dict[str, Any]:
    return {_intern(k): v for k, v in options.items()}


def _without_first(items: tuple[str, ...], item: str) -> tuple[str, ...]:
    """`items` less the first `item` (list.remove's semantics, on a tuple)."""
    i = items.index(item)
    return items[:i] + items[i + 1:]


def _record_usage(relay: Relay, ts: float) -> None:
    """First and last seen of the relay's current (id, version), as Sentry's RelayUsage."""
    for entry in relay.usage:
        if entry["relayId"] == relay.relay_id and entry["version"] == relay.version:
            entry["lastSeen"] = ts
            return
    relay.usage.append({"relayId": relay.relay_id, "version": relay.version, "firstSeen": ts, "lastSeen": ts})
    if len(relay.usage) > MAX_RELAY_USAGE:
        relay.usage.sort(key=lambda u: u["lastSeen"])
        del relay.usage[:len(relay.usage) - MAX_RELAY_USAGE]


def trusted_relay_keys(options: dict[str, Any]) -> list[str]:
    """The public keys an org lists in `sentry:trusted-relays`."""
    return [e["public_key"] for e in options.get(TRUSTED_RELAYS) or []
            if isinstance(e, dict) and isinstance(e.get("public_key"), str)]


@dataclass(frozen=True)
class KeyClaim:
    """An org's claim on a project key it is about to create, decided when the org's
    aggregate was at `org_version` (see domain/decider.py `Decider.claims_for`)."""

    org: str
    org_version: int
    sequence: int


@dataclass
class PendingImport:
    """An import of one org in parts, started and not yet committed or abandoned: what its
    stored parts staged, and what a decision of its next part must know of them."""

    import_id: str
    org: str
    started: float  # the ImportStarted event's time
    sequence: int  # where it started
    projects: int  # projects in the file
    parts: int = 0
    staged_events: int = 0  # every event its parts staged (`events` holds those this projection folds)
    header: bool = False  # the org's own fields (creation, options) are decided
    creates_org: bool = False
    ranges: list[tuple[int, int]] = field(default_factory=list)  # (first, count): the file's projects decided
    created: dict[str, int] = field(default_factory=dict)  # project slug -> the first file index of its part
    keys: dict[str, str] = field(default_factory=dict)  # public key -> project slug, keys its parts name
    org_options: dict[str, Any] = field(default_factory=dict)  # org options its parts set
    events: list[DomainEvent] = field(default_factory=list)

    def covers(self, index: int) -> bool:
        return any(first <= index < first + count for first, count in self.ranges)

    def decided(self) -> int:
        """File projects decided by its parts."""
        return len({i for first, count in self.ranges for i in range(first, first + count)})

    def describe(self) -> dict[str, Any]:
        return {"import_id": self.import_id, "org": self.org, "started": self.started, "sequence": self.sequence,
                "parts": self.parts, "events": self.staged_events, "projects": self.projects,
                "projects_staged": self.decided()}

    def to_map(self) -> dict[str, Any]:
        return {"import_id": self.import_id, "org": self.org, "started": self.started, "sequence": self.sequence,
                "projects": self.projects, "parts": self.parts, "staged_events": self.staged_events,
                "header": self.header, "creates_org": self.creates_org, "ranges": [list(r) for r in self.ranges],
                "created": dict(self.created), "keys": dict(self.keys), "org_options": dict(self.org_options),
                # each event's own sequence (its part's) travels with it
                "events": [[e.sequence, encode_commit([e])] for e in self.events]}

    @classmethod
    def from_map(cls, data: dict[str, Any]) -> PendingImport:
        pending = cls(str(data["import_id"]), str(data["org"]), float(data["started"]), int(data["sequence"]),
                      int(data["projects"]), int(data["parts"]), int(data["staged_events"]), bool(data["header"]),
                      bool(data["creates_org"]), [(int(a), int(b)) for a, b in data["ranges"]],
                      dict(data["created"]), dict(data["keys"]), dict(data["org_options"]))
        for sequence, raw in data["events"]:
            pending.events.extend(decode_commit(raw, int(sequence)))
        return pending


def folded_events(commits: Iterable[tuple[int, list[DomainEvent]]]) -> list[tuple[int, DomainEvent]]:
    """The events of `commits` (in stream order) as the fold applies them, each with the
    sequence it takes effect at: a plain commit's events at its own, an import's staged
    events at its `ImportCommitted` - and none of an import never committed or dropped. The
    framing events themselves are left out. What reads the stream itself (a key's config
    history) shows what readers saw, never a staged part."""
    out: list[tuple[int, DomainEvent]] = []
    pending: dict[str, tuple[str, list[DomainEvent]]] = {}  # org -> (import id, staged events)
    for sequence, events in commits:
        if events and events[0].aggregate == ORG and events[0].aggregate_id in pending \
                and not any(e.type in IMPORT_EVENTS for e in events):
            del pending[events[0].aggregate_id]
        staging: list[DomainEvent] | None = None
        for e in events:
            if e.type not in IMPORT_EVENTS:
                if staging is not None:
                    staging.append(e)
                else:
                    out.append((sequence, e))
                continue
            import_id, current = str(e.payload.get("import_id")), pending.get(e.aggregate_id)
            if e.type == "ImportStarted":
                pending[e.aggregate_id] = (import_id, [])
                staging = None
            elif current is None or current[0] != import_id:
                staging = None if e.type == "ImportAbandoned" else []  # a stale part: thrown away
            elif e.type == "ImportPart":
                staging = current[1]
            else:
                del pending[e.aggregate_id]
                if e.type == "ImportCommitted":
                    out.extend((sequence, staged) for staged in current[1])
                staging = None
    return out


def _note_staged(pending: PendingImport, e: DomainEvent) -> None:
    """What a decision of the import's next part must know of an event its parts staged."""
    first = pending.ranges[-1][0] if pending.ranges else 0
    if e.type == "OrgCreated":
        pending.creates_org = True
    elif e.type == "OrgOptionSet":
        pending.org_options[str(e.payload["key"])] = e.payload["value"]
    elif e.type == "ProjectCreated":
        pending.created[str(e.payload["project"])] = first
    elif e.type in ("KeyCreated", "KeyDisabled", "KeyEnabled", "KeyRateLimitSet"):
        pending.keys[str(e.payload["public_key"])] = str(e.payload.get("project") or "")


@dataclass
class Changes:
    """What one commit touched."""

    public_keys: set[str] = field(default_factory=set)
    relays: set[str] = field(default_factory=set)  # relay public keys
    # What the fold found wrong and worked around (the projection actor logs them): a map
    # with "event" (the log event name) and its details. The fold itself does no I/O.
    problems: list[dict[str, Any]] = field(default_factory=list)

    def update(self, other: Changes) -> None:
        self.public_keys |= other.public_keys
        self.relays |= other.relays
        self.problems += other.problems


class DomainState:
    """The fold of the event stream, restricted to what `projection` holds (domain/projections.py):
    the handlers of other event types do not run and their objects are never made."""

    def __init__(self, projection: Projection = EVERYTHING) -> None:
        self.projection = projection
        self._folds: frozenset[str] | None = None if projection.is_full else projection.events
        self._versions = projection.holds(VERSIONS)
        self._holds_options = projection.holds(PROJECT_OPTIONS)
        self.sequence = 0
        self.orgs: dict[int, Org] = {}
        self.org_by_slug: dict[str, int] = {}
        self.projects: dict[int, Project] = {}
        self.project_by_slug: dict[int, dict[str, int]] = {}  # org id -> {project slug: project id}
        self.keys: dict[str, ProjectKey] = {}
        self.key_numeric_ids: set[int] = set()  # the numeric ids of the keys held (taken)
        self.keys_of_project: dict[int, tuple[str, ...]] = {}
        self.projects_of_org: dict[int, list[int]] = {}
        self.relays: dict[str, Relay] = {}
        self.relay_key_by_id: dict[str, str] = {}
        self.users: dict[str, User] = {}
        # username -> {org slug: role}: the orgs a user is a member of (Org.members, by user)
        self.member_orgs: dict[str, dict[str, str]] = {}
        self.aggregate_sequence: dict[tuple[str, str], int] = {}
        # The next id of each kind that no stored id and no claimed block has used.
        self.next_ids = {kind: 1 for kind in ID_KINDS}
        self.key_claims: dict[str, KeyClaim] = {}
        self.skipped: list[dict[str, Any]] = []  # undecodable commits: sequence, subject, error
        self.imports: dict[str, PendingImport] = {}  # org slug -> its import in parts, not yet committed
        self._problems: list[dict[str, Any]] = []

    # -- queries ---------------------------------------------------------------------------

    def org(self, slug: str) -> Org | None:
        org_id = self.org_by_slug.get(slug)
        return self.orgs.get(org_id) if org_id is not None else None

    def project(self, org_slug: str, project_slug: str) -> Project | None:
        org = self.org(org_slug)
        if org is None:
            return None
        project_id = self.project_by_slug.get(org.id, {}).get(project_slug)
        return self.projects.get(project_id) if project_id is not None else None

    def keys_of(self, project_id: int) -> list[ProjectKey]:
        return [self.keys[k] for k in self.keys_of_project.get(project_id, ()) if k in self.keys]

    def org_of_key(self, public_key: str) -> Org | None:
        key = self.keys.get(public_key)
        if key is None:
            return None
        project = self.projects.get(key.project_id)
        return self.orgs.get(project.org_id) if project else None

    def all_keys_of_org(self, org_id: int) -> set[str]:
        return {k for p in self.projects_of_org.get(org_id, []) for k in self.keys_of_project.get(p, ())}

    def relay_by_id(self, relay_id: str) -> Relay | None:
        public_key = self.relay_key_by_id.get(relay_id)
        return self.relays.get(public_key) if public_key else None

    def aggregate_version(self, aggregate: str, aggregate_id: str) -> int:
        return self.aggregate_sequence.get((aggregate, aggregate_id), 0)

    # -- the fold --------------------------------------------------------------------------

    def apply(self, sequence: int, events: Iterable[DomainEvent]) -> Changes:
        changes = Changes()
        self._problems = changes.problems  # where this commit's handlers report what they found wrong
        if sequence <= self.sequence:
            return changes  # already folded (a redelivery after reconnect)
        if isinstance(events, UndecodableCommit):
            if events.aggregate is not None and self._versions:
                # JetStream counts it as the aggregate's last message: so must the expectation.
                self.aggregate_sequence[events.aggregate] = sequence
            self.skipped.append(events.describe())
            self.sequence = sequence
            return changes
        events = list(events)
        staging: PendingImport | None = None
        if events and events[0].aggregate == ORG and events[0].aggregate_id in self.imports \
                and not any(e.type in IMPORT_EVENTS for e in events):
            self._drop_import(events[0].aggregate_id, sequence, "a change to the org came between its parts")
        for event in events:
            if event.type in IMPORT_EVENTS:
                staging = self._import_event(event, sequence, changes)
            elif staging is not None:
                staging.staged_events += 1
                _note_staged(staging, event)
                if self._folds is None or event.type in self._folds:
                    staging.events.append(event)
            else:
                self._fold(event, sequence, changes)
            if self._versions:
                self.aggregate_sequence[(event.aggregate, event.aggregate_id)] = sequence
        self.sequence = sequence
        return changes

    def _fold(self, event: DomainEvent, sequence: int, changes: Changes) -> None:
        if self._folds is None or event.type in self._folds:
            handler = getattr(self, f"_on_{event.type}", None)
            if handler is not None:
                result = handler(event, sequence)
                if result is not None:
                    changes.update(result)

    # -- imports in parts ------------------------------------------------------------------

    def _import_event(self, e: DomainEvent, sequence: int, changes: Changes) -> PendingImport | None:
        """Start, stage, commit or abandon an import; the import the commit's next events
        are staged in (None: they are folded as usual)."""
        slug, import_id = e.aggregate_id, str(e.payload.get("import_id"))
        pending = self.imports.get(slug)
        if e.type == "ImportStarted":
            if pending is not None:
                self._drop_import(slug, sequence, f"import {import_id} started instead")
            self.imports[slug] = PendingImport(import_id, slug, e.ts, sequence, int(e.payload.get("projects") or 0))
            return None
        if pending is None or pending.import_id != import_id:
            if e.type == "ImportAbandoned":
                return None  # nothing to drop
            # A part or commit of an import that is not under way (dropped before): it stages
            # nothing for anyone, and no event of it is folded.
            self._problems.append({"event": "state.import_not_pending", "org": slug, "import_id": import_id,
                                   "type": e.type, "sequence": sequence})
            return PendingImport(import_id, slug, e.ts, sequence, 0)  # thrown away with what it holds
        if e.type == "ImportPart":
            pending.parts += 1
            pending.ranges.append((int(e.payload.get("first") or 0), int(e.payload.get("count") or 0)))
            pending.header = pending.header or bool(e.payload.get("header"))
            return pending
        del self.imports[slug]
        if e.type == "ImportCommitted":
            for staged in pending.events:
                self._fold(staged, sequence, changes)
        return None

    def _drop_import(self, slug: str, sequence: int, reason: str) -> None:
        pending = self.imports.pop(slug)
        self._problems.append({"event": "state.import_dropped", "org": slug, "import_id": pending.import_id,
                               "reason": reason, "sequence": sequence})

    def pending_import(self, slug: str) -> PendingImport | None:
        return self.imports.get(slug)

    def import_holding_key(self, public_key: str) -> PendingImport | None:
        """The pending import whose parts name `public_key`, if any."""
        if not self.imports:
            return None
        return next((p for p in self.imports.values() if public_key in p.keys), None)

    def _new_id(self, kind: str, stored: Any, taken: Container[int], sequence: int) -> int:
        """The id of a new object: the one its event carries, else (a legacy event) the
        fold-order counter's next. A stored id that is already taken (never decided by a
        command handler; a forged or broken event) is logged and replaced by the counter's
        next, the same on every replay."""
        if isinstance(stored, int) and not isinstance(stored, bool) and stored > 0:
            if stored not in taken:
                self.next_ids[kind] = max(self.next_ids[kind], stored + 1)
                return stored
            self._problems.append({"event": "state.duplicate_id", "kind": kind, "id": stored, "sequence": sequence})
        value = self.next_ids[kind]
        self.next_ids[kind] = value + 1
        return value

    def _org_changed(self, org: Org, ts: float) -> Changes:
        org.last_change = ts
        return Changes(public_keys=self.all_keys_of_org(org.id))

    def _project_event(self, event: DomainEvent) -> Project | None:
        org = self.org(event.aggregate_id)
        if org is None:
            return None
        project_id = self.project_by_slug.get(org.id, {}).get(event.payload["project"])
        return self.projects.get(project_id) if project_id is not None else None

    def _project_changed(self, project: Project, ts: float) -> Changes:
        project.last_change = ts
        return Changes(public_keys=set(self.keys_of_project.get(project.id, ())))

    def _on_OrgCreated(self, e: DomainEvent, seq: int) -> None:
        slug = e.aggregate_id
        org = Org(id=self._new_id("org", e.payload.get("id"), self.orgs, seq), slug=slug,
                  name=e.payload.get("name") or slug, created=e.ts, last_change=e.ts)
        self.orgs[org.id] = org
        self.org_by_slug[slug] = org.id
        self.projects_of_org[org.id] = []

    def _on_OrgOptionSet(self, e: DomainEvent, seq: int) -> Changes | None:
        return self._set_org_option(e, e.payload["key"], e.payload["value"])

    def _on_OrgOptionUnset(self, e: DomainEvent, seq: int) -> Changes | None:
        return self._set_org_option(e, e.payload["key"], _UNSET)

    def _set_org_option(self, e: DomainEvent, key: str, value: Any) -> Changes | None:
        org = self.org(e.aggregate_id)
        if org is None:
            return None
        before = set(trusted_relay_keys(org.options))
        if value is _UNSET:
            org.options.pop(key, None)
        else:
            org.options[key] = value
        changes = self._org_changed(org, e.ts)
        # A relay's access depends on which orgs trust it: those relays changed too.
        changes.relays = before ^ set(trusted_relay_keys(org.options))
        return changes

    def trusted_by_any_org(self, relay_public_key: str) -> bool:
        return any(relay_public_key in trusted_relay_keys(o.options) for o in self.orgs.values())

    def _on_ProjectTemplateSet(self, e: DomainEvent, seq: int) -> Changes | None:
        org = self.org(e.aggregate_id)
        if org is None:
            return None
        org.templates[e.payload["template"]] = dict(e.payload["options"])
        return self._org_changed(org, e.ts)

    def _on_ProjectCreated(self, e: DomainEvent, seq: int) -> Changes | None:
        org = self.org(e.aggregate_id)
        if org is None:
            return None
        slug = e.payload["project"]
        name = e.payload.get("name") or slug
        project = Project(id=self._new_id("project", e.payload.get("id"), self.projects, seq),
                          org_id=org.id, slug=slug, name=slug if name == slug else name,
                          template=e.payload.get("template"),
                          options=_interned_keys(e.payload.get("options") or {}) if self._holds_options else {},
                          created=e.ts, last_change=e.ts)
        self.projects[project.id] = project
        self.project_by_slug.setdefault(org.id, {})[slug] = project.id
        self.projects_of_org[org.id].append(project.id)
        self.keys_of_project[project.id] = ()
        return None

    def _set_project_status(self, e: DomainEvent, status: str) -> Changes | None:
        project = self._project_event(e)
        if project is None:
            return None
        changes = self._project_changed(project, e.ts)
        project.status = status
        if status == DELETED:
            # The slug is free again; the keys stay known (served as disabled) until replaced.
            self.project_by_slug.get(project.org_id, {}).pop(project.slug, None)
        return changes

    def _on_ProjectDisabled(self, e: DomainEvent, seq: int) -> Changes | None:
        return self._set_project_status(e, DISABLED)

    def _on_ProjectEnabled(self, e: DomainEvent, seq: int) -> Changes | None:
        return self._set_project_status(e, ACTIVE)

    def _on_ProjectDeleted(self, e: DomainEvent, seq: int) -> Changes | None:
        return self._set_project_status(e, DELETED)

    def _on_ProjectOptionSet(self, e: DomainEvent, seq: int) -> Changes | None:
        project = self._project_event(e)
        if project is None:
            return None
        project.options[_intern(e.payload["key"])] = e.payload["value"]
        return self._project_changed(project, e.ts)

    def _on_ProjectOptionUnset(self, e: DomainEvent, seq: int) -> Changes | None:
        project = self._project_event(e)
        if project is None:
            return None
        project.options.pop(e.payload["key"], None)
        return self._project_changed(project, e.ts)

    def _on_KeyCreated(self, e: DomainEvent, seq: int) -> Changes | None:
        project = self._project_event(e)
        if project is None:
            return None
        public_key = e.payload["public_key"]
        numeric_id = self._new_id("key", e.payload.get("numeric_id"), self.key_numeric_ids, seq)
        key = ProjectKey(public_key=public_key, numeric_id=numeric_id, project_id=project.id,
                         status=_intern(e.payload.get("status") or ACTIVE),
                         rate_limit=e.payload.get("rate_limit"), created=e.ts, last_change=e.ts)
        replaced = self.keys.get(public_key)
        if replaced is not None:
            self.key_numeric_ids.discard(replaced.numeric_id)
        self.keys[public_key] = key
        self.key_numeric_ids.add(numeric_id)
        self.keys_of_project[project.id] += (public_key,)
        claim = self.key_claims.get(public_key)
        if claim is not None and claim.org == e.aggregate_id:
            # Its claim is used: from now on the key itself keeps other orgs from it, and an
            # org's claim made before this commit is, to the same org, no claim (claims_for).
            # Kept, a million created keys would keep a million claims.
            del self.key_claims[public_key]
        return Changes(public_keys={public_key})

    def _set_key_status(self, e: DomainEvent, status: str | None) -> Changes | None:
        public_key = e.payload["public_key"]
        key = self.keys.get(public_key)
        if key is None:
            return None
        if status is None:
            del self.keys[public_key]
            self.key_numeric_ids.discard(key.numeric_id)
            self.keys_of_project[key.project_id] = _without_first(self.keys_of_project[key.project_id], public_key)
        else:
            key.status = status
            key.last_change = e.ts
        return Changes(public_keys={public_key})

    def _on_KeyDisabled(self, e: DomainEvent, seq: int) -> Changes | None:
        return self._set_key_status(e, DISABLED)

    def _on_KeyEnabled(self, e: DomainEvent, seq: int) -> Changes | None:
        return self._set_key_status(e, ACTIVE)

    def _on_KeyDeleted(self, e: DomainEvent, seq: int) -> Changes | None:
        return self._set_key_status(e, None)

    def _on_KeyRateLimitSet(self, e: DomainEvent, seq: int) -> Changes | None:
        key = self.keys.get(e.payload["public_key"])
        if key is None:
            return None
        limit = e.payload.get("rate_limit")
        key.rate_limit = {"window": int(limit["window"]), "count": int(limit["count"])} if limit else None
        key.last_change = e.ts
        return Changes(public_keys={key.public_key})

    def _on_KeyUpdated(self, e: DomainEvent, seq: int) -> None:
        key = self.keys.get(e.payload["public_key"])
        if key is not None:
            key.name = e.payload.get("name")
            key.last_change = e.ts

    def _on_OrgUpdated(self, e: DomainEvent, seq: int) -> None:
        org = self.org(e.aggregate_id)
        if org is not None and isinstance(e.payload.get("name"), str):
            org.name = e.payload["name"]
            org.last_change = e.ts

    def _on_TeamCreated(self, e: DomainEvent, seq: int) -> None:
        org = self.org(e.aggregate_id)
        if org is not None:
            org.teams[str(e.payload["team"])] = str(e.payload.get("name") or e.payload["team"])

    def _on_TeamDeleted(self, e: DomainEvent, seq: int) -> None:
        org = self.org(e.aggregate_id)
        if org is None:
            return
        team = str(e.payload["team"])
        org.teams.pop(team, None)
        for project_id in self.projects_of_org.get(org.id, []):
            project = self.projects.get(project_id)
            if project is not None and team in project.teams:
                project.teams.remove(team)

    def _on_ProjectTeamAdded(self, e: DomainEvent, seq: int) -> None:
        project = self._project_event(e)
        if project is not None and e.payload["team"] not in project.teams:
            project.teams.append(str(e.payload["team"]))

    def _on_ProjectTeamRemoved(self, e: DomainEvent, seq: int) -> None:
        project = self._project_event(e)
        if project is not None and e.payload["team"] in project.teams:
            project.teams.remove(str(e.payload["team"]))

    def _on_MemberAdded(self, e: DomainEvent, seq: int) -> None:
        org = self.org(e.aggregate_id)
        if org is not None:
            username, role = str(e.payload["username"]), str(e.payload["role"])
            org.members[username] = role
            self.member_orgs.setdefault(username, {})[org.slug] = role

    def _on_MemberRemoved(self, e: DomainEvent, seq: int) -> None:
        org = self.org(e.aggregate_id)
        if org is not None:
            username = str(e.payload["username"])
            org.members.pop(username, None)
            self.member_orgs.get(username, {}).pop(org.slug, None)

    def _on_ProjectUpdated(self, e: DomainEvent, seq: int) -> Changes | None:
        project = self._project_event(e)
        if project is None:
            return None
        if "name" in e.payload:
            project.name = e.payload["name"]
        if "platform" in e.payload:
            project.platform = e.payload["platform"]
        new_slug = e.payload.get("slug")
        if isinstance(new_slug, str) and new_slug != project.slug:
            slugs = self.project_by_slug.setdefault(project.org_id, {})
            slugs.pop(project.slug, None)
            project.slug = new_slug
            slugs[new_slug] = project.id
        return self._project_changed(project, e.ts)

    def _relay(self, public_key: str) -> Relay:
        return self.relays.setdefault(public_key, Relay(public_key=public_key))

    def _on_RelayAllowed(self, e: DomainEvent, seq: int) -> Changes:
        relay = self._relay(e.aggregate_id)
        relay.internal = bool(e.payload.get("internal"))
        relay.banned = False
        return Changes(relays={relay.public_key})

    def _on_RelayDenied(self, e: DomainEvent, seq: int) -> Changes:
        relay = self._relay(e.aggregate_id)
        relay.banned = True
        relay.internal = False
        return Changes(relays={relay.public_key})

    def _on_RelayRegistered(self, e: DomainEvent, seq: int) -> Changes:
        relay = self._relay(e.aggregate_id)
        relay.relay_id = e.payload["relay_id"]
        if relay.relay_id not in relay.relay_ids:
            relay.relay_ids.append(relay.relay_id)
        relay.version = e.payload.get("version")
        relay.first_seen = relay.first_seen or e.ts
        relay.last_seen = e.ts
        _record_usage(relay, e.ts)
        self.relay_key_by_id[relay.relay_id] = relay.public_key
        return Changes(relays={relay.public_key})

    def _on_RelaySeen(self, e: DomainEvent, seq: int) -> None:
        relay = self._relay(e.aggregate_id)
        relay.last_seen = e.ts
        relay.version = e.payload.get("version") or relay.version
        _record_usage(relay, e.ts)

    def _on_UserCreated(self, e: DomainEvent, seq: int) -> None:
        self.users[e.aggregate_id] = User(username=e.aggregate_id, email=e.payload.get("email"),
                                          superuser=bool(e.payload.get("superuser")))

    def _on_TokenCreated(self, e: DomainEvent, seq: int) -> None:
        user = self.users.get(e.aggregate_id)
        if user:
            digest = e.payload["token_hash"]
            user.token_hashes.add(digest)
            scopes = e.payload.get("scopes")
            user.tokens[digest] = {"id": e.payload.get("id") or digest[:12], "name": e.payload.get("name"),
                                   "scopes": list(scopes) if isinstance(scopes, list) else None,
                                   "org": e.payload.get("org"), "created": e.ts}

    def _on_TokenRevoked(self, e: DomainEvent, seq: int) -> None:
        user = self.users.get(e.aggregate_id)
        if user:
            for digest, info in list(user.tokens.items()):
                if info["id"] == e.payload["token_id"]:
                    user.tokens.pop(digest)
                    user.token_hashes.discard(digest)

    def _on_PermissionAdded(self, e: DomainEvent, seq: int) -> None:
        user = self.users.get(e.aggregate_id)
        if user:
            user.permissions.add(e.payload["permission"])

    def _on_PermissionRemoved(self, e: DomainEvent, seq: int) -> None:
        user = self.users.get(e.aggregate_id)
        if user:
            user.permissions.discard(e.payload["permission"])

    def _on_IdsClaimed(self, e: DomainEvent, seq: int) -> None:
        kind, first, count = e.aggregate_id, e.payload.get("first"), e.payload.get("count")
        if kind in self.next_ids and isinstance(first, int) and isinstance(count, int) and count > 0:
            # Nobody else hands these out: neither another handler's block nor a legacy event.
            self.next_ids[kind] = max(self.next_ids[kind], first + count)

    def _on_KeysClaimed(self, e: DomainEvent, seq: int) -> None:
        claim = KeyClaim(org=str(e.payload["org"]), org_version=int(e.payload["org_version"]), sequence=seq)
        for public_key in e.payload.get("public_keys") or []:
            self.key_claims[str(public_key)] = claim

    # -- snapshots -------------------------------------------------------------------------

    def to_snapshot(self, streamed: bool = False) -> dict[str, Any]:
        """The whole state as plain data (`from_snapshot` restores it). `streamed`: projects
        and keys as `Rows` made while they are read, without a copy of their options, so a
        million of them cost no memory beyond their packed bytes - to be packed at once,
        before anything else is folded (bus/snapshots.py `pack_body`)."""
        if not self.projection.is_full:
            # Every projection starts from it: it must hold everything.
            raise ValueError(f"a snapshot of the {self.projection.name!r} projection would lack the other parts")

        def user_map(u: User) -> dict[str, Any]:
            d = asdict(u)
            d["permissions"], d["token_hashes"] = sorted(u.permissions), sorted(u.token_hashes)
            return d

        return {
            # a copy: a snapshot written later (e.g. from the loop) must still describe `sequence`
            "format": SNAPSHOT_FORMAT, "sequence": self.sequence, "next_ids": dict(self.next_ids),
            "orgs": [asdict(o) for o in self.orgs.values()],
            "columns": {"projects": list(PROJECT_COLUMNS), "keys": list(KEY_COLUMNS)},
            "projects": Rows(len(self.projects), self._project_rows(copy=False)) if streamed
            else list(self._project_rows(copy=True)),
            "keys": Rows(len(self.keys), self._key_rows()) if streamed else list(self._key_rows()),
            "relays": [asdict(r) for r in self.relays.values()],
            "users": [user_map(u) for u in self.users.values()],
            "aggregates": [[a, i, s] for (a, i), s in self.aggregate_sequence.items()],
            "key_claims": [[k, c.org, c.org_version, c.sequence] for k, c in self.key_claims.items()],
            "skipped": [dict(s) for s in self.skipped],
            "imports": [p.to_map() for p in self.imports.values()],
        }

    def _project_rows(self, copy: bool) -> Iterator[tuple[Any, ...]]:
        # Options and teams are changed in place by later folds: copied unless read at once;
        # the other values are only ever replaced.
        for p in list(self.projects.values()):
            options: Any = (dict(p.options) if copy else p.options) if p.options else None
            teams: Any = (list(p.teams) if copy else p.teams) if p.teams else None
            yield (p.id, p.org_id, p.slug, p.name, p.status, options, p.template, p.created, p.last_change,
                   p.platform, teams)

    def _key_rows(self) -> Iterator[tuple[Any, ...]]:
        for k in list(self.keys.values()):
            yield k.public_key, k.numeric_id, k.project_id, k.status, k.rate_limit, k.created, k.last_change, k.name

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any], projection: Projection = EVERYTHING,
                      consume: bool = False) -> DomainState:
        """The state a full snapshot describes, as far as `projection` holds it. `consume`:
        the rows of `data`'s projects and keys are dropped as they are restored (a million
        unpacked rows are not held beside the objects made of them). `data` is read in the
        order `to_snapshot` writes it (it may be read as a stream: bus/snapshots.py)."""
        if data.get("format") not in READABLE_SNAPSHOT_FORMATS:
            raise ValueError("snapshot format mismatch")
        state = cls(projection)
        holds = projection.holds
        state.sequence = data["sequence"]
        state.next_ids = dict(data["next_ids"])
        for o in data["orgs"]:
            org = Org(**o) if holds(ORG_OPTIONS) else Org(**{**o, "options": {}, "templates": {}})
            state.orgs[org.id] = org
            state.org_by_slug[org.slug] = org.id
            state.projects_of_org[org.id] = []
            for username, role in org.members.items():
                state.member_orgs.setdefault(username, {})[org.slug] = role
        # (a snapshot read as a stream is read in the order it was written: columns only where written)
        columns = (data.get("columns") or {}) if data["format"] >= 5 else {}
        options = holds(PROJECT_OPTIONS)
        # Each row unpacks its own copy of every value: values the fold shares (the org's id
        # object, the key's project id, the change time a creation sets twice) are shared again.
        orgs, projects, keys_of_project = state.orgs, state.projects, state.keys_of_project
        for project in _rows(data, "projects", columns.get("projects"), Project, consume) if holds(PROJECTS) else ():
            opts = project.options
            project.options = _interned_keys(opts) if opts and options else {}
            project.teams = list(project.teams) if project.teams else []
            project.status = _intern(project.status)
            if project.name == project.slug:
                project.name = project.slug
            if project.last_change == project.created:
                project.last_change = project.created
            holder = orgs.get(project.org_id)
            if holder is not None:
                project.org_id = holder.id
            projects[project.id] = project
            state.projects_of_org.setdefault(project.org_id, []).append(project.id)
            keys_of_project[project.id] = ()
            if project.status != DELETED:
                state.project_by_slug.setdefault(project.org_id, {})[project.slug] = project.id
        for key in _rows(data, "keys", columns.get("keys"), ProjectKey, consume) if holds(KEYS) else ():
            key.status = _intern(key.status)
            if key.last_change == key.created:
                key.last_change = key.created
            owner = projects.get(key.project_id)
            if owner is not None:
                key.project_id = owner.id
            state.keys[key.public_key] = key
            state.key_numeric_ids.add(key.numeric_id)
            keys_of_project[key.project_id] = keys_of_project.get(key.project_id, ()) + (key.public_key,)
        for r in data["relays"] if holds(RELAYS) else ():
            relay = Relay(**r)
            state.relays[relay.public_key] = relay
            for relay_id in relay.relay_ids:
                state.relay_key_by_id[relay_id] = relay.public_key
        for u in data["users"] if holds(USERS) else ():
            user = User(**{**u, "permissions": set(u["permissions"]), "token_hashes": set(u["token_hashes"])})
            state.users[user.username] = user
        if holds(VERSIONS):
            state.aggregate_sequence = {(a, i): s for a, i, s in data["aggregates"]}
        if holds(CLAIMS):
            known = state.keys
            claims = state.key_claims
            made: dict[tuple[str, int, int], KeyClaim] = {}  # one claim per claiming commit, as folded
            for k, org_slug, version, seq in data["key_claims"]:
                if k in known:
                    continue  # used (a snapshot written before claims were dropped as they are used)
                claim = made.get((org_slug, version, seq))
                if claim is None:
                    claim = made[(org_slug, version, seq)] = KeyClaim(org_slug, version, seq)
                claims[k] = claim
        state.skipped = [dict(s) for s in data["skipped"]]
        for raw in data.get("imports") or []:
            pending = PendingImport.from_map(raw)
            if not projection.is_full:
                pending.events = [e for e in pending.events if e.type in projection.events]
            state.imports[pending.org] = pending
        return state


class Rows:
    """`count` rows of a snapshot, made as they are read (`to_snapshot(streamed=True)`)."""

    def __init__(self, count: int, rows: Iterable[tuple[Any, ...]]) -> None:
        self.count = count
        self._rows = rows

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)


def _consumed(rows: list[Any]) -> Iterator[Any]:
    """The items of `rows`, each dropped from it once read (the list ends empty)."""
    rows.reverse()
    while rows:
        yield rows.pop()


def _rows(data: Mapping[str, Any], section: str, columns: list[str] | None, cls: type[Any],
          consume: bool) -> Iterator[Any]:
    """The objects of a snapshot's rows: maps (formats 3, 4) or value rows named by `columns`
    (format 5; positional when they are the class's own fields, else by name)."""
    positional = columns is None or tuple(columns) == tuple(f.name for f in fields(cls))
    rows = data[section]
    for row in _consumed(rows) if consume and isinstance(rows, list) else rows:
        if type(row) is dict:
            yield cls(**row)
        elif positional:
            yield cls(*row)
        else:
            yield cls(**dict(zip(columns or (), row, strict=True)))
