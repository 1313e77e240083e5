"""The management API's writes, replayed as the Terraform provider for Sentry makes them
(jianyuan/terraform-provider-sentry: every status and field it reads), read-your-writes,
the actor of every write in `relayctl config history`, and the OpenAPI document checked
against the routes that exist."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.api.table import ROUTES
from tests.system import SystemUnderTest, http_request


@pytest.fixture(scope="module")
def people(system: SystemUnderTest) -> Iterator[dict[str, str]]:
    """An admin (relayctl.admin: may create orgs) and a user who is a member nowhere yet."""
    tag = uuid.uuid4().hex[:6]
    admin, member = f"tf-{tag}", f"member-{tag}"
    system.cli_ok("user", "create", admin)
    system.cli_ok("permissions", "add", "-u", admin, "-p", "relayctl.admin")
    system.cli_ok("user", "create", member)
    yield {"admin": admin, "member": member, "tag": tag,
           "admin_token": system.cli_ok("token", "create", admin, "--json")["token"],
           "member_token": system.cli_ok("token", "create", member, "--json")["token"]}


def call(system: SystemUnderTest, method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    raw = None
    if body is not None:
        raw = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    status, _, data = http_request(system.url + path, method, raw, headers)
    return status, json.loads(data) if data else None


def test_terraform_provider_replay(system: SystemUnderTest, people: dict[str, str]) -> None:
    token, tag = people["admin_token"], people["tag"]
    org = f"tf-org-{tag}"
    # provider setup
    assert call(system, "GET", "/api/0/internal/health/", token)[0] == 200
    # sentry_organization
    status, created = call(system, "POST", "/api/0/organizations/", token, {"name": "TF Org", "slug": org,
                                                                             "agreeTerms": True})
    assert status == 201 and created["slug"] == org and created["name"] == "TF Org"
    assert call(system, "POST", "/api/0/organizations/", token, {"name": "TF Org", "slug": org})[0] == 409
    status, renamed = call(system, "PUT", f"/api/0/organizations/{org}/", token, {"name": "TF Org 2"})
    assert status == 200 and renamed["name"] == "TF Org 2"
    # sentry_team (every org also has its default team)
    status, made = call(system, "POST", f"/api/0/organizations/{org}/teams/", token, {"name": "Backend",
                                                                                        "slug": "backend"})
    assert status == 201 and (made["slug"], made["name"]) == ("backend", "Backend") and isinstance(made["id"], str)
    assert call(system, "POST", f"/api/0/organizations/{org}/teams/", token, {"slug": "backend"})[0] == 409
    status, teams = call(system, "GET", f"/api/0/organizations/{org}/teams/", token)
    assert status == 200 and [t["slug"] for t in teams] == [org, "backend"]
    team = "backend"
    assert call(system, "GET", f"/api/0/teams/{org}/{team}/", token)[0] == 200
    assert call(system, "GET", f"/api/0/teams/{org}/nope/", token)[0] == 404
    # sentry_project create, then the update the provider sends right after
    status, project = call(system, "POST", f"/api/0/teams/{org}/{team}/projects/", token,
                           {"name": "Web App", "slug": "web-app", "platform": "python", "default_rules": True})
    assert status == 201, project
    assert (project["slug"], project["name"], project["platform"]) == ("web-app", "Web App", "python")
    assert [t["slug"] for t in project["teams"]] == [team] and project["organization"]["slug"] == org
    assert [p["slug"] for p in call(system, "GET", f"/api/0/teams/{org}/{team}/", token)[1]["projects"]] == \
        ["web-app"]
    for field in ("id", "dateCreated", "features", "options", "allowedDomains", "resolveAge", "scrapeJavaScript",
                  "securityToken", "securityTokenHeader", "verifySSL", "fingerprintingRules",
                  "groupingEnhancements", "subjectTemplate", "color", "isPublic", "digestsMinDelay",
                  "digestsMaxDelay"):
        assert field in project, field
    assert call(system, "POST", f"/api/0/teams/{org}/{team}/projects/", token, {"name": "x", "slug": "web-app"})[0] \
        == 409
    filters = {"filters:blacklisted_ips": "10.0.0.1\n10.0.0.0/8", "filters:releases": "1.*\n2.0",
               "filters:error_messages": "TypeError*"}
    status, updated = call(system, "PUT", f"/api/0/projects/{org}/web-app/", token,
                           {"name": "Web App", "slug": "web-app", "platform": "python", "options": filters,
                            "allowedDomains": ["example.com"], "resolveAge": 0})
    assert status == 200, updated
    assert {k: updated["options"][k] for k in filters} == filters and updated["allowedDomains"] == ["example.com"]
    status, read = call(system, "GET", f"/api/0/projects/{org}/web-app/", token)
    assert status == 200 and {k: read["options"][k] for k in filters} == filters
    # an invalid option: 400 naming it, nothing stored
    status, body = call(system, "PUT", f"/api/0/projects/{org}/web-app/", token,
                        {"name": "Changed", "options": {"filters:blacklisted_ips": "not-an-ip"}})
    assert status == 400 and list(body) == ["filters:blacklisted_ips"] and isinstance(body["filters:blacklisted_ips"],
                                                                                        list)
    assert call(system, "GET", f"/api/0/projects/{org}/web-app/", token)[1]["name"] == "Web App"
    # sentry_project team add / remove
    status, both = call(system, "POST", f"/api/0/projects/{org}/web-app/teams/{org}/", token)
    assert status == 201 and [t["slug"] for t in both["teams"]] == [team, org]
    status, one = call(system, "DELETE", f"/api/0/projects/{org}/web-app/teams/{org}/", token)
    assert status == 200 and [t["slug"] for t in one["teams"]] == [team]
    assert call(system, "POST", f"/api/0/projects/{org}/web-app/teams/nope/", token)[0] == 404
    # sentry_key with a rate limit
    status, key = call(system, "POST", f"/api/0/projects/{org}/web-app/keys/", token,
                       {"name": "tf-key", "rateLimit": {"window": 60, "count": 100}})
    assert status == 201, key
    assert key["name"] == "tf-key" and key["label"] == "tf-key" and key["rateLimit"] == {"window": 60, "count": 100}
    assert key["projectId"] == int(project["id"]) and key["isActive"] is True and key["public"] == key["id"]
    for field in ("secret", "browserSdkVersion", "dateCreated"):
        assert field in key
    assert set(key["dsn"]) >= {"public", "secret", "csp", "security", "minidump", "cdn"}
    assert set(key["dynamicSdkLoaderOptions"]) == {"hasDebug", "hasPerformance", "hasReplay"}
    key_path = f"/api/0/projects/{org}/web-app/keys/{key['id']}/"
    assert call(system, "GET", key_path, token) == (200, key)
    status, changed = call(system, "PUT", key_path, token, {"name": "tf-key-2", "rateLimit": {"window": 3600,
                                                                                              "count": 5}})
    assert status == 200 and changed["name"] == "tf-key-2" and changed["rateLimit"] == {"window": 3600, "count": 5}
    status, keys = call(system, "GET", f"/api/0/projects/{org}/web-app/keys/?cursor=&status=active", token)
    assert status == 200 and key["id"] in [k["id"] for k in keys] and len(keys) == 2  # and the project's first key
    status, off = call(system, "PUT", key_path, token, {"isActive": False, "rateLimit": None})
    assert status == 200 and off["isActive"] is False and off["rateLimit"] is None
    # every write is an event with its actor, in the config history of the key
    history = system.cli_ok("config", "history", key["id"], "--json")["events"]
    mine = [e for e in history if e["type"] in ("KeyCreated", "KeyUpdated", "KeyRateLimitSet", "KeyDisabled",
                                                "ProjectOptionSet", "ProjectUpdated", "ProjectCreated")]
    assert mine and {e["actor"] for e in mine} == {f"user:{people['admin']}"}
    assert {"KeyCreated", "KeyUpdated", "KeyRateLimitSet", "KeyDisabled", "ProjectOptionSet"} <= {e["type"]
                                                                                                    for e in mine}
    # key deletion
    assert call(system, "DELETE", key_path, token)[0] == 204
    assert call(system, "GET", key_path, token)[0] == 404
    assert call(system, "DELETE", key_path, token)[0] == 404
    # project deletion, then the team's
    assert call(system, "DELETE", f"/api/0/projects/{org}/web-app/", token)[0] == 204
    assert call(system, "GET", f"/api/0/projects/{org}/web-app/", token)[0] == 404
    assert call(system, "DELETE", f"/api/0/projects/{org}/web-app/", token)[0] == 404
    assert call(system, "DELETE", f"/api/0/teams/{org}/{team}/", token)[0] == 204
    assert call(system, "GET", f"/api/0/teams/{org}/{team}/", token)[0] == 404
    assert call(system, "DELETE", f"/api/0/teams/{org}/{org}/", token)[0] == 400  # the default team stays


def test_writes_follow_scopes_and_roles(system: SystemUnderTest, people: dict[str, str]) -> None:
    admin, member, tag = people["admin_token"], people["member_token"], people["tag"]
    org = f"roles-{tag}"
    assert call(system, "POST", "/api/0/organizations/", admin, {"name": org})[0] == 201
    # not a member: the org does not exist for them; creating orgs needs relayctl.admin
    assert call(system, "POST", f"/api/0/teams/{org}/{org}/projects/", member, {"name": "p"})[0] == 404
    assert call(system, "POST", "/api/0/organizations/", member, {"name": "mine"})[0] == 403
    # the owner adds them as a member: they may read, not create projects
    status, added = call(system, "POST", f"/api/0/organizations/{org}/members/", admin,
                         {"email": people["member"], "role": "member"})
    assert status == 201 and added["role"] == "member"
    assert call(system, "POST", f"/api/0/teams/{org}/{org}/projects/", member, {"name": "p"})[0] == 403
    assert call(system, "GET", f"/api/0/organizations/{org}/projects/", member)[0] == 200
    # as admin, they may
    status, _ = call(system, "PUT", f"/api/0/organizations/{org}/members/{people['member']}/", admin, {"role": "admin"})
    assert status == 200
    assert call(system, "POST", f"/api/0/teams/{org}/{org}/projects/", member, {"name": "p"})[0] == 201
    assert call(system, "PUT", f"/api/0/organizations/{org}/", member, {"name": "renamed"})[0] == 403  # no org:write
    assert call(system, "DELETE", f"/api/0/organizations/{org}/members/{people['member']}/", admin)[0] == 204
    assert call(system, "GET", f"/api/0/projects/{org}/p/", member)[0] == 404
    # bad input: clear 400s, never a 500
    assert call(system, "POST", f"/api/0/teams/{org}/{org}/projects/", admin, {"slug": "no-name"})[1] == {
        "name": ["This field is required."]}
    status, _, _ = http_request(system.url + f"/api/0/teams/{org}/{org}/projects/", "POST", b"{not json",
                                {"Authorization": f"Bearer {admin}"})
    assert status == 400
    assert call(system, "POST", f"/api/0/projects/{org}/p/keys/", admin, {"rateLimit": {"window": "x"}})[0] == 400
    assert call(system, "POST", f"/api/0/teams/{org}/{org}/projects/", admin, {"name": "Bad", "slug": "Bad Slug"})[0] \
        == 400


def test_the_openapi_document_describes_exactly_the_routes_that_exist(system: SystemUnderTest) -> None:
    status, doc = call(system, "GET", "/api/0/openapi.json", None)
    assert status == 200 and doc["openapi"].startswith("3.")
    described = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {(r.method, r.resource.canonical) for r in system.gateway.app.router.routes()  # type: ignore[union-attr]
              if r.resource is not None and r.method != "HEAD" and r.resource.canonical.startswith("/api/0/")
              and not r.resource.canonical.startswith("/api/0/relays/") and "ai-fix-suggest" not in
              r.resource.canonical}
    assert described == served
    assert {(m, p) for m, p, _ in ROUTES} <= described
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["responses"], (method, path)
            assert {p["name"] for p in op["parameters"] if p["in"] == "path"} == set(
                part[1:-1] for part in path.split("/") if part.startswith("{")), (method, path)


def test_relayctls_own_reads(system: SystemUnderTest, people: dict[str, str]) -> None:
    """A key's config and history (who did what) and the relays, over the same API."""
    token, tag = people["admin_token"], people["tag"]
    org = f"own-{tag}"
    assert call(system, "POST", "/api/0/organizations/", token, {"name": org})[0] == 201
    assert call(system, "POST", f"/api/0/teams/{org}/{org}/projects/", token, {"name": "web"})[0] == 201
    status, key = call(system, "POST", f"/api/0/projects/{org}/web/keys/", token, {"name": "k"})
    assert status == 201
    base = f"/api/0/projects/{org}/web/keys/{key['id']}"
    status, config = call(system, "GET", base + "/config/", token)
    assert status == 200 and config["publicKeys"][0]["publicKey"] == key["id"], config
    status, history = call(system, "GET", base + "/history/", token)
    assert status == 200 and {"KeyCreated", "KeyUpdated"} <= {e["type"] for e in history}
    assert {e["actor"] for e in history if e["type"].startswith("Key")} == {f"user:{people['admin']}"}
    relay = system.registered_relay()
    status, relays = call(system, "GET", "/api/0/relayctl/relays/", token)
    assert status == 200 and relay.public_key_str in {r["publicKey"] for r in relays}
    assert call(system, "GET", "/api/0/relayctl/relays/", people["member_token"])[0] == 403
    assert call(system, "GET", f"/api/0/projects/{org}/web/keys/{'0' * 32}/config/", token)[0] == 404


