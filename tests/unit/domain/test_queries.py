"""Every query the domain answers: given events, when asked, then the answer - or the error.
Test names start with the query (`test_org_option_get_...`), which test_coverage.py checks."""

from __future__ import annotations

from domain.decisions import token_hash
from domain.model import TRUSTED_RELAYS
from domain.queries import has_org_access, key_view, keys_lookup, relay_auth, relay_view
from messages.errors import BadRequest, NotFound, Unauthorized
from tests.unit.domain.gwt import NOW, acme_web, event, given, key, key_created, org_created, project_created

RELAY = "CTx27wo6qDRbBDaDtQrpsOYerTwTYaKn5BgkIdebZ0M"
OTHER_RELAY = "1kRSzb1lBDA-hOSCdnF32Dygiw0gGMOevtxSaWnSSV0"
RELAY_ID = "0d3c0b0e-2a5c-4b5e-9a0e-6f1d2c3b4a59"
ENTRY = {"public_key": RELAY, "name": "edge", "created": "2020-01-01T00:00:00Z"}


def test_an_unknown_query_is_a_bad_request() -> None:
    given().ask_fails("org.explode", BadRequest, "unknown query org.explode")


def test_org_option_get_answers_the_value_or_the_default() -> None:
    g = given(org_created(), event("OrgOptionSet", "acme", key="sentry:require_scrub_ip_address", value=True))
    assert g.ask("org.option_get", org="acme", key="sentry:require_scrub_ip_address") == {
        "key": "sentry:require_scrub_ip_address", "value": True, "isSet": True}
    assert g.ask("org.option_get", org="acme", key="sentry:event_retention") == {
        "key": "sentry:event_retention", "value": 90, "isSet": False}


def test_org_option_get_errors() -> None:
    given().ask_fails("org.option_get", NotFound, "No organization matching `acme`", org="acme",
                      key="sentry:event_retention")
    given(org_created()).ask_fails("org.option_get", BadRequest, "not an org option", org="acme",
                                   key="sentry:origins")


def test_project_option_get_falls_back_to_the_template_then_the_default() -> None:
    base = [org_created(), event("ProjectTemplateSet", "acme", template="t", options={"sentry:scrub_data": False}),
            project_created(template="t"), key_created()]
    g = given(*base)
    assert g.ask("project.option_get", org="acme", project="web", key="sentry:scrub_data") == {
        "key": "sentry:scrub_data", "value": False, "isSet": False}
    g = given(*base, event("ProjectOptionSet", "acme", project="web", key="sentry:scrub_data", value=True))
    assert g.ask("project.option_get", org="acme", project="web", key="sentry:scrub_data") == {
        "key": "sentry:scrub_data", "value": True, "isSet": True}
    assert given(*acme_web()).ask("project.option_get", org="acme", project="web", key="sentry:origins") == {
        "key": "sentry:origins", "value": ["*"], "isSet": False}


def test_project_option_get_errors() -> None:
    given().ask_fails("project.option_get", NotFound, "No organization", org="acme", project="web",
                      key="sentry:origins")
    given(org_created()).ask_fails("project.option_get", NotFound, "No project matching `acme/web`", org="acme",
                                   project="web", key="sentry:origins")
    given(*acme_web()).ask_fails("project.option_get", BadRequest, "unknown option", org="acme", project="web",
                                 key="sentry:nothing_like_it")


def test_key_list_lists_the_projects_live_keys() -> None:
    g = given(*acme_web(), key_created(public_key=key(101), numeric_id=2, status="disabled"),
              key_created(public_key=key(102), numeric_id=3), event("KeyDeleted", "acme", public_key=key(102)))
    assert g.ask("key.list", org="acme", project="web") == {"keys": [
        {"publicKey": key(100), "numericId": 1, "status": "active", "projectId": 1},
        {"publicKey": key(101), "numericId": 2, "status": "disabled", "projectId": 1}]}


def test_key_list_errors() -> None:
    given().ask_fails("key.list", NotFound, "No organization", org="acme", project="web")
    given(org_created()).ask_fails("key.list", NotFound, "No project", org="acme", project="web")


def test_relay_list_lists_every_relay_by_key() -> None:
    seen = event("RelayRegistered", OTHER_RELAY, relay_id=RELAY_ID, version="1.2")
    g = given(event("RelayAllowed", RELAY, internal=True), event("RelayAllowed", OTHER_RELAY, internal=False), seen,
              event("RelayDenied", RELAY))
    assert g.ask("relay.list") == {"relays": [
        {"publicKey": OTHER_RELAY, "relayId": RELAY_ID, "internal": False, "banned": False, "version": "1.2",
         "firstSeen": NOW, "lastSeen": NOW,
         "usage": [{"relayId": RELAY_ID, "version": "1.2", "firstSeen": NOW, "lastSeen": NOW}]},
        {"publicKey": RELAY, "relayId": None, "internal": False, "banned": True, "version": None,
         "firstSeen": None, "lastSeen": None, "usage": []}]}
    assert given().ask("relay.list") == {"relays": []}


