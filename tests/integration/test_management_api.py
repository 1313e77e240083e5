"""The management API with Sentry's own client: the real sentry-cli binary (PyPI package
`sentry-cli`) against a running system, with tokens from `relayctl token create`; the read
endpoints' shapes, pagination and who sees what."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system import SystemUnderTest, http_request

SENTRY_CLI = shutil.which("sentry-cli") or str(Path(sys.executable).parent / "sentry-cli")


@pytest.fixture(scope="module")
def world(system: SystemUnderTest) -> Iterator[dict[str, Any]]:
    """Two orgs: ann owns `acme-*` (with two projects), bob is a member of `other-*` only."""
    tag = uuid.uuid4().hex[:6]
    acme, other = f"acme-{tag}", f"other-{tag}"
    ann, bob = f"ann-{tag}", f"bob-{tag}"
    system.cli_ok("user", "create", ann, "--email", f"{ann}@example.com")
    system.cli_ok("user", "create", bob)
    for org in (acme, other):
        system.cli_ok("org", "create", org, "--name", org.capitalize())
    system.cli_ok("org", "member", "add", acme, ann, "--role", "owner")
    system.cli_ok("org", "member", "add", other, bob, "--role", "member")
    web = system.cli_ok("project", "create", acme, "web", "--name", "Web", "--json")
    system.cli_ok("project", "create", acme, "api", "--json")
    system.cli_ok("project", "create", other, "secret", "--json")
    yield {"acme": acme, "other": other, "ann": ann, "bob": bob, "web": web,
           "ann_token": system.cli_ok("token", "create", ann, "--json")["token"],
           "bob_token": system.cli_ok("token", "create", bob, "--json")["token"]}


def sentry_cli(system: SystemUnderTest, token: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "SENTRY_URL": system.url + "/",
           "SENTRY_AUTH_TOKEN": token, "SENTRY_DISABLE_UPDATE_CHECK": "1", "SENTRY_LOG_LEVEL": "warn"}
    return subprocess.run([SENTRY_CLI, *args], env=env, capture_output=True, text=True, timeout=60)


def get(system: SystemUnderTest, path: str, token: str | None) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, hdrs, body = http_request(system.url + path, headers=headers)
    return status, hdrs, json.loads(body) if body else None


def test_sentry_cli_info_organizations_and_projects(system: SystemUnderTest, world: dict[str, Any],
                                                    tmp_path: Path) -> None:
    token = world["ann_token"]
    info = sentry_cli(system, token, "info", home=tmp_path)
    assert info.returncode == 0, info.stderr
    assert f"{world['ann']}@example.com" in info.stdout and "project:write" in info.stdout
    orgs = sentry_cli(system, token, "organizations", "list", home=tmp_path)
    assert orgs.returncode == 0, orgs.stderr
    assert world["acme"] in orgs.stdout and world["other"] not in orgs.stdout
    projects = sentry_cli(system, token, "projects", "list", "-o", world["acme"], home=tmp_path)
    assert projects.returncode == 0, projects.stderr
    assert "web" in projects.stdout and "api" in projects.stdout and "Web" in projects.stdout
    for result in (info, orgs, projects):
        assert "WARN" not in result.stderr and "Unrecognized" not in result.stderr, result.stderr


def test_sentry_cli_configures_itself_from_an_org_auth_token(system: SystemUnderTest, world: dict[str, Any],
                                                             tmp_path: Path) -> None:
    token = system.cli_ok("token", "create", world["ann"], "--org", world["acme"], "--url", system.url,
                          "--json")["token"]
    assert token.startswith("sntrys_")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "SENTRY_AUTH_TOKEN": token,
           "SENTRY_DISABLE_UPDATE_CHECK": "1"}
    # no SENTRY_URL, no -o: both come from the token
    result = subprocess.run([SENTRY_CLI, "projects", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "web" in result.stdout and "WARN" not in result.stderr, result.stderr
    # it sees its own org only
    assert get(system, f"/api/0/organizations/{world['other']}/", token)[0] == 404
    status, _, orgs = get(system, "/api/0/organizations/", token)
    assert status == 200 and [o["slug"] for o in orgs] == [world["acme"]]


def test_index_and_health(system: SystemUnderTest, world: dict[str, Any]) -> None:
    status, _, body = get(system, "/api/0/", world["bob_token"])
    assert status == 200 and body["user"]["username"] == world["bob"] and "org:read" in body["auth"]["scopes"]
    assert get(system, "/api/0/", None)[2] == {"version": "0", "auth": None, "user": None}
    assert get(system, "/api/0/internal/health/", None)[0] == 200
    status, headers, body = get(system, "/api/0/organizations/", "sntryu_" + "0" * 64)
    assert status == 401 and body["detail"] == "Invalid token" and headers["www-authenticate"] == "Bearer"
    assert get(system, "/api/0/organizations/", None)[0] == 401


def test_shapes_sentry_tools_read(system: SystemUnderTest, world: dict[str, Any]) -> None:
    token, acme = world["ann_token"], world["acme"]
    status, _, org = get(system, f"/api/0/organizations/{acme}/", token)
    assert status == 200
    assert {"id", "slug", "name", "dateCreated", "isEarlyAdopter", "require2FA", "features", "orgRoleList",
            "teamRoleList"} <= set(org) and org["dateCreated"].endswith("Z") and isinstance(org["id"], str)
    status, _, project = get(system, f"/api/0/projects/{acme}/web/", token)
    assert status == 200 and project["name"] == "Web" and project["organization"]["slug"] == acme
    assert project["teams"] == [{"id": org["id"], "slug": acme, "name": org["name"]}]
    status, _, keys = get(system, f"/api/0/projects/{acme}/web/keys/", token)
    assert status == 200 and [k["public"] for k in keys] == [world["web"]["publicKey"]]
    key = keys[0]
    assert key["isActive"] is True and key["rateLimit"] is None and key["projectId"] == world["web"]["id"]
    assert key["dsn"]["public"] == (f"http://{key['public']}@{system.url.split('://')[1]}/{world['web']['id']}")
    assert {"id", "name", "label", "secret", "browserSdkVersion", "dynamicSdkLoaderOptions", "dateCreated"} <= set(key)
    assert get(system, f"/api/0/projects/{acme}/web/keys/{key['id']}/", token)[2] == key
    status, _, teams = get(system, f"/api/0/organizations/{acme}/teams/", token)
    assert status == 200 and [t["slug"] for t in teams] == [acme]
    status, _, members = get(system, f"/api/0/organizations/{acme}/members/", token)
    assert [(m["user"]["username"], m["role"]) for m in members] == [(world["ann"], "owner")]


def test_every_list_pages_with_a_link_header(system: SystemUnderTest, world: dict[str, Any]) -> None:
    token, acme = world["ann_token"], world["acme"]
    status, headers, first = get(system, f"/api/0/organizations/{acme}/projects/?per_page=1", token)
    assert status == 200 and len(first) == 1
    links = headers["link"]
    assert 'rel="previous"; results="false"' in links and 'rel="next"; results="true"; cursor="0:1:0"' in links
    status, headers, second = get(system, f"/api/0/organizations/{acme}/projects/?per_page=1&cursor=0:1:0", token)
    assert status == 200 and len(second) == 1 and second[0]["slug"] != first[0]["slug"]
    assert 'rel="next"; results="false"' in headers["link"]
    for path in ("/api/0/organizations/", f"/api/0/projects/{acme}/web/keys/", f"/api/0/organizations/{acme}/teams/",
                 f"/api/0/organizations/{acme}/members/"):
        assert 'rel="next"' in get(system, path, token)[1]["link"], path
    assert get(system, f"/api/0/organizations/{acme}/projects/?cursor=bogus", token)[0] == 400


def test_a_member_of_one_org_sees_nothing_of_another(system: SystemUnderTest, world: dict[str, Any]) -> None:
    bob, acme, other = world["bob_token"], world["acme"], world["other"]
    status, _, orgs = get(system, "/api/0/organizations/", bob)
    assert [o["slug"] for o in orgs] == [other]
    for path in (f"/api/0/organizations/{acme}/", f"/api/0/organizations/{acme}/projects/",
                 f"/api/0/projects/{acme}/web/", f"/api/0/projects/{acme}/web/keys/",
                 "/api/0/organizations/no-such-org/", f"/api/0/projects/{other}/no-such-project/"):
        status, _, body = get(system, path, bob)
        assert status == 404 and body == {"detail": "The requested resource does not exist"}, path
    # a member may read the projects of its own org, not its members' admin side
    assert get(system, f"/api/0/projects/{other}/secret/", bob)[0] == 200


def test_a_token_scope_the_role_bounds_is_refused_with_403(system: SystemUnderTest, world: dict[str, Any]) -> None:
    """A visible org without the scope: 403 (the org exists for this caller); the token's
    scopes and the user's role both bound what it may do."""
    acme = world["acme"]
    narrow = system.cli_ok("token", "create", world["ann"], "--scope", "org:read", "--json")["token"]
    assert get(system, f"/api/0/organizations/{acme}/", narrow)[0] == 200
    status, _, body = get(system, f"/api/0/organizations/{acme}/projects/", narrow)
    assert status == 403 and body == {"detail": "You do not have permission to perform this action."}
    # bob is a member of `other`: member:read yes, but his role grants no member:admin
    assert get(system, f"/api/0/organizations/{world['other']}/members/", world["bob_token"])[0] == 200
    assert system.cli("token", "create", world["ann"], "--scope", "org:everything").exit_code == 1