def test_a_member_write_cannot_grant_more_than_the_callers_role(system: SystemUnderTest,
                                                                 people: dict[str, str]) -> None:
    admin, tag = people["admin_token"], people["tag"]
    org, manager = f"grant-{tag}", f"manager-{tag}"
    assert call(system, "POST", "/api/0/organizations/", admin, {"name": org})[0] == 201
    system.cli_ok("user", "create", manager)
    system.cli_ok("org", "member", "add", org, manager, "--role", "manager")
    token = system.cli_ok("token", "create", manager, "--json")["token"]
    assert call(system, "POST", f"/api/0/organizations/{org}/members/", token,
                {"email": people["member"], "role": "owner"})[0] == 403
    assert call(system, "POST", f"/api/0/organizations/{org}/members/", token,
                {"email": people["member"], "role": "admin"})[0] == 201
    assert call(system, "POST", f"/api/0/organizations/{org}/members/", token,
                {"email": people["member"], "role": "king"})[1] == {"role": [
                    "Invalid role (one of member, admin, manager, owner)."]}


GARBAGE: list[tuple[str, str, Any]] = [
    ("POST", "/api/0/organizations/", ["a list"]), ("POST", "/api/0/organizations/", {"name": 7}),
    ("POST", "/api/0/organizations/", {"name": "x" * 500}), ("PUT", "/api/0/organizations/Not_A_Slug!/", {}),
    ("GET", "/api/0/organizations/?per_page=lots", None), ("GET", "/api/0/organizations/?cursor=1:2", None),
    ("GET", "/api/0/projects/a/b/keys/%00/", None), ("PUT", "/api/0/projects/{org}/p/", {"options": []}),
    ("PUT", "/api/0/projects/{org}/p/", {"options": {"sentry:origins": {"deep": [1, {"x": None}]}}}),
    ("PUT", "/api/0/projects/{org}/p/", {"options": {"no:such-option": "1"}}),
    ("PUT", "/api/0/projects/{org}/p/", {"platform": ["python"]}), ("PUT", "/api/0/projects/{org}/p/", {"slug": 5}),
    ("POST", "/api/0/projects/{org}/p/keys/", {"rateLimit": {"window": 0, "count": 10}}),
    ("POST", "/api/0/projects/{org}/p/keys/", {"rateLimit": {"window": True, "count": 10}}),
    ("PUT", "/api/0/projects/{org}/p/keys/nope/", {"isActive": "yes"}),
    ("POST", "/api/0/organizations/{org}/members/", {"email": "no-such-user"}),
    ("DELETE", "/api/0/organizations/{org}/members/no..such/", None),
    ("POST", "/api/0/organizations/{org}/teams/", {"slug": "UPPER"}),
]


