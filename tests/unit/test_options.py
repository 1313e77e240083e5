"""The option catalogue: defaults, template fallback, the public allow-list and validation."""

from __future__ import annotations

import json

import pytest
from sentry_relay.auth import generate_key_pair

from domain.model import Org, Project
from domain.options import (
    AI_POLICIES,
    OPTION_DEFAULTS,
    OPTIONS,
    PUBLIC_OPTION_KEYS,
    InvalidOption,
    get_option,
    get_options,
    get_org_option,
    validate_option,
)

PII_CONFIG = {
    "rules": {
        "hide_tokens": {
            "type": "pattern",
            "pattern": "tok_[a-z]+",
            "redaction": {"method": "remove"},
        }
    },
    "applications": {"$string": ["hide_tokens", "@ip"]},
}


def relay_key() -> str:
    return str(generate_key_pair()[1])


def assert_one_line(exc: pytest.ExceptionInfo[InvalidOption]) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert "stacktrace" not in message


# -- defaults and lookups --------------------------------------------------------------------


def test_well_known_defaults_follow_sentry() -> None:
    """Well-known keys have Sentry's defaults."""
    assert OPTION_DEFAULTS["sentry:origins"] == ["*"]
    assert OPTION_DEFAULTS["sentry:scrub_data"] is True
    assert OPTION_DEFAULTS["sentry:scrub_defaults"] is True
    assert OPTION_DEFAULTS["sentry:scrub_ip_address"] is False
    assert OPTION_DEFAULTS["sentry:sensitive_fields"] == []
    assert OPTION_DEFAULTS["sentry:safe_fields"] == []
    assert OPTION_DEFAULTS["sentry:relay_pii_config"] is None
    assert OPTION_DEFAULTS["sentry:trusted-relays"] == []
    assert OPTION_DEFAULTS["ai:policy"] == "allowed"


def test_get_option_prefers_the_projects_own_value() -> None:
    """A project's own value wins over its template and the default."""
    org = Org(1, "acme", "Acme", templates={"web": {"sentry:origins": ["https://t.example"]}})
    project = Project(
        2, 1, "app", "App", options={"sentry:origins": ["https://own.example"]}, template="web"
    )
    assert get_option(project, "sentry:origins", org=org) == ["https://own.example"]


def test_get_option_falls_back_to_the_template() -> None:
    """Without its own value a project takes its template's value when the org is given."""
    org = Org(1, "acme", "Acme", templates={"web": {"sentry:scrub_ip_address": True}})
    project = Project(2, 1, "app", "App", template="web")
    assert get_option(project, "sentry:scrub_ip_address", org=org) is True
    assert get_option(project, "sentry:scrub_ip_address") is False


def test_get_option_uses_the_passed_default_before_the_catalogue() -> None:
    """The passed default comes after the template and before the catalogue default."""
    project = Project(2, 1, "app", "App")
    assert get_option(project, "sentry:origins", ["x.example"]) == ["x.example"]
    assert get_option(project, "sentry:origins") == ["*"]
    assert get_option(project, "no:such-key") is None


def test_catalogue_defaults_are_copies() -> None:
    """Mutating a returned default never changes the catalogue."""
    get_option(Project(2, 1, "app", "App"), "sentry:origins").append("evil.example")
    assert OPTION_DEFAULTS["sentry:origins"] == ["*"]


def test_get_org_option_falls_back_to_the_default() -> None:
    """Org options come from the org, else from the catalogue."""
    assert get_org_option(Org(1, "acme", "Acme"), "ai:policy") == "allowed"
    assert (
        get_org_option(Org(1, "acme", "Acme", options={"ai:policy": "denied"}), "ai:policy")
        == "denied"
    )


def test_get_options_returns_only_public_keys() -> None:
    """Keys outside the public allow-list are left out of the answer."""
    pii = json.dumps(PII_CONFIG)
    projects = [
        Project(
            2, 1, "a", "A", options={"sentry:relay_pii_config": pii, "sentry:scrub_data": False}
        ),
        Project(3, 1, "b", "B"),
    ]
    result = get_options(
        projects, ["sentry:scrub_data", "sentry:relay_pii_config", "filters:localhost"]
    )
    assert result == {
        2: {"sentry:scrub_data": False, "filters:localhost": "0"},
        3: {"sentry:scrub_data": True, "filters:localhost": "0"},
    }
    assert "sentry:relay_pii_config" not in PUBLIC_OPTION_KEYS


def test_get_options_uses_templates_when_orgs_are_given() -> None:
    """With the orgs passed, get_options falls back to project templates too."""
    org = Org(1, "acme", "Acme", templates={"t": {"sentry:origins": ["https://t.example"]}})
    project = Project(2, 1, "a", "A", template="t")
    assert get_options([project], ["sentry:origins"], orgs={1: org}) == {
        2: {"sentry:origins": ["https://t.example"]}
    }


