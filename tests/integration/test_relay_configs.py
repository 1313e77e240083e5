"""Project configs (PROTOCOL.md sections 4-6): what a Relay polling
`projectconfigs/` gets, which keys it may see, and how fast changes reach it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sentry_relay

from tests.system import RelayClient, SystemUnderTest, http_request

DISABLED = {"disabled": True}
ASK_GLOBAL: dict[str, Any] = {"global": True}


# -- helpers ------------------------------------------------------------------------------------

def registered_relay(system: SystemUnderTest, *, internal: bool) -> RelayClient:
    relay = RelayClient(system.url)
    system.cli_ok("relay", "allow", *(["--internal"] if internal else []), "--", relay.public_key_str)
    relay.register()
    return relay


@pytest.fixture(scope="module")
def relay(system: SystemUnderTest) -> RelayClient:
    """An internal relay: it may fetch every project's config."""
    return registered_relay(system, internal=True)


@pytest.fixture(scope="module")
def cache(system: SystemUnderTest) -> Iterator[redis.Redis]:
    """The Redis holding the config cache, to evict or corrupt entries as an operator might."""
    client = redis.Redis.from_url(system.redis_url)
    yield client
    client.close()


def assert_relay_accepts(doc: dict[str, Any], public_key: str, project: dict[str, Any]) -> None:
    """The checks Relay applies to one enabled project config."""
    assert doc["disabled"] is False
    assert doc["publicKeys"][0]["publicKey"] == public_key
    assert doc["publicKeys"][0]["isEnabled"] is True and isinstance(doc["publicKeys"][0]["numericId"], int)
    assert type(doc["projectId"]) is int and doc["projectId"] == project["id"]
    assert type(doc["organizationId"]) is int and doc["organizationId"] == project["organizationId"]
    assert doc["slug"] == project["slug"]
    assert doc["lastFetch"].endswith("Z") and doc["lastChange"].endswith("Z")
    assert isinstance(doc["rev"], str) and doc["rev"]
    sentry_relay.normalize_project_config(doc["config"])


def served(relay: RelayClient, public_key: str, **extra: Any) -> Any:
    """The config a v3 poll serves for one key, once it is no longer pending."""
    response = relay.poll([public_key], lambda r: public_key in r["configs"] or public_key in r.get("unchanged", []),
                          **extra)
    return response["configs"][public_key]


def project_ref(project: dict[str, Any]) -> str:
    return f"{project['org']}/{project['slug']}"


# -- happy paths ----------------------------------------------------------------------------------

def test_v3_serves_a_config_relay_accepts(system: SystemUnderTest, relay: RelayClient) -> None:
    """A v3 poll answers the requested key with a document that passes Relay's checks."""
    project = system.new_project()
    response = relay.poll([project["publicKey"]], lambda r: project["publicKey"] in r["configs"])
    assert set(response) == {"configs", "pending"} and response["pending"] == []
    assert_relay_accepts(response["configs"][project["publicKey"]], project["publicKey"], project)


def test_v2_serves_a_config_relay_accepts(system: SystemUnderTest, relay: RelayClient) -> None:
    """A v2 request is built on the spot and answered with only `configs`."""
    project = system.new_project()
    status, data = relay.configs([project["publicKey"]], version=2)
    assert status == 200 and set(data) == {"configs"}
    assert_relay_accepts(data["configs"][project["publicKey"]], project["publicKey"], project)


def test_v2_requested_key_comes_first(system: SystemUnderTest, relay: RelayClient) -> None:
    """With several keys in a project, each config lists exactly the requested key first."""
    project = system.new_project()
    second = system.cli_ok("key", "create", project_ref(project), "--json")["publicKey"]
    for version in (2, 3):
        data = relay.poll([project["publicKey"], second], lambda r: len(r["configs"]) == 2, version=version) \
            if version == 3 else relay.configs([project["publicKey"], second], version=2)[1]
        for key in (project["publicKey"], second):
            assert_relay_accepts(data["configs"][key], key, project)


def test_v1_serves_configs_by_project_id(system: SystemUnderTest, relay: RelayClient) -> None:
    """v1 answers configs keyed by project id string, listing the project's keys."""
    project = system.new_project()
    second = system.cli_ok("key", "create", project_ref(project), "--json")["publicKey"]
    status, data = relay.post("projectconfigs/?version=1", {"projects": [project["id"]]})
    assert status == 200 and set(data) == {"configs"}
    doc = data["configs"][str(project["id"])]
    assert {k["publicKey"] for k in doc["publicKeys"]} == {project["publicKey"], second}
    assert type(doc["projectId"]) is int and doc["projectId"] == project["id"]
    assert doc["lastFetch"].endswith("Z") and doc["lastChange"].endswith("Z")
    sentry_relay.normalize_project_config(doc["config"])


