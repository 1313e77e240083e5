"""The project config document: shape, Relay acceptance, PII merge and its validation, revisions."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from sentry_relay.auth import generate_key_pair
from sentry_relay.processing import normalize_project_config, validate_pii_config

from domain.decider import Decider
from domain.model import DELETED, DISABLED, Org, Project, ProjectKey
from domain.options import validate_option
from domain.project_config import (
    DISABLED_CONFIG,
    PII_OPTION,
    build_project_config,
    merge_pii_configs,
    merged_pii_problem,
)
from domain.state import DomainState
from messages.errors import BadRequest
from messages.events import DomainEvent

KEY = "a" * 32
OTHER_KEY = "b" * 32
TOP_LEVEL_KEYS = {
    "disabled",
    "slug",
    "lastFetch",
    "lastChange",
    "rev",
    "publicKeys",
    "config",
    "organizationId",
    "projectId",
}
# Keys this sentry_relay build drops on a round trip even when valid: empty features, and
# metricExtraction, which its normalizer never serializes.
NOT_ROUND_TRIPPED = {"features", "metricExtraction"}


def make(
    org_options: dict[str, Any] | None = None,
    project_options: dict[str, Any] | None = None,
    **key_fields: Any,
) -> tuple[Org, Project, ProjectKey]:
    org = Org(1, "acme", "Acme", options=org_options or {}, last_change=100.0)
    project = Project(2, 1, "web", "Web", options=project_options or {}, last_change=200.5)
    key = ProjectKey(KEY, 7, 2, last_change=150.0, **key_fields)
    return org, project, key


def assert_relay_accepts(config: dict[str, Any]) -> dict[str, Any]:
    """Relay's own deserializer accepts the config and keeps every section we emitted."""
    normalized = normalize_project_config(config)
    for key in set(config) - NOT_ROUND_TRIPPED:
        assert normalized.get(key) is not None, f"Relay dropped {key}"
    return normalized


def pii(rule_name: str, pattern: str) -> dict[str, Any]:
    return {
        "rules": {
            rule_name: {
                "type": "pattern",
                "pattern": pattern,
                "redaction": {"method": "replace", "text": "[x]"},
            },
            "both": {
                "type": "multiple",
                "rules": [rule_name, "@ip"],
                "redaction": {"method": "remove"},
            },
            "alias": {"type": "alias", "rule": rule_name},
        },
        "applications": {"$string": [rule_name, "@email"], "$http.headers": ["both", "alias"]},
    }


def every_option_set() -> tuple[Org, Project, ProjectKey]:
    relay_key = str(generate_key_pair()[1])
    raw_org = {
        "sentry:trusted-relays": [{"public_key": relay_key, "name": "edge"}],
        "sentry:relay_pii_config": pii("org_secret", "s3cr3t"),
        "sentry:require_scrub_data": True,
        "sentry:require_scrub_defaults": True,
        "sentry:require_scrub_ip_address": True,
        "sentry:sensitive_fields": ["card"],
        "sentry:safe_fields": ["order_id"],
        "sentry:features": ["organizations:session-replay"],
        "sentry:event_retention": 30,
        "quotas:org-rate-limit": {"window": 3600, "count": 100000},
        "ai:policy": "denied",
    }
    raw_project = {
        "sentry:origins": "https://a.example\nhttps://*.b.example",
        "sentry:scrub_data": False,
        "sentry:scrub_defaults": False,
        "sentry:scrub_ip_address": False,
        "sentry:sensitive_fields": ["ssn"],
        "sentry:safe_fields": ["trace_id"],
        "sentry:relay_pii_config": pii("proj_secret", "hunter2"),
        "sentry:blacklisted_ips": ["10.0.0.1", "192.168.0.0/16"],
        "sentry:releases": ["1.0.*"],
        "sentry:error_messages": ["*ResizeObserver*"],
        "sentry:csp_ignored_sources": ["https://ads.example"],
        "sentry:csp_ignored_sources_defaults": False,
        "filters:browser-extensions": "1",
        "filters:localhost": True,
        "filters:web-crawlers": 1,
        "filters:legacy-browsers": ["ie9", "safari_pre_6"],
        "filters:filtered-transaction": "1",
        "filters:react-hydration-errors": "1",
        "filters:chunk-load-error": "1",
        "quotas:project-rate-limit": {"window": 60, "count": 1000},
        "sentry:dynamic_sampling_rules": [
            {
                "id": 1000,
                "type": "trace",
                "samplingValue": {"type": "sampleRate", "value": 0.25},
                "condition": {"op": "and", "inner": []},
            },
        ],
        "sentry:metric_extraction": {
            "version": 1,
            "metrics": [
                {
                    "category": "transaction",
                    "mri": "c:transactions/on_demand@none",
                    "condition": {"op": "eq", "name": "event.release", "value": "1.0"},
                }
            ],
        },
        "sentry:features": ["projects:span-metrics-extraction"],
        "sentry:grouping_config": "newstyle:2023-01-11",
        "sentry:grouping_enhancements": "stack.function:panic_* -app",
        "sentry:breakdowns": {"span_ops": {"type": "spanOperations", "matches": ["db", "http"]}},
    }
    org_options = {k: validate_option("org", k, v) for k, v in raw_org.items()}
    project_options = {k: validate_option("project", k, v) for k, v in raw_project.items()}
    return make(org_options, project_options, rate_limit={"window": 60, "count": 10})