def test_bad_input_is_a_clear_4xx_never_a_500(system: SystemUnderTest, people: dict[str, str]) -> None:
    admin, tag = people["admin_token"], people["tag"]
    org = f"bad-{tag}"
    assert call(system, "POST", "/api/0/organizations/", admin, {"name": org})[0] == 201
    assert call(system, "POST", f"/api/0/teams/{org}/{org}/projects/", admin, {"name": "p"})[0] == 201
    for method, path, body in GARBAGE:
        status, answer = call(system, method, path.replace("{org}", org), admin, body)
        assert 400 <= status < 500 and isinstance(answer, dict), (method, path, body, status, answer)


def test_an_org_trusts_a_relay_through_the_api(system: SystemUnderTest, people: dict[str, str]) -> None:
    """Sentry's org PUT `trustedRelays`: the relay then gets the org's configs at once (the
    write returns once relay access is applied); removed, it is refused."""
    admin, tag = people["admin_token"], people["tag"]
    org = f"trust-{tag}"
    assert call(system, "POST", "/api/0/organizations/", admin, {"name": org})[0] == 201
    status, project = call(system, "POST", f"/api/0/teams/{org}/{org}/projects/", admin, {"name": "web"})
    key = call(system, "GET", f"/api/0/projects/{org}/web/keys/", admin)[1][0]["id"]
    relay = system.registered_relay(internal=False)
    status, detail = call(system, "PUT", f"/api/0/organizations/{org}/", admin,
                          {"trustedRelays": [{"publicKey": relay.public_key_str, "name": "edge",
                                              "description": "our edge"}]})
    assert status == 200, detail
    assert [(r["publicKey"], r["name"], r["description"]) for r in detail["trustedRelays"]] == [
        (relay.public_key_str, "edge", "our edge")]
    status, answer = relay.configs([key])
    assert status == 200 and answer["configs"][key]["config"]["trustedRelays"] == [relay.public_key_str]
    status, detail = call(system, "PUT", f"/api/0/organizations/{org}/", admin, {"trustedRelays": []})
    assert status == 200 and detail["trustedRelays"] == []
    assert relay.configs([key]) == (403, "Relay unauthorized for config information")
    status, errors = call(system, "PUT", f"/api/0/organizations/{org}/", admin,
                          {"trustedRelays": [{"publicKey": "not-a-key", "name": "x"}]})
    assert status == 400 and list(errors) == ["trustedRelays"]


