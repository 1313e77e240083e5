"""Project templates: a project's option falls back to its template, then to the default."""

from __future__ import annotations

import uuid

from tests.system import SystemUnderTest


def served_origins(system: SystemUnderTest, public_key: str) -> list[str]:
    return system.cli_ok("config", "get", public_key, "--json")["config"]["allowedDomains"]  # type: ignore[no-any-return]


def test_template_values_reach_the_config_until_the_project_sets_its_own(system: SystemUnderTest) -> None:
    """Template, then project value, then back to the template when the project's is unset."""
    org = "tpl-" + uuid.uuid4().hex[:8]
    system.cli_ok("org", "create", org)
    system.cli_ok("org", "template", "set", org, "web", '{"sentry:origins": ["tpl.example.com"]}')
    created = system.cli_ok("project", "create", org, "site", "--template", "web", "--json")
    plain = system.cli_ok("project", "create", org, "plain", "--json")
    assert served_origins(system, created["publicKey"]) == ["tpl.example.com"]
    assert served_origins(system, plain["publicKey"]) == ["*"]
    assert system.cli_ok("project", "option", "get", f"{org}/site", "sentry:origins", "--json") == {
        "value": ["tpl.example.com"]}
    system.cli_ok("project", "option", "set", f"{org}/site", "sentry:origins", '["own.example.com"]')
    assert served_origins(system, created["publicKey"]) == ["own.example.com"]
    system.cli_ok("project", "option", "unset", f"{org}/site", "sentry:origins")
    assert served_origins(system, created["publicKey"]) == ["tpl.example.com"]


def test_bad_templates_are_refused(system: SystemUnderTest) -> None:
    """An unknown template, an invalid option value, or a non-object is refused with exit 1."""
    org = "tpl-" + uuid.uuid4().hex[:8]
    system.cli_ok("org", "create", org)
    unknown = system.cli("project", "create", org, "x", "--template", "nope")
    assert unknown.exit_code == 1 and "No project template `nope`" in unknown.stderr
    invalid = system.cli("org", "template", "set", org, "web", '{"sentry:origins": 5}')
    assert invalid.exit_code == 1 and invalid.stderr.startswith("error:")
    not_object = system.cli("org", "template", "set", org, "web", "[1]")
    assert not_object.exit_code == 1 and "JSON object" in not_object.stderr
