"""The management API's commands and reads (domain/management.py, domain/access.py): tokens
sentry-cli recognizes, org members and roles, Sentry's shapes, pages."""

from __future__ import annotations

import base64
import json
import re

from domain.access import ROLE_SCOPES, org_scopes, spans_orgs, visible_orgs
from domain.decisions import token_hash
from messages.errors import BadRequest, Conflict, NotFound, Unauthorized
from tests.unit.domain.gwt import acme_web, event, given, key, org_created, project_created

ANN = event("UserCreated", "ann", email="ann@example.com", superuser=False)
BOB = event("UserCreated", "bob", email=None, superuser=False)


def created_token(outcome_reply: dict[str, str]) -> str:
    return outcome_reply["token"]


# -- tokens -----------------------------------------------------------------------------------

def test_token_create_makes_a_user_token_sentry_cli_recognizes_and_stores_its_hash() -> None:
    outcome = given(ANN).when("token.create", username="ann", scopes=["org:read", "project:read"], org=None,
                              url=None, name="ci")
    token = outcome.reply["token"]
    assert re.fullmatch(r"sntryu_[0-9a-f]{64}", token)
    digest = token_hash(token)
    assert outcome.events == [("TokenCreated", "ann", {"token_hash": digest, "id": digest[:12],
                                                       "scopes": ["org:read", "project:read"], "org": None,
                                                       "name": "ci"})]
    assert token not in repr(outcome.events)


def test_token_create_of_an_org_auth_token_carries_the_url_and_org() -> None:
    outcome = given(ANN, org_created()).when("token.create", username="ann", scopes=None, org="acme",
                                             url="http://127.0.0.1:3000/", name=None)
    token = outcome.reply["token"]
    prefix, payload, secret = token.split("_")
    assert prefix == "sntrys"
    assert json.loads(base64.b64decode(payload)) == {"iat": 1_750_000_000.0, "url": "http://127.0.0.1:3000",
                                                      "region_url": "http://127.0.0.1:3000", "org": "acme"}
    assert len(base64.b64decode(secret + "=" * (-len(secret) % 4))) == 32
    assert outcome.events[0][2]["org"] == "acme"


def test_token_create_errors() -> None:
    given().fails("token.create", NotFound, "No user", username="ann", scopes=None, org=None, url=None, name=None)
    given(ANN).fails("token.create", BadRequest, "unknown scope", username="ann", scopes=["org:everything"],
                     org=None, url=None, name=None)
    given(ANN).fails("token.create", NotFound, "No organization", username="ann", scopes=None, org="acme",
                     url="http://x", name=None)
    given(ANN, org_created()).fails("token.create", BadRequest, "URL", username="ann", scopes=None, org="acme",
                                    url=None, name=None)


def test_token_revoke_forgets_the_hash() -> None:
    made = given(ANN).when("token.create", username="ann", scopes=None, org=None, url=None, name=None)
    stored = made.decision.events[0]
    outcome = given(ANN, stored).when("token.revoke", token_id=made.reply["id"])
    assert outcome.events == [("TokenRevoked", "ann", {"token_id": made.reply["id"]})]
    assert not outcome.state.users["ann"].token_hashes
    given(ANN, stored, outcome.decision.events[0]).ask_fails("user.authenticate", Unauthorized,
                                                              token=made.reply["token"])


def test_token_revoke_of_an_unknown_token_is_not_found() -> None:
    given(ANN).fails("token.revoke", NotFound, "No token matching", token_id="0123456789ab")


def test_token_list_names_tokens_but_never_their_hash() -> None:
    made = given(ANN).when("token.create", username="ann", scopes=["org:read"], org=None, url=None, name="ci")
    answer = given(ANN, made.decision.events[0]).ask("token.list", username="ann")
    assert answer["tokens"] == [{"id": made.reply["id"], "name": "ci", "scopes": ["org:read"], "org": None,
                                 "dateCreated": "2025-06-15T15:06:40.000000Z"}]
    assert token_hash(made.reply["token"]) not in json.dumps(answer)


# -- members and access -----------------------------------------------------------------------

