"""Who may do what through the management API: API token formats, scopes and org roles.

Pure (no I/O). A token is checked by `user.authenticate` (the key lookup actor), which
answers a *principal*: the user, whether a superuser, their permissions, the token's
scopes and org, and the user's org roles. `org_scopes(principal, org)` is what that
principal may do in one org: None when it may not see the org at all (the API answers 404,
as Sentry does, so existence does not leak), else the token's scopes bounded by the
user's role there. A superuser sees every org with the token's scopes.

Token formats are the ones sentry-cli recognizes (it warns about any other):

- user tokens: `sntryu_` and 64 lowercase hex characters;
- org auth tokens: `sntrys_<base64 of JSON {"iat", "url", "region_url", "org"}>_<base64
  of a 32-byte secret, no padding>` - the `url` and `org` configure sentry-cli by themselves.

Only the sha256 of a token is stored (`domain.decisions.token_hash`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from messages.errors import BadRequest

USER_TOKEN_PREFIX = "sntryu_"
ORG_TOKEN_PREFIX = "sntrys_"

# relayctl's own permission for what spans orgs (creating orgs, relays).
ADMIN_PERMISSION = "relayctl.admin"

ORG_SCOPES = ("org:read", "org:write", "org:admin", "org:ci")
SCOPES = (*ORG_SCOPES, "project:read", "project:write", "project:admin", "project:releases",
          "team:read", "team:write", "team:admin", "member:read", "member:write", "member:admin",
          "event:read", "event:write", "event:admin")

_MEMBER = frozenset({"org:read", "project:read", "project:releases", "team:read", "member:read",
                     "event:read", "event:write", "event:admin", "org:ci"})
_ADMIN = _MEMBER | {"project:write", "project:admin", "team:write", "team:admin"}
_MANAGER = _ADMIN | {"org:write", "member:write", "member:admin"}
# Sentry's org roles, least to most; each bounds the scopes of its member's tokens.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "member": _MEMBER,
    "admin": _ADMIN,
    "manager": _MANAGER,
    "owner": frozenset(SCOPES),
}
ROLES = tuple(ROLE_SCOPES)
# An org auth token's scopes when none are given (Sentry's: what CI needs).
ORG_TOKEN_SCOPES = ("org:ci", "org:read", "project:read", "project:releases")


def checked_scopes(scopes: Iterable[Any] | None) -> list[str] | None:
    """Scopes as stored: known ones, sorted, no repeats (None: every scope)."""
    if scopes is None:
        return None
    out = set()
    for scope in scopes:
        if scope not in SCOPES:
            raise BadRequest(f"unknown scope {scope!r} (known: {', '.join(SCOPES)})", {"scopes": [str(scope)]})
        out.add(str(scope))
    if not out:
        raise BadRequest("a token needs at least one scope")
    return sorted(out)


def checked_role(role: Any) -> str:
    if role not in ROLE_SCOPES:
        raise BadRequest(f"unknown role {role!r} (one of {', '.join(ROLES)})", {"role": [f"Invalid role {role!r}"]})
    return str(role)


def user_token(secret: str) -> str:
    """A user API token made from `secret` (random: domain.decisions.new_token)."""
    return USER_TOKEN_PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def org_token(secret: str, *, url: str, org: str, issued: float) -> str:
    """An org auth token for `org`, naming the API's `url`, made from `secret`."""
    payload = json.dumps({"iat": issued, "url": url, "region_url": url, "org": org}, separators=(",", ":"))
    encoded = base64.b64encode(payload.encode()).decode()
    key = base64.b64encode(hashlib.sha256(secret.encode()).digest()).decode().rstrip("=")
    return f"{ORG_TOKEN_PREFIX}{encoded}_{key}"


def token_scopes(principal: dict[str, Any]) -> frozenset[str]:
    scopes = principal.get("scopes")
    return frozenset(SCOPES) if scopes is None else frozenset(scopes)


def org_scopes(principal: dict[str, Any], org: str) -> frozenset[str] | None:
    """What `principal` (a `user.authenticate` answer) may do in `org`; None: it may not
    see the org. An org auth token sees its own org only."""
    token_org = principal.get("org")
    if token_org is not None and token_org != org:
        return None
    granted = token_scopes(principal)
    if principal.get("superuser"):
        return granted
    role = (principal.get("memberships") or {}).get(org)
    if role is None:
        return None
    return granted & ROLE_SCOPES.get(role, frozenset())


def visible_orgs(principal: dict[str, Any]) -> list[str] | None:
    """The slugs of the orgs `principal` may see; None: every org (a superuser's user token)."""
    token_org = principal.get("org")
    if token_org is not None:
        return [token_org] if org_scopes(principal, token_org) is not None else []
    if principal.get("superuser"):
        return None
    return sorted(principal.get("memberships") or {})


def spans_orgs(principal: dict[str, Any]) -> bool:
    """May do what belongs to no one org (create orgs): superusers and `relayctl.admin`,
    with a user token (an org auth token is bound to its org)."""
    if principal.get("org") is not None:
        return False
    return bool(principal.get("superuser")) or ADMIN_PERMISSION in (principal.get("permissions") or [])
