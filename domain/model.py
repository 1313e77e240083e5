"""The domain objects that projections fold events into.

Plain dataclasses, no behaviour beyond small derived properties: the state that
actors own and the config builder reads. Slotted (no `__dict__` per object): a million
projects and keys are held by several processes at once, and a slotted object is about a
third of the size (bench/README.md, bench_scale). Ids that are integers (org, project, key
numeric id) are the JetStream sequence of the event that created the object, so
they are unique and the same on every replay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ACTIVE = "active"
DISABLED = "disabled"
DELETED = "deleted"
# The org option listing the relays an org trusts (Sentry's name).
TRUSTED_RELAYS = "sentry:trusted-relays"


@dataclass(slots=True)
class Org:
    id: int
    slug: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    # Project templates: name -> option values a project using it falls back to.
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: float = 0.0
    last_change: float = 0.0
    # username -> org role (member, admin, manager, owner): bounds the scopes of the
    # user's tokens in this org (domain/access.py)
    members: dict[str, str] = field(default_factory=dict)
    # team slug -> name: the org's teams besides its default team (slug and name of the org)
    teams: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Project:
    id: int
    org_id: int
    slug: str
    name: str
    status: str = ACTIVE
    options: dict[str, Any] = field(default_factory=dict)
    # Name of a project template (an org-level set of option defaults), or None.
    template: str | None = None
    created: float = 0.0
    last_change: float = 0.0
    platform: str | None = None  # Sentry's project platform (management API), e.g. "python"
    # the teams it belongs to; none: its org's default team
    teams: list[str] = field(default_factory=list)

    @property
    def is_active(self) -> bool:
        return self.status == ACTIVE


@dataclass(slots=True)
class ProjectKey:
    public_key: str
    numeric_id: int
    project_id: int
    status: str = ACTIVE
    # Key-level rate limit: {"window": seconds, "count": n} or None.
    rate_limit: dict[str, int] | None = None
    created: float = 0.0
    last_change: float = 0.0
    name: str | None = None  # the key's label in the management API (None: "Default")

    @property
    def is_active(self) -> bool:
        return self.status == ACTIVE


@dataclass(slots=True)
class Relay:
    """A relay key the operator allowed, and what we know of its registration."""

    public_key: str
    internal: bool = False
    banned: bool = False
    relay_id: str | None = None  # the id it registered under last
    # every id it ever registered under, in order: each one follows the key's current rights
    relay_ids: list[str] = field(default_factory=list)
    version: str | None = None
    first_seen: float | None = None
    last_seen: float | None = None
    # as Sentry's RelayUsage: one entry per (relay id, version) it registered with, each
    # {"relayId", "version", "firstSeen", "lastSeen"}; the oldest go past MAX_RELAY_USAGE
    usage: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class User:
    username: str
    email: str | None = None
    superuser: bool = False
    permissions: set[str] = field(default_factory=set)
    # sha256 hex digests of the user's API tokens; the tokens themselves are never stored.
    token_hashes: set[str] = field(default_factory=set)
    # token hash -> what is known of it: {"id", "name", "scopes" (None: every scope),
    # "org" (an org auth token's org, else None), "created"}
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
