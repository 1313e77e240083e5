"""Domain events: facts in the past tense, the source of truth of the whole system.

An event is a map `{"id": 32 random hex digits (messages/ids.py), "type": str, "v": int, "aggregate": str,
"aggregate_id": str, "ts": float, "actor": str, "payload": map}`. Events are appended in
commits: one JetStream message holds the events one command produced (one or more, all
of one aggregate), so a command is stored whole or not at all - except an org import too
large for one message, stored as part commits that the fold folds only once the last one
is stored (`ImportStarted`/`ImportPart`/`ImportCommitted`, docs/architecture.md "Imports in
parts"), so it too is seen whole or not at all. The message's subject is
`rc.ev.<aggregate>.<aggregate_id>.<type of its first event>` (the id escaped to one
token, see `subject_token`) and its `Nats-Msg-Id` is the
first event's id, so a retried append is stored once.

Every type has a current version (`EVENT_TYPES`); an older stored version is upcast on
read by the functions in `UPCASTERS`, so projections only ever see current payloads.

Integer ids (org, project, key numeric id) are decided with the command and stored in the
events that create the object (`OrgCreated.id`, `ProjectCreated.id`, `KeyCreated.numeric_id`),
from blocks each command handler claims on the `ids` aggregate (`IdsClaimed`), so no later
commit - lost, corrupted or reordered - can change an id. Explicit project keys are claimed
on the `claims` aggregate (`KeysClaimed`) before the org commit that creates them, so two
orgs can never both hold one key. `SnapshotKeyPublished` records a command handler's
snapshot signing key in the stream, where only the command handlers may write.

A stored message that does not decode is delivered as an `UndecodableCommit`: an empty
commit that says where it was stored and why it could not be read, so projections record
it and go on instead of stopping there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from messages.envelope import pack, unpack
from messages.errors import BadMessage
from messages.ids import random_hex

ORG = "org"
RELAY = "relay"
USER = "user"
IDS = "ids"  # id: the kind of id ("org", "project", "key")
CLAIMS = "claims"  # id: what is claimed ("keys")
SNAPSHOT = "snapshot"  # id: the signing key's public key
AGGREGATES = (ORG, RELAY, USER, IDS, CLAIMS, SNAPSHOT)
# The events that frame an import in parts: a commit holding `ImportPart` stages its other
# events; `ImportCommitted` folds everything its parts staged (domain/state.py).
IMPORT_EVENTS = frozenset({"ImportStarted", "ImportPart", "ImportCommitted", "ImportAbandoned"})
ID_KINDS = ("org", "project", "key")

# type -> (aggregate, current version)
EVENT_TYPES: dict[str, tuple[str, int]] = {
    # org aggregate: the org, its options and templates, its projects and their keys
    "OrgCreated": (ORG, 2),
    "OrgOptionSet": (ORG, 1),
    "OrgOptionUnset": (ORG, 1),
    "ProjectTemplateSet": (ORG, 1),
    "ProjectCreated": (ORG, 2),
    "ProjectDisabled": (ORG, 1),
    "ProjectEnabled": (ORG, 1),
    "ProjectDeleted": (ORG, 1),
    "ProjectOptionSet": (ORG, 1),
    "ProjectOptionUnset": (ORG, 1),
    "KeyCreated": (ORG, 3),
    "KeyDisabled": (ORG, 1),
    "KeyEnabled": (ORG, 1),
    "KeyDeleted": (ORG, 1),
    "KeyRateLimitSet": (ORG, 1),  # rate_limit: {"count", "window"} or None (no limit)
    # the management API (gateway/api/): org members, project and key details
    "OrgUpdated": (ORG, 1),  # name
    "MemberAdded": (ORG, 1),  # username, role (also a new role of a member)
    "MemberRemoved": (ORG, 1),  # username
    "ProjectUpdated": (ORG, 1),  # project; the changed of name, slug (a new slug), platform
    "KeyUpdated": (ORG, 1),  # public_key, name
    "TeamCreated": (ORG, 1),  # team, name
    "TeamDeleted": (ORG, 1),  # team (its projects leave it)
    "ProjectTeamAdded": (ORG, 1),  # project, team
    "ProjectTeamRemoved": (ORG, 1),  # project, team
    # an import in parts (domain/importer.py): the org's events are staged by its parts and
    # folded, all at once, only when the import is committed
    "ImportStarted": (ORG, 1),  # import_id, projects (in the file)
    "ImportPart": (ORG, 1),  # import_id, part (1, 2, ...), first, count (file projects it decided), header
    "ImportCommitted": (ORG, 1),  # import_id, parts
    "ImportAbandoned": (ORG, 1),  # import_id, reason
    # relay aggregate (id: the relay's public key)
    "RelayAllowed": (RELAY, 1),
    "RelayDenied": (RELAY, 1),
    "RelayRegistered": (RELAY, 1),
    "RelaySeen": (RELAY, 1),
    # user aggregate (id: username)
    "UserCreated": (USER, 1),
    "TokenCreated": (USER, 1),  # token_hash; id, name, scopes, org (token.create; absent before it)
    "TokenRevoked": (USER, 1),  # token_id
    "PermissionAdded": (USER, 1),
    "PermissionRemoved": (USER, 1),
    # ids aggregate: a block of integer ids [first, first + count) one command handler hands out
    "IdsClaimed": (IDS, 1),
    # claims aggregate: project keys an org is about to create (see domain/decider.py)
    "KeysClaimed": (CLAIMS, 1),
    # snapshot aggregate: a command handler's snapshot signing key (bus/snapshots.py)
    "SnapshotKeyPublished": (SNAPSHOT, 1),
}


def _key_created_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    # v1 had no rate limit; v2 carries it explicitly (None = unlimited)
    return {**payload, "rate_limit": payload.get("rate_limit")}


def _without_stored_id(field_name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    # Before ids were stored, the fold handed them out in fold order: None says "do that".
    return lambda payload: {**payload, field_name: payload.get(field_name)}


UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("KeyCreated", 1): _key_created_v1_to_v2,
    ("KeyCreated", 2): _without_stored_id("numeric_id"),
    ("OrgCreated", 1): _without_stored_id("id"),
    ("ProjectCreated", 1): _without_stored_id("id"),
}


@dataclass
class DomainEvent:
    type: str
    aggregate_id: str
    payload: dict[str, Any]
    actor: str = "system"
    id: str = field(default_factory=random_hex)
    ts: float = field(default_factory=time.time)
    v: int = 0  # 0 = the type's current version
    sequence: int = 0  # the stream sequence of the commit; set when read

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise BadMessage(f"unknown event type {self.type!r}")
        if not self.v:
            self.v = EVENT_TYPES[self.type][1]

    @property
    def aggregate(self) -> str:
        return EVENT_TYPES[self.type][0]

    def to_map(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "v": self.v, "aggregate": self.aggregate,
                "aggregate_id": self.aggregate_id, "ts": self.ts, "actor": self.actor,
                "payload": self.payload}


_UNSAFE_IN_TOKEN = re.compile(r"[.%*>\s]")


def subject_token(aggregate_id: str) -> str:
    """An aggregate id as exactly one subject token.

    Usernames may hold dots; unescaped, user `ann` would own the subjects of `ann.smith` (its
    concurrency scope `rc.ev.user.ann.>` covers them) and `ann.` would make an invalid subject.
    Dots, `%`, wildcards and whitespace are percent-encoded (UTF-8 bytes, so it stays one-to-one).
    """
    return _UNSAFE_IN_TOKEN.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), aggregate_id)


def event_subject(aggregate: str, aggregate_id: str, type_: str = "*") -> str:
    return f"rc.ev.{aggregate}.{subject_token(aggregate_id)}.{type_}"


def aggregate_subject(aggregate: str, aggregate_id: str) -> str:
    """The wildcard covering every event of one aggregate (optimistic concurrency scope)."""
    return f"rc.ev.{aggregate}.{subject_token(aggregate_id)}.>"


_ESCAPED = re.compile(r"(?:%[0-9A-F]{2})+")


def subject_aggregate(subject: str) -> tuple[str, str] | None:
    """The (aggregate, aggregate id) an event subject belongs to, or None for a subject that
    is not `rc.ev.<aggregate>.<id>.<type>`: the inverse of `event_subject`."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:2] != ["rc", "ev"] or parts[2] not in AGGREGATES:
        return None
    try:
        aggregate_id = _ESCAPED.sub(lambda m: bytes.fromhex(m.group().replace("%", "")).decode(), parts[3])
    except UnicodeDecodeError:
        return None
    return parts[2], aggregate_id


