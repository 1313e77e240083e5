"""Every command the Decider decides: given events, when the command, then events and reply -
or the error it answers. Test names start with the command (`test_org_create_...`), which
test_coverage.py checks for every command."""

from __future__ import annotations

from typing import Any

from domain.decider import RELAY_SEEN_INTERVAL
from domain.decisions import token_hash
from domain.model import TRUSTED_RELAYS
from domain.project_config import PII_OPTION
from messages.errors import BadRequest, Conflict, Forbidden, NotFound
from tests.unit.domain.gwt import NOW, acme_web, event, given, key, key_created, org_created, project_created, token

RELAY = "CTx27wo6qDRbBDaDtQrpsOYerTwTYaKn5BgkIdebZ0M"
OTHER_RELAY = "1kRSzb1lBDA-hOSCdnF32Dygiw0gGMOevtxSaWnSSV0"
RELAY_ID = "0d3c0b0e-2a5c-4b5e-9a0e-6f1d2c3b4a59"
CREATED = "2025-06-15T15:06:40Z"  # NOW as the decider writes it
BROKEN_PII = {"rules": {"bad": {"type": "pattern", "pattern": "(", "redaction": {"method": "remove"}}}}
TOKENS_PII = {"rules": {"tok": {"type": "pattern", "pattern": "tok_[a-z]+", "redaction": {"method": "remove"}}}}
USES_TOK = {"applications": {"$string": ["organization:tok"]}}


def trusted(*public_keys: str, name: str | None = None) -> list[dict[str, Any]]:
    return [{"public_key": k, "name": name or k[:8], "created": CREATED} for k in public_keys]


# -- unknown --------------------------------------------------------------------------------

def test_an_unknown_command_is_a_bad_request() -> None:
    given().fails("org.explode", BadRequest, "unknown command org.explode")
    # a Decider method that is no command cannot be called by name
    given().fails("claim.ids", BadRequest, "unknown command")
    given().fails("claims_for", BadRequest, "unknown command")


# -- orgs -----------------------------------------------------------------------------------

def test_org_create_creates_it_with_the_next_id() -> None:
    given().when("org.create", slug="acme", name="Acme Inc").then(
        [("OrgCreated", "acme", {"name": "Acme Inc", "id": 1})], reply={"id": 1, "slug": "acme"})
    given(org_created("other", id=7)).when("org.create", slug="acme", name=None).then(
        [("OrgCreated", "acme", {"name": "acme", "id": 8})], reply={"id": 8, "slug": "acme"})


def test_org_create_with_an_owner_makes_them_its_owner_in_the_same_commit() -> None:
    ann = event("UserCreated", "ann", email=None, superuser=False)
    given(ann).when("org.create", slug="acme", name=None, owner="ann").then(
        [("OrgCreated", "acme", {"name": "acme", "id": 1}), ("MemberAdded", "acme", {"username": "ann", "role": "owner"})],
        reply={"id": 1, "slug": "acme"})
    given().fails("org.create", NotFound, "No user matching `ann`", slug="acme", name=None, owner="ann")


def test_org_create_of_an_existing_slug_is_a_conflict() -> None:
    given(org_created()).fails("org.create", Conflict, "Organization `acme` already exists", slug="acme", name=None)


def test_org_option_set_stores_the_validated_value() -> None:
    given(org_created()).when("org.option_set", org="acme", key="sentry:require_scrub_ip_address", value=True).then(
        [("OrgOptionSet", "acme", {"key": "sentry:require_scrub_ip_address", "value": True})],
        reply={"key": "sentry:require_scrub_ip_address", "value": True})


def test_org_option_set_to_the_value_it_has_changes_nothing() -> None:
    setting = event("OrgOptionSet", "acme", key="sentry:require_scrub_ip_address", value=True)
    given(org_created(), setting).when("org.option_set", org="acme", key="sentry:require_scrub_ip_address",
                                       value=True).then_nothing(reply={"key": "sentry:require_scrub_ip_address", "value": True})