def test_defaults_document_is_accepted_by_relay() -> None:
    """A project with no options gives a full document whose config Relay accepts."""
    org, project, key = make()
    doc = build_project_config(org, project, key, now=1000.0)
    assert set(doc) == TOP_LEVEL_KEYS
    assert doc["disabled"] is False
    assert doc["slug"] == "web"
    normalized = assert_relay_accepts(doc["config"])
    assert normalized["allowedDomains"] == ["*"]
    assert doc["config"]["datascrubbingSettings"] == {
        "excludeFields": [],
        "scrubData": True,
        "scrubIpAddresses": False,
        "sensitiveFields": [],
        "scrubDefaults": True,
    }
    assert doc["config"]["piiConfig"] == {}
    assert doc["config"]["trustedRelays"] == []
    assert doc["config"]["sessionMetrics"] == {"version": 1}
    assert "quotas" not in doc["config"] and "sampling" not in doc["config"]
    assert "metricExtraction" not in doc["config"]


def test_document_with_every_option_set_is_accepted_by_relay() -> None:
    """Setting every option still gives a config that Relay accepts section by section."""
    org, project, key = every_option_set()
    config = build_project_config(org, project, key, now=1000.0)["config"]
    normalized = assert_relay_accepts(config)
    assert config["allowedDomains"] == ["https://a.example", "https://*.b.example"]
    assert config["datascrubbingSettings"] == {
        "excludeFields": ["order_id", "trace_id"],
        "scrubData": True,
        "scrubIpAddresses": True,
        "sensitiveFields": ["card", "ssn"],
        "scrubDefaults": True,
    }
    filters = normalized["filterSettings"]
    assert filters["legacyBrowsers"] == {"isEnabled": True, "options": ["ie9", "safari_pre_6"]}
    assert filters["clientIps"] == {"blacklistedIps": ["10.0.0.1", "192.168.0.0/16"]}
    assert filters["csp"] == {"disallowedSources": ["https://ads.example"]}
    assert filters["releases"] == {"releases": ["1.0.*"]}
    # Relay matches error messages case-insensitively and lowercases the patterns.
    assert "*resizeobserver*" in filters["errorMessages"]["patterns"]
    assert {"browserExtensions", "localhost", "webCrawlers", "ignoreTransactions"} <= set(filters)
    assert normalized["sampling"]["rules"][0]["id"] == 1000
    assert normalized["eventRetention"] == 30
    assert config["features"] == [
        "organizations:session-replay",
        "projects:span-metrics-extraction",
    ]
    assert config["metricExtraction"]["metrics"][0]["mri"] == "c:transactions/on_demand@none"
    assert config["groupingConfig"] == {
        "id": "newstyle:2023-01-11",
        "enhancements": "stack.function:panic_* -app",
    }