ANN = event("UserCreated", "ann", email=None, superuser=True)


def test_user_permission_list_lists_them_sorted() -> None:
    g = given(ANN, event("PermissionAdded", "ann", permission="b.x"), event("PermissionAdded", "ann", permission="a.y"))
    assert g.ask("user.permission_list", username="ann") == {"username": "ann", "permissions": ["a.y", "b.x"]}
    given().ask_fails("user.permission_list", NotFound, "No user matching `ann`", username="ann")


def test_user_authenticate_finds_the_tokens_user() -> None:
    g = given(ANN, event("TokenCreated", "ann", token_hash=token_hash("s3cret")),
              event("PermissionAdded", "ann", permission="ai.suggest"))
    # a token made before token.create (no scopes: every scope) - what domain/access.py reads
    assert g.ask("user.authenticate", token="s3cret") == {"username": "ann", "superuser": True,
                                                          "permissions": ["ai.suggest"], "email": None,
                                                          "tokenId": token_hash("s3cret")[:12], "scopes": None,
                                                          "org": None, "memberships": {}}
    g.ask_fails("user.authenticate", Unauthorized, "invalid token", token="guess")


def test_export_orgs_writes_what_import_reads() -> None:
    g = given(*acme_web(), event("OrgOptionSet", "acme", key=TRUSTED_RELAYS, value=[ENTRY]),
              event("OrgOptionSet", "acme", key="sentry:require_scrub_ip_address", value=True),
              event("ProjectOptionSet", "acme", project="web", key="sentry:origins", value=["a.example"]),
              project_created(project="gone", id=2), event("ProjectDeleted", "acme", project="gone"),
              org_created("beta", id=2))
    assert g.ask("export.orgs") == {"orgs": [
        {"slug": "acme", "name": "acme", "options": {"sentry:require_scrub_ip_address": True},
         "trustedRelays": [ENTRY],
         "projects": [{"slug": "web", "name": "web", "options": {"sentry:origins": ["a.example"]},
                       "keys": [{"publicKey": key(100), "status": "active"}]}]},
        {"slug": "beta", "name": "beta", "options": {}, "trustedRelays": [], "projects": []}]}


def test_export_orgs_then_import_into_an_empty_system_gives_the_same_export() -> None:
    g = given(*acme_web(), event("OrgOptionSet", "acme", key=TRUSTED_RELAYS, value=[ENTRY]),
              event("ProjectOptionSet", "acme", project="web", key="sentry:origins", value=["a.example"]))
    exported = g.ask("export.orgs")
    outcome = given().when("import.org", org=exported["orgs"][0])
    assert given(*outcome.decision.events).ask("export.orgs") == exported


# -- the read side's queries --------------------------------------------------------------------

def test_keys_lookup_answers_each_key_or_none() -> None:
    g = given(*acme_web(), key_created(public_key=key(101), numeric_id=2, status="disabled"),
              project_created(project="off", id=2), key_created(project="off", public_key=key(102), numeric_id=3),
              event("ProjectDisabled", "acme", project="off"))
    state = g.state()
    assert g.ask("keys.lookup", public_keys=[key(100)]) == keys_lookup(state, [key(100)])
    assert keys_lookup(state, [key(100), key(101), key(102), key(1), 7]) == {
        key(100): {"projectId": 1, "organizationId": 1, "numericId": 1, "status": "active",
                   "projectStatus": "active", "rateLimit": None, "active": True},
        key(101): {"projectId": 1, "organizationId": 1, "numericId": 2, "status": "disabled",
                   "projectStatus": "active", "rateLimit": None, "active": False},
        key(102): {"projectId": 2, "organizationId": 1, "numericId": 3, "status": "active",
                   "projectStatus": "disabled", "rateLimit": None, "active": False},
        key(1): None, "7": None}


def test_org_has_access_internal_relays_everywhere_others_where_trusted() -> None:
    state = given(org_created(), org_created("beta", id=2),
                  event("OrgOptionSet", "acme", key=TRUSTED_RELAYS, value=[ENTRY])).state()
    assert has_org_access(state, RELAY, 1, internal=False)
    assert not has_org_access(state, RELAY, 2, internal=False)
    assert not has_org_access(state, OTHER_RELAY, 1, internal=False)
    assert has_org_access(state, OTHER_RELAY, 2, internal=True)
    assert not has_org_access(state, RELAY, 99, internal=False)

    g = given(org_created(), org_created("beta", id=2), event("OrgOptionSet", "acme", key=TRUSTED_RELAYS, value=[ENTRY]))
    assert g.ask("org.has_access", relay_public_key=RELAY, org_ids=[1, 2, "1"]) == {"1": True, "2": False}
    internal = given(*g.events, event("RelayAllowed", OTHER_RELAY, internal=True))
    assert internal.ask("org.has_access", relay_public_key=OTHER_RELAY, org_ids=[1, 2]) == {"1": True, "2": True}
    banned = given(*internal.events, event("RelayDenied", OTHER_RELAY))
    assert banned.ask("org.has_access", relay_public_key=OTHER_RELAY, org_ids=[1, 2]) == {"1": False, "2": False}


