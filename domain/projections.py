"""What a projection folds: the parts of the domain state an actor needs, and no more.

Every projection actor folds the same event stream, but each one needs only a part of what
it holds (DESIGN: each actor owns its part): the key lookup keys and projects, org access
orgs, their options and relays, the config builder everything a config document is built
from; only the command actor, which decides every command, needs all of it. An actor
declares its `Projection` (actors/base.py `ProjectionActor.projection`); its `DomainState`
then runs the fold handlers of that projection's event types only, keeps aggregate versions
only when it decides, and takes from a snapshot only the parts it holds.

A part names one kind of object or one property of it, with the event types that change it:

- `ORGS`: orgs (id, slug, name, members, teams) - `Org{Created,Updated}`, `Team{Created,Deleted}`,
  `Member{Added,Removed}`
- `ORG_OPTIONS`: org options and project templates - `OrgOptionSet`, `OrgOptionUnset`, `ProjectTemplateSet`
- `PROJECTS`: projects (id, slug, status, template, teams) - `ProjectCreated`,
  `Project{Disabled,Enabled,Deleted,Updated}`, `ProjectTeam{Added,Removed}`
- `PROJECT_OPTIONS`: project options - `ProjectOptionSet`, `ProjectOptionUnset`
- `KEYS`: project keys - `KeyCreated`, `Key{Disabled,Enabled,Deleted,Updated}`, `KeyRateLimitSet`
- `RELAYS`: relays - `RelayAllowed`, `RelayDenied`, `RelayRegistered`, `RelaySeen`
- `USERS`: users, tokens and permissions - `UserCreated`, `Token{Created,Revoked}`, `Permission{Added,Removed}`
- `IDS`: the id counters - `IdsClaimed` (implied by orgs, projects and keys: an event stored
  before ids were gets its id from them, and must get the same one in every projection)
- `CLAIMS`: project keys claimed before an org commit - `KeysClaimed`
- `VERSIONS`: every aggregate's last sequence, the expectation of an append (no event of its own)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

ORGS = "orgs"
ORG_OPTIONS = "org_options"
PROJECTS = "projects"
PROJECT_OPTIONS = "project_options"
KEYS = "keys"
RELAYS = "relays"
USERS = "users"
IDS = "ids"
CLAIMS = "claims"
VERSIONS = "versions"
PARTS = frozenset({ORGS, ORG_OPTIONS, PROJECTS, PROJECT_OPTIONS, KEYS, RELAYS, USERS, IDS, CLAIMS, VERSIONS})

# Every event type the fold handles, and the part it changes (test_projections checks that
# each fold handler of DomainState is listed: a new event type must say where it belongs).
EVENT_PARTS: dict[str, str] = {
    "OrgCreated": ORGS,
    "OrgOptionSet": ORG_OPTIONS,
    "OrgOptionUnset": ORG_OPTIONS,
    "ProjectTemplateSet": ORG_OPTIONS,
    "ProjectCreated": PROJECTS,
    "ProjectDisabled": PROJECTS,
    "ProjectEnabled": PROJECTS,
    "ProjectDeleted": PROJECTS,
    "ProjectOptionSet": PROJECT_OPTIONS,
    "ProjectOptionUnset": PROJECT_OPTIONS,
    "KeyCreated": KEYS,
    "KeyDisabled": KEYS,
    "KeyEnabled": KEYS,
    "KeyDeleted": KEYS,
    "KeyRateLimitSet": KEYS,
    "KeyUpdated": KEYS,
    "OrgUpdated": ORGS,
    "TeamCreated": ORGS,
    "TeamDeleted": ORGS,
    "ProjectTeamAdded": PROJECTS,
    "ProjectTeamRemoved": PROJECTS,
    "MemberAdded": ORGS,
    "MemberRemoved": ORGS,
    "ProjectUpdated": PROJECTS,
    "RelayAllowed": RELAYS,
    "RelayDenied": RELAYS,
    "RelayRegistered": RELAYS,
    "RelaySeen": RELAYS,
    "UserCreated": USERS,
    "TokenCreated": USERS,
    "TokenRevoked": USERS,
    "PermissionAdded": USERS,
    "PermissionRemoved": USERS,
    "IdsClaimed": IDS,
    "KeysClaimed": CLAIMS,
}

# A part is folded on top of the parts it refers to: a project event names its org by slug,
# a key event its project; options belong to their org or project.
NEEDS: dict[str, frozenset[str]] = {
    ORG_OPTIONS: frozenset({ORGS}),
    PROJECTS: frozenset({ORGS}),
    PROJECT_OPTIONS: frozenset({PROJECTS}),
    KEYS: frozenset({PROJECTS}),
    ORGS: frozenset({IDS}),
}


def _closure(parts: Iterable[str]) -> frozenset[str]:
    out = set(parts)
    while True:
        more = set().union(*(NEEDS.get(p, frozenset()) for p in out)) - out
        if not more:
            return frozenset(out)
        out |= more


@dataclass(frozen=True)
class Projection:
    """A named set of parts (with the parts they need added)."""

    name: str
    parts: frozenset[str]
    events: frozenset[str] = field(init=False)

    def __init__(self, name: str, parts: Iterable[str]) -> None:
        wanted = frozenset(parts)
        unknown = wanted - PARTS
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)} in projection {name!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "parts", _closure(wanted))
        object.__setattr__(self, "events", frozenset(t for t, p in EVENT_PARTS.items() if p in self.parts))

    def holds(self, part: str) -> bool:
        return part in self.parts

    @property
    def is_full(self) -> bool:
        return self.parts == PARTS


# The command actor decides every command: it folds everything, with aggregate versions.
EVERYTHING = Projection("everything", PARTS)