@pytest.mark.parametrize("path", ["projectconfigs/", "projectconfigs/?version="],
                         ids=["absent", "empty"])
def test_absent_version_means_v1(system: SystemUnderTest, relay: RelayClient, path: str) -> None:
    """A request without a version (or an empty one) is answered as v1."""
    project = system.new_project()
    status, data = relay.post(path, {"projects": [project["id"]]})
    assert status == 200 and data["configs"][str(project["id"])]["projectId"] == project["id"]


def test_v1_unknown_project_is_disabled(relay: RelayClient) -> None:
    """v1 answers an unknown project id with exactly {"disabled": true}."""
    status, data = relay.post("projectconfigs/?version=1", {"projects": [987654321]})
    assert (status, data) == (200, {"configs": {"987654321": DISABLED}})


@pytest.mark.parametrize("version", ["4", "0", "abc", "3.0"])
def test_unsupported_version_is_400(relay: RelayClient, version: str) -> None:
    """Any version but 1, 2, 3 answers 400 with Sentry's JSON string."""
    status, data = relay.post(f"projectconfigs/?version={version}", {"publicKeys": []})
    assert (status, data) == (400, "Unsupported version, we only support versions 1 to 3.")


# -- disabled configs -----------------------------------------------------------------------------

def test_unknown_key_is_disabled(relay: RelayClient) -> None:
    """A well-formed key nobody created is served as exactly {"disabled": true}, v2 and v3."""
    key = uuid.uuid4().hex
    assert served(relay, key) == DISABLED
    assert relay.configs([key], version=2) == (200, {"configs": {key: DISABLED}})


def test_unknown_keys_are_answered_but_never_stored(relay: RelayClient, cache: redis.Redis) -> None:
    """Keys nobody created, however many a relay asks for, are answered disabled (v3, never
    left pending) and leave nothing in Redis: relay input cannot grow the cache."""
    keys = [uuid.uuid4().hex for _ in range(500)]
    before = cache.dbsize()
    response = relay.poll(keys, lambda r: not r["pending"], timeout=5)
    assert response["configs"] == {k: DISABLED for k in keys}
    assert cache.exists(*(f"relayconfig:{k}" for k in keys)) == 0
    assert cache.dbsize() <= before + 5  # the other tests' writes, never 500 more


def test_a_deleted_key_leaves_no_entry(system: SystemUnderTest, relay: RelayClient, cache: redis.Redis) -> None:
    """A deleted key is served disabled and its cache entry is removed, not kept forever."""
    project = system.new_project()
    key = system.cli_ok("key", "create", project_ref(project), "--json")["publicKey"]
    assert served(relay, key) != DISABLED
    system.cli_ok("key", "delete", key)
    relay.poll([key], lambda r: r["configs"].get(key) == DISABLED, timeout=2)
    assert not cache.exists(f"relayconfig:{key}")


def test_disabled_key_is_disabled(system: SystemUnderTest, relay: RelayClient) -> None:
    """A disabled key is served as exactly {"disabled": true} and comes back when enabled."""
    project = system.new_project()
    key = project["publicKey"]
    system.cli_ok("key", "disable", key)
    assert relay.configs([key], version=2)[1]["configs"][key] == DISABLED
    relay.poll([key], lambda r: r["configs"].get(key) == DISABLED, timeout=2)
    system.cli_ok("key", "enable", key)
    relay.poll([key], lambda r: r["configs"].get(key, DISABLED) != DISABLED, timeout=2)


@pytest.mark.parametrize("verb", ["disable", "delete"])
def test_inactive_project_is_disabled(system: SystemUnderTest, relay: RelayClient, verb: str) -> None:
    """Keys of a disabled or deleted project are served as exactly {"disabled": true}."""
    project = system.new_project()
    key = project["publicKey"]
    assert served(relay, key) != DISABLED
    system.cli_ok("project", verb, project_ref(project))
    relay.poll([key], lambda r: r["configs"].get(key) == DISABLED, timeout=2)
    assert relay.configs([key], version=2)[1]["configs"][key] == DISABLED
    status, data = relay.post("projectconfigs/?version=1", {"projects": [project["id"]]})
    assert (status, data) == (200, {"configs": {str(project["id"]): DISABLED}})