def test_org_option_set_errors() -> None:
    given().fails("org.option_set", NotFound, "No organization matching `acme`", org="acme",
                  key="sentry:require_scrub_ip_address", value=True)
    refused = given(org_created()).fails("org.option_set", BadRequest, "", org="acme",
                                         key="sentry:require_scrub_ip_address", value="yes please")
    assert refused.details == {"key": "sentry:require_scrub_ip_address"}
    given(org_created()).fails("org.option_set", BadRequest, "not an org option", org="acme",
                               key="sentry:origins", value=["x.example"])
    # the merged piiConfig every project would get is checked
    given(org_created()).fails("org.option_set", BadRequest, "regex parse error", org="acme", key=PII_OPTION,
                               value=BROKEN_PII)


def test_org_option_unset_removes_a_set_option() -> None:
    setting = event("OrgOptionSet", "acme", key="sentry:require_scrub_ip_address", value=True)
    given(org_created(), setting).when("org.option_unset", org="acme", key="sentry:require_scrub_ip_address").then(
        [("OrgOptionUnset", "acme", {"key": "sentry:require_scrub_ip_address"})], reply=None)


def test_org_option_unset_of_an_unset_option_changes_nothing() -> None:
    given(org_created()).when("org.option_unset", org="acme", key="sentry:require_scrub_ip_address").then_nothing()


def test_org_option_unset_errors() -> None:
    given().fails("org.option_unset", NotFound, "No organization", org="acme", key="sentry:require_scrub_ip_address")
    # a key the catalogue does not know for orgs is refused as setting it is ...
    given(org_created()).fails("org.option_unset", BadRequest, "not an org option", org="acme", key="sentry:origins")
    # ... unless it is stored (set before the catalogue refused it): then it can be removed
    given(org_created(), event("OrgOptionSet", "acme", key="sentry:origins", value=["x"])).when(
        "org.option_unset", org="acme", key="sentry:origins").then([("OrgOptionUnset", "acme", {"key": "sentry:origins"})])
    # a project's PII config refers to the org's rule being removed
    given(org_created(), project_created(), event("OrgOptionSet", "acme", key=PII_OPTION, value=TOKENS_PII),
          event("ProjectOptionSet", "acme", project="web", key=PII_OPTION, value=USES_TOK)).fails(
        "org.option_unset", BadRequest, "project `acme/web`", org="acme", key=PII_OPTION)


def test_org_trust_relay_adds_an_entry_to_the_trusted_relays() -> None:
    given(org_created()).when("org.trust_relay", org="acme", public_key=RELAY, name=None, description=None).then(
        [("OrgOptionSet", "acme", {"key": TRUSTED_RELAYS, "value": trusted(RELAY)})],
        reply={"key": TRUSTED_RELAYS, "value": trusted(RELAY)})
    entry = {**trusted(OTHER_RELAY, name="edge")[0], "description": "the edge"}
    given(org_created(), event("OrgOptionSet", "acme", key=TRUSTED_RELAYS, value=trusted(RELAY))).when(
        "org.trust_relay", org="acme", public_key=OTHER_RELAY, name="edge", description="the edge").then(
        [("OrgOptionSet", "acme", {"key": TRUSTED_RELAYS, "value": [*trusted(RELAY), entry]})])


def test_org_trust_relay_again_keeps_when_it_was_first_trusted() -> None:
    first = [{"public_key": RELAY, "name": "old", "created": "2020-01-01T00:00:00Z"}]
    given(org_created(), event("OrgOptionSet", "acme", key=TRUSTED_RELAYS, value=first)).when(
        "org.trust_relay", org="acme", public_key=RELAY, name="new", description=None).then(
        [("OrgOptionSet", "acme", {"key": TRUSTED_RELAYS,
                                   "value": [{"public_key": RELAY, "name": "new", "created": "2020-01-01T00:00:00Z"}]})])
    given(org_created(), event("OrgOptionSet", "acme", key=TRUSTED_RELAYS, value=first)).when(
        "org.trust_relay", org="acme", public_key=RELAY, name="old", description=None).then_nothing()