# What each role may do in its org (Sentry's: member reads, admin writes projects and
# keys, manager also the org and its members, owner everything), and a token limited to
# `project:read` by its scopes whatever the role.
ROLE_CASES: list[tuple[str, str, str, Any, dict[str, int]]] = [
    ("read the org", "GET", "/api/0/organizations/{org}/", None,
     {"member": 200, "admin": 200, "manager": 200, "owner": 200, "narrow": 403}),
    ("list projects", "GET", "/api/0/organizations/{org}/projects/", None,
     {"member": 200, "admin": 200, "manager": 200, "owner": 200, "narrow": 200}),
    ("create a project", "POST", "/api/0/teams/{org}/{org}/projects/", {"name": "p-{role}"},
     {"member": 403, "admin": 201, "manager": 201, "owner": 201, "narrow": 403}),
    ("create a key", "POST", "/api/0/projects/{org}/base/keys/", {"name": "k"},
     {"member": 403, "admin": 201, "manager": 201, "owner": 201, "narrow": 403}),
    ("rename the org", "PUT", "/api/0/organizations/{org}/", {"name": "Renamed"},
     {"member": 403, "admin": 403, "manager": 200, "owner": 200, "narrow": 403}),
    ("list members", "GET", "/api/0/organizations/{org}/members/", None,
     {"member": 200, "admin": 200, "manager": 200, "owner": 200, "narrow": 403}),
    ("add a member", "POST", "/api/0/organizations/{org}/members/", {"email": "{extra}", "role": "member"},
     {"member": 403, "admin": 403, "manager": 201, "owner": 201, "narrow": 403}),
    ("delete a project", "DELETE", "/api/0/projects/{org}/doomed-{role}/", None,
     {"member": 403, "admin": 204, "manager": 204, "owner": 204, "narrow": 403}),
]