def test_disabled_key_never_answered_unchanged(system: SystemUnderTest, relay: RelayClient) -> None:
    """A key disabled since the relay's last fetch is answered disabled even if the relay sends its old rev."""
    project = system.new_project()
    key = project["publicKey"]
    rev = served(relay, key)["rev"]
    system.cli_ok("key", "disable", key)
    response = relay.poll([key], lambda r: key in r["configs"] or key in r["pending"], revisions=[rev], timeout=2)
    relay.poll([key], lambda r: r["configs"].get(key) == DISABLED, revisions=[rev], timeout=2)
    assert key not in response.get("unchanged", [])


# -- access -----------------------------------------------------------------------------------------

def test_untrusted_external_relay_is_403(system: SystemUnderTest) -> None:
    """A registered relay that is not internal and that no org trusts gets 403, before the version check."""
    external = registered_relay(system, internal=False)
    for version in ("1", "2", "3", "4"):
        status, data = external.post(f"projectconfigs/?version={version}", {"publicKeys": []})
        assert (status, data) == (403, "Relay unauthorized for config information")


def test_trusted_external_relay_sees_only_trusting_org(system: SystemUnderTest) -> None:
    """An external relay trusted by org A gets A's configs and {"disabled": true} for org B's keys."""
    a, b = system.new_project(), system.new_project()
    external = registered_relay(system, internal=False)
    system.cli_ok("org", "trust-relay", "--name", "edge", "--", a["org"], external.public_key_str)
    keys = [a["publicKey"], b["publicKey"]]
    response = external.poll(keys, lambda r: r["configs"].get(a["publicKey"], DISABLED) != DISABLED
                             and b["publicKey"] in r["configs"], timeout=5)
    assert_relay_accepts(response["configs"][a["publicKey"]], a["publicKey"], a)
    assert response["configs"][b["publicKey"]] == DISABLED
    assert response["configs"][a["publicKey"]]["config"]["trustedRelays"] == [external.public_key_str]
    status, data = external.configs(keys, version=2)
    assert status == 200 and data["configs"][b["publicKey"]] == DISABLED
    assert_relay_accepts(data["configs"][a["publicKey"]], a["publicKey"], a)
    status, data = external.configs(keys, version=3, noCache=True)
    assert status == 200 and data["configs"][b["publicKey"]] == DISABLED
    status, data = external.post("projectconfigs/?version=1", {"projects": [a["id"], b["id"]]})
    assert status == 200 and data["configs"][str(b["id"])] == DISABLED
    assert data["configs"][str(a["id"])]["projectId"] == a["id"]


def test_untrusting_a_relay_takes_its_access_away(system: SystemUnderTest) -> None:
    """After `org untrust-relay` by its only trusting org, the relay's polls answer 403 within 2 s."""
    a = system.new_project()
    external = registered_relay(system, internal=False)
    system.cli_ok("org", "trust-relay", "--", a["org"], external.public_key_str)
    key = a["publicKey"]
    external.poll([key], lambda r: r["configs"].get(key, DISABLED) != DISABLED, timeout=5)
    system.cli_ok("org", "untrust-relay", "--", a["org"], external.public_key_str)
    deadline = time.monotonic() + 2
    while (answer := external.configs([key], version=3)) != (403, "Relay unauthorized for config information"):
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)


def test_internal_flag_is_decided_per_request(system: SystemUnderTest) -> None:
    """Promoting a registered relay to internal grants every config; demoting it takes that away."""
    project = system.new_project()
    key = project["publicKey"]
    other = registered_relay(system, internal=False)
    assert other.configs([key], version=2) == (403, "Relay unauthorized for config information")
    system.cli_ok("relay", "allow", "--internal", "--", other.public_key_str)
    other.poll([key], lambda r: r["configs"].get(key, DISABLED) != DISABLED, timeout=2)
    system.cli_ok("relay", "allow", "--", other.public_key_str)
    deadline = time.monotonic() + 2
    while (answer := other.configs([key], version=2)) != (403, "Relay unauthorized for config information"):
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)


# -- v3 semantics -----------------------------------------------------------------------------------

def test_v3_unchanged_for_current_revision(system: SystemUnderTest, relay: RelayClient) -> None:
    """A key sent with its current rev is listed in `unchanged`; a stale or null rev gets the full config."""
    project = system.new_project()
    key = project["publicKey"]
    rev = served(relay, key)["rev"]
    status, data = relay.configs([key], revisions=[rev])
    assert (status, data) == (200, {"configs": {}, "pending": [], "unchanged": [key]})
    for stale in ("0" * 16, None, ""):
        status, data = relay.configs([key], revisions=[stale])
        assert status == 200 and set(data) == {"configs", "pending"}
        assert data["configs"][key]["rev"] == rev