def test_quotas_use_relays_schema_with_string_scope_ids() -> None:
    """Key, project and org quotas carry Relay's fields, the key's scopeId being its numeric id."""
    org, project, key = every_option_set()
    quotas = build_project_config(org, project, key)["config"]["quotas"]
    by_scope = {q["scope"]: q for q in quotas}
    assert by_scope["key"]["scopeId"] == "7"
    assert by_scope["key"]["limit"] == 10 and by_scope["key"]["window"] == 60
    assert by_scope["project"]["scopeId"] == "2"
    assert by_scope["organization"]["scopeId"] == "1"
    assert all(isinstance(q["id"], str) and q["categories"] for q in quotas)
    assert len(normalize_project_config({"quotas": quotas})["quotas"]) == 3


def test_pii_configs_merge_org_first_with_prefixes_and_references() -> None:
    """Org and project PII rules are prefixed, references follow them, org rules come first."""
    merged = merge_pii_configs(
        [("organization:", pii("secret", "a")), ("project:", pii("secret", "b"))]
    )
    assert list(merged["rules"]) == [
        "organization:secret",
        "organization:both",
        "organization:alias",
        "project:secret",
        "project:both",
        "project:alias",
    ]
    assert merged["rules"]["project:both"]["rules"] == ["project:secret", "@ip"]
    assert merged["rules"]["organization:alias"]["rule"] == "organization:secret"
    assert merged["applications"]["$string"] == [
        "organization:secret",
        "@email",
        "project:secret",
        "@email",
    ]
    assert merged["applications"]["$http.headers"] == [
        "organization:both",
        "organization:alias",
        "project:both",
        "project:alias",
    ]
    validate_pii_config(json.dumps(merged))


def test_pii_merge_leaves_its_inputs_alone() -> None:
    """Merging never mutates the stored option values."""
    org_config = pii("secret", "a")
    before = copy.deepcopy(org_config)
    merge_pii_configs([("organization:", org_config)])
    assert org_config == before


def test_document_pii_config_is_the_merge_of_org_and_project() -> None:
    """The document's piiConfig holds both configs' rules, prefixed."""
    org, project, key = every_option_set()
    pii_config = build_project_config(org, project, key)["config"]["piiConfig"]
    assert "organization:org_secret" in pii_config["rules"]
    assert "project:proj_secret" in pii_config["rules"]


def test_trusted_relays_are_the_orgs_relay_public_keys() -> None:
    """trustedRelays lists the public keys of the org's trusted relays, which Relay parses."""
    keys = [str(generate_key_pair()[1]) for _ in range(2)]
    value = validate_option(
        "org",
        "sentry:trusted-relays",
        [{"public_key": k, "name": f"relay {i}"} for i, k in enumerate(keys)],
    )
    org, project, key = make({"sentry:trusted-relays": value})
    config = build_project_config(org, project, key)["config"]
    assert config["trustedRelays"] == keys
    assert normalize_project_config(config)["trustedRelays"] == keys


def test_disabled_key_gives_exactly_disabled() -> None:
    """An inactive key gives exactly {"disabled": True}."""
    org, project, key = make(status=DISABLED)
    assert build_project_config(org, project, key) == {"disabled": True}


def test_inactive_project_gives_exactly_disabled() -> None:
    """A project that is not active gives exactly {"disabled": True}."""
    org, project, key = make()
    for status in (DISABLED, DELETED):
        project.status = status
        assert build_project_config(org, project, key) == {"disabled": True}


def test_disabled_answer_is_a_fresh_dict() -> None:
    """Mutating a disabled answer never changes the shared constant."""
    org, project, key = make(status=DISABLED)
    build_project_config(org, project, key)["slug"] = "x"
    assert DISABLED_CONFIG == {"disabled": True}


def test_rev_is_stable_across_builds_and_fetch_times() -> None:
    """Building the same state twice, at different times, keeps the revision."""
    org, project, key = every_option_set()
    first = build_project_config(org, project, key, now=1000.0)
    second = build_project_config(org, project, key, now=2000.0)
    assert first["lastFetch"] != second["lastFetch"]
    assert first["rev"] == second["rev"]
    assert isinstance(first["rev"], str) and len(first["rev"]) == 32