def test_each_role_and_scope_is_allowed_and_refused_where_it_should_be(system: SystemUnderTest,
                                                                       people: dict[str, str]) -> None:
    admin, tag = people["admin_token"], people["tag"]
    org, outsider_org = f"rbac-{tag}", f"rbac-other-{tag}"
    for slug in (org, outsider_org):
        assert call(system, "POST", "/api/0/organizations/", admin, {"name": slug})[0] == 201
    assert call(system, "POST", f"/api/0/teams/{org}/{org}/projects/", admin, {"name": "base"})[0] == 201
    extra = f"extra-{tag}"
    system.cli_ok("user", "create", extra)
    tokens = {}
    for role in ("member", "admin", "manager", "owner", "narrow"):
        user = f"rbac-{role}-{tag}"
        system.cli_ok("user", "create", user)
        system.cli_ok("org", "member", "add", org, user, "--role", "owner" if role == "narrow" else role)
        scopes = ["--scope", "project:read"] if role == "narrow" else []
        tokens[role] = system.cli_ok("token", "create", user, *scopes, "--json")["token"]
        assert call(system, "POST", f"/api/0/teams/{org}/{org}/projects/", admin, {"name": f"doomed-{role}"})[0] == 201
    for what, method, path, body, expected in ROLE_CASES:
        for role, status in expected.items():
            fill = {"org": org, "role": role, "extra": extra}
            payload = json.loads(json.dumps(body).replace("{role}", role).replace("{extra}", extra)) if body else None
            got = call(system, method, path.format(**fill), tokens[role], payload)[0]
            assert got == status, (what, role, got)
            # in an org it is no member of, every one of them is 404
            assert call(system, method, path.format(**{**fill, "org": outsider_org}), tokens[role],
                        payload)[0] == 404, (what, role)