def test_v3_unchanged_is_index_aligned(system: SystemUnderTest, relay: RelayClient) -> None:
    """Revisions apply to the key at the same index only."""
    a, b = system.new_project(), system.new_project()
    rev_a = served(relay, a["publicKey"])["rev"]
    served(relay, b["publicKey"])
    status, data = relay.configs([a["publicKey"], b["publicKey"]], revisions=[rev_a, None])
    assert status == 200 and data["unchanged"] == [a["publicKey"]] and list(data["configs"]) == [b["publicKey"]]
    status, data = relay.configs([b["publicKey"], a["publicKey"]], revisions=[rev_a, None])
    assert status == 200 and "unchanged" not in data and len(data["configs"]) == 2


def test_v2_never_answers_unchanged(system: SystemUnderTest, relay: RelayClient) -> None:
    """v2 has no `unchanged`: the full config comes back whatever revision is sent."""
    project = system.new_project()
    rev = served(relay, project["publicKey"])["rev"]
    status, data = relay.configs([project["publicKey"]], version=2, revisions=[rev])
    assert status == 200 and set(data) == {"configs"} and data["configs"][project["publicKey"]]["rev"] == rev


def test_v3_global_config(relay: RelayClient) -> None:
    """`{"global": true, "publicKeys": []}` gets a global config Relay keeps as it is, and "ready"."""
    response = relay.poll([], lambda r: r.get("globalStatus") == "ready", **ASK_GLOBAL)
    assert set(response) == {"configs", "pending", "global", "globalStatus"}
    assert response["configs"] == {} and response["pending"] == []
    assert sentry_relay.normalize_global_config(response["global"]) == response["global"]
    status, data = relay.configs([])
    assert status == 200 and data == {"configs": {}, "pending": []}


def test_v3_global_config_with_nocache(relay: RelayClient) -> None:
    """The global config comes with a noCache request too."""
    status, data = relay.configs([], noCache=True, **ASK_GLOBAL)
    assert status == 200 and data["globalStatus"] == "ready"
    assert sentry_relay.normalize_global_config(data["global"]) == data["global"]


def test_global_config_not_sent_for_v2(relay: RelayClient) -> None:
    """Only v3 carries the global config: v2 answers `configs` alone."""
    status, data = relay.configs([], version=2, **ASK_GLOBAL)
    assert (status, data) == (200, {"configs": {}})


def test_v3_nocache_builds_on_the_spot(system: SystemUnderTest, relay: RelayClient, cache: redis.Redis) -> None:
    """A noCache request answers a key missing from the cache at once, never `pending`."""
    project = system.new_project()
    key = project["publicKey"]
    served(relay, key)
    cache.delete(f"relayconfig:{key}")
    status, data = relay.configs([key], noCache=True)
    assert status == 200 and set(data) == {"configs", "pending"} and data["pending"] == []
    assert_relay_accepts(data["configs"][key], key, project)


def test_v3_cache_miss_is_rebuilt(system: SystemUnderTest, relay: RelayClient, cache: redis.Redis) -> None:
    """A key evicted from the cache is rebuilt: answered now or pending, then served on the next polls."""
    project = system.new_project()
    key = project["publicKey"]
    rev = served(relay, key)["rev"]
    cache.delete(f"relayconfig:{key}")
    status, data = relay.configs([key])
    assert status == 200 and (key in data["configs"] or data["pending"] == [key])
    doc = served(relay, key, timeout=5)
    assert doc["rev"] == rev
    assert_relay_accepts(doc, key, project)
    assert cache.exists(f"relayconfig:{key}")


def test_v3_corrupt_cache_entry_is_rebuilt(system: SystemUnderTest, relay: RelayClient, cache: redis.Redis) -> None:
    """An unreadable cache entry is treated as a miss and rebuilt, never answered with an error."""
    project = system.new_project()
    key = project["publicKey"]
    served(relay, key)
    cache.set(f"relayconfig:{key}", b"not a zstd frame")
    status, data = relay.configs([key])
    assert status == 200 and (key in data["configs"] or data["pending"] == [key])
    assert_relay_accepts(served(relay, key, timeout=5), key, project)