class UndecodableCommit(list[DomainEvent]):
    """A stored message that is not a commit this code can read: no events, with where it
    was stored and why it failed. Folding it records the sequence for its aggregate (so
    the next append's expectation still matches the stream) and skips it, loudly."""

    def __init__(self, sequence: int, subject: str, error: str) -> None:
        super().__init__()
        self.sequence = sequence
        self.subject = subject
        self.error = error
        self.aggregate = subject_aggregate(subject)

    def describe(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "subject": self.subject, "error": self.error}

    def __repr__(self) -> str:
        return f"UndecodableCommit({self.sequence}, {self.subject!r}, {self.error!r})"


def encode_commit(events: list[DomainEvent]) -> bytes:
    if not events:
        raise ValueError("a commit holds at least one event")
    aggregates = {(e.aggregate, e.aggregate_id) for e in events}
    if len(aggregates) != 1:
        raise ValueError("a commit holds events of exactly one aggregate")
    return pack({"events": [e.to_map() for e in events]})


def upcast(type_: str, version: int, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    current = EVENT_TYPES[type_][1]
    while version < current:
        step = UPCASTERS.get((type_, version))
        if step is None:
            raise BadMessage(f"no upcaster for {type_} v{version}")
        payload = step(payload)
        version += 1
    return version, payload


def decode_commit(data: bytes, sequence: int = 0) -> list[DomainEvent]:
    raw = unpack(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("events"), list):
        raise BadMessage("commit must be a map with an events list")
    events = []
    for item in raw["events"]:
        # isinstance first: a list or map as the type would make the lookup raise TypeError
        if not isinstance(item, dict) or not isinstance(item.get("type"), str) or item["type"] not in EVENT_TYPES:
            raise BadMessage(f"unknown or malformed event in commit: {item!r:.200}")
        try:
            version, payload = upcast(item["type"], int(item.get("v", 1)), dict(item.get("payload") or {}))
            events.append(DomainEvent(type=item["type"], aggregate_id=str(item["aggregate_id"]),
                                      payload=payload, actor=str(item.get("actor", "system")),
                                      id=str(item["id"]), ts=float(item["ts"]), v=version,
                                      sequence=sequence))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # Overflow: int(inf)
            # A missing field or a wrong type must be a BadMessage like any other bad commit.
            raise BadMessage(f"malformed {item['type']} event in commit: {type(exc).__name__}: {exc}") from None
    return events