def test_org_trust_relay_errors() -> None:
    given().fails("org.trust_relay", NotFound, "No organization", org="acme", public_key=RELAY, name=None,
                  description=None)
    given(org_created()).fails("org.trust_relay", BadRequest, "invalid public key", org="acme",
                               public_key="_" * 43, name=None, description=None)


def test_org_untrust_relay_removes_its_entry() -> None:
    both = event("OrgOptionSet", "acme", key=TRUSTED_RELAYS, value=trusted(RELAY, OTHER_RELAY))
    given(org_created(), both).when("org.untrust_relay", org="acme", public_key=RELAY).then(
        [("OrgOptionSet", "acme", {"key": TRUSTED_RELAYS, "value": trusted(OTHER_RELAY)})])


def test_org_untrust_relay_errors() -> None:
    given().fails("org.untrust_relay", NotFound, "No organization", org="acme", public_key=RELAY)
    given(org_created()).fails("org.untrust_relay", NotFound, f"Relay `{RELAY}` is not trusted by `acme`",
                               org="acme", public_key=RELAY)


def test_org_template_set_stores_validated_options() -> None:
    given(org_created()).when("org.template_set", org="acme", template="strict",
                              options={"sentry:scrub_data": True}).then(
        [("ProjectTemplateSet", "acme", {"template": "strict", "options": {"sentry:scrub_data": True}})])


def test_org_template_set_errors() -> None:
    given().fails("org.template_set", NotFound, "No organization", org="acme", template="t", options={})
    given(org_created()).fails("org.template_set", BadRequest, "", org="acme", template="t",
                               options={"sentry:scrub_data": "maybe"})
    given(org_created(), event("OrgOptionSet", "acme", key=PII_OPTION, value=TOKENS_PII)).fails(
        "org.template_set", BadRequest, "template `t`", org="acme", template="t",
        options={PII_OPTION: {"applications": {"$string": ["tok"]}}})


# -- projects -------------------------------------------------------------------------------

def test_project_create_creates_it_with_a_key() -> None:
    given(org_created()).when("project.create", org="acme", project="web", name=None, template=None).then(
        [("ProjectCreated", "acme", {"project": "web", "name": "web", "template": None, "id": 1}),
         ("KeyCreated", "acme", {"project": "web", "public_key": key(1), "rate_limit": None, "numeric_id": 1})],
        reply={"id": 1, "slug": "web", "organizationId": 1, "publicKey": key(1), "numericId": 1})


def test_project_create_from_a_template() -> None:
    template = event("ProjectTemplateSet", "acme", template="strict", options={})
    outcome = given(org_created(), template).when("project.create", org="acme", project="web", name="Web",
                                                  template="strict")
    assert outcome.events[0] == ("ProjectCreated", "acme", {"project": "web", "name": "Web", "template": "strict",
                                                            "id": 1})


def test_project_create_errors() -> None:
    given().fails("project.create", NotFound, "No organization", org="acme", project="web", name=None, template=None)
    given(*acme_web()).fails("project.create", Conflict, "Project `acme/web` already exists", org="acme",
                             project="web", name=None, template=None)
    given(org_created()).fails("project.create", NotFound, "No project template `strict` in `acme`", org="acme",
                               project="web", name=None, template="strict")


def test_project_create_after_a_deletion_reuses_the_slug() -> None:
    outcome = given(*acme_web(), event("ProjectDeleted", "acme", project="web")).when(
        "project.create", org="acme", project="web", name=None, template=None)
    assert outcome.reply["id"] == 2


def test_project_option_set_stores_the_validated_value() -> None:
    given(*acme_web()).when("project.option_set", org="acme", project="web", key="sentry:origins",
                            value=["a.example"]).then(
        [("ProjectOptionSet", "acme", {"project": "web", "key": "sentry:origins", "value": ["a.example"]})],
        reply={"key": "sentry:origins", "value": ["a.example"]})


