"""The import decision (`import.org`): given events, when an org file, then the events that
make the state match it - and every problem it refuses, named by its path in the file."""

from __future__ import annotations

from typing import Any

import pytest

from domain.model import TRUSTED_RELAYS
from domain.project_config import PII_OPTION
from messages.errors import BadRequest, Conflict
from tests.unit.domain.gwt import acme_web, event, given, key, key_created, org_created, project_created

RELAY = "CTx27wo6qDRbBDaDtQrpsOYerTwTYaKn5BgkIdebZ0M"


def spec(**fields: Any) -> dict[str, Any]:
    return {"slug": "acme", **fields}


def test_import_org_of_a_new_org_creates_everything_in_one_commit() -> None:
    file = spec(name="Acme", options={"sentry:require_scrub_ip_address": True},
                trustedRelays=[{"public_key": RELAY, "name": "edge"}],
                projects=[{"slug": "web", "options": {"sentry:origins": ["a.example"]},
                           "keys": [{"publicKey": key(100)}, {"publicKey": key(101), "status": "disabled"}]},
                          {"slug": "api", "name": "API"}])
    outcome = given().when("import.org", org=file)
    outcome.then([
        ("OrgCreated", "acme", {"name": "Acme", "id": 1}),
        ("OrgOptionSet", "acme", {"key": "sentry:require_scrub_ip_address", "value": True}),
        ("OrgOptionSet", "acme", {"key": TRUSTED_RELAYS, "value": [{"public_key": RELAY, "name": "edge"}]}),
        ("ProjectCreated", "acme", {"project": "web", "name": "web", "template": None, "id": 1}),
        ("ProjectOptionSet", "acme", {"project": "web", "key": "sentry:origins", "value": ["a.example"]}),
        ("KeyCreated", "acme", {"project": "web", "public_key": key(100), "status": "active", "rate_limit": None,
                                "numeric_id": 1}),
        ("KeyCreated", "acme", {"project": "web", "public_key": key(101), "status": "disabled", "rate_limit": None,
                                "numeric_id": 2}),
        ("ProjectCreated", "acme", {"project": "api", "name": "API", "template": None, "id": 2}),
        # a new project without keys gets one, generated
        ("KeyCreated", "acme", {"project": "api", "public_key": key(1), "status": "active", "rate_limit": None,
                                "numeric_id": 3}),
    ], reply={"orgs": 1, "projects": 2, "keys": 3, "events": 9})
    # the keys the file names are claimed before the org commit; a generated one needs no claim
    assert outcome.decision.explicit_keys == [key(100), key(101)]
    assert outcome.decision.aggregate_id == "acme"


def test_import_org_of_what_is_there_changes_nothing() -> None:
    file = spec(projects=[{"slug": "web", "keys": [{"publicKey": key(100)}]}])
    given(*acme_web()).when("import.org", org=file).then_nothing(
        reply={"orgs": 0, "projects": 0, "keys": 0, "events": 0})
    # an unnamed key of an existing project with keys: already imported
    given(*acme_web()).when("import.org", org=spec(projects=[{"slug": "web", "keys": [{}]}])).then_nothing()
    given(*acme_web()).when("import.org", org=spec(projects=[{"slug": "web"}])).then_nothing()


def test_import_org_adds_only_what_differs() -> None:
    file = spec(options={"sentry:require_scrub_ip_address": True},
                projects=[{"slug": "web", "options": {"sentry:origins": ["b.example"]},
                           "keys": [{"publicKey": key(100), "status": "disabled"}, {"publicKey": key(102)}]}])
    before = [*acme_web(), event("ProjectOptionSet", "acme", project="web", key="sentry:origins", value=["a.example"])]
    given(*before).when("import.org", org=file).then([
        ("OrgOptionSet", "acme", {"key": "sentry:require_scrub_ip_address", "value": True}),
        ("ProjectOptionSet", "acme", {"project": "web", "key": "sentry:origins", "value": ["b.example"]}),
        ("KeyDisabled", "acme", {"public_key": key(100)}),
        ("KeyCreated", "acme", {"project": "web", "public_key": key(102), "status": "active", "rate_limit": None,
                                "numeric_id": 2}),
    ], reply={"orgs": 0, "projects": 0, "keys": 1, "events": 4})
    given(*acme_web(), event("KeyDisabled", "acme", public_key=key(100))).when(
        "import.org", org=spec(projects=[{"slug": "web", "keys": [{"publicKey": key(100)}]}])).then(
        [("KeyEnabled", "acme", {"public_key": key(100)})])