def test_rev_changes_when_an_option_changes() -> None:
    """Changing an option that reaches the document changes the revision."""
    org, project, key = make()
    before = build_project_config(org, project, key)["rev"]
    project.options["sentry:scrub_ip_address"] = True
    assert build_project_config(org, project, key)["rev"] != before
    org.options["sentry:safe_fields"] = ["x"]
    assert build_project_config(org, project, key)["rev"] != before


def test_timestamps_are_rfc3339_utc_with_fraction_and_z() -> None:
    """lastFetch and lastChange are UTC with a fraction and Z; lastChange is the newest change."""
    org, project, key = make()
    doc = build_project_config(org, project, key, now=1700000000.25)
    assert doc["lastFetch"] == "2023-11-14T22:13:20.250000Z"
    assert doc["lastChange"] == "1970-01-01T00:03:20.500000Z"


def test_public_keys_start_with_the_requested_key() -> None:
    """publicKeys is exactly the requested key, or for v1 that key then the other active keys."""
    org, project, key = make()
    doc = build_project_config(org, project, key)
    assert doc["publicKeys"] == [{"publicKey": KEY, "numericId": 7, "isEnabled": True}]
    other = ProjectKey(OTHER_KEY, 8, 2)
    inactive = ProjectKey("c" * 32, 9, 2, status=DISABLED)
    v1 = build_project_config(org, project, key, project_keys=[other, key, inactive])
    assert [k["publicKey"] for k in v1["publicKeys"]] == [KEY, OTHER_KEY]


def test_ids_are_integers() -> None:
    """projectId and organizationId are integers."""
    org, project, key = make()
    doc = build_project_config(org, project, key)
    assert doc["projectId"] == 2 and type(doc["projectId"]) is int
    assert doc["organizationId"] == 1 and type(doc["organizationId"]) is int


def test_template_options_reach_the_document() -> None:
    """A project template's option values are used when the project has none of its own."""
    org, project, key = make()
    org.templates["strict"] = {
        "sentry:scrub_ip_address": True,
        "sentry:origins": ["https://t.example"],
    }
    project.template = "strict"
    config = build_project_config(org, project, key)["config"]
    assert config["datascrubbingSettings"]["scrubIpAddresses"] is True
    assert config["allowedDomains"] == ["https://t.example"]


# -- the merged piiConfig is validated (issue 10, item 16) -----------------------------------

BROKEN = {"rules": {"bad": {"type": "pattern", "pattern": "(", "redaction": {"method": "remove"}}}}
TOKENS = {"rules": {"tok": {"type": "pattern", "pattern": "tok_[a-z]+", "redaction": {"method": "remove"}}}}


def pii_state(org_pii: Any = None, project_pii: Any = None, template_pii: Any = None) -> DomainState:
    """An org `acme` with project `web` (and `tpl`, using template `t`), the given PII configs
    stored as events, as if they had been accepted before the merge was validated."""
    state = DomainState()
    events = [DomainEvent("OrgCreated", "acme", {"name": "acme", "id": 1}),
              DomainEvent("ProjectCreated", "acme", {"project": "web", "name": "web", "template": None, "id": 1})]
    if org_pii is not None:
        events.append(DomainEvent("OrgOptionSet", "acme", {"key": PII_OPTION, "value": org_pii}))
    if project_pii is not None:
        events.append(DomainEvent("ProjectOptionSet", "acme", {"project": "web", "key": PII_OPTION,
                                                               "value": project_pii}))
    if template_pii is not None:
        events += [DomainEvent("ProjectTemplateSet", "acme", {"template": "t", "options": {PII_OPTION: template_pii}}),
                   DomainEvent("ProjectCreated", "acme", {"project": "tpl", "name": "tpl", "template": "t", "id": 2})]
    for seq, event in enumerate(events, 1):
        state.apply(seq, [event])
    return state


def decide(state: DomainState, message_type: str, **payload: Any) -> Any:
    return Decider(state, "test").decide(message_type, payload)


