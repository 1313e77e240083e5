"""The command handlers' check of a management API write (domain/authorization.py): given
the users, tokens and memberships stored, a token and a write, the user it is decided for -
or the error the API answers (401 token, 404 org not visible, 403 scope)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from domain.access import user_token
from domain.authorization import WRITE_SCOPES, authorize
from domain.decisions import token_hash
from domain.state import DomainState
from messages.errors import BadRequest, Forbidden, NotFound, RelayctlError, Unauthorized
from tests.unit.domain.gwt import acme_web, event, given, key, org_created

ANN = event("UserCreated", "ann", email=None, superuser=False)
ROOT = event("UserCreated", "root", email=None, superuser=True)
ADMIN = event("UserCreated", "adm", email=None, superuser=False)


_made = itertools.count(1)


def with_token(username: str, scopes: list[str] | None = None, org: str | None = None) -> tuple[str, list[Any]]:
    """A new token of `username` (each one different) and the event that stores it."""
    token = user_token(f"secret-{next(_made)}")
    digest = token_hash(token)
    return token, [event("TokenCreated", username, token_hash=digest, id=digest[:12], scopes=scopes, org=org,
                         name=None)]


def state_of(*events: Any) -> DomainState:
    return given(*events).state()


def refused(state: DomainState, message_type: str, payload: dict[str, Any], token: str,
            error: type[RelayctlError], match: str = "") -> None:
    with pytest.raises(error, match=match or None) as caught:
        authorize(state, message_type, payload, token)
    assert type(caught.value) is error


def member(username: str, role: str, org: str = "acme") -> Any:
    return event("MemberAdded", org, username=username, role=role)


def test_authorize_a_member_with_the_scope_is_the_token_user() -> None:
    token, stored = with_token("ann")
    state = state_of(*acme_web(), ANN, *stored, member("ann", "admin"))
    assert authorize(state, "project.delete", {"org": "acme", "project": "web"}, token) == "ann"
    # a key's org is the org of its project
    assert authorize(state, "key.delete", {"public_key": key(100)}, token) == "ann"


def test_authorize_a_missing_unknown_or_revoked_token_is_unauthorized() -> None:
    token, stored = with_token("ann")
    base = [*acme_web(), ANN, *stored, member("ann", "owner")]
    refused(state_of(*base), "org.update", {"org": "acme"}, "", Unauthorized)
    refused(state_of(*base), "org.update", {"org": "acme"}, "sntryu_" + "0" * 64, Unauthorized)
    revoked = event("TokenRevoked", "ann", token_id=stored[0].payload["id"])
    refused(state_of(*base, revoked), "org.update", {"org": "acme"}, token, Unauthorized)


def test_authorize_an_org_the_user_is_no_member_of_is_not_found_as_a_missing_one() -> None:
    token, stored = with_token("ann")
    state = state_of(*acme_web(), org_created("beta", id=2), ANN, *stored, member("ann", "owner", "beta"))
    refused(state, "org.trust_relay", {"org": "acme", "public_key": "A" * 43, "name": "x"}, token, NotFound,
            "No organization matching `acme`")
    refused(state, "org.update", {"org": "nowhere"}, token, NotFound, "No organization matching `nowhere`")
    refused(state, "key.delete", {"public_key": key(100)}, token, NotFound, f"No key matching `{key(100)}`")
    refused(state, "key.delete", {"public_key": key(7)}, token, NotFound, f"No key matching `{key(7)}`")
    assert authorize(state, "org.update", {"org": "beta"}, token) == "ann"


def test_authorize_a_visible_org_without_the_scope_is_forbidden() -> None:
    token, stored = with_token("ann")
    state = state_of(*acme_web(), ANN, *stored, member("ann", "member"))
    for message_type, payload in (("project.delete", {"org": "acme", "project": "web"}),
                                  ("key.create", {"org": "acme", "project": "web"}),
                                  ("org.trust_relay", {"org": "acme", "public_key": "A" * 43}),
                                  ("org.member_add", {"org": "acme", "username": "ann", "role": "member"})):
        refused(state, message_type, payload, token, Forbidden)
    # the token's scopes bound the role's: an owner's read-only token writes nothing
    read_only, stored_ro = with_token("ann", ["org:read", "project:read"])
    state = state_of(*acme_web(), ANN, *stored, *stored_ro, member("ann", "owner"))
    refused(state, "project.update", {"org": "acme", "project": "web"}, read_only, Forbidden)
    assert authorize(state, "project.update", {"org": "acme", "project": "web"}, token) == "ann"


def test_authorize_an_org_auth_token_acts_in_its_own_org_only() -> None:
    token, stored = with_token("ann", ["project:write", "org:read"], "acme")
    state = state_of(*acme_web(), org_created("beta", id=2), ANN, *stored, member("ann", "owner"),
                     member("ann", "owner", "beta"))
    assert authorize(state, "key.create", {"org": "acme", "project": "web"}, token) == "ann"
    refused(state, "team.create", {"org": "beta", "team": "t"}, token, NotFound)


def test_authorize_a_member_role_grants_no_more_than_the_callers_own() -> None:
    token, stored = with_token("adm")
    state = state_of(*acme_web(), ADMIN, ANN, *stored, member("adm", "manager"))
    assert authorize(state, "org.member_add", {"org": "acme", "username": "ann", "role": "admin"}, token) == "adm"
    refused(state, "org.member_add", {"org": "acme", "username": "ann", "role": "owner"}, token, Forbidden,
            "grants more than yours")
    refused(state, "org.member_add", {"org": "acme", "username": "ann", "role": "emperor"}, token, BadRequest)


def test_authorize_org_create_is_for_superusers_and_relayctl_admin_who_own_it() -> None:
    root_token, root_stored = with_token("root")
    ann_token, ann_stored = with_token("ann")
    adm_token, adm_stored = with_token("adm")
    org_token, org_stored = with_token("root", None, "acme")
    state = state_of(*acme_web(), ROOT, ANN, ADMIN, *root_stored, *ann_stored, *adm_stored, *org_stored,
                     event("PermissionAdded", "adm", permission="relayctl.admin"))
    assert authorize(state, "org.create", {"slug": "new", "owner": "root"}, root_token) == "root"
    assert authorize(state, "org.create", {"slug": "new", "owner": None}, adm_token) == "adm"
    refused(state, "org.create", {"slug": "new", "owner": "ann"}, ann_token, Forbidden)
    refused(state, "org.create", {"slug": "new", "owner": "root"}, org_token, Forbidden)  # bound to its org
    refused(state, "org.create", {"slug": "new", "owner": "ann"}, adm_token, Forbidden, "first owner")


def test_authorize_a_superuser_acts_in_every_org_and_no_command_outside_the_api() -> None:
    token, stored = with_token("root")
    state = state_of(*acme_web(), ROOT, *stored)
    assert authorize(state, "project.delete", {"org": "acme", "project": "web"}, token) == "root"
    for message_type in ("relay.register", "user.create", "token.create", "import.org", "org.template_set"):
        assert message_type not in WRITE_SCOPES
        refused(state, message_type, {}, token, Forbidden)


RELAY = "a" * 43


def test_relay_allow_and_relay_deny_on_a_users_behalf_are_for_superusers_and_relayctl_admin() -> None:
    root_token, root_stored = with_token("root")
    ann_token, ann_stored = with_token("ann")
    adm_token, adm_stored = with_token("adm")
    adm_org_token, adm_org_stored = with_token("adm", None, "acme")
    state = state_of(*acme_web(), ROOT, ANN, ADMIN, *root_stored, *ann_stored, *adm_stored, *adm_org_stored,
                     member("ann", "owner"), event("PermissionAdded", "adm", permission="relayctl.admin"))
    for message_type, payload in (("relay.allow", {"public_key": RELAY, "internal": True}),
                                  ("relay.deny", {"public_key": RELAY})):
        assert authorize(state, message_type, payload, root_token) == "root"
        assert authorize(state, message_type, payload, adm_token) == "adm"
        refused(state, message_type, payload, ann_token, Forbidden)  # an org's owner: not what spans orgs
        refused(state, message_type, payload, adm_org_token, Forbidden)  # an org auth token is bound to its org
        refused(state, message_type, payload, "sntryu_" + "0" * 64, Unauthorized)