def test_org_update_renames_the_org() -> None:
    outcome = given(org_created()).when("org.update", org="acme", name="Acme Inc")
    assert outcome.events == [("OrgUpdated", "acme", {"name": "Acme Inc"})]
    assert outcome.reply == {"org": "acme", "name": "Acme Inc"}
    given(org_created()).when("org.update", org="acme", name="acme").then_nothing()
    given().fails("org.update", NotFound, "No organization", org="acme", name="x")


def test_org_member_add_gives_a_role_and_a_new_role_replaces_it() -> None:
    given(org_created(), ANN).when("org.member_add", org="acme", username="ann", role="member").then(
        [("MemberAdded", "acme", {"username": "ann", "role": "member"})],
        reply={"org": "acme", "username": "ann", "role": "member"})
    added = event("MemberAdded", "acme", username="ann", role="member")
    given(org_created(), ANN, added).when("org.member_add", org="acme", username="ann", role="member").then_nothing()
    given(org_created(), ANN, added).when("org.member_add", org="acme", username="ann", role="owner").then(
        [("MemberAdded", "acme", {"username": "ann", "role": "owner"})])


def test_org_member_add_errors() -> None:
    given(ANN).fails("org.member_add", NotFound, "No organization", org="acme", username="ann", role="member")
    given(org_created()).fails("org.member_add", NotFound, "No user", org="acme", username="ann", role="member")
    given(org_created(), ANN).fails("org.member_add", BadRequest, "unknown role", org="acme", username="ann",
                                    role="king")


def test_org_member_remove_removes_and_an_unknown_member_is_not_found() -> None:
    added = event("MemberAdded", "acme", username="ann", role="admin")
    outcome = given(org_created(), ANN, added).when("org.member_remove", org="acme", username="ann")
    assert outcome.events == [("MemberRemoved", "acme", {"username": "ann"})]
    assert outcome.state.org("acme").members == {}  # type: ignore[union-attr]
    given(org_created(), ANN).fails("org.member_remove", NotFound, "not a member", org="acme", username="ann")


def test_org_member_list_lists_members_with_their_roles() -> None:
    added = event("MemberAdded", "acme", username="ann", role="admin")
    members = given(org_created(), ANN, added).ask("org.member_list", org="acme")["members"]
    assert [(m["id"], m["role"], m["email"]) for m in members] == [("ann", "admin", "ann@example.com")]


def test_user_authenticate_answers_the_tokens_scopes_and_the_users_roles() -> None:
    made = given(ANN).when("token.create", username="ann", scopes=["org:read", "project:write"], org=None,
                           url=None, name=None)
    principal = given(org_created(), ANN, made.decision.events[0],
                      event("MemberAdded", "acme", username="ann", role="member")).ask(
        "user.authenticate", token=made.reply["token"])
    assert principal["memberships"] == {"acme": "member"}
    assert principal["scopes"] == ["org:read", "project:write"]
    # the role bounds the token: a member may not write projects
    assert org_scopes(principal, "acme") == {"org:read"}
    assert org_scopes(principal, "other") is None
    assert visible_orgs(principal) == ["acme"] and not spans_orgs(principal)


def test_access_of_superusers_org_tokens_and_admins() -> None:
    superuser = {"superuser": True, "scopes": None, "org": None, "memberships": {}}
    assert org_scopes(superuser, "any") == ROLE_SCOPES["owner"] and visible_orgs(superuser) is None
    assert spans_orgs(superuser)
    org_token = {"superuser": True, "scopes": ["org:read"], "org": "acme", "memberships": {}}
    assert org_scopes(org_token, "acme") == {"org:read"} and org_scopes(org_token, "other") is None
    assert visible_orgs(org_token) == ["acme"] and not spans_orgs(org_token)
    admin = {"superuser": False, "permissions": ["relayctl.admin"], "scopes": None, "org": None, "memberships": {}}
    assert spans_orgs(admin) and org_scopes(admin, "acme") is None


# -- projects and keys ------------------------------------------------------------------------