def test_a_revoked_token_is_refused_at_once(system: SystemUnderTest, world: dict[str, Any]) -> None:
    token = system.cli_ok("token", "create", world["ann"], "--name", "short-lived", "--json")["token"]
    assert get(system, "/api/0/organizations/", token)[0] == 200
    listed = system.cli_ok("token", "list", world["ann"], "--json")["tokens"]
    mine = [t for t in listed if t["name"] == "short-lived"]
    assert len(mine) == 1 and token not in json.dumps(listed)
    system.cli_ok("token", "revoke", mine[0]["id"])
    assert get(system, "/api/0/organizations/", token)[0] == 401
    assert mine[0]["id"] not in {t["id"] for t in system.cli_ok("token", "list", world["ann"], "--json")["tokens"]}
    assert system.cli("token", "revoke", mine[0]["id"]).exit_code == 1  # no such token any more


def test_members_from_the_cli(system: SystemUnderTest, world: dict[str, Any]) -> None:
    other, ann = world["other"], world["ann"]
    system.cli_ok("org", "member", "add", other, ann, "--role", "admin")
    assert {"username": ann, "role": "admin", "email": f"{ann}@example.com"} in system.cli_ok(
        "org", "member", "list", other, "--json")["members"]
    assert get(system, f"/api/0/organizations/{other}/", world["ann_token"])[0] == 200
    system.cli_ok("org", "member", "remove", other, ann)
    assert get(system, f"/api/0/organizations/{other}/", world["ann_token"])[0] == 404
    assert system.cli("org", "member", "remove", other, ann).exit_code == 1
    assert system.cli("org", "member", "add", other, ann, "--role", "king").exit_code == 2