def test_project_option_set_to_the_value_it_has_changes_nothing() -> None:
    setting = event("ProjectOptionSet", "acme", project="web", key="sentry:origins", value=["a.example"])
    given(*acme_web(), setting).when("project.option_set", org="acme", project="web", key="sentry:origins",
                                     value=["a.example"]).then_nothing(
        reply={"key": "sentry:origins", "value": ["a.example"]})


def test_project_option_set_errors() -> None:
    given().fails("project.option_set", NotFound, "No organization", org="acme", project="web",
                  key="sentry:origins", value=[])
    given(org_created()).fails("project.option_set", NotFound, "No project matching `acme/web`", org="acme",
                               project="web", key="sentry:origins", value=[])
    given(*acme_web()).fails("project.option_set", BadRequest, "", org="acme", project="web",
                             key="sentry:origins", value=5)
    given(*acme_web(), event("OrgOptionSet", "acme", key=PII_OPTION, value=TOKENS_PII)).fails(
        "project.option_set", BadRequest, "`tok` is not a rule", org="acme", project="web", key=PII_OPTION,
        value={"applications": {"$string": ["tok"]}})


def test_project_option_unset_removes_a_set_option() -> None:
    setting = event("ProjectOptionSet", "acme", project="web", key="sentry:origins", value=["a.example"])
    given(*acme_web(), setting).when("project.option_unset", org="acme", project="web", key="sentry:origins").then(
        [("ProjectOptionUnset", "acme", {"project": "web", "key": "sentry:origins"})])
    given(*acme_web()).when("project.option_unset", org="acme", project="web", key="sentry:origins").then_nothing()


def test_project_option_unset_errors() -> None:
    given().fails("project.option_unset", NotFound, "No organization", org="acme", project="web", key="sentry:origins")
    given(org_created()).fails("project.option_unset", NotFound, "No project", org="acme", project="web", key="sentry:origins")
    given(*acme_web()).fails("project.option_unset", BadRequest, "unknown option", org="acme", project="web",
                             key="sentry:nothing_like_it")


def test_project_disable_enable_and_delete_change_its_status_once() -> None:
    for command, type_, status in (("project.disable", "ProjectDisabled", None),
                                   ("project.enable", "ProjectEnabled", "ProjectDisabled"),
                                   ("project.delete", "ProjectDeleted", None)):
        before = [event(status, "acme", project="web")] if status else []
        given(*acme_web(), *before).when(command, org="acme", project="web").then(
            [(type_, "acme", {"project": "web"})], reply=None)
    given(*acme_web(), event("ProjectDisabled", "acme", project="web")).when(
        "project.disable", org="acme", project="web").then_nothing()
    given(*acme_web()).when("project.enable", org="acme", project="web").then_nothing()


def test_project_disable_enable_and_delete_errors() -> None:
    for command in ("project.disable", "project.enable", "project.delete"):
        given().fails(command, NotFound, "No organization matching `acme`", org="acme", project="web")
        given(org_created()).fails(command, NotFound, "No project matching `acme/web`", org="acme", project="web")
    # a deleted project is no longer found by its slug
    given(*acme_web(), event("ProjectDeleted", "acme", project="web")).fails(
        "project.delete", NotFound, "No project", org="acme", project="web")


# the coverage check wants a test named after each command
test_project_disable = test_project_enable = test_project_delete = test_project_disable_enable_and_delete_errors


# -- keys -----------------------------------------------------------------------------------

def test_key_create_generates_a_key() -> None:
    given(*acme_web()).when("key.create", org="acme", project="web", public_key=None).then(
        [("KeyCreated", "acme", {"project": "web", "public_key": key(1), "rate_limit": None, "numeric_id": 2})],
        reply={"publicKey": key(1), "numericId": 2, "projectId": 1})


def test_key_create_with_a_given_key_claims_it_first() -> None:
    outcome = given(*acme_web()).when("key.create", org="acme", project="web", public_key=key(5))
    assert outcome.decision.explicit_keys == [key(5)]
    assert outcome.reply == {"publicKey": key(5), "numericId": 2, "projectId": 1}