def test_project_update_renames_and_sets_the_platform() -> None:
    outcome = given(*acme_web()).when("project.update", org="acme", project="web", name="Web", slug="site",
                                      platform="python")
    assert outcome.events == [("ProjectUpdated", "acme", {"project": "web", "name": "Web", "platform": "python",
                                                          "slug": "site"})]
    assert outcome.state.project("acme", "site").platform == "python"  # type: ignore[union-attr]
    assert outcome.state.project("acme", "web") is None
    given(*acme_web()).when("project.update", org="acme", project="web", name="web", slug="web",
                            platform=None).then_nothing()


def test_project_update_to_a_slug_in_use_is_a_conflict() -> None:
    given(*acme_web(), project_created(project="api", id=2)).fails(
        "project.update", Conflict, "already exists", org="acme", project="web", name=None, slug="api",
        platform=None)


def test_key_update_names_a_key() -> None:
    given(*acme_web()).when("key.update", public_key=key(100), name="Backend").then(
        [("KeyUpdated", "acme", {"public_key": key(100), "name": "Backend"})])
    given(*acme_web()).fails("key.update", NotFound, "No key", public_key=key(7), name="x")


# -- reads ------------------------------------------------------------------------------------

def test_api_orgs_has_every_field_sentry_cli_needs_and_pages() -> None:
    orgs = [org_created(f"org-{n}", id=n) for n in range(1, 4)]
    first = given(*orgs).ask("api.orgs", slugs=None, cursor=None, per_page=2)
    assert [o["slug"] for o in first["items"]] == ["org-1", "org-2"] and first["next"] == "0:2:0"
    assert {"id", "slug", "name", "dateCreated", "isEarlyAdopter", "require2FA"} <= set(first["items"][0])
    assert first["items"][0]["id"] == "1"
    second = given(*orgs).ask("api.orgs", slugs=None, cursor=first["next"], per_page=2)
    assert [o["slug"] for o in second["items"]] == ["org-3"] and second["next"] is None
    only = given(*orgs).ask("api.orgs", slugs=["org-2"], cursor=None, per_page=100)
    assert [o["slug"] for o in only["items"]] == ["org-2"]
    given(*orgs).ask_fails("api.orgs", BadRequest, "cursor", slugs=None, cursor="bogus", per_page=2)


def test_api_org_has_roles_and_its_default_team() -> None:
    org = given(*acme_web()).ask("api.org", org="acme")
    assert org["teams"][0]["slug"] == "acme" and {"orgRoleList", "teamRoleList", "features"} <= set(org)
    given().ask_fails("api.org", NotFound, org="acme")


def test_api_projects_lists_the_orgs_projects_but_not_deleted_ones() -> None:
    events = [*acme_web(), project_created(project="gone", id=2), event("ProjectDeleted", "acme", project="gone")]
    items = given(*events).ask("api.projects", org="acme", cursor=None, per_page=100)["items"]
    assert [(p["id"], p["slug"], p["name"]) for p in items] == [("1", "web", "web")]


def test_api_project_reads_options_as_sentry_does() -> None:
    events = [*acme_web(), event("ProjectOptionSet", "acme", project="web", key="sentry:releases",
                                 value=["1.*", "2.0"])]
    project = given(*events).ask("api.project", org="acme", project="web")
    assert project["options"]["filters:releases"] == "1.*\n2.0"
    assert project["organization"] == {"id": "1", "slug": "acme", "name": "acme"}
    assert {"features", "allowedDomains", "resolveAge", "securityToken", "digestsMaxDelay"} <= set(project)
    given(*acme_web()).ask_fails("api.project", NotFound, org="acme", project="nope")


def test_api_keys_and_api_key_are_sentrys_project_keys() -> None:
    events = [*acme_web(), event("KeyRateLimitSet", "acme", public_key=key(100), rate_limit={"window": 60, "count": 5})]
    keys = given(*events).ask("api.keys", org="acme", project="web", base_url="http://h:3000/", status=None,
                              cursor=None, per_page=100)["items"]
    assert len(keys) == 1
    k = keys[0]
    assert k["id"] == key(100) and k["isActive"] is True and k["rateLimit"] == {"window": 60, "count": 5}
    assert k["dsn"]["public"] == f"http://{key(100)}@h:3000/1"