def test_ai_suggestions_need_membership_and_an_unknown_event_is_404_before_the_policy(
        system: SystemUnderTest, world: dict[str, Any], tmp_path: Path) -> None:
    acme = world["acme"]
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps({"event_id": uuid.uuid4().hex, "platform": "python", "level": "error",
                                      "exception": {"values": [{"type": "ValueError", "value": "boom"}]}}))
    event_id = system.cli_ok("event", "store", str(event_file), "--project", f"{acme}/web", "--json")["eventId"]
    system.cli_ok("org", "option", "set", acme, "ai:policy", '"denied"')
    path = f"/api/0/projects/{acme}/web/events/{{}}/ai-fix-suggest/"
    # bob is no member of acme: nothing of it exists for him
    assert get(system, path.format(event_id), world["bob_token"])[0] == 404
    # ann is: an unknown event is 404 before the org's policy, a known one meets the policy
    assert get(system, path.format(uuid.uuid4().hex), world["ann_token"])[0] == 404
    status, _, body = get(system, path.format(event_id), world["ann_token"])
    assert status == 403 and body == {"restriction": "denied"}


def test_failed_token_checks_are_limited_per_client_address(system: SystemUnderTest) -> None:
    """Last in the module: it uses up this address's failures."""
    statuses = [get(system, "/api/0/organizations/", "sntryu_" + f"{n:064x}")[0] for n in range(12)]
    refused = statuses.index(429)  # earlier tests of the module sent a bad token or two
    assert 5 <= refused <= 10 and statuses[:refused] == [401] * refused and set(statuses[refused:]) == {429}
    status, headers, _ = get(system, "/api/0/organizations/", "sntryu_" + "f" * 64)
    assert status == 429 and int(headers["retry-after"]) >= 1