def test_v3_duplicate_keys_answered_once(system: SystemUnderTest, relay: RelayClient) -> None:
    """A key asked several times in one batch appears once in the response."""
    project = system.new_project()
    key = project["publicKey"]
    served(relay, key)
    status, _, body = http_request(relay.base_url + "/api/0/relays/projectconfigs/?version=3", "POST",
                                   raw := json.dumps({"publicKeys": [key, key, key]}).encode(),
                                   {"X-Sentry-Relay-Id": relay.relay_id,
                                    "X-Sentry-Relay-Signature": relay.secret_key.sign(raw)})
    assert status == 200 and body.count(b'"' + key.encode() + b'":') == 1


def test_v3_global_cache_miss_is_rebuilt(relay: RelayClient, cache: redis.Redis) -> None:
    """A global config evicted from the cache is rebuilt and served "ready" again."""
    relay.poll([], lambda r: r.get("globalStatus") == "ready", **ASK_GLOBAL)
    cache.delete("relayconfig:__global__")
    status, data = relay.configs([], **ASK_GLOBAL)
    assert status == 200 and data["globalStatus"] in ("ready", "pending")
    response = relay.poll([], lambda r: r.get("globalStatus") == "ready", timeout=5, **ASK_GLOBAL)
    assert sentry_relay.normalize_global_config(response["global"]) == response["global"]


def test_500_key_batch(system: SystemUnderTest, relay: RelayClient, tmp_path: Path) -> None:
    """A full batch of 500 keys is answered in one response, every key with its own config."""
    org, slug = "org-" + uuid.uuid4().hex[:10], "p-" + uuid.uuid4().hex[:10]
    keys = [uuid.uuid4().hex for _ in range(500)]
    spec = {"orgs": [{"slug": org, "projects": [{"slug": slug, "keys": [{"publicKey": k} for k in keys]}]}]}
    (tmp_path / "import.json").write_text(json.dumps(spec))
    assert system.cli_ok("import", str(tmp_path / "import.json"), "--json")["keys"] == 500
    response = relay.poll(keys, lambda r: len(r["configs"]) == 500, timeout=10)
    assert response["pending"] == []
    project_id = response["configs"][keys[0]]["projectId"]
    for key in keys:
        doc = response["configs"][key]
        assert doc["publicKeys"][0]["publicKey"] == key and doc["projectId"] == project_id
    sentry_relay.normalize_project_config(response["configs"][keys[-1]]["config"])
    revisions = [response["configs"][k]["rev"] for k in keys]
    status, data = relay.configs(keys, revisions=revisions)
    assert status == 200 and sorted(data["unchanged"]) == sorted(keys) and data["configs"] == {}
    status, data = relay.configs(keys, version=2)
    assert status == 200 and len(data["configs"]) == 500


@pytest.mark.parametrize("version", [2, 3])
def test_keys_that_are_not_32_hex_never_appear(system: SystemUnderTest, relay: RelayClient, version: int) -> None:
    """A key that is not 32 hex characters is left out of the response, so the batch stays valid."""
    project = system.new_project()
    bad = ["abc", project["publicKey"].upper(), project["publicKey"] + "0", "g" * 32, "", "../" + "0" * 29,
           project["publicKey"] + "\n"]
    keys = bad + [project["publicKey"]]
    if version == 3:
        data = relay.poll(keys, lambda r: project["publicKey"] in r["configs"])
    else:
        status, data = relay.configs(keys, version=version)
        assert status == 200
    assert list(data["configs"]) == [project["publicKey"]]
    assert all(len(k) == 32 for k in data.get("pending", []) + data.get("unchanged", []))


# -- malformed requests -----------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"not json", b"", b"[]", b"null", b"42", b'"x"',
    b'{"publicKeys": "abc"}', b'{"publicKeys": [1, 2]}', b'{"publicKeys": null}', b'{"publicKeys": {}}',
    b'{"publicKeys": [[]]}', b'{"publicKeys": [], "revisions": "x"}', b'{"publicKeys": ["' + b"a" * 32 + b'"], '
    b'"revisions": [1]}', b'{"publicKeys": [], "global": "yes"}', b'{"publicKeys": [], "noCache": 1}',
    b'{"publicKeys": [' + b",".join([b'"' + b"0" * 32 + b'"'] * 6000) + b"]}",
])
@pytest.mark.parametrize("version", [2, 3])
def test_malformed_bodies_are_4xx(relay: RelayClient, body: bytes, version: int) -> None:
    """Whatever a broken relay sends, the answer is a 2xx or 4xx, never a 5xx."""
    status, _ = relay.post(f"projectconfigs/?version={version}", body)
    assert status < 500