def test_key_create_errors() -> None:
    given().fails("key.create", NotFound, "No organization", org="acme", project="web", public_key=None)
    given(org_created()).fails("key.create", NotFound, "No project", org="acme", project="web", public_key=None)
    given(*acme_web()).fails("key.create", Conflict, f"Key `{key(100)}` already exists", org="acme", project="web",
                             public_key=key(100))


def test_key_disable_enable_and_delete_change_it_once() -> None:
    given(*acme_web()).when("key.disable", public_key=key(100)).then(
        [("KeyDisabled", "acme", {"public_key": key(100)})])
    given(*acme_web()).when("key.enable", public_key=key(100)).then_nothing()
    given(*acme_web(), event("KeyDisabled", "acme", public_key=key(100))).when(
        "key.enable", public_key=key(100)).then([("KeyEnabled", "acme", {"public_key": key(100)})])
    given(*acme_web()).when("key.delete", public_key=key(100)).then(
        [("KeyDeleted", "acme", {"public_key": key(100)})])


def test_key_disable_enable_and_delete_errors() -> None:
    for command in ("key.disable", "key.enable", "key.delete"):
        given(*acme_web()).fails(command, NotFound, f"No key matching `{key(1)}`", public_key=key(1))
        # a deleted key is gone
        given(*acme_web(), event("KeyDeleted", "acme", public_key=key(100))).fails(
            command, NotFound, "No key", public_key=key(100))


test_key_disable = test_key_enable = test_key_delete = test_key_disable_enable_and_delete_errors


def test_key_rate_limit_sets_and_clears_it_once() -> None:
    limit = {"count": 100, "window": 60}
    given(*acme_web()).when("key.rate_limit", public_key=key(100), count=100, window=60, clear=False).then(
        [("KeyRateLimitSet", "acme", {"public_key": key(100), "rate_limit": limit})],
        reply={"publicKey": key(100), "rateLimit": limit})
    limited = [*acme_web(), event("KeyRateLimitSet", "acme", public_key=key(100), rate_limit=limit)]
    given(*limited).when("key.rate_limit", public_key=key(100), count=100, window=60, clear=False).then_nothing(
        reply={"publicKey": key(100), "rateLimit": limit})
    given(*limited).when("key.rate_limit", public_key=key(100), count=None, window=None, clear=True).then(
        [("KeyRateLimitSet", "acme", {"public_key": key(100), "rate_limit": None})],
        reply={"publicKey": key(100), "rateLimit": None})
    given(*acme_web()).when("key.rate_limit", public_key=key(100), count=None, window=None, clear=True).then_nothing()


def test_key_rate_limit_errors() -> None:
    given(*acme_web()).fails("key.rate_limit", NotFound, "No key", public_key=key(1), count=1, window=1, clear=False)
    for count, window, clear, text in ((1, None, False, "needs both a count and a window"),
                                       (None, 60, False, "needs both"),
                                       (1, 60, True, "not both"),
                                       (-1, 60, False, "count must be between"),
                                       (1, 0, False, "window must be between")):
        given(*acme_web()).fails("key.rate_limit", BadRequest, text, public_key=key(100), count=count, window=window,
                                 clear=clear)


# -- relays ---------------------------------------------------------------------------------

def relay_allowed(internal: bool = False) -> Any:
    return event("RelayAllowed", RELAY, internal=internal)


def test_relay_allow_allows_once() -> None:
    given().when("relay.allow", public_key=RELAY, internal=True).then(
        [("RelayAllowed", RELAY, {"internal": True})], reply=None)
    given(relay_allowed(True)).when("relay.allow", public_key=RELAY, internal=True).then_nothing()
    # another role, or lifting a ban, is a change
    given(relay_allowed(True)).when("relay.allow", public_key=RELAY, internal=False).then(
        [("RelayAllowed", RELAY, {"internal": False})])
    given(relay_allowed(), event("RelayDenied", RELAY)).when("relay.allow", public_key=RELAY, internal=False).then(
        [("RelayAllowed", RELAY, {"internal": False})])