@pytest.mark.parametrize(("file", "path", "text"), [
    ({"slug": "Not A Slug"}, "org.slug", "required, lowercase"),
    ({}, "org.slug", "required"),
    (spec(options=["x"]), "acme.options", "options must be a map"),
    (spec(options={"sentry:origins": ["x"]}), "acme.options.sentry:origins", "not an org option"),
    (spec(trustedRelays=[{"public_key": "_" * 43, "name": "x"}]), f"acme.trustedRelays.{TRUSTED_RELAYS}",
     "invalid public key"),
    (spec(projects={"web": {}}), "acme.projects", "must be a list"),
    (spec(projects=["web"]), "acme.projects[0]", "must be a map"),
    (spec(projects=[{"slug": "Web!"}]), "acme.projects[0].slug", "required, lowercase"),
    (spec(projects=[{"slug": "web"}, {"slug": "web"}]), "acme.projects[1].slug", "duplicate project `web`"),
    (spec(projects=[{"slug": "web", "options": {"sentry:origins": 5}}]), "acme.projects[0].options.sentry:origins",
     "expected a list"),
    (spec(projects=[{"slug": "web", "keys": {}}]), "acme.projects[0].keys", "must be a list"),
    (spec(projects=[{"slug": "web", "keys": ["k"]}]), "acme.projects[0].keys[0]", "must be a map"),
    (spec(projects=[{"slug": "web", "keys": [{"status": "deleted"}]}]), "acme.projects[0].keys[0].status",
     "must be active or disabled"),
    (spec(projects=[{"slug": "web", "keys": [{"publicKey": "XYZ"}]}]), "acme.projects[0].keys[0].publicKey",
     "must be 32 hex characters"),
    (spec(projects=[{"slug": "web", "keys": [{"publicKey": key(5)}]}, {"slug": "api", "keys": [{"publicKey": key(5)}]}]),
     "acme.projects[1].keys[0].publicKey", "duplicate key"),
    (spec(projects=[{"slug": "web", "keys": [{"rateLimit": {"count": 1}}]}]), "acme.projects[0].keys[0].rateLimit",
     "must be"),
    (spec(projects=[{"slug": "web", "keys": [{"rateLimit": {"count": 1, "window": 0}}]}]),
     "acme.projects[0].keys[0].rateLimit", "window must be between"),
])
def test_import_org_refuses_a_bad_file_naming_the_path(file: dict[str, Any], path: str, text: str) -> None:
    refused = given().fails("import.org", BadRequest, text, org=file)
    assert refused.message.startswith(path + ": ") or refused.message.startswith(path + "."), refused.message
    assert refused.details["path"].startswith(path)


def test_import_org_of_a_deleted_projects_slug_creates_a_new_project() -> None:
    """A deleted project frees its slug (as `project.create` after `project.delete`)."""
    outcome = given(*acme_web(), event("ProjectDeleted", "acme", project="web")).when(
        "import.org", org=spec(projects=[{"slug": "web"}]))
    assert [e[0] for e in outcome.events] == ["ProjectCreated", "KeyCreated"]
    assert outcome.events[0][2]["id"] == 2


def test_import_org_of_a_key_held_by_another_project_is_a_conflict() -> None:
    beta = [org_created("beta", id=2), project_created("beta", "app", id=2),
            key_created("beta", "app", public_key=key(7), numeric_id=2)]
    given(*acme_web(), *beta).fails(
        "import.org", Conflict, f"key `{key(7)}` belongs to another project: `beta/app`",
        org=spec(projects=[{"slug": "web", "keys": [{"publicKey": key(7)}]}]))
    given(*acme_web()).fails("import.org", Conflict, "belongs to another project: `acme/web`",
                             org=spec(projects=[{"slug": "api", "keys": [{"publicKey": key(100)}]}]))


def test_import_org_checks_the_merged_pii_config_it_leaves() -> None:
    tokens = {"rules": {"tok": {"type": "pattern", "pattern": "tok_[a-z]+", "redaction": {"method": "remove"}}}}
    given().fails("import.org", BadRequest, "`tok` is not a rule", org=spec(
        options={PII_OPTION: tokens}, projects=[{"slug": "web", "options": {
            PII_OPTION: {"applications": {"$string": ["tok"]}}}}]))
    given().when("import.org", org=spec(options={PII_OPTION: tokens}, projects=[{"slug": "web", "options": {
        PII_OPTION: {"applications": {"$string": ["organization:tok"]}}}}]))


def test_import_org_sets_key_rate_limits_it_names() -> None:
    limit = {"count": 10, "window": 60}
    outcome = given().when("import.org", org=spec(projects=[{"slug": "web", "keys": [
        {"publicKey": key(100), "rateLimit": limit}]}]))
    assert outcome.events[-1][2]["rate_limit"] == limit
    # an existing key: a named limit is set, null clears it, no rateLimit leaves it alone
    given(*acme_web()).when("import.org", org=spec(projects=[{"slug": "web", "keys": [
        {"publicKey": key(100), "rateLimit": limit}]}])).then(
        [("KeyRateLimitSet", "acme", {"public_key": key(100), "rate_limit": limit})])
    limited = [*acme_web(), event("KeyRateLimitSet", "acme", public_key=key(100), rate_limit=limit)]
    given(*limited).when("import.org", org=spec(projects=[{"slug": "web", "keys": [
        {"publicKey": key(100), "rateLimit": None}]}])).then(
        [("KeyRateLimitSet", "acme", {"public_key": key(100), "rate_limit": None})])
    given(*limited).when("import.org", org=spec(projects=[{"slug": "web", "keys": [
        {"publicKey": key(100)}]}])).then_nothing()