def relay_event(system: SystemUnderTest, public_key: str, type_: str) -> Any:
    """The last commit stored for `public_key` whose first event is `type_` (its actor)."""
    import asyncio

    import nats

    from messages.events import decode_commit, event_subject
    from messages.subjects import EVENT_STREAM

    async def last() -> Any:
        nc = await nats.connect(system.nats_url)
        try:
            msg = await nc.jetstream().get_last_msg(EVENT_STREAM, event_subject("relay", public_key, type_))
            assert msg.data is not None
            return decode_commit(msg.data)[0]
        finally:
            await nc.close()
    return asyncio.run(last())


def test_relays_are_allowed_and_denied_over_the_api_by_relay_admins_only(system: SystemUnderTest,
                                                                          people: dict[str, str]) -> None:
    from tests.system import RelayClient

    admin, tag = people["admin_token"], people["tag"]
    relay = RelayClient(system.url)
    key = relay.public_key_str
    # who may not: a user of no org, an org's owner, the admin's own org auth token
    org = f"rel-{tag}"
    assert call(system, "POST", "/api/0/organizations/", admin, {"name": org})[0] == 201
    owner = f"owner-{tag}"
    system.cli_ok("user", "create", owner)
    system.cli_ok("org", "member", "add", org, owner, "--role", "owner")
    owner_token = system.cli_ok("token", "create", owner, "--json")["token"]
    org_token = system.cli_ok("token", "create", people["admin"], "--org", org, "--url", system.url,
                              "--json")["token"]
    for token in (people["member_token"], owner_token, org_token):
        assert call(system, "POST", "/api/0/relayctl/relays/", token, {"publicKey": key})[0] == 403
        assert call(system, "DELETE", f"/api/0/relayctl/relays/{key}/", token)[0] == 403
        assert call(system, "GET", f"/api/0/relayctl/relays/{key}/", token)[0] == 403
    assert call(system, "POST", "/api/0/relayctl/relays/", None, {"publicKey": key})[0] == 401
    assert call(system, "GET", f"/api/0/relayctl/relays/{key}/", admin)[0] == 404  # not allowed yet
    # bad input is 400 naming the field, storing nothing
    assert call(system, "POST", "/api/0/relayctl/relays/", admin, {"publicKey": "nope"}) == (400, {
        "publicKey": ["A relay public key (43 url-safe base64 characters) is required."]})
    assert call(system, "POST", "/api/0/relayctl/relays/", admin, {"publicKey": key, "internal": "yes"})[0] == 400
    assert call(system, "DELETE", "/api/0/relayctl/relays/nope/", admin)[0] == 404
    assert call(system, "DELETE", f"/api/0/relayctl/relays/{'A' * 43}/", admin)[0] == 404  # unknown key
    # allow, internal: the relay registers and sees every project
    status, allowed = call(system, "POST", "/api/0/relayctl/relays/", admin, {"publicKey": key, "internal": True})
    assert status == 201 and allowed["publicKey"] == key and allowed["internal"] is True
    assert allowed["banned"] is False
    assert relay_event(system, key, "RelayAllowed").actor == f"user:{people['admin']}"
    relay.register()
    status, one = call(system, "GET", f"/api/0/relayctl/relays/{key}/", admin)
    assert status == 200 and one["relayId"] == relay.relay_id and one["lastSeen"].endswith("Z")
    # again as not internal: a change, answered with the relay as it is now
    status, allowed = call(system, "POST", "/api/0/relayctl/relays/", admin, {"publicKey": key})
    assert status == 201 and allowed["internal"] is False
    # deny: 204, banned from the next request on, still listed
    status, _ = call(system, "DELETE", f"/api/0/relayctl/relays/{key}/", admin)
    assert status == 204
    assert relay_event(system, key, "RelayDenied").actor == f"user:{people['admin']}"
    assert call(system, "GET", f"/api/0/relayctl/relays/{key}/", admin)[1]["banned"] is True
    assert relay.challenge()[0] == 403


