"""Command handlers: control messages in, domain events out.

`Decider(state, actor, ids).decide(type, payload)` is pure: it validates a command against the
current projection and returns a `Decision` - the events to append (possibly none, for a change
that is already in effect) and how to compute the reply once they are folded. The
`CommandActor` (actors/commands.py) appends them with the aggregate's last sequence as the expectation, so a
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

import time
from collections.abc import Callable
from typing import Any

from domain.access import checked_role, checked_scopes, org_token, user_token
from domain.decisions import (
    Decision,
    IdDraw,
    checked_key,
    checked_option,
    checked_rate_limit,
    new_public_key,
    new_token,
    token_hash,
)
from domain.importer import decide_import
from domain.model import ACTIVE, DELETED, DISABLED, TRUSTED_RELAYS
from domain.project_config import check_pii_change
from domain.queries import require_key, require_org, require_project, require_user
from domain.state import DomainState
from messages.errors import BadRequest, Conflict, Forbidden, NotFound
from messages.events import CLAIMS, IDS, ORG, RELAY, USER, DomainEvent

RELAY_SEEN_INTERVAL = 60.0  # seconds: a relay registering again within it is not recorded as seen again

# The commands a `Decider` decides (each one a method: dots become underscores).
COMMAND_TYPES = frozenset({
    "org.create", "org.option_set", "org.option_unset", "org.trust_relay", "org.untrust_relay",
    "org.template_set", "project.create", "project.option_set", "project.option_unset", "project.disable",
    "project.enable", "project.delete", "key.create", "key.disable", "key.enable", "key.delete",
    "key.rate_limit",
    "relay.allow", "relay.deny", "relay.register", "user.create", "user.token_create", "user.permission_add",
    "user.permission_remove", "import.org", "import.abandon",
    # the management API (gateway/api/, domain/access.py)
    "token.create", "token.revoke", "org.update", "org.member_add", "team.create", "team.delete",
    "project.team_add", "project.team_remove", "org.member_remove", "project.update", "key.update",
})


class Decider:
    """Turns one command into a Decision; one method per command type."""

    def __init__(self, state: DomainState, actor: str, ids: IdDraw | None = None, *,
                 clock: Callable[[], float] = time.time, new_key: Callable[[], str] = new_public_key,
                 new_token: Callable[[], str] = new_token) -> None:
        self.state = state
        self.actor = actor or "anonymous"
        self.ids = ids if ids is not None else IdDraw()
        # What a decision may not compute from the state: injected, so a test decides the same way twice.
        self.clock = clock
        self.new_key = new_key
        self.new_token = new_token

    def event(self, type_: str, aggregate_id: str, **payload: Any) -> DomainEvent:
        return DomainEvent(type=type_, aggregate_id=aggregate_id, payload=payload, actor=self.actor, ts=self.clock())

    def decide(self, message_type: str, payload: dict[str, Any]) -> Decision:
        method: Callable[..., Decision] | None = getattr(self, message_type.replace(".", "_"), None)
        if method is None or message_type not in COMMAND_TYPES:
            raise BadRequest(f"unknown command {message_type}")
        decision = method(**payload)
        pending = self.state.pending_import(decision.aggregate_id) if decision.aggregate == ORG else None
        if pending is not None and decision.events and message_type not in ("import.org", "import.abandon"):
            # Its parts were decided on the org as it is: nothing may change it in between.
            raise Conflict(
                f"org `{pending.org}` is being imported (import {pending.import_id}, {pending.decided()} of "
                f"{pending.projects} projects staged): change it once the import is committed - run `relayctl "
                f"import` again with its file to finish it, or `relayctl import --restart FILE` to replace it",
                {"org": pending.org, "import_id": pending.import_id})
        return decision

    # orgs

    def org_create(self, slug: str, name: str | None, owner: str | None = None) -> Decision:
        """`owner`: a user who owns the org from its first commit (whoever creates an org
        through the management API), so no moment exists where the new org has no one who
        may manage it."""
        if self.state.org(slug) is not None:
            raise Conflict(f"Organization `{slug}` already exists")
        events = [self.event("OrgCreated", slug, name=name or slug, id=self.ids.take("org"))]
        if owner is not None:
            require_user(self.state, owner)
            events.append(self.event("MemberAdded", slug, username=owner, role="owner"))
        return Decision(ORG, slug, events,
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
        checked_key("org", key, found.options)
        if key not in found.options:
            return Decision(ORG, org)
        check_pii_change(self.state, found, key, org_options={k: v for k, v in found.options.items() if k != key})
        return Decision(ORG, org, [self.event("OrgOptionUnset", org, key=key)])

    def org_trust_relay(self, org: str, public_key: str, name: str | None,
                        description: str | None) -> Decision:
        found = require_org(self.state, org)
        entries = [e for e in found.options.get(TRUSTED_RELAYS, []) if e.get("public_key") != public_key]
        entry: dict[str, Any] = {"public_key": public_key, "name": name or public_key[:8],
                                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))}
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
        public_key = self.new_key()
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
        checked_key("project", key, found.options)
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
        public_key = public_key or self.new_key()
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

    def key_rate_limit(self, public_key: str, count: int | None, window: int | None, clear: bool) -> Decision:
        """Set (or with `clear` remove) a key's rate limit: Relay's key quota, `count` events
        per `window` seconds, enforced by relays and by the gateway for SDKs that send to it."""
        key, org = require_key(self.state, public_key)
        limit = checked_rate_limit(count, window, clear)
        if key.rate_limit == limit:
            return Decision(ORG, org.slug, result=lambda s: {"publicKey": public_key, "rateLimit": limit})
        return Decision(ORG, org.slug, [self.event("KeyRateLimitSet", org.slug, public_key=public_key,
                                                   rate_limit=limit)],
                        lambda s: {"publicKey": public_key, "rateLimit": limit})

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
        if relay.last_seen is None or self.clock() - relay.last_seen > RELAY_SEEN_INTERVAL:
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
        token = self.new_token()
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

    # the management API: tokens sentry-cli recognizes, org members, project and key details

    def token_create(self, username: str, scopes: list[Any] | None, org: str | None, url: str | None,
                     name: str | None) -> Decision:
        """A user token, or with `org` an org auth token naming `url` (the API's base URL);
        only its hash is stored. Its scopes are bounded by the user's role in each org."""
        require_user(self.state, username)
        checked = checked_scopes(scopes)
        if org is not None:
            require_org(self.state, org)
            if not url:
                raise BadRequest("an org auth token needs the API's URL (--url)", {"url": ["required"]})
            token = org_token(self.new_token(), url=url.rstrip("/"), org=org, issued=self.clock())
        else:
            token = user_token(self.new_token())
        digest = token_hash(token)
        token_id = digest[:12]
        return Decision(USER, username, [self.event("TokenCreated", username, token_hash=digest, id=token_id,
                                                    scopes=checked, org=org, name=name)],
                        lambda s: {"token": token, "id": token_id, "scopes": checked, "org": org})

    def token_revoke(self, token_id: str) -> Decision:
        for user in self.state.users.values():
            if any(info["id"] == token_id for info in user.tokens.values()) or any(
                    digest[:12] == token_id for digest in user.token_hashes):
                return Decision(USER, user.username, [self.event("TokenRevoked", user.username, token_id=token_id)],
                                lambda s: {"id": token_id, "revoked": True})
        raise NotFound(f"No token matching `{token_id}`")

    def org_update(self, org: str, name: str | None) -> Decision:
        found = require_org(self.state, org)
        result = lambda s: {"org": org, "name": s.org(org).name}  # noqa: E731
        if name is None or name == found.name:
            return Decision(ORG, org, [], result)
        return Decision(ORG, org, [self.event("OrgUpdated", org, name=name)], result)

    def org_member_add(self, org: str, username: str, role: str) -> Decision:
        found = require_org(self.state, org)
        require_user(self.state, username)
        role = checked_role(role)
        result = lambda s: {"org": org, "username": username, "role": role}  # noqa: E731
        if found.members.get(username) == role:
            return Decision(ORG, org, [], result)
        return Decision(ORG, org, [self.event("MemberAdded", org, username=username, role=role)], result)

    def org_member_remove(self, org: str, username: str) -> Decision:
        found = require_org(self.state, org)
        if username not in found.members:
            raise NotFound(f"`{username}` is not a member of `{org}`")
        return Decision(ORG, org, [self.event("MemberRemoved", org, username=username)],
                        lambda s: {"org": org, "username": username, "removed": True})

    def team_create(self, org: str, team: str, name: str | None) -> Decision:
        found = require_org(self.state, org)
        if team == org or team in found.teams:
            raise Conflict(f"Team `{org}/{team}` already exists", {"slug": ["A team with this slug already exists."]})
        return Decision(ORG, org, [self.event("TeamCreated", org, team=team, name=name or team)],
                        lambda s: {"org": org, "slug": team})

    def team_delete(self, org: str, team: str) -> Decision:
        found = require_org(self.state, org)
        if team == org:
            raise BadRequest(f"`{team}` is the default team of `{org}`: it cannot be deleted")
        if team not in found.teams:
            raise NotFound(f"No team matching `{org}/{team}`")
        return Decision(ORG, org, [self.event("TeamDeleted", org, team=team)])

    def _team_of(self, org: str, team: str) -> None:
        if team != org and team not in require_org(self.state, org).teams:
            raise NotFound(f"No team matching `{org}/{team}`")

    def project_team_add(self, org: str, project: str, team: str) -> Decision:
        """A project with no team is in its org's default team; adding the default team to
        such a project changes nothing."""
        found = require_project(self.state, org, project)
        self._team_of(org, team)
        if team in found.teams or (team == org and not found.teams):
            return Decision(ORG, org)
        return Decision(ORG, org, [self.event("ProjectTeamAdded", org, project=project, team=team)])

    def project_team_remove(self, org: str, project: str, team: str) -> Decision:
        found = require_project(self.state, org, project)
        self._team_of(org, team)
        if team not in found.teams:
            return Decision(ORG, org)  # not in it (a project without teams stays in the default team)
        return Decision(ORG, org, [self.event("ProjectTeamRemoved", org, project=project, team=team)])

    def project_update(self, org: str, project: str, name: str | None, slug: str | None,
                       platform: str | None) -> Decision:
        found = require_project(self.state, org, project)
        changed: dict[str, Any] = {}
        if name is not None and name != found.name:
            changed["name"] = name
        if platform is not None and platform != found.platform:
            changed["platform"] = platform
        if slug is not None and slug != found.slug:
            if self.state.project(org, slug) is not None:
                raise Conflict(f"Project `{org}/{slug}` already exists",
                               {"slug": [f"The slug \"{slug}\" is already in use."]})
            changed["slug"] = slug
        final = changed.get("slug", project)
        result = lambda s: {"org": org, "slug": final}  # noqa: E731
        if not changed:
            return Decision(ORG, org, [], result)
        return Decision(ORG, org, [self.event("ProjectUpdated", org, project=project, **changed)], result)

    def key_update(self, public_key: str, name: str | None) -> Decision:
        key, org = require_key(self.state, public_key)
        result = lambda s: {"publicKey": public_key, "name": name}  # noqa: E731
        if key.name == name:
            return Decision(ORG, org.slug, [], result)
        return Decision(ORG, org.slug, [self.event("KeyUpdated", org.slug, public_key=public_key, name=name)], result)

    # bulk import: one commit per org, or an import in parts folded at once when committed

    def import_org(self, org: dict[str, Any], part: dict[str, Any] | None = None, restart: bool = False) -> Decision:
        return decide_import(self, org, part, restart)

    def import_abandon(self, org: str, import_id: str | None = None) -> Decision:
        """Drop the org's unfinished import in parts: nothing of it is ever folded."""
        pending = self.state.pending_import(org)
        if pending is None:
            raise NotFound(f"org `{org}` has no unfinished import", {"org": org})
        if import_id is not None and import_id != pending.import_id:
            raise Conflict(f"org `{org}`'s unfinished import is {pending.import_id}, not {import_id}",
                           {"org": org, "import_id": pending.import_id})
        summary = {"org": org, "import_id": pending.import_id, "projects_staged": pending.decided(),
                   "projects": pending.projects}
        return Decision(ORG, org, [self.event("ImportAbandoned", org, import_id=pending.import_id,
                                              reason="abandoned by " + self.actor)], lambda s: summary)

    # the global aggregates a decision may need first

    def claim_ids(self, kind: str, count: int, owner: str) -> Decision:
        """A block of `count` ids of `kind` past every id stored or claimed so far."""
        first = self.state.next_ids[kind]
        return Decision(IDS, kind, [self.event("IdsClaimed", kind, first=first, count=count, owner=owner)])

    def claims_for(self, decision: Decision, max_keys: int | None = None) -> Decision | None:
        """The `KeysClaimed` commit the org commit of `decision` needs first (None: its
        explicit keys are all claimed by its org at the org's current version), of at most
        `max_keys` keys (the rest are claimed by the next one, at the same org version). A
        key whose claim by another org may still be used is a Conflict: one made while that
        org's aggregate was where it is, or while it has an import in parts pending (its
        parts may hold the key; they are folded only when it is committed)."""
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
            elif self.state.aggregate_version(ORG, claim.org) > claim.org_version \
                    and self.state.pending_import(claim.org) is None:
                # That org moved on: its claiming command was stored (and the key then deleted:
                # the decision checked that no org holds it now) or can never be.
                needed.append(public_key)
            else:
                raise Conflict(f"Key `{public_key}` is claimed by organization `{claim.org}`, which is creating it",
                               {"public_key": public_key, "org": claim.org})
        if not needed:
            return None
        return Decision(CLAIMS, "keys", [self.event("KeysClaimed", "keys", org=org, org_version=version,
                                                    public_keys=needed[:max_keys])])