def _capture(system: SystemUnderTest, project: dict[str, Any], n: int) -> list[str]:
    """`n` exceptions from a real sentry-sdk client to `project`, a password in each one's extra."""
    import sentry_sdk

    assert system.gateway is not None
    dsn = f"http://{project['publicKey']}@127.0.0.1:{system.gateway.port}/{project['id']}"
    client = sentry_sdk.Client(dsn=dsn, default_integrations=False, auto_enabling_integrations=False,
                               include_local_variables=False)  # the scope's repr holds the extra as a string
    ids = []
    with sentry_sdk.new_scope() as scope:
        scope.set_client(client)
        scope.set_extra("password", "hunter2" + "-api")  # never literally in a source line the SDK sends
        for i in range(n):
            try:
                raise ValueError(f"api event {i}")
            except ValueError as exc:
                ids.append(str(sentry_sdk.capture_exception(exc)))
    client.flush(timeout=10)
    client.close()
    return ids


def _eventually(check: Any, what: str, timeout: float = 20.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"{what}: not within {timeout}s (last: {result!r})"
            return result
        time.sleep(0.1)


def test_a_projects_events_over_the_api_paged_scrubbed_and_for_its_orgs_members_only(
        system: SystemUnderTest, world: dict[str, Any]) -> None:
    acme, token, web = world["acme"], world["ann_token"], world["web"]
    ids = _capture(system, web, 3)
    base = f"/api/0/projects/{acme}/web/events/"
    listed = _eventually(lambda: (lambda r: r[2] if r[0] == 200 and len(r[2]) >= 3 else None)(
        get(system, base, token)), "the three events listed")
    assert {e["id"] for e in listed} >= set(ids)
    assert all({"id", "eventID", "title", "dateCreated"} <= set(e) and e["dateCreated"].endswith("Z")
               for e in listed)
    assert "ValueError" in listed[0]["title"] and "event" not in listed[0]  # a listing carries no bodies
    # pages: Sentry's Link header with its cursors
    status, headers, first = get(system, base + "?per_page=2", token)
    assert status == 200 and len(first) == 2 and 'rel="next"; results="true"' in headers["link"]
    cursor = headers["link"].split('rel="next"; results="true"; cursor="')[1].split('"')[0]
    status, headers, rest = get(system, base + f"?per_page=2&cursor={cursor}", token)
    assert status == 200 and {e["id"] for e in first + rest} == {e["id"] for e in listed}
    # one event: stored, scrubbed
    status, _, detail = get(system, base + ids[0] + "/", token)
    assert status == 200 and detail["eventID"] == ids[0] and detail["event"]["event_id"] == ids[0]
    assert detail["event"]["extra"]["password"] == "[Filtered]" and "hunter2-api" not in json.dumps(detail)
    # who may not see them: another org's member, a token without project:read, another project
    for path in (base, base + ids[0] + "/"):
        assert get(system, path, world["bob_token"])[0] == 404
    narrow = system.cli_ok("token", "create", world["ann"], "--scope", "org:read", "--json")["token"]
    assert get(system, base, narrow)[0] == 403
    assert get(system, f"/api/0/projects/{acme}/api/events/{ids[0]}/", token)[0] == 404
    assert get(system, base + "0" * 32 + "/", token)[0] == 404
    assert get(system, base + "not-an-id/", token)[0] == 404
    assert get(system, base + "?cursor=bogus", token)[0] == 400


def test_ingest_status_over_the_api_counts_only_and_scoped(system: SystemUnderTest, world: dict[str, Any]) -> None:
    acme, token, web = world["acme"], world["ann_token"], world["web"]
    _capture(system, web, 1)
    root = "root-" + world["ann"]
    system.cli_ok("user", "create", root, "--superuser")
    root_token = system.cli_ok("token", "create", root, "--json")["token"]
    # the whole stream: superusers (and relayctl.admin) only
    assert get(system, "/api/0/relayctl/ingest/", token)[0] == 403
    status, _, whole = get(system, "/api/0/relayctl/ingest/", root_token)
    assert status == 200 and whole["stream"]["messages"] >= 1 and "consumers" in whole
    assert set(whole["deadLetters"]) == {"count", "byProject"}  # counts, never a letter's contents
    # a project's share: project:read in its org
    path = f"/api/0/projects/{acme}/web/relayctl/ingest/"
    project = _eventually(lambda: (lambda r: r[2] if r[0] == 200 and r[2]["outcomes"]["lastHour"]["accepted"]
                                   else None)(get(system, path, token)), "the accepted envelopes counted")
    assert project["project"] == "web" and project["org"] == acme and project["projectId"] == web["id"]
    assert project["deadLetters"] == {"count": 0} and project["backlog"]["envelopes"] == 0
    assert "stream" not in project and "consumers" not in project
    assert get(system, path, world["bob_token"])[0] == 404
    assert get(system, f"/api/0/projects/{acme}/nope/relayctl/ingest/", token)[0] == 404


def test_ingest_status_over_the_api_counts_dead_letters_without_their_contents(
        system: SystemUnderTest, world: dict[str, Any]) -> None:
    """A downstream Sentry that refuses for good: the letter is counted, per project and in
    the whole, and nothing of it - event id, target, the refusal's text - is shown."""
    from tests.sentry_stub import SentryStub

    token = world["ann_token"]
    acme = "dl-" + world["acme"]  # an org of its own: the module's other tests count acme's projects
    system.cli_ok("org", "create", acme)
    system.cli_ok("org", "member", "add", acme, world["ann"], "--role", "member")
    root = "root-dl-" + world["ann"]
    system.cli_ok("user", "create", root, "--superuser")
    root_token = system.cli_ok("token", "create", root, "--json")["token"]
    stub = SentryStub().start()
    try:
        stub.mode = "400"
        refused = system.cli_ok("project", "create", acme, "refused", "--json")
        system.cli_ok("project", "option", "set", f"{acme}/refused", "relayctl:forward_dsn", json.dumps(stub.dsn()))
        event_id = _capture(system, refused, 1)[0].replace("-", "")
        path = f"/api/0/projects/{acme}/refused/relayctl/ingest/"
        project = _eventually(lambda: (lambda r: r[2] if r[0] == 200 and r[2]["deadLetters"]["count"] else None)(
            get(system, path, token)), "the dead letter counted")
        assert project["deadLetters"] == {"count": 1} and project["forwarding"] is True
        status, _, whole = get(system, "/api/0/relayctl/ingest/", root_token)
        assert status == 200
        assert {"projectId": refused["id"], "org": acme, "project": "refused", "count": 1} in \
            whole["deadLetters"]["byProject"]
        text = json.dumps([project, whole])
        assert event_id not in text and str(stub.port) not in text and "HTTP" not in text
        # the operator's own view has the letter itself
        letters = system.cli_ok("ingest", "status", "--json")["deadLetters"]["letters"]
        assert event_id in {x["eventId"] for x in letters}
    finally:
        stub.stop()


async def _next_change(response: Any, wanted: Any) -> dict[str, Any]:
    """The data of the next `config` event that `wanted` accepts (comments, others skipped)."""
    name = ""
    while True:
        line = (await response.content.readline()).decode()
        if not line:
            raise EOFError("the stream ended")
        if line.startswith("event: "):
            name = line[7:].strip()
        elif line.startswith("data: ") and name == "config":
            change: dict[str, Any] = json.loads(line[6:])
            if wanted(change):
                return change


def test_configs_going_live_stream_to_the_orgs_members_only(system: SystemUnderTest, world: dict[str, Any]) -> None:
    """GET /api/0/relayctl/config-changes/: a project option set from the CLI arrives as a
    `config` event for the project's key, with its propagation time; bob (another org) gets
    nothing of it."""
    import asyncio

    import aiohttp

    acme = world["acme"]
    _, _, keys = get(system, f"/api/0/projects/{acme}/web/keys/", world["ann_token"])
    public_key = keys[0]["public"]
    url = system.url + "/api/0/relayctl/config-changes/"
    assert get(system, "/api/0/relayctl/config-changes/", None)[0] == 401

    async def run() -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            ann = await session.get(url, headers={"Authorization": f"Bearer {world['ann_token']}"})
            bob = await session.get(url, headers={"Authorization": f"Bearer {world['bob_token']}"})
            for response in (ann, bob):
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/event-stream")
                assert await response.content.readline() == b": live\n"  # subscribed
            await asyncio.to_thread(system.cli_ok, "project", "option", "set", f"{acme}/web",
                                    "filters:localhost", "true", "--json")
            change = await asyncio.wait_for(_next_change(ann, lambda c: c["publicKey"] == public_key), 20)
            assert change["orgSlug"] == acme and change["projectSlug"] == "web"
            assert change["projectId"] == int(world["web"]["id"]) and change["revision"]
            assert isinstance(change["propagationMs"], int) and change["propagationMs"] >= 0
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(_next_change(bob, lambda c: c["orgSlug"] == acme), 1.0)
            ann.close()
            bob.close()

    asyncio.run(run())