def test_org_relay_auth_says_who_a_relay_is_and_what_it_may_do() -> None:
    g = given(event("RelayAllowed", RELAY, internal=False),
              event("RelayRegistered", RELAY, relay_id=RELAY_ID, version="1.2"),
              event("RelayRegistered", RELAY, relay_id="second-id", version="1.3"))
    state = g.state()
    relay = state.relays[RELAY]
    assert relay_auth(state, relay) == {"relayId": "second-id", "publicKey": RELAY, "internal": False,
                                        "banned": False, "version": "1.3", "trusted": False}
    assert relay_auth(state, relay, RELAY_ID)["relayId"] == RELAY_ID  # type: ignore[index]
    assert relay_auth(state, None) is None
    trusted = given(*g.events, org_created(), event("OrgOptionSet", "acme", key=TRUSTED_RELAYS, value=[ENTRY]))
    assert relay_auth(trusted.state(), trusted.state().relays[RELAY])["trusted"] is True  # type: ignore[index]


def test_views_are_the_wire_shapes() -> None:
    state = given(*acme_web(), event("RelayAllowed", RELAY, internal=True)).state()
    assert key_view(state.keys[key(100)]) == {"publicKey": key(100), "numericId": 1, "status": "active",
                                              "projectId": 1}
    assert relay_view(state.relays[RELAY])["internal"] is True


def test_relay_status_by_key_or_any_id_it_registered_under() -> None:
    g = given(event("RelayAllowed", RELAY, internal=False),
              event("RelayRegistered", RELAY, relay_id=RELAY_ID, version="1.2"),
              event("RelayRegistered", RELAY, relay_id="second-id", version="1.3"),
              org_created(), org_created("beta", id=2), event("OrgOptionSet", "beta", key=TRUSTED_RELAYS, value=[ENTRY]))
    by_key = g.ask("relay.status", relay=RELAY)
    assert by_key["state"] == "registered" and by_key["relayIds"] == [RELAY_ID, "second-id"]
    assert by_key["sees"] == {"everyOrg": False, "trustedBy": ["beta"], "trustedByCount": 1}
    assert by_key["publicKey"] == RELAY and by_key["relayId"] == "second-id"
    assert g.ask("relay.status", relay=RELAY_ID) == by_key == g.ask("relay.status", relay="second-id")


def test_relay_status_says_allowed_never_registered_banned_and_internal() -> None:
    allowed = given(event("RelayAllowed", RELAY, internal=True))
    status = allowed.ask("relay.status", relay=RELAY)
    assert status["state"] == "allowed, never registered" and status["sees"]["everyOrg"] is True
    banned = given(*allowed.events, event("RelayDenied", RELAY)).ask("relay.status", relay=RELAY)
    assert banned["state"] == "banned" and banned["sees"]["everyOrg"] is False


def test_relay_status_errors() -> None:
    given().ask_fails("relay.status", NotFound, f"No relay matching `{RELAY}`", relay=RELAY)
    given(event("RelayAllowed", RELAY, internal=False)).ask_fails("relay.status", NotFound, "No relay", relay="nope")


# -- api.project_options: each option with its template, org and default values -----------------

SOURCES = [org_created(), event("ProjectTemplateSet", "acme", template="t",
                                options={"sentry:origins": ["tpl.example.com"], "sentry:safe_fields": ["tpl"]}),
           project_created(template="t"), key_created(),
           event("OrgOptionSet", "acme", key="sentry:sensitive_fields", value=["org_secret"]),
           event("OrgOptionSet", "acme", key="sentry:safe_fields", value=["org_safe"]),
           event("OrgOptionSet", "acme", key="sentry:require_scrub_ip_address", value=True),
           event("OrgOptionSet", "acme", key="relayctl:forward_dsn", value="http://k@sentry.example.com/1"),
           event("ProjectOptionSet", "acme", project="web", key="sentry:sensitive_fields", value=["own"]),
           event("ProjectOptionSet", "acme", project="web", key="filters:localhost", value="1"),
           event("ProjectOptionSet", "acme", project="web", key="filters:my-own", value="1"),
           event("ProjectOptionSet", "acme", project="web", key="quotas:project-rate-limit",
                 value={"window": 60, "count": 5}),
           event("OrgOptionSet", "acme", key="sentry:relay_pii_config", value={"rules": {"tok": {
               "type": "pattern", "pattern": "tok_[a-z]+", "redaction": {"method": "remove"}}},
               "applications": {"$string": ["tok"]}}),
           event("ProjectOptionSet", "acme", project="web", key="sentry:relay_pii_config", value={
               "applications": {"$string": ["@email"]}})]