def test_each_scope_alone_passes_validation_but_the_merge_fails() -> None:
    """The holes: each value passes `validate_option`, yet the merge the builder emits is
    rejected by Relay or applies nothing; `merged_pii_problem` names what is wrong."""
    applies_org_bad = {"applications": {"$string": ["organization:bad"]}}
    applies_tok = {"applications": {"$string": ["tok"]}}
    for scope, value in (("org", BROKEN), ("project", applies_org_bad), ("project", applies_tok)):
        validate_option(scope, PII_OPTION, value)

    problem = merged_pii_problem(BROKEN, None)
    assert problem is not None and "rule `organization:bad`" in problem and "regex parse error" in problem
    merged = merge_pii_configs([("organization:", BROKEN), ("project:", applies_org_bad)])
    with pytest.raises(ValueError, match="regex parse error"):
        validate_pii_config(json.dumps(merged))  # what relays would have received
    assert "regex parse error" in (merged_pii_problem(BROKEN, applies_org_bad) or "")
    problem = merged_pii_problem(TOKENS, applies_tok)
    assert problem is not None and "`tok` is not a rule" in problem and "organization:<name>" in problem

    assert merged_pii_problem(TOKENS, {"applications": {"$string": ["organization:tok", "@ip"]}}) is None
    assert merged_pii_problem(pii("a", "x"), pii("b", "y")) is None
    assert merged_pii_problem(None, None) is None


def test_org_pii_change_is_checked_against_every_project_and_template() -> None:
    """An org PII change is refused when the merge fails for the org alone, for any of its
    projects or for a template, naming which one and what Relay said."""
    with pytest.raises(BadRequest, match="regex parse error") as refused:
        decide(pii_state(), "org.option_set", org="acme", key=PII_OPTION, value=BROKEN)
    assert "without a PII config of its own" in refused.value.message

    uses_tok = {"applications": {"$string": ["organization:tok"]}}
    state = pii_state(org_pii=TOKENS, project_pii=uses_tok)
    with pytest.raises(BadRequest, match="project `acme/web`") as refused:
        decide(state, "org.option_set", org="acme", key=PII_OPTION, value=pii("other", "x"))
    assert "`organization:tok` is not a rule" in refused.value.message
    with pytest.raises(BadRequest, match="project `acme/web`"):
        decide(state, "org.option_unset", org="acme", key=PII_OPTION)

    state = pii_state(org_pii=TOKENS, template_pii=uses_tok)
    with pytest.raises(BadRequest, match="template `t` of `acme`"):
        decide(state, "org.option_unset", org="acme", key=PII_OPTION)
    assert decide(state, "org.option_set", org="acme", key=PII_OPTION, value=pii("tok", "t+")).events


def test_project_and_template_pii_changes_are_checked_with_the_orgs_config() -> None:
    """A project or template PII change is refused when its merge with the org's fails."""
    state = pii_state(org_pii=BROKEN)  # stored before the merge was validated
    with pytest.raises(BadRequest, match=r"project `acme/web`.*regex parse error"):
        decide(state, "project.option_set", org="acme", project="web", key=PII_OPTION,
               value={"applications": {"$string": ["organization:bad"]}})

    state = pii_state(org_pii=TOKENS)
    with pytest.raises(BadRequest, match="`tok` is not a rule"):
        decide(state, "project.option_set", org="acme", project="web", key=PII_OPTION,
               value={"applications": {"$string": ["tok"]}})
    assert decide(state, "project.option_set", org="acme", project="web", key=PII_OPTION,
                  value={"applications": {"$string": ["organization:tok"]}}).events
    with pytest.raises(BadRequest, match="template `t`"):
        decide(state, "org.template_set", org="acme", template="t",
               options={PII_OPTION: {"applications": {"$string": ["tok"]}}})


def test_changes_that_touch_no_pii_config_are_never_blocked() -> None:
    """A project whose stored merge is broken does not block changes that leave PII alone:
    other options, or templates without a PII config."""
    state = pii_state(org_pii=TOKENS, project_pii={"applications": {"$string": ["tok"]}})
    assert decide(state, "org.option_set", org="acme", key="sentry:require_scrub_data", value=True).events
    assert decide(state, "project.option_set", org="acme", project="web", key="sentry:scrub_data",
                  value=False).events
    assert decide(state, "org.template_set", org="acme", template="t2", options={"sentry:scrub_data": False}).events
    # ... and the broken project can be repaired by unsetting its config.
    assert decide(state, "project.option_unset", org="acme", project="web", key=PII_OPTION).events