# -- validation ------------------------------------------------------------------------------


def test_validate_normalizes_booleans_and_filter_toggles() -> None:
    """Booleans accept 0/1 and strings; filter toggles are stored as "0"/"1" like Sentry."""
    assert validate_option("project", "sentry:scrub_data", "false") is False
    assert validate_option("project", "sentry:scrub_data", 1) is True
    assert validate_option("project", "filters:localhost", True) == "1"
    assert validate_option("project", "filters:legacy-browsers", ["ie9", "safari_pre_6"]) == [
        "ie9",
        "safari_pre_6",
    ]


def test_validate_refuses_wrong_types() -> None:
    """A value of the wrong type is refused with a one-line message naming the key."""
    for key, value in [
        ("sentry:scrub_data", "maybe"),
        ("sentry:origins", 5),
        ("sentry:sensitive_fields", [1, 2]),
        ("sentry:grouping_config", 3),
        ("quotas:project-rate-limit", {"window": "60", "count": 5}),
        ("sentry:blacklisted_ips", ["not-an-ip"]),
    ]:
        with pytest.raises(InvalidOption) as exc:
            validate_option("project", key, value)
        assert key in str(exc.value)
        assert_one_line(exc)


def test_validate_refuses_unknown_keys() -> None:
    """Keys that match neither a known key nor a known prefix are refused."""
    with pytest.raises(InvalidOption, match="unknown option"):
        validate_option("project", "sentry:made_up", True)
    assert validate_option("project", "filters:some-future-filter", "1") == "1"


def test_validate_refuses_keys_of_the_other_scope() -> None:
    """An org-only key cannot be set on a project, and the other way round."""
    with pytest.raises(InvalidOption, match="not a project option"):
        validate_option("project", "sentry:trusted-relays", [])
    with pytest.raises(InvalidOption, match="not an org option"):
        validate_option("org", "sentry:origins", ["*"])


def test_validate_pii_config_accepts_text_and_dicts() -> None:
    """A PII config given as JSON text or as a dict is stored as a dict."""
    assert (
        validate_option("project", "sentry:relay_pii_config", json.dumps(PII_CONFIG)) == PII_CONFIG
    )
    assert validate_option("org", "sentry:relay_pii_config", PII_CONFIG) == PII_CONFIG
    assert validate_option("project", "sentry:relay_pii_config", "") is None


def test_validate_refuses_a_bad_pii_config_with_the_first_line_only() -> None:
    """A PII config Relay rejects is refused with the first line of Relay's error."""
    bad = {"rules": {"r": {"type": "no-such-type"}}, "applications": {"$string": ["r"]}}
    with pytest.raises(InvalidOption, match="unknown variant") as exc:
        validate_option("project", "sentry:relay_pii_config", bad)
    assert_one_line(exc)
    with pytest.raises(InvalidOption) as exc:
        validate_option("project", "sentry:relay_pii_config", "{not json")
    assert_one_line(exc)


def test_validate_trusted_relays() -> None:
    """Trusted relays need a parsable public key and a name; extra fields are refused."""
    key = relay_key()
    value = [
        {
            "public_key": key,
            "name": "edge",
            "description": "eu edge",
            "created": "2024-01-01T00:00:00Z",
        }
    ]
    assert validate_option("org", "sentry:trusted-relays", value) == value
    for bad in (
        [{"public_key": "not-a-key", "name": "edge"}],
        [{"public_key": key}],
        [{"public_key": key, "name": "edge", "secret": "x"}],
        [{"public_key": key, "name": "a"}, {"public_key": key, "name": "b"}],
        {"public_key": key, "name": "edge"},
    ):
        with pytest.raises(InvalidOption) as exc:
            validate_option("org", "sentry:trusted-relays", bad)
        assert_one_line(exc)


def test_validate_sampling_rules() -> None:
    """Sampling rules are checked by Relay; a bare list of rules becomes version 2."""
    rule = {
        "id": 1,
        "type": "trace",
        "samplingValue": {"type": "sampleRate", "value": 0.5},
        "condition": {"op": "and", "inner": []},
    }
    assert validate_option("project", "sentry:dynamic_sampling_rules", [rule]) == {
        "version": 2,
        "rules": [rule],
    }
    with pytest.raises(InvalidOption) as exc:
        validate_option(
            "project", "sentry:dynamic_sampling_rules", {"rules": [{"id": 1, "type": "bogus"}]}
        )
    assert_one_line(exc)