def test_api_project_options_says_where_each_value_comes_from() -> None:
    answer = given(*SOURCES).ask("api.project_options", org="acme", project="web")
    assert answer["project"] == "web" and answer["template"] == "t"
    options = {o["key"]: o for o in answer["options"]}
    # every project option of the catalogue, and a prefixed one the project set; no org-only ones
    from domain.options import OPTIONS
    assert set(options) == {k for k, s in OPTIONS.items() if "project" in s.scopes} | {"filters:my-own"}
    assert "ai:policy" not in options and options["filters:my-own"]["kind"] == "toggle"
    assert options["sentry:origins"] == {
        "key": "sentry:origins", "kind": "lines", "type": "list of strings, one per line", "default": ["*"],
        "scopes": ["project"], "readable": True, "combine": None, "forcedBy": None,
        "template": {"isSet": True, "value": ["tpl.example.com"]}, "org": None, "project": {"isSet": False},
        "value": ["tpl.example.com"], "source": "template"}
    own = options["filters:localhost"]
    assert (own["project"], own["value"], own["source"], own["default"]) == (
        {"isSet": True, "value": "1"}, "1", "project", "0")
    assert options["sentry:scrub_data"]["source"] == "default" and options["sentry:scrub_data"]["value"] is True
    # merged as the config builder merges: the org's entries first
    sensitive = options["sentry:sensitive_fields"]
    assert (sensitive["org"], sensitive["value"], sensitive["source"], sensitive["combine"]) == (
        {"isSet": True, "value": ["org_secret"]}, ["org_secret", "own"], "org+project", "append")
    assert (options["sentry:safe_fields"]["value"], options["sentry:safe_fields"]["source"]) == (
        ["org_safe", "tpl"], "org+template")
    # forced on by an org option, whatever the project says
    ip = options["sentry:scrub_ip_address"]
    assert (ip["value"], ip["source"], ip["forcedBy"]) == (True, "org", "sentry:require_scrub_ip_address")
    # options outside the public ones: whether set, never the value, unless private values are asked for
    quota, dsn = options["quotas:project-rate-limit"], options["relayctl:forward_dsn"]
    assert quota["readable"] is False and "value" not in quota and quota["project"] == {"isSet": True}
    assert dsn["org"] == {"isSet": True} and dsn["source"] == "org" and "value" not in dsn
    private = {o["key"]: o for o in given(*SOURCES).ask("api.project_options", org="acme", project="web",
                                                         private=True)["options"]}
    assert private["quotas:project-rate-limit"]["value"] == {"window": 60, "count": 5}
    assert (private["relayctl:forward_dsn"]["value"], private["relayctl:forward_dsn"]["source"]) == (
        "http://k@sentry.example.com/1", "org")


def test_api_project_options_values_are_what_the_config_is_built_from() -> None:
    """The effective values of the merged and forced options are the built config's."""
    from domain.project_config import build_project_config

    state = given(*SOURCES).state()
    org, project = state.orgs[1], state.projects[1]
    config = build_project_config(org, project, state.keys[key(100)])["config"]
    options = {o["key"]: o["value"] for o in given(*SOURCES).ask("api.project_options", org="acme",
                                                                  project="web", private=True)["options"]}
    scrubbing = config["datascrubbingSettings"]
    assert scrubbing["sensitiveFields"] == options["sentry:sensitive_fields"]
    assert scrubbing["excludeFields"] == options["sentry:safe_fields"]
    assert scrubbing["scrubIpAddresses"] is options["sentry:scrub_ip_address"] is True
    assert config["allowedDomains"] == options["sentry:origins"]
    assert config["features"] == options["sentry:features"]
    assert config["quotas"][0]["limit"] == options["quotas:project-rate-limit"]["count"]
    assert config["piiConfig"] == options["sentry:relay_pii_config"]
    assert config["piiConfig"]["applications"]["$string"] == ["organization:tok", "@email"]


def test_api_project_options_without_a_template_and_errors() -> None:
    answer = given(*acme_web()).ask("api.project_options", org="acme", project="web")
    assert answer["template"] is None
    origins = next(o for o in answer["options"] if o["key"] == "sentry:origins")
    assert (origins["template"], origins["value"], origins["source"]) == (None, ["*"], "default")
    given(org_created()).ask_fails("api.project_options", NotFound, "No project matching `acme/web`", org="acme",
                                   project="web")
