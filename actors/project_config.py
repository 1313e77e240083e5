"""The project config document Relay fetches for a public key (PROTOCOL.md section 5).

`build_project_config(org, project, key)` turns the domain objects and their options into
the document answered by `POST /api/0/relays/projectconfigs/`: either exactly
`{"disabled": true}` or the full enabled document whose `config` Relay's own deserializer
(`sentry_relay.normalize_project_config`) accepts. Its `rev` is a hash of the content, so
an unchanged project keeps its revision and can be answered with `unchanged`. Pure: no I/O.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from actors.model import Org, Project, ProjectKey
from actors.options import get_option, get_org_option

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
    def option(name: str) -> Any:
        # Copies, so the document never aliases state that a projection later mutates.
        return copy.deepcopy(get_option(project, name, org=org))

    def org_option(name: str) -> Any:
        return copy.deepcopy(get_org_option(org, name))

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