@pytest.mark.parametrize("body", [
    b"nope", b"{}", b'{"projects": "x"}', b'{"projects": [{}]}', b'{"projects": ["\\u00b2", "007", "1.5"]}',
    b'{"projects": [null, true, "x", -1, 1e400, 99999999999999999999999999]}',
])
def test_malformed_v1_bodies_are_4xx(relay: RelayClient, body: bytes) -> None:
    """Malformed v1 requests answer 2xx or 4xx, never a 5xx."""
    status, _ = relay.post("projectconfigs/?version=1", body)
    assert status < 500


@pytest.mark.parametrize("path", ["projectconfigs/?version=3", "register/challenge/"])
def test_oversized_body_is_413(relay: RelayClient, path: str) -> None:
    """A body over 10 MiB answers 413."""
    raw = b'{"publicKeys": ["' + b"0" * (11 * 1024 * 1024) + b'"]}'
    try:
        status, _ = relay.post(path, raw)
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("the gateway closed the connection instead of answering 413")
    assert status == 413


def test_unsigned_configs_request_is_401(system: SystemUnderTest) -> None:
    """A config request without any relay headers answers 401."""
    status, _, body = http_request(system.url + "/api/0/relays/projectconfigs/?version=3", "POST",
                                   b'{"publicKeys": []}', {"Content-Type": "application/json"})
    assert status == 401 and json.loads(body)["detail"]


# -- changes reaching a polling relay -----------------------------------------------------------------

def test_key_disable_reaches_polling_relay_within_a_second(system: SystemUnderTest, relay: RelayClient) -> None:
    """`relayctl key disable` is visible to a relay polling with its current revision within 1 s."""
    project = system.new_project()
    key = project["publicKey"]
    rev = served(relay, key)["rev"]
    system.cli_ok("key", "disable", key)
    relay.poll([key], lambda r: r["configs"].get(key) == DISABLED, revisions=[rev], timeout=1.0)


def test_org_option_change_reaches_config(system: SystemUnderTest, relay: RelayClient) -> None:
    """An org option (sentry:safe_fields) shows in every project config of the org."""
    project = system.new_project()
    key = project["publicKey"]
    rev = served(relay, key)["rev"]
    system.cli_ok("org", "option", "set", project["org"], "sentry:safe_fields", '["org-safe"]')
    response = relay.poll([key], lambda r: key in r["configs"], revisions=[rev], timeout=2)
    doc = response["configs"][key]
    assert doc["rev"] != rev and "org-safe" in doc["config"]["datascrubbingSettings"]["excludeFields"]
    assert_relay_accepts(doc, key, project)


def test_project_option_change_reaches_config(system: SystemUnderTest, relay: RelayClient) -> None:
    """A project option (sentry:origins) shows in the served config as allowedDomains."""
    project = system.new_project()
    key = project["publicKey"]
    rev = served(relay, key)["rev"]
    system.cli_ok("project", "option", "set", project_ref(project), "sentry:origins", '["https://example.com"]')
    response = relay.poll([key], lambda r: key in r["configs"], revisions=[rev], timeout=2)
    doc = response["configs"][key]
    assert doc["config"]["allowedDomains"] == ["https://example.com"]
    assert_relay_accepts(doc, key, project)


@pytest.mark.parametrize("scope,key,value", [
    ("project", "sentry:scrub_data", '"maybe"'),
    ("project", "sentry:dynamic_sampling_rules", '{"version": 2, "rules": [{"bogus": 1}]}'),
    ("project", "sentry:relay_pii_config", '{"rules": {"x": {"type": "nope"}}}'),
    ("org", "sentry:trusted-relays", '[{"public_key": "not-a-key", "name": "x"}]'),
    ("org", "sentry:event_retention", '-3'),
    ("project", "sentry:origins", 'not json'),
])
def test_invalid_option_is_refused_and_config_unchanged(system: SystemUnderTest, relay: RelayClient,
                                                        scope: str, key: str, value: str) -> None:
    """An invalid option value is refused by the CLI (exit 1, one clear line) and the served config stays."""
    project = system.new_project()
    public_key = project["publicKey"]
    before = served(relay, public_key)
    target = project["org"] if scope == "org" else project_ref(project)
    result = system.cli(scope, "option", "set", "--", target, key, value)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    status, data = relay.configs([public_key], revisions=[before["rev"]])
    assert (status, data) == (200, {"configs": {}, "pending": [], "unchanged": [public_key]})