def test_relay_deny_bans_once() -> None:
    given().when("relay.deny", public_key=RELAY).then([("RelayDenied", RELAY, {})])
    given(event("RelayDenied", RELAY)).when("relay.deny", public_key=RELAY).then_nothing()


def registered(version: str | None = "1.0", relay_id: str = RELAY_ID, ts: float = NOW) -> Any:
    e = event("RelayRegistered", RELAY, relay_id=relay_id, version=version)
    e.ts = ts
    return e


def test_relay_register_records_a_new_id_or_version() -> None:
    given(relay_allowed()).when("relay.register", relay_id=RELAY_ID, public_key=RELAY, version="1.0").then(
        [("RelayRegistered", RELAY, {"relay_id": RELAY_ID, "version": "1.0"})])
    given(relay_allowed(), registered("1.0")).when("relay.register", relay_id=RELAY_ID, public_key=RELAY,
                                                   version="2.0").then(
        [("RelayRegistered", RELAY, {"relay_id": RELAY_ID, "version": "2.0"})])


def test_relay_register_again_is_recorded_as_seen_at_most_once_a_minute() -> None:
    recent = registered(ts=NOW - RELAY_SEEN_INTERVAL + 1)
    given(relay_allowed(), recent).when("relay.register", relay_id=RELAY_ID, public_key=RELAY,
                                        version="1.0").then_nothing()
    older = registered(ts=NOW - RELAY_SEEN_INTERVAL - 1)
    given(relay_allowed(), older).when("relay.register", relay_id=RELAY_ID, public_key=RELAY, version="1.0").then(
        [("RelaySeen", RELAY, {"version": "1.0"})])


def test_relay_register_errors() -> None:
    refused = given().fails("relay.register", Forbidden, "not allowed to register", relay_id=RELAY_ID,
                            public_key=RELAY, version=None)
    assert refused.details == {"banned": False}
    refused = given(relay_allowed(), event("RelayDenied", RELAY)).fails(
        "relay.register", Forbidden, "not allowed", relay_id=RELAY_ID, public_key=RELAY, version=None)
    assert refused.details == {"banned": True}
    given(relay_allowed(), registered()).fails("relay.register", BadRequest, "with a different public key",
                                               relay_id=RELAY_ID, public_key=OTHER_RELAY, version=None)


# -- users ----------------------------------------------------------------------------------

def test_user_create_creates_it() -> None:
    given().when("user.create", username="ann", email="ann@example.com", superuser=False).then(
        [("UserCreated", "ann", {"email": "ann@example.com", "superuser": False})], reply={"username": "ann"})


def test_user_create_errors() -> None:
    given(event("UserCreated", "ann", email=None, superuser=False)).fails(
        "user.create", Conflict, "User `ann` already exists", username="ann", email=None, superuser=False)


ANN = event("UserCreated", "ann", email=None, superuser=False)


def test_user_token_create_stores_only_the_hash() -> None:
    given(ANN).when("user.token_create", username="ann").then(
        [("TokenCreated", "ann", {"token_hash": token_hash(token(1))})], reply={"token": token(1)})


def test_user_token_create_errors() -> None:
    given().fails("user.token_create", NotFound, "No user matching `ann`", username="ann")


def test_user_permission_add_adds_once() -> None:
    given(ANN).when("user.permission_add", username="ann", permission="ai.suggest").then(
        [("PermissionAdded", "ann", {"permission": "ai.suggest"})], reply={"added": True})
    given(ANN, event("PermissionAdded", "ann", permission="ai.suggest")).when(
        "user.permission_add", username="ann", permission="ai.suggest").then_nothing(reply={"added": False})
    given().fails("user.permission_add", NotFound, "No user", username="ann", permission="ai.suggest")