def test_validate_metric_extraction_checks_conditions() -> None:
    """Metric extraction specs are checked, conditions by Relay's rule condition validator."""
    spec = {
        "version": 1,
        "metrics": [
            {
                "category": "transaction",
                "mri": "c:transactions/checkout@none",
                "condition": {"op": "eq", "name": "event.transaction", "value": "/checkout"},
            }
        ],
    }
    assert validate_option("project", "sentry:metric_extraction", spec) == spec
    bad_condition = json.loads(json.dumps(spec))
    bad_condition["metrics"][0]["condition"] = {"op": "bogus"}
    bad_category = json.loads(json.dumps(spec))
    bad_category["metrics"][0]["category"] = "nope"
    for bad in (bad_condition, bad_category, {"version": 9, "metrics": spec["metrics"]}):
        with pytest.raises(InvalidOption) as exc:
            validate_option("project", "sentry:metric_extraction", bad)
        assert_one_line(exc)


def test_validate_ai_policy() -> None:
    """The AI policy is one of the five known policies."""
    for policy in AI_POLICIES:
        assert validate_option("org", "ai:policy", policy) == policy
    with pytest.raises(InvalidOption, match="ai:policy"):
        validate_option("org", "ai:policy", "sometimes")


def test_validate_features_and_retention() -> None:
    """Features need an organizations:/projects: prefix; retention fits Relay's u16 days."""
    assert validate_option("org", "sentry:features", ["organizations:profiling"]) == [
        "organizations:profiling"
    ]
    with pytest.raises(InvalidOption):
        validate_option("org", "sentry:features", ["profiling"])
    assert validate_option("org", "sentry:event_retention", 30) == 30
    with pytest.raises(InvalidOption):
        validate_option("org", "sentry:event_retention", 70000)


def test_validate_breakdowns() -> None:
    """Breakdowns must be span operation breakdowns Relay accepts."""
    value = {"span_ops": {"type": "spanOperations", "matches": ["db"]}}
    assert validate_option("project", "sentry:breakdowns", value) == value
    with pytest.raises(InvalidOption):
        validate_option(
            "project", "sentry:breakdowns", {"span_ops": {"type": "other", "matches": []}}
        )


def test_every_default_validates() -> None:
    """Each catalogue default is itself a valid value of its key."""
    for key, default in OPTION_DEFAULTS.items():
        for scope in OPTIONS[key].scopes:
            assert validate_option(scope, key, default) == default


# -- JSON-normal values (issue 10, item 10) ----------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "path"),
    [
        (
            "sentry:relay_pii_config",
            {"rules": {1: {"type": "ip", "redaction": {"method": "remove"}}},
             "applications": {"$string": ["1"]}},
            "value.rules",
        ),
        ("sentry:breakdowns", {1: {"type": "spanOperations", "matches": ["db"]}}, "value"),
        ("sentry:breakdowns", {"span_ops": {"type": "spanOperations", "matches": ["db"]}, None: {}}, "value"),
        (
            "sentry:dynamic_sampling_rules",
            {"rules": [{"samplingValue": {"type": "sampleRate", "value": 0.5}, "type": "trace",
                        "condition": {"op": "and", "inner": [], (1, 2): "x"}, "id": 1}]},
            "value.rules[0].condition",
        ),
    ],
)
def test_validate_refuses_non_string_map_keys_naming_the_path(key: str, value: object, path: str) -> None:
    """A map key that is not a string (msgpack allows ints, None, tuples...) is refused with
    the path to the map; JSON (and so Relay) would only ever see it turned into a string."""
    with pytest.raises(InvalidOption, match="map key") as exc:
        validate_option("project", key, value)
    assert f"at {path}" in str(exc.value) and key in str(exc.value)
    assert_one_line(exc)


def test_validate_refuses_values_json_cannot_hold() -> None:
    """Bytes, NaN/infinity and absurd nesting are refused, not stored."""
    for value in ({"rules": {"r": {"type": b"ip"}}}, {"rules": {}, "vars": {"x": float("nan")}}):
        with pytest.raises(InvalidOption) as exc:
            validate_option("project", "sentry:relay_pii_config", value)
        assert_one_line(exc)
    deep: object = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(InvalidOption, match="nested"):
        validate_option("project", "sentry:origins", deep)


def test_validated_values_are_json_normal() -> None:
    """What validation returns is exactly what a JSON round trip gives: the value the builder
    hashes and the value Relay was asked about are the same."""
    for scope, key, value in [
        ("project", "sentry:relay_pii_config", PII_CONFIG),
        ("project", "sentry:origins", ("a.com", "b.com")),
        ("project", "filters:legacy-browsers", {"ie", "safari"}),
        ("org", "sentry:relay_pii_config", {"applications": {"$string": ("@ip", "@email")}}),
        ("org", "quotas:org-rate-limit", {"window": 60, "count": 5}),
    ]:
        normalized = validate_option(scope, key, value)
        assert normalized == json.loads(json.dumps(normalized))
        assert json.dumps(normalized) == json.dumps(json.loads(json.dumps(normalized)))
        assert not _has_tuples(normalized)


def _has_tuples(value: object) -> bool:
    if isinstance(value, tuple):
        return True
    if isinstance(value, dict):
        return any(_has_tuples(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_tuples(v) for v in value)
    return False