def test_an_import_is_checked_as_the_merge_it_leaves() -> None:
    """`import.org` sets the org's and its projects' configs at once: a project applying an
    org rule of the same import passes, one applying a name the merge lacks is refused."""
    uses_tok = {"applications": {"$string": ["organization:tok"]}}
    spec = {"slug": "imported", "options": {PII_OPTION: TOKENS},
            "projects": [{"slug": "a", "options": {PII_OPTION: uses_tok}}]}
    assert decide(DomainState(), "import.org", org=spec).events
    spec["projects"] = [{"slug": "a", "options": {PII_OPTION: {"applications": {"$string": ["tok"]}}}}]
    with pytest.raises(BadRequest, match="project `imported/a`.*`tok` is not a rule"):
        decide(DomainState(), "import.org", org=spec)
    state = pii_state(org_pii=TOKENS, project_pii=uses_tok)
    with pytest.raises(BadRequest, match="project `acme/web`"):
        decide(state, "import.org", org={"slug": "acme", "options": {PII_OPTION: pii("other", "x")}})


def test_values_stored_before_json_validation_build_as_the_json_relay_checked() -> None:
    """A legacy value with int map keys (or tuples) builds as its JSON form, which is what
    validation showed Relay; one that has no JSON form fails the build (and only it)."""
    legacy = {"rules": {1: {"type": "ip", "redaction": {"method": "remove"}}}, "applications": {"$string": ("1",)}}
    org, project, key = make(project_options={"sentry:relay_pii_config": legacy,
                                              "sentry:breakdowns": {"a": {"type": "spanOperations",
                                                                          "matches": ["db"]}, 2: None}})
    document = build_project_config(org, project, key)
    assert document["config"]["piiConfig"] == {"rules": {"project:1": legacy["rules"][1]},
                                               "applications": {"$string": ["project:1"]}}
    assert document["rev"] and document["config"]["breakdownsV2"]["2"] is None
    project.options["sentry:breakdowns"] = {"a": {"type": "spanOperations", "matches": [b"\xff"]}}
    with pytest.raises(TypeError):
        build_project_config(org, project, key)


def test_the_document_shares_nothing_with_state_or_the_catalogue() -> None:
    """Every value in the document is a copy: changing the document (as a caller may) leaves
    the org's, the project's and the catalogue's values as they were, and the next build
    gives the same document."""
    org, project, key = make(org_options={"sentry:safe_fields": ["id"], "sentry:trusted-relays": []},
                             project_options={"sentry:origins": ["a.example.com"],
                                              "sentry:breakdowns": {"ops": {"type": "spanOperations",
                                                                            "matches": ["db", "http"]}}})
    before = copy.deepcopy((org.options, project.options))
    first = build_project_config(org, project, key, now=1.0)
    pristine = copy.deepcopy(first)

    def scribble(value: Any) -> None:
        if isinstance(value, dict):
            for item in list(value.values()):
                scribble(item)
            value["scribbled"] = True
        elif isinstance(value, list):
            for item in value:
                scribble(item)
            value.append("scribbled")

    scribble(first)
    assert (org.options, project.options) == before
    assert build_project_config(org, project, key, now=1.0) == pristine


@pytest.mark.parametrize("value", [
    None, True, 0, -3, 2**70, 1.5, -0.0, "x", [], {}, ["a", ("b", 1)], {"a": {"b": [1, {"c": None}]}},
    {"a": {1: "int key", None: "none key"}}, [{2.5: ("t",)}], {"k": (1, [2, (3,)])},
])
def test_a_copied_value_is_what_a_json_round_trip_gives(value: Any) -> None:
    """The builder's copy of a value: plain data directly, anything else (int map keys,
    tuples) exactly as JSON gives it back."""
    from domain.project_config import _json_copy

    copied = _json_copy(value)
    assert copied == json.loads(json.dumps(value))
    assert json.dumps(copied) == json.dumps(json.loads(json.dumps(value)))