def test_a_projects_option_sources_over_the_api(system: SystemUnderTest, people: dict[str, str]) -> None:
    """`relayctl/options/`: each option's template, org and own value and where the value the
    config is built from comes from; set and cleared with Sentry's project PUT; values outside
    the public options only with project:write; 404 for an org the caller may not see."""
    token, tag = people["admin_token"], people["tag"]
    org = f"opts-{tag}"
    assert call(system, "POST", "/api/0/organizations/", token, {"name": org})[0] == 201
    system.cli_ok("org", "template", "set", org, "web", '{"sentry:origins": ["tpl.example.com"]}')
    system.cli_ok("project", "create", org, "site", "--template", "web", "--json")
    system.cli_ok("org", "option", "set", org, "sentry:sensitive_fields", '["org_secret"]')
    system.cli_ok("project", "option", "set", f"{org}/site", "quotas:project-rate-limit", '{"window": 60, "count": 5}')
    path = f"/api/0/projects/{org}/site/relayctl/options/"

    def sources(who: str | None = token) -> dict[str, Any]:
        status, body = call(system, "GET", path, who)
        assert status == 200, body
        assert body["project"] == "site" and body["template"] == "web"
        return {o["key"]: o for o in body["options"]}

    origins = sources()["sentry:origins"]
    assert (origins["kind"], origins["default"], origins["template"], origins["project"], origins["value"],
            origins["source"]) == ("lines", ["*"], {"isSet": True, "value": ["tpl.example.com"]}, {"isSet": False},
                                   ["tpl.example.com"], "template")
    sensitive = sources()["sentry:sensitive_fields"]
    assert (sensitive["org"], sensitive["value"], sensitive["source"]) == (
        {"isSet": True, "value": ["org_secret"]}, ["org_secret"], "org")
    assert sources()["quotas:project-rate-limit"]["value"] == {"window": 60, "count": 5}
    # the project's own value, set then cleared with the Sentry-compatible PUT
    assert call(system, "PUT", f"/api/0/projects/{org}/site/", token,
                {"options": {"sentry:origins": ["own.example.com"]}})[0] == 200
    origins = sources()["sentry:origins"]
    assert (origins["project"], origins["value"], origins["source"]) == (
        {"isSet": True, "value": ["own.example.com"]}, ["own.example.com"], "project")
    assert call(system, "PUT", f"/api/0/projects/{org}/site/", token, {"options": {"sentry:origins": None}})[0] == 200
    assert sources()["sentry:origins"]["source"] == "template"
    # a member (project:read, no project:write) sees whether a private option is set, not its value
    assert call(system, "POST", f"/api/0/organizations/{org}/members/", token,
                {"username": people["member"], "role": "member"})[0] == 201
    quota = sources(people["member_token"])["quotas:project-rate-limit"]
    assert quota["readable"] is False and "value" not in quota and quota["project"] == {"isSet": True}
    assert sources(people["member_token"])["sentry:origins"]["value"] == ["tpl.example.com"]
    assert call(system, "GET", path, None)[0] == 401
    assert call(system, "GET", f"/api/0/projects/{org}/nope/relayctl/options/", token)[0] == 404
    outsider = system.cli_ok("user", "create", f"out-{tag}") and system.cli_ok(
        "token", "create", f"out-{tag}", "--json")["token"]
    assert call(system, "GET", path, outsider)[0] == 404
