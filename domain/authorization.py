"""Whether a write the management API sends for a user may be decided: the command side's check.

The gateway sends the API's writes on `rc.api.<aggregate>.<command>` (messages/endpoints.py
`on_behalf`), each with the bearer token its client presented. The gateway checks the
token too, for an early answer, but holding the gateway's NATS credentials must not be
enough to change anything: the command handlers decide with `authorize` on their own
state, and the user it returns - never a name the gateway sends - is the actor of the
events. Its answers are the API's, so existence does not leak:

- a missing, unknown or revoked token: `Unauthorized` (401);
- an org the token's user may not see (no member, or an org auth token of another org),
  or a key of such an org: `NotFound`, worded as for an org that does not exist (404);
- a visible org without the scope the command needs, or a member role granting more than
  the caller's own scopes there: `Forbidden` (403);
- creating an org: superusers and `relayctl.admin` with a user token only (403), and the
  org's first owner is the caller or nobody;
- allowing or denying a relay key (it may then fetch the configs of every org that trusts
  it, or of all, when internal): superusers and `relayctl.admin` with a user token only (403).

Pure: the state is the command handlers' projection (users, tokens, memberships, orgs, keys).
"""

from __future__ import annotations

from typing import Any

from domain.access import ROLE_SCOPES, checked_role, org_scopes, spans_orgs
from domain.queries import answer_query
from domain.state import DomainState
from messages.errors import Forbidden, NotFound, Unauthorized

NO_PERMISSION = "You do not have permission to perform this action."

# The scope each write of the management API needs in the org it changes (None: what spans
# orgs), as gateway/api/writes.py asks it of a request - Sentry's scopes per endpoint.
WRITE_SCOPES: dict[str, str | None] = {
    "org.create": None,
    # relay access spans orgs: superusers and `relayctl.admin` with a user token
    "relay.allow": None,
    "relay.deny": None,
    "org.update": "org:write",
    "org.trust_relay": "org:write",
    "org.untrust_relay": "org:write",
    "org.member_add": "member:write",
    "org.member_remove": "member:admin",
    "team.create": "team:write",
    "team.delete": "team:admin",
    "project.create": "project:write",
    "project.update": "project:write",
    "project.option_set": "project:write",
    "project.option_unset": "project:write",
    "project.team_add": "project:write",
    "project.team_remove": "project:write",
    "project.delete": "project:admin",
    "key.create": "project:write",
    "key.update": "project:write",
    "key.rate_limit": "project:write",
    "key.enable": "project:write",
    "key.disable": "project:write",
    "key.delete": "project:write",
}


def principal(state: DomainState, token: str) -> dict[str, Any]:
    """What `user.authenticate` answers of `token`: Unauthorized unless it is a live token."""
    if not token:
        raise Unauthorized("invalid token")
    answer: dict[str, Any] = answer_query(state, "user.authenticate", {"token": token})
    return answer


def authorize(state: DomainState, message_type: str, payload: dict[str, Any], token: str) -> str:
    """The username on whose behalf `message_type` with `payload` may be decided, or the
    error the caller gets (see the module docstring)."""
    if message_type not in WRITE_SCOPES:
        raise Forbidden(f"{message_type} cannot be sent on a user's behalf")
    who = principal(state, token)
    username = str(who["username"])
    scope = WRITE_SCOPES[message_type]
    if scope is None:
        if not spans_orgs(who):
            raise Forbidden(NO_PERMISSION)
        if payload.get("owner") not in (None, username):
            raise Forbidden("An organization's first owner is whoever creates it.")
        return username
    org = _org_of(state, message_type, payload)
    scopes = org_scopes(who, org)
    if scopes is None:
        raise _not_found(message_type, payload)
    if scope not in scopes:
        raise Forbidden(NO_PERMISSION)
    if message_type == "org.member_add" and not ROLE_SCOPES[checked_role(payload.get("role"))] <= scopes:
        raise Forbidden(f"You may not give the role {payload.get('role')!r}: it grants more than yours.")
    return username


def _org_of(state: DomainState, message_type: str, payload: dict[str, Any]) -> str:
    """The slug of the org a write changes: named in it, or the org of the key it names."""
    if "org" in payload:
        return str(payload["org"])
    org = state.org_of_key(str(payload.get("public_key")))
    if org is None:
        raise _not_found(message_type, payload)
    return org.slug


def _not_found(message_type: str, payload: dict[str, Any]) -> NotFound:
    """As the decider words a missing org or key, so an invisible one looks the same."""
    if "org" in payload:
        return NotFound(f"No organization matching `{payload['org']}`")
    return NotFound(f"No key matching `{payload.get('public_key')}`")
