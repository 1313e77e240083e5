"""The project config document Relay fetches for a public key (PROTOCOL.md section 5).

`build_project_config(org, project, key)` turns the domain objects and their options into
the document answered by `POST /api/0/relays/projectconfigs/`: either exactly
`{"disabled": true}` or the full enabled document whose `config` Relay's own deserializer
(`sentry_relay.normalize_project_config`) accepts. Its `rev` is a hash of the content, so
an unchanged project keeps its revision and can be answered with `unchanged`. Pure: no I/O.

`check_pii_change` validates the merged `piiConfig` this builder would emit, for every
project (and template) a PII option change affects; the command handlers call it before
an option or template change becomes an event.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sentry_relay.processing import validate_pii_config

from domain.model import DELETED, Org, Project, ProjectKey
from domain.options import default_value, get_option, get_org_option, shared_default
from messages.errors import BadRequest

DISABLED_CONFIG: dict[str, Any] = {"disabled": True}

# Sentry's EXTRACT_METRICS_VERSION: Relay extracts release-health metrics from sessions.
SESSION_METRICS = {"version": 1}

# Sentry's DEFAULT_DISALLOWED_SOURCES (sentry.interfaces.security).
DEFAULT_DISALLOWED_SOURCES = (
    "about",
    "ms-browser-extension",
    "chrome://*",
    "chrome-extension://*",
    "chromeinvokeimmediate://*",
    "chromenull://*",
    "data:text/html,chromewebdata",
    "safari-extension://*",
    "mxaddon-pkg://*",
    "jar://*",
    "webviewprogressproxy://*",
    "ms-browser-extension://*",
    "tmtbff://*",
    "mbinit://*",
    "symres://*",
    "resource://*",
    "moz-extension://*",
    "*.metrics.itunes.apple.com.edgesuite.net",
    "safari-web-extension://*",
)

# Sentry's HEALTH_CHECK_GLOBS: transactions the `filtered-transaction` filter drops.
HEALTH_CHECK_GLOBS = (
    "*healthcheck*",
    "*heartbeat*",
    "*/health",
    "*/healthy",
    "*/healthz",
    "*/live",
    "*/livez",
    "*/ready",
    "*/readyz",
    "*/ping",
)

# Error message globs of Sentry's react-hydration-errors and chunk-load-error filters.
REACT_HYDRATION_ERROR_PATTERNS = (
    "*https://reactjs.org/docs/error-decoder.html?invariant={418,419,422,423,425}*",
    "*https://react.dev/errors/{418,419,422,423,425}*",
)
CHUNK_LOAD_ERROR_PATTERNS = (
    "ChunkLoadError: Loading chunk *",
    "*Uncaught *: ChunkLoadError: Loading chunk *",
)

# Filter option id -> filterSettings key, for the simple on/off filters.
TOGGLE_FILTERS = {
    "browser-extensions": "browserExtensions",
    "localhost": "localhost",
    "web-crawlers": "webCrawlers",
}

# Sentry rate-limits keys, projects and orgs on the error categories only.
QUOTA_CATEGORIES = ["default", "error", "security"]


def disabled_config() -> dict[str, Any]:
    """A fresh `{"disabled": True}`: callers may mutate what they get."""
    return dict(DISABLED_CONFIG)


def format_timestamp(epoch: float) -> str:
    """RFC 3339 UTC with microseconds and `Z`, the form Relay parses."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def config_revision(document: dict[str, Any]) -> str:
    """A hash of everything in the document but `lastFetch` and `rev` itself."""
    content = {k: v for k, v in document.items() if k not in ("lastFetch", "rev")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def build_project_config(
    org: Org,
    project: Project,
    key: ProjectKey,
    *,
    project_keys: Iterable[ProjectKey] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The config document of `key`: exactly `{"disabled": True}` when the key or the
    project is not active, else the full document.

    `project_keys` (protocol v1) lists every key of the project; the active ones are
    published after the requested key. Without it only the requested key is published.
    """
    if key.project_id != project.id or project.org_id != org.id:
        raise ValueError(
            f"key {key.public_key} of project {key.project_id} does not belong to "
            f"project {project.id} of org {org.id}"
        )
    if not key.is_active or not project.is_active:
        return disabled_config()

    keys = _published_keys(key, project, project_keys)
    document: dict[str, Any] = {
        "disabled": False,
        "slug": project.slug,
        "lastFetch": format_timestamp(time.time() if now is None else now),
        "lastChange": format_timestamp(max(org.last_change, project.last_change, key.last_change)),
        "rev": "",
        "publicKeys": [
            {"publicKey": k.public_key, "numericId": k.numeric_id, "isEnabled": True} for k in keys
        ],
        "config": _config(org, project, keys),
        "organizationId": int(org.id),
        "projectId": int(project.id),
    }
    document["rev"] = config_revision(document)
    return document


def _published_keys(
    key: ProjectKey, project: Project, project_keys: Iterable[ProjectKey] | None
) -> list[ProjectKey]:
    keys = [key]
    for other in project_keys or ():
        if (
            other.is_active
            and other.project_id == project.id
            and all(other.public_key != k.public_key for k in keys)
        ):
            keys.append(other)
    return keys


def _config(org: Org, project: Project, keys: list[ProjectKey]) -> dict[str, Any]:
    # Each value copied once, the catalogue's default included (not copied first by the lookup).
    def option(name: str) -> Any:
        value = get_option(project, name, _ABSENT, org=org)
        return _json_copy(shared_default(name) if value is _ABSENT else value)

    def org_option(name: str) -> Any:
        value = get_org_option(org, name, _ABSENT)
        return _json_copy(shared_default(name) if value is _ABSENT else value)

    config: dict[str, Any] = {
        "allowedDomains": option("sentry:origins"),
        "trustedRelays": [
            relay["public_key"] for relay in org_option("sentry:trusted-relays") if relay
        ],
        "piiConfig": merge_pii_configs(
            [
                ("organization:", org_option("sentry:relay_pii_config")),
                ("project:", option("sentry:relay_pii_config")),
            ]
        ),
        "datascrubbingSettings": {
            "excludeFields": org_option("sentry:safe_fields") + option("sentry:safe_fields"),
            "scrubData": bool(
                org_option("sentry:require_scrub_data") or option("sentry:scrub_data")
            ),
            "scrubIpAddresses": bool(
                org_option("sentry:require_scrub_ip_address") or option("sentry:scrub_ip_address")
            ),
            "sensitiveFields": org_option("sentry:sensitive_fields")
            + option("sentry:sensitive_fields"),
            "scrubDefaults": bool(
                org_option("sentry:require_scrub_defaults") or option("sentry:scrub_defaults")
            ),
        },
        "filterSettings": _filter_settings(option),
        "features": sorted(set(org_option("sentry:features")) | set(option("sentry:features"))),
        "groupingConfig": {
            "id": option("sentry:grouping_config"),
            "enhancements": option("sentry:grouping_enhancements"),
        },
        "sessionMetrics": dict(SESSION_METRICS),
    }
    retention = org_option("sentry:event_retention")
    if retention is not None:
        config["eventRetention"] = retention
    breakdowns = option("sentry:breakdowns")
    if breakdowns is not None:
        config["breakdownsV2"] = breakdowns
    quotas = _quotas(
        org, project, keys, option("quotas:project-rate-limit"), org_option("quotas:org-rate-limit")
    )
    if quotas:
        config["quotas"] = quotas
    sampling = option("sentry:dynamic_sampling_rules")
    if sampling is not None:
        config["sampling"] = sampling
    metric_extraction = option("sentry:metric_extraction")
    if metric_extraction is not None:
        config["metricExtraction"] = metric_extraction
    return config


_ABSENT = object()


def _json_copy(value: Any) -> Any:
    """A copy (the document never aliases state that a projection later mutates), in the
    JSON form Relay validated: values stored before validation made them JSON-normal (a
    msgpack map with int keys, say) build as the JSON that was checked, instead of failing.

    Plain JSON data (what validation stores) is copied directly; anything else goes through
    a JSON round trip, part by part, which gives the same as one round trip of the whole."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or kind is float or value is None:
        return value
    if kind is list or kind is tuple:
        return [_json_copy(item) for item in value]
    if kind is dict and all(type(name) is str for name in value):
        return {name: _json_copy(item) for name, item in value.items()}
    return json.loads(json.dumps(value))


def _filter_settings(option: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for filter_id, name in TOGGLE_FILTERS.items():
        if option(f"filters:{filter_id}") != "0":
            settings[name] = {"isEnabled": True}

    legacy = option("filters:legacy-browsers")
    if legacy != "0":
        # "1" means Relay's default set; a list names browsers one by one.
        settings["legacyBrowsers"] = {
            "isEnabled": True,
            "options": ["default"] if legacy == "1" else list(legacy),
        }
    if option("filters:filtered-transaction") != "0":
        settings["ignoreTransactions"] = {"isEnabled": True, "patterns": list(HEALTH_CHECK_GLOBS)}

    releases = option("sentry:releases")
    if releases:
        settings["releases"] = {"releases": releases}

    error_messages = list(option("sentry:error_messages"))
    if option("filters:react-hydration-errors") != "0":
        error_messages += REACT_HYDRATION_ERROR_PATTERNS
    if option("filters:chunk-load-error") != "0":
        error_messages += CHUNK_LOAD_ERROR_PATTERNS
    if error_messages:
        settings["errorMessages"] = {"patterns": error_messages}

    blacklisted_ips = option("sentry:blacklisted_ips")
    if blacklisted_ips:
        settings["clientIps"] = {"blacklistedIps": blacklisted_ips}

    csp_sources: list[str] = []
    if option("sentry:csp_ignored_sources_defaults"):
        csp_sources += DEFAULT_DISALLOWED_SOURCES
    csp_sources += option("sentry:csp_ignored_sources")
    if csp_sources:
        settings["csp"] = {"disallowedSources": csp_sources}
    return settings


def _quota(
    quota_id: str, scope: str, scope_id: int, limit: dict[str, int], reason: str
) -> dict[str, Any]:
    return {
        "id": quota_id,
        "scope": scope,
        "scopeId": str(scope_id),
        "categories": list(QUOTA_CATEGORIES),
        "limit": limit["count"],
        "window": limit["window"],
        "reasonCode": reason,
    }


def _quotas(
    org: Org,
    project: Project,
    keys: list[ProjectKey],
    project_limit: dict[str, int] | None,
    org_limit: dict[str, int] | None,
) -> list[dict[str, Any]]:
    """Relay's quota schema, with Sentry's ids and reason codes ("k"/"p"/"o")."""
    quotas = []
    if project_limit:
        quotas.append(_quota("p", "project", project.id, project_limit, "project_quota"))
    if org_limit:
        quotas.append(_quota("o", "organization", org.id, org_limit, "org_quota"))
    for key in keys:
        if key.rate_limit:
            quotas.append(_quota("k", "key", key.numeric_id, key.rate_limit, "key_quota"))
    return quotas


PII_OPTION = "sentry:relay_pii_config"
ORG_RULE_PREFIX = "organization:"
PROJECT_RULE_PREFIX = "project:"


def _first_line(exc: BaseException) -> str:
    # sentry_relay errors carry a Rust stack trace after the first line.
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def merged_pii_problem(org_value: Any, project_value: Any) -> str | None:
    """What is wrong with the `piiConfig` the builder emits for an org's and a project's
    `sentry:relay_pii_config`, or None when Relay accepts it and every rule can work.

    Each scope is valid on its own (validate_option), yet the merge can fail: a project
    applying an org rule (`organization:<name>`) whose regex does not compile, or a name
    that resolves to no rule (Relay accepts the config and silently scrubs nothing). A rule
    nothing applies yet must compile too: a later application would break the whole config.
    """
    merged = merge_pii_configs([(ORG_RULE_PREFIX, org_value), (PROJECT_RULE_PREFIX, project_value)])
    if not merged:
        return None
    try:
        validate_pii_config(json.dumps(merged))
    except Exception as exc:
        return f"Relay rejects it: {_first_line(exc)}"
    rules = merged.get("rules") or {}
    for name in rules:
        try:
            validate_pii_config(json.dumps({"rules": rules, "applications": {"$string": [name]}}))
        except Exception as exc:
            return f"rule `{name}`: Relay rejects it: {_first_line(exc)}"

    def unknown(name: Any) -> str | None:
        if not isinstance(name, str) or name.startswith("@") or name in rules:
            return None  # "@..." are Relay's built-in rules
        hint = "" if name.startswith((ORG_RULE_PREFIX, PROJECT_RULE_PREFIX)) else \
            f" (an org rule is applied as `{ORG_RULE_PREFIX}<name>`)"
        return f"`{name}` is not a rule of the merged config{hint}; Relay would scrub nothing with it"

    for selector, names in (merged.get("applications") or {}).items():
        for name in names:
            problem = unknown(name)
            if problem:
                return f"applications[{selector!r}]: {problem}"
    for rule_name, rule in rules.items():
        refs = rule.get("rules", []) if rule.get("type") == "multiple" else \
            [rule.get("rule")] if rule.get("type") == "alias" else []
        for name in refs:
            problem = unknown(name)
            if problem:
                return f"rule `{rule_name}`: {problem}"
    return None


def check_pii_change(state: Any, org: Org, key: str, *, org_options: Mapping[str, Any] | None = None,
                     templates: Mapping[str, dict[str, Any]] | None = None,
                     project: Project | None = None, project_options: Mapping[str, Any] | None = None) -> None:
    """Refuse (BadRequest naming the project) a change whose merged `piiConfig` would fail.

    The change is given as the org's new options (`key` is the option changed), its new
    templates, or one project's new options; `state` is the DomainState it is decided on.
    Checked is every config the change affects: for an org change, what each project of the
    org (deleted ones aside), each template and a project without a config of its own get;
    for a template change, the changed templates and the projects falling back to them; for
    a project change, that project. A change that touches no PII config passes at once."""
    new_org = replace(org, options=dict(org.options if org_options is None else org_options),
                      templates=dict(org.templates if templates is None else templates))

    def pii_of(options: Mapping[str, Any]) -> tuple[bool, Any]:
        return PII_OPTION in options, options.get(PII_OPTION)

    changed_templates = {name for name in set(org.templates) | set(new_org.templates)
                         if pii_of(org.templates.get(name, {})) != pii_of(new_org.templates.get(name, {}))}
    if templates is not None:
        if not changed_templates:
            return
    elif key != PII_OPTION:
        return
    org_value = get_org_option(new_org, PII_OPTION)
    checks: list[tuple[str, Any]] = []
    if project is not None:
        changed = replace(project, options=dict(project.options if project_options is None else project_options))
        checks.append((f"project `{org.slug}/{project.slug}`", get_option(changed, PII_OPTION, org=new_org)))
    else:
        if templates is None:
            checks.append((f"a project of `{org.slug}` without a PII config of its own",
                           default_value(PII_OPTION)))
        for name, options in sorted(new_org.templates.items()):
            if templates is None or name in changed_templates:
                checks.append((f"template `{name}` of `{org.slug}`", options.get(PII_OPTION)))
        for project_id in state.projects_of_org.get(org.id, []):
            member = state.projects.get(project_id)
            if member is None or member.status == DELETED:
                continue
            if templates is not None and (member.template not in changed_templates or PII_OPTION in member.options):
                continue  # a template change reaches only the projects falling back to it
            checks.append((f"project `{org.slug}/{member.slug}`", get_option(member, PII_OPTION, org=new_org)))
    _refuse_invalid_merges(org_value, checks)


def check_pii_import(state: Any, org_slug: str, org_options: Mapping[str, Any],
                     project_options: Mapping[str, Mapping[str, Any]]) -> None:
    """`check_pii_change` for an `import.org`: the org's options and several projects'
    (by slug, new ones included) change at once, so the merges are checked as they will be
    once the whole import is folded."""
    touches_org = PII_OPTION in org_options
    if not touches_org and not any(PII_OPTION in options for options in project_options.values()):
        return
    org = state.org(org_slug)
    current = org if org is not None else Org(0, org_slug, org_slug)
    new_org = replace(current, options={**current.options, **org_options})
    finals: dict[str, Project] = {}
    if org is not None:
        for project_id in state.projects_of_org.get(org.id, []):
            member = state.projects.get(project_id)
            if member is not None and member.status != DELETED:
                finals[member.slug] = member
    checks: list[tuple[str, Any]] = []
    if touches_org:
        checks.append((f"a project of `{org_slug}` without a PII config of its own", default_value(PII_OPTION)))
        checks += [(f"template `{name}` of `{org_slug}`", options.get(PII_OPTION))
                   for name, options in sorted(new_org.templates.items())]
    for slug in sorted(set(finals) | set(project_options)):
        if not touches_org and PII_OPTION not in project_options.get(slug, {}):
            continue
        member = finals.get(slug) or Project(0, current.id, slug, slug)
        final = replace(member, options={**member.options, **project_options.get(slug, {})})
        checks.append((f"project `{org_slug}/{slug}`", get_option(final, PII_OPTION, org=new_org)))
    _refuse_invalid_merges(get_org_option(new_org, PII_OPTION), checks)


def _refuse_invalid_merges(org_value: Any, checks: list[tuple[str, Any]]) -> None:
    for label, project_value in checks:
        problem = merged_pii_problem(org_value, project_value)
        if problem is not None:
            raise BadRequest(f"invalid value for {PII_OPTION}: the piiConfig relays would get for {label} "
                             f"(org rules merged with the project's) is invalid: {problem}",
                             {"key": PII_OPTION, "scope": label})


def merge_pii_configs(prefixed: list[tuple[str, Any]]) -> dict[str, Any]:
    """Merge PII configs in order, prefixing each one's rule names (and the references to
    them in `applications` and in `multiple` / `alias` rules) so that names stay unique.

    Order matters: org rules come first so a project rule cannot undo them.
    """
    merged: dict[str, Any] = {}
    for prefix, config in prefixed:
        if isinstance(config, str):
            config = json.loads(config) if config else None
        if not config:
            continue
        rules = config.get("rules") or {}
        for name, rule in rules.items():
            merged.setdefault("rules", {})[prefix + name] = _prefix_rule_references(
                rule, rules, prefix
            )
        for selector, applications in (config.get("applications") or {}).items():
            target = merged.setdefault("applications", {}).setdefault(selector, [])
            target.extend(prefix + name if name in rules else name for name in applications)
        # Variables (the hash key) have no names to clash; the first config's wins.
        if config.get("vars") and "vars" not in merged:
            merged["vars"] = copy.deepcopy(config["vars"])
    return merged


def _prefix_rule_references(rule: Any, rules: dict[str, Any], prefix: str) -> Any:
    if not isinstance(rule, dict):
        return rule
    rule = copy.deepcopy(rule)
    if rule.get("type") == "multiple" and isinstance(rule.get("rules"), list):
        rule["rules"] = [prefix + name if name in rules else name for name in rule["rules"]]
    elif rule.get("type") == "alias" and rule.get("rule") in rules:
        rule["rule"] = prefix + rule["rule"]
    return rule