def test_api_key_reads_one_key_of_the_project() -> None:
    events = [*acme_web(), event("KeyRateLimitSet", "acme", public_key=key(100), rate_limit={"window": 60, "count": 5})]
    one = given(*events).ask("api.key", org="acme", project="web", key_id=key(100), base_url="http://h:3000")
    assert one["id"] == key(100) and one["rateLimit"] == {"window": 60, "count": 5}
    given(*events).ask_fails("api.key", NotFound, org="acme", project="web", key_id=key(5), base_url="http://h")


def test_user_authenticate_memberships_survive_a_snapshot() -> None:
    from domain.state import DomainState

    made = given(ANN).when("token.create", username="ann", scopes=None, org=None, url=None, name=None)
    g = given(org_created(), org_created("beta", id=2), ANN, made.decision.events[0],
              event("MemberAdded", "acme", username="ann", role="admin"),
              event("MemberAdded", "beta", username="ann", role="member"),
              event("MemberRemoved", "beta", username="ann"))
    state = g.state()
    restored = DomainState.from_snapshot(state.to_snapshot())
    from domain.queries import answer_query
    for s in (state, restored):
        assert answer_query(s, "user.authenticate", {"token": made.reply["token"]})["memberships"] == {"acme": "admin"}


# -- teams ------------------------------------------------------------------------------------

TEAM = event("TeamCreated", "acme", team="backend", name="Backend")


def test_team_create_adds_a_team_beside_the_default_one() -> None:
    given(org_created()).when("team.create", org="acme", team="backend", name="Backend").then(
        [("TeamCreated", "acme", {"team": "backend", "name": "Backend"})], reply={"org": "acme", "slug": "backend"})
    given(org_created(), TEAM).fails("team.create", Conflict, "already exists", org="acme", team="backend", name=None)
    given(org_created()).fails("team.create", Conflict, "already exists", org="acme", team="acme", name=None)
    teams = given(org_created(), TEAM).ask("api.org", org="acme")["teams"]
    assert [(t["slug"], t["name"]) for t in teams] == [("acme", "acme"), ("backend", "Backend")]


def test_team_delete_takes_it_from_its_projects_and_the_default_team_stays() -> None:
    added = event("ProjectTeamAdded", "acme", project="web", team="backend")
    outcome = given(*acme_web(), TEAM, added).when("team.delete", org="acme", team="backend")
    assert outcome.events == [("TeamDeleted", "acme", {"team": "backend"})]
    assert outcome.state.project("acme", "web").teams == []  # type: ignore[union-attr]
    given(org_created()).fails("team.delete", BadRequest, "default team", org="acme", team="acme")
    given(org_created()).fails("team.delete", NotFound, "No team", org="acme", team="nope")


def test_project_team_add_and_a_project_without_teams_is_in_the_default_team() -> None:
    state_events = [*acme_web(), TEAM]
    assert [t["slug"] for t in given(*state_events).ask("api.project", org="acme", project="web")["teams"]] == ["acme"]
    given(*state_events).when("project.team_add", org="acme", project="web", team="acme").then_nothing()
    outcome = given(*state_events).when("project.team_add", org="acme", project="web", team="backend")
    assert outcome.events == [("ProjectTeamAdded", "acme", {"project": "web", "team": "backend"})]
    added = outcome.decision.events[0]
    teams = given(*state_events, added).ask("api.project", org="acme", project="web")["teams"]
    assert [t["slug"] for t in teams] == ["backend"]
    given(*state_events).fails("project.team_add", NotFound, "No team", org="acme", project="web", team="nope")


def test_project_team_remove_leaves_the_project_in_the_default_team() -> None:
    added = event("ProjectTeamAdded", "acme", project="web", team="backend")
    outcome = given(*acme_web(), TEAM, added).when("project.team_remove", org="acme", project="web", team="backend")
    assert outcome.events == [("ProjectTeamRemoved", "acme", {"project": "web", "team": "backend"})]
    given(*acme_web(), TEAM).when("project.team_remove", org="acme", project="web", team="acme").then_nothing()