def test_user_permission_remove_removes_once() -> None:
    given(ANN, event("PermissionAdded", "ann", permission="ai.suggest")).when(
        "user.permission_remove", username="ann", permission="ai.suggest").then(
        [("PermissionRemoved", "ann", {"permission": "ai.suggest"})], reply={"removed": True})
    given(ANN).when("user.permission_remove", username="ann", permission="ai.suggest").then_nothing(
        reply={"removed": False})
    given().fails("user.permission_remove", NotFound, "No user", username="ann", permission="ai.suggest")


# -- what a decision needs first: ids and key claims ----------------------------------------

def test_a_decision_short_of_ids_takes_placeholders_and_says_so() -> None:
    """Past the pool's end `take` hands out 0 and counts the shortage: such a decision is never
    stored, the handler claims a block past every id stored or claimed (`claim_ids`)."""
    state = given(org_created(id=4)).state()
    from domain.decider import Decider

    decider = Decider(state, "tester")
    decision = decider.decide("org.create", {"slug": "new", "name": None})
    assert decision.events[0].payload["id"] == 0 and decider.ids.short == {"org": 1}
    block = decider.claim_ids("org", 50, "commands-1")
    assert [(e.type, e.aggregate_id, e.payload) for e in block.events] == [
        ("IdsClaimed", "org", {"first": 5, "count": 50, "owner": "commands-1"})]


def test_key_claims_before_an_org_commit_naming_keys() -> None:
    """`claims_for`: keys named explicitly are claimed for the org at its version; the org's
    own claim at that version is enough; another org's live claim is a Conflict, one whose
    org moved on is claimed again."""
    g = given(*acme_web())
    outcome = g.when("key.create", org="acme", project="web", public_key=key(5))
    decider = g.decider(g.state())
    decision = decider.decide("key.create", {"org": "acme", "project": "web", "public_key": key(5)})
    claim = decider.claims_for(decision)
    assert claim is not None and [(e.type, e.payload) for e in claim.events] == [
        ("KeysClaimed", {"org": "acme", "org_version": 3, "public_keys": [key(5)]})]
    assert decider.claims_for(outcome.decision.__class__("org", "acme")) is None  # nothing named: nothing to claim

    own = event("KeysClaimed", "keys", org="acme", org_version=3, public_keys=[key(5)])
    g = given(*acme_web(), own)
    decider = g.decider(g.state())
    assert decider.claims_for(decider.decide("key.create", {"org": "acme", "project": "web",
                                                            "public_key": key(5)})) is None

    other = [org_created("beta", id=2), project_created("beta", "app", id=2),
             event("KeysClaimed", "keys", org="beta", org_version=5, public_keys=[key(5)])]
    g = given(*acme_web(), *other)
    decider = g.decider(g.state())
    decision = decider.decide("key.create", {"org": "acme", "project": "web", "public_key": key(5)})
    try:
        decider.claims_for(decision)
    except Conflict as exc:
        assert "claimed by organization `beta`" in exc.message and exc.details == {"public_key": key(5), "org": "beta"}
    else:
        raise AssertionError("a live claim of another org is a conflict")

    g = given(*acme_web(), *other, project_created("beta", "more", id=3))  # beta moved past its claim
    decider = g.decider(g.state())
    decision = decider.decide("key.create", {"org": "acme", "project": "web", "public_key": key(5)})
    claim = decider.claims_for(decision)
    assert claim is not None and claim.events[0].payload["public_keys"] == [key(5)]


def test_events_carry_the_deciders_actor_and_clock() -> None:
    outcome = given().when("org.create", slug="acme", name=None)
    assert [(e.actor, e.ts) for e in outcome.decision.events] == [("tester", NOW)]
    assert outcome.state.org("acme") is not None and outcome.state.org("acme").created == NOW  # type: ignore[union-attr]


def test_key_created_status_is_folded() -> None:
    """(The fold side of an imported disabled key.)"""
    state = given(org_created(), project_created(), key_created(status="disabled")).state()
    assert state.keys[key(100)].status == "disabled"
