"""Command handlers: control messages in, domain events out.

`decide(state, type, payload, actor)` is pure: it validates a command against the current
projection and returns a `Decision` - the events to append (possibly none, for a change
that is already in effect) and how to compute the reply once they are folded. The
`CommandActor` appends them with the aggregate's last sequence as the expectation, so a
command decided on stale state is never stored: on a conflict it catches up and decides
again, up to `MAX_ATTEMPTS` times. An error that might come from stale state (unknown or
duplicate names) is re-checked once after catching up, so a command sent right after
another process's change sees it.

Integer ids are decided here, not by the fold: the decider takes them from an `IdDraw` on
the handler's `IdPool`, blocks of ids the handler claimed on the global `ids.<kind>`
aggregate (`IdsClaimed`, optimistic concurrency on it, so two handlers never claim the same
block). A decision that needs more ids than the pool holds is not stored: the handler
claims a block and decides again. Ids taken for an append whose outcome is unknown are
never handed out again (a gap, never a duplicate).

Project keys given explicitly (`key.create` with a key, `import.org`) are claimed on the
global `claims.keys` aggregate before the org commit (`KeysClaimed`, optimistic concurrency
on it): a key claimed by another org whose claim may still be used is refused with a
Conflict, so two orgs deciding concurrently (on two handlers, or one handler before its
own commit is folded) can never both create one key. A claim by org X decided at X's
version v is live until X's aggregate moves past v: X's org commit expects v, so once X has
a later commit, either that commit created the key or X's command can no longer be stored.
Generated keys need no claim: nobody knows one before its commit is stored, and a command
naming a key explicitly first catches up with the stream.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from actors import options as option_catalogue
from actors.base import ProjectionActor
from actors.model import ACTIVE, DELETED, DISABLED, Org, Project, ProjectKey
from actors.project_config import check_pii_change
from actors.state import DomainState
from bus import metrics
from bus.client import request as bus_request
from bus.eventstore import CommitTooLarge
from bus.service import Call
from messages.errors import BadRequest, Conflict, Forbidden, NotFound, RelayctlError, Unauthorized, Unavailable
from messages.events import CLAIMS, IDS, ORG, RELAY, USER, DomainEvent

log = structlog.get_logger(__name__)
MAX_ATTEMPTS = 50
TRUSTED_RELAYS = "sentry:trusted-relays"
RELAY_SEEN_INTERVAL = 60.0
ID_BLOCK = 50  # ids a handler claims at a time; a restart leaves the rest of its block unused


@dataclass
class Decision:
    aggregate: str
    aggregate_id: str
    events: list[DomainEvent] = field(default_factory=list)
    result: Callable[[DomainState], Any] = lambda state: None
    # project keys the command names explicitly: claimed before the org commit (`claims_for`)
    explicit_keys: list[str] = field(default_factory=list)


class IdPool:
    """The integer ids one command handler may hand out: the rest of the blocks it claimed."""

    def __init__(self) -> None:
        self._free: dict[str, list[range]] = {}

    def add(self, kind: str, first: int, count: int) -> None:
        self._free.setdefault(kind, []).append(range(first, first + count))

    def peek(self, kind: str, n: int) -> int | None:
        """The n-th (from 0) free id of `kind`, or None when the pool holds fewer."""
        for block in self._free.get(kind, []):
            if n < len(block):
                return block[n]
            n -= len(block)
        return None

    def consume(self, kind: str, n: int) -> None:
        blocks = self._free.get(kind, [])
        while n and blocks:
            used = min(n, len(blocks[0]))
            blocks[0] = blocks[0][used:]
            n -= used
            if not blocks[0]:
                blocks.pop(0)

    def available(self, kind: str) -> int:
        return sum(len(b) for b in self._free.get(kind, []))


class IdDraw:
    """The ids one decision takes from a pool: they leave the pool only with `commit()`
    (when the decision is appended), so a decision that is refused or decided again takes
    the same ones. Past the pool's end `take` counts the shortage and returns 0: such a
    decision is never stored; the handler claims more ids and decides again."""

    def __init__(self, pool: IdPool | None = None) -> None:
        self.pool = pool or IdPool()
        self.taken: dict[str, int] = {}
        self.short: dict[str, int] = {}

    def take(self, kind: str) -> int:
        n = self.taken.get(kind, 0)
        self.taken[kind] = n + 1
        value = self.pool.peek(kind, n)
        if value is None:
            self.short[kind] = self.short.get(kind, 0) + 1
            return 0
        return value

    def commit(self) -> None:
        for kind, n in self.taken.items():
            self.pool.consume(kind, n)
        self.taken.clear()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_public_key() -> str:
    return uuid.uuid4().hex


# -- lookups that raise the errors users see ------------------------------------------------

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


def checked_option(scope: str, key: str, value: Any) -> Any:
    try:
        return option_catalogue.validate_option(scope, key, value)
    except ValueError as exc:
        raise BadRequest(str(exc), {"key": key}) from None


def key_view(key: ProjectKey) -> dict[str, Any]:
    return {"publicKey": key.public_key, "numericId": key.numeric_id, "status": key.status,
            "projectId": key.project_id}


def relay_view(relay: Any) -> dict[str, Any]:
    return {"publicKey": relay.public_key, "relayId": relay.relay_id, "internal": relay.internal,
            "banned": relay.banned, "version": relay.version, "firstSeen": relay.first_seen,
            "lastSeen": relay.last_seen}


# -- decisions --------------------------------------------------------------------------------

class Decider:
    """Turns one command into a Decision; one method per command type."""

    def __init__(self, state: DomainState, actor: str, ids: IdDraw | None = None) -> None:
        self.state = state
        self.actor = actor or "anonymous"
        self.ids = ids if ids is not None else IdDraw()

    def event(self, type_: str, aggregate_id: str, **payload: Any) -> DomainEvent:
        return DomainEvent(type=type_, aggregate_id=aggregate_id, payload=payload, actor=self.actor)

    def decide(self, message_type: str, payload: dict[str, Any]) -> Decision:
        method = getattr(self, message_type.replace(".", "_"), None)
        if method is None:
            raise BadRequest(f"unknown command {message_type}")
        return method(**payload)

    # orgs

    def org_create(self, slug: str, name: str | None) -> Decision:
        if self.state.org(slug) is not None:
            raise Conflict(f"Organization `{slug}` already exists")
        return Decision(ORG, slug, [self.event("OrgCreated", slug, name=name or slug, id=self.ids.take("org"))],
                        lambda s: {"id": s.org(slug).id, "slug": slug})  # type: ignore[union-attr]

    def _org_option(self, slug: str, key: str, value: Any) -> Decision:
        org = require_org(self.state, slug)
        check_pii_change(self.state, org, key, org_options={**org.options, key: value})
        result = lambda s: {"key": key, "value": value}  # noqa: E731
        if key in org.options and org.options[key] == value:
            return Decision(ORG, slug, [], result)
        return Decision(ORG, slug, [self.event("OrgOptionSet", slug, key=key, value=value)], result)

    def org_option_set(self, org: str, key: str, value: Any) -> Decision:
        return self._org_option(org, key, checked_option("org", key, value))

    def org_option_unset(self, org: str, key: str) -> Decision:
        found = require_org(self.state, org)
        if key not in found.options:
            return Decision(ORG, org)
        check_pii_change(self.state, found, key, org_options={k: v for k, v in found.options.items() if k != key})
        return Decision(ORG, org, [self.event("OrgOptionUnset", org, key=key)])

    def org_trust_relay(self, org: str, public_key: str, name: str | None,
                        description: str | None) -> Decision:
        found = require_org(self.state, org)
        entries = [e for e in found.options.get(TRUSTED_RELAYS, []) if e.get("public_key") != public_key]
        entry: dict[str, Any] = {"public_key": public_key, "name": name or public_key[:8],
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if description:
            entry["description"] = description
        previous = next((e for e in found.options.get(TRUSTED_RELAYS, []) if e.get("public_key") == public_key), None)
        if previous is not None:
            entry["created"] = previous.get("created", entry["created"])
        return self._org_option(org, TRUSTED_RELAYS, checked_option("org", TRUSTED_RELAYS, entries + [entry]))

    def org_untrust_relay(self, org: str, public_key: str) -> Decision:
        found = require_org(self.state, org)
        current = found.options.get(TRUSTED_RELAYS, [])
        remaining = [e for e in current if e.get("public_key") != public_key]
        if len(remaining) == len(current):
            raise NotFound(f"Relay `{public_key}` is not trusted by `{org}`")
        return self._org_option(org, TRUSTED_RELAYS, remaining)

    def org_template_set(self, org: str, template: str, options: dict[str, Any]) -> Decision:
        found = require_org(self.state, org)
        checked = {k: checked_option("project", k, v) for k, v in options.items()}
        check_pii_change(self.state, found, "", templates={**found.templates, template: checked})
        return Decision(ORG, org, [self.event("ProjectTemplateSet", org, template=template, options=checked)])

    # projects

    def project_create(self, org: str, project: str, name: str | None, template: str | None) -> Decision:
        found = require_org(self.state, org)
        if self.state.project(org, project) is not None:
            raise Conflict(f"Project `{org}/{project}` already exists")
        if template is not None and template not in found.templates:
            raise NotFound(f"No project template `{template}` in `{org}`")
        public_key = new_public_key()
        events = [self.event("ProjectCreated", org, project=project, name=name or project, template=template,
                             id=self.ids.take("project")),
                  self.event("KeyCreated", org, project=project, public_key=public_key, rate_limit=None,
                             numeric_id=self.ids.take("key"))]

        def result(s: DomainState) -> dict[str, Any]:
            created = s.project(org, project)
            key = s.keys[public_key]
            assert created is not None
            return {"id": created.id, "slug": project, "organizationId": created.org_id,
                    "publicKey": public_key, "numericId": key.numeric_id}
        return Decision(ORG, org, events, result)

    def project_option_set(self, org: str, project: str, key: str, value: Any) -> Decision:
        found = require_project(self.state, org, project)
        value = checked_option("project", key, value)
        check_pii_change(self.state, require_org(self.state, org), key, project=found,
                         project_options={**found.options, key: value})
        result = lambda s: {"key": key, "value": value}  # noqa: E731
        if key in found.options and found.options[key] == value:
            return Decision(ORG, org, [], result)
        return Decision(ORG, org, [self.event("ProjectOptionSet", org, project=project, key=key, value=value)], result)

    def project_option_unset(self, org: str, project: str, key: str) -> Decision:
        found = require_project(self.state, org, project)
        if key not in found.options:
            return Decision(ORG, org)
        check_pii_change(self.state, require_org(self.state, org), key, project=found,
                         project_options={k: v for k, v in found.options.items() if k != key})
        return Decision(ORG, org, [self.event("ProjectOptionUnset", org, project=project, key=key)])

    def _project_status(self, org: str, project: str, status: str, type_: str) -> Decision:
        found = require_project(self.state, org, project)
        if found.status == status:
            return Decision(ORG, org)
        return Decision(ORG, org, [self.event(type_, org, project=project)])

    def project_disable(self, org: str, project: str) -> Decision:
        return self._project_status(org, project, DISABLED, "ProjectDisabled")

    def project_enable(self, org: str, project: str) -> Decision:
        return self._project_status(org, project, ACTIVE, "ProjectEnabled")

    def project_delete(self, org: str, project: str) -> Decision:
        return self._project_status(org, project, DELETED, "ProjectDeleted")

    # keys

    def key_create(self, org: str, project: str, public_key: str | None) -> Decision:
        require_project(self.state, org, project)
        explicit = [public_key] if public_key else []
        public_key = public_key or new_public_key()
        if public_key in self.state.keys:
            raise Conflict(f"Key `{public_key}` already exists")

        def result(s: DomainState) -> dict[str, Any]:
            key = s.keys[public_key]
            return {"publicKey": public_key, "numericId": key.numeric_id, "projectId": key.project_id}
        return Decision(ORG, org, [self.event("KeyCreated", org, project=project, public_key=public_key,
                                              rate_limit=None, numeric_id=self.ids.take("key"))], result,
                        explicit_keys=explicit)

    def _key_status(self, public_key: str, status: str | None, type_: str) -> Decision:
        key, org = require_key(self.state, public_key)
        if key.status == status:
            return Decision(ORG, org.slug)
        return Decision(ORG, org.slug, [self.event(type_, org.slug, public_key=public_key)])

    def key_disable(self, public_key: str) -> Decision:
        return self._key_status(public_key, DISABLED, "KeyDisabled")

    def key_enable(self, public_key: str) -> Decision:
        return self._key_status(public_key, ACTIVE, "KeyEnabled")

    def key_delete(self, public_key: str) -> Decision:
        return self._key_status(public_key, None, "KeyDeleted")

    # relays

    def relay_allow(self, public_key: str, internal: bool) -> Decision:
        relay = self.state.relays.get(public_key)
        if relay is not None and relay.internal == internal and not relay.banned:
            return Decision(RELAY, public_key)
        return Decision(RELAY, public_key, [self.event("RelayAllowed", public_key, internal=internal)])

    def relay_deny(self, public_key: str) -> Decision:
        relay = self.state.relays.get(public_key)
        if relay is not None and relay.banned:
            return Decision(RELAY, public_key)
        return Decision(RELAY, public_key, [self.event("RelayDenied", public_key)])

    def relay_register(self, relay_id: str, public_key: str, version: str | None) -> Decision:
        known = self.state.relay_by_id(relay_id)
        if known is not None and known.public_key != public_key:
            raise BadRequest("Attempted to register agent with a different public key")
        relay = self.state.relays.get(public_key)
        if relay is None or relay.banned:
            # Only a ban tells the relay to give up for good ("relay": "stop" on the wire).
            raise Forbidden("Relay is not allowed to register", {"banned": relay is not None})
        if relay.relay_id != relay_id or relay.version != version:
            return Decision(RELAY, public_key, [self.event("RelayRegistered", public_key,
                                                           relay_id=relay_id, version=version)])
        if relay.last_seen is None or time.time() - relay.last_seen > RELAY_SEEN_INTERVAL:
            return Decision(RELAY, public_key, [self.event("RelaySeen", public_key, version=version)])
        return Decision(RELAY, public_key)

    # users

    def user_create(self, username: str, email: str | None, superuser: bool) -> Decision:
        if username in self.state.users:
            raise Conflict(f"User `{username}` already exists")
        return Decision(USER, username, [self.event("UserCreated", username, email=email, superuser=superuser)],
                        lambda s: {"username": username})

    def user_token_create(self, username: str) -> Decision:
        require_user(self.state, username)
        token = secrets.token_urlsafe(32)
        return Decision(USER, username, [self.event("TokenCreated", username, token_hash=token_hash(token))],
                        lambda s: {"token": token})

    def user_permission_add(self, username: str, permission: str) -> Decision:
        user = require_user(self.state, username)
        if permission in user.permissions:
            return Decision(USER, username, [], lambda s: {"added": False})
        return Decision(USER, username, [self.event("PermissionAdded", username, permission=permission)],
                        lambda s: {"added": True})

    def user_permission_remove(self, username: str, permission: str) -> Decision:
        user = require_user(self.state, username)
        if permission not in user.permissions:
            return Decision(USER, username, [], lambda s: {"removed": False})
        return Decision(USER, username, [self.event("PermissionRemoved", username, permission=permission)],
                        lambda s: {"removed": True})

    # bulk import: one commit per org, so an org is loaded whole or not at all

    def import_org(self, org: dict[str, Any]) -> Decision:
        from actors.importer import decide_import

        return decide_import(self, org)

    # the global aggregates a decision may need first

    def claim_ids(self, kind: str, count: int, owner: str) -> Decision:
        """A block of `count` ids of `kind` past every id stored or claimed so far."""
        first = self.state.next_ids[kind]
        return Decision(IDS, kind, [self.event("IdsClaimed", kind, first=first, count=count, owner=owner)])

    def claims_for(self, decision: Decision) -> Decision | None:
        """The `KeysClaimed` commit the org commit of `decision` needs first (None: its
        explicit keys are all claimed by its org at the org's current version). A key whose
        claim by another org may still be used is a Conflict."""
        if not decision.explicit_keys:
            return None
        org = decision.aggregate_id
        version = self.state.aggregate_version(ORG, org)
        needed = []
        for public_key in decision.explicit_keys:
            claim = self.state.key_claims.get(public_key)
            if claim is None:
                needed.append(public_key)
            elif claim.org == org:
                if claim.org_version != version:
                    needed.append(public_key)  # made for an earlier decision of this org
            elif self.state.aggregate_version(ORG, claim.org) > claim.org_version:
                # That org moved on: its claiming command was stored (and the key then deleted:
                # the decision checked that no org holds it now) or can never be.
                needed.append(public_key)
            else:
                raise Conflict(f"Key `{public_key}` is claimed by organization `{claim.org}`, which is creating it",
                               {"public_key": public_key, "org": claim.org})
        if not needed:
            return None
        return Decision(CLAIMS, "keys", [self.event("KeysClaimed", "keys", org=org, org_version=version,
                                                    public_keys=needed)])


# Changes that decide which relays may register or fetch what: their reply waits for the
# org access actor (and through it every gateway) to have applied them.
RELAY_ACCESS_COMMANDS = {"relay.allow", "relay.deny", "org.trust_relay", "org.untrust_relay"}

QUERY_TYPES = {"org.option_get", "project.option_get", "key.list", "relay.list",
               "user.permission_list", "user.authenticate", "export.orgs"}
# Answered at once, from what this handler knows, even when the store does not answer.
STATUS_QUERY = "stream.status"


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
            keys = [{"publicKey": k.public_key, "status": k.status}
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
        return {"key": key, "value": org.options.get(key, option_catalogue.OPTION_DEFAULTS.get(key)),
                "isSet": key in org.options}
    if message_type == "project.option_get":
        project = require_project(state, payload["org"], payload["project"])
        org = state.orgs[project.org_id]
        key = payload["key"]
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


class CommandActor(ProjectionActor):
    name = "commands"
    snapshot_every = 10_000  # every actor folds the same state; one kind writes the snapshot

    def __init__(self, runtime: Any, store: Any) -> None:
        super().__init__(runtime, store)
        self.ids = IdPool()
        self.owner = f"commands-{uuid.uuid4().hex[:12]}"  # names this handler's id blocks
        # The last append the store refused or left unanswered (cleared by the next stored one).
        self.write_error: dict[str, Any] | None = None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Call):
            return self._command(message)
        return super().on_receive(message)

    def _command(self, call: Call) -> None:
        message_type = call.request.type
        if message_type == STATUS_QUERY:
            self.run_handler(call, lambda _c: self.stream_status())
            return
        if not self.is_replayed():
            self.after(self.live_from, lambda: self._command(call), call)
            return
        if message_type in QUERY_TYPES:
            self.serve_caught_up(call, lambda: answer_query(self.state, message_type, call.payload))
            return
        self._attempt(call, attempt=0, synced=False)

    def stream_status(self) -> dict[str, Any]:
        """What `relayctl status` shows of the event stream, as this handler sees it."""
        return {"folded": self.state.sequence, "replayed": self.is_replayed(), "skipped": list(self.state.skipped),
                "write_error": self.write_error}

    def _attempt(self, call: Call, attempt: int, synced: bool) -> None:
        if call.expired:
            return
        draw = IdDraw(self.ids)
        decider = Decider(self.state, call.request.actor, draw)
        try:
            decision = decider.decide(call.request.type, call.payload)
            if decision.explicit_keys and not synced:
                # A key named explicitly may be one another handler has just stored: see it first.
                self.catch_up(lambda: self._attempt(call, attempt, True), call)
                return
            claim = decider.claims_for(decision)
        except (NotFound, Conflict) as exc:
            if not synced:
                self.catch_up(lambda: self._attempt(call, attempt, True), call)
            else:
                call.error(exc)
            return
        except RelayctlError as exc:
            call.error(exc)
            return
        if not decision.events:
            self.run_handler(call, lambda _c: decision.result(self.state))
            return
        try:
            # Before anything is claimed for it: a commit that can never be stored needs nothing.
            self.store.check_size(decision.events)
        except CommitTooLarge as exc:
            call.error(self._too_large(call, exc))
            return
        if draw.short:
            # Not stored as it is (it holds placeholder ids): claim ids, then decide again.
            kind, missing = next(iter(draw.short.items()))
            block = decider.claim_ids(kind, max(ID_BLOCK, missing), self.owner)
            payload = block.events[0].payload
            self._prerequisite(call, attempt, block,
                               lambda: self.ids.add(kind, payload["first"], payload["count"]))
            return
        if claim is not None:
            self._prerequisite(call, attempt, claim, lambda: None)
            return
        sequence = self._append(call, attempt, decision, draw)
        if sequence is None:
            return
        log.info("commands.stored", type=call.request.type, sequence=sequence,
                 events=[e.type for e in decision.events], correlation_id=call.request.id)

        def reply() -> None:
            if call.request.type in RELAY_ACCESS_COMMANDS:
                self._await_relay_access(decision)
            self.run_handler(call, lambda _c: decision.result(self.state))

        self.after(sequence, reply, call)

    def _prerequisite(self, call: Call, attempt: int, decision: Decision, stored: Callable[[], None]) -> None:
        """Append a commit the command needs first (ids, key claims), then decide it again
        once that commit is folded."""
        sequence = self._append(call, attempt, decision, None)
        if sequence is None:
            return
        stored()
        log.info("commands.prerequisite_stored", type=call.request.type, sequence=sequence,
                 commit=decision.events[0].type, correlation_id=call.request.id)
        self.after(sequence, lambda: self._attempt(call, attempt + 1, True), call)

    def _append(self, call: Call, attempt: int, decision: Decision, draw: IdDraw | None) -> int | None:
        """Append `decision` expecting its aggregate's folded version; the sequence, or None
        when the call is taken care of (a retry after a conflict is scheduled, or an error
        replied). The ids `draw` took are used up unless the commit was surely not stored."""
        expected = self.state.aggregate_version(decision.aggregate, decision.aggregate_id)
        try:
            with metrics.timer("events.append", tags={"command": call.request.type}):
                sequence = int(self.runtime.call(self.store.append(decision.events, expected)))
        except Conflict as exc:
            metrics.incr("events.append_conflicts")
            if attempt + 1 >= MAX_ATTEMPTS:
                call.error(Conflict("too many concurrent changes to the same object; retry"))
                return None
            last = exc.details.get("last_sequence")
            retry = lambda: self._attempt(call, attempt + 1, True)  # noqa: E731
            if isinstance(last, int):
                self.after(last, retry, call)
            else:
                self.catch_up(retry, call)
            return None
        except CommitTooLarge as exc:
            call.error(self._too_large(call, exc))
            return None
        except Exception as exc:
            if draw is not None:
                draw.commit()  # perhaps stored after all: never hand these ids out again
            error = exc if isinstance(exc, RelayctlError) else Unavailable(
                "the event store is unavailable; nothing was changed")
            self.write_error = {"message": error.message, "since": (self.write_error or {}).get("since", time.time()),
                                "command": call.request.type}
            metrics.incr("events.append_failed", tags={"reason": type(exc).__name__})
            log.error("commands.append_failed", error=str(exc), type=call.request.type,
                      correlation_id=call.request.id)
            call.error(error)
            return None
        if draw is not None:
            draw.commit()
        self.write_error = None
        return sequence

    def _too_large(self, call: Call, exc: CommitTooLarge) -> CommitTooLarge:
        if call.request.type != "import.org":
            return exc
        details = exc.details
        return CommitTooLarge(
            f"org `{details.get('aggregate_id')}` is too large to import as one commit: {details.get('size', 0):,} "
            f"bytes ({details.get('events')} events), over the event store's limit of {details.get('limit', 0):,} "
            f"bytes per commit (the NATS message size limit, max_payload); nothing was stored. Import the org "
            f"in parts: fewer projects or keys per file, each import adds to what is there", details)

    def _await_relay_access(self, decision: Decision) -> None:
        """Return only once the org access actor applied a change to who may do what.

        Its `org.relay_auth` answer waits until it has folded everything stored so far,
        written `relayauth:*` and told the gateways; so a relay banned (or trusted) by a
        command is refused (or served) by the next request after the command returns.
        """
        payload = decision.events[0].payload
        public_key = payload.get("public_key") if decision.aggregate == RELAY else None
        if self.runtime.nc is None:
            return
        try:
            self.runtime.call(bus_request(self.runtime.nc, "org.relay_auth",
                                          {"public_key": public_key or decision.aggregate_id}, timeout=3.0),
                              timeout=4.0)
        except Exception as exc:  # no org access actor running: nothing to wait for
            log.info("commands.relay_access_not_confirmed", error=str(exc))


