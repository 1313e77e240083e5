"""The option catalogue: every org and project option, its default and its validation.

One source of truth for option keys. Commands validate a value with `validate_option`
before it becomes an event, so a stored option is always in its normalized shape and can
never make Relay reject a project config; the config builder reads values with
`get_option` / `get_org_option`. Pure: no I/O.

Keys follow Sentry where Sentry has one. Scope "project" options may also be set in an
org's project templates; a project falls back to its template, then to the default.

| key | scope | value (normalized) | default |
|---|---|---|---|
| `sentry:origins` | project | list of origin patterns | `["*"]` |
| `sentry:scrub_data` | project | bool | `True` |
| `sentry:scrub_defaults` | project | bool | `True` |
| `sentry:scrub_ip_address` | project | bool | `False` |
| `sentry:sensitive_fields` | org, project | list of str (merged org + project) | `[]` |
| `sentry:safe_fields` | org, project | list of str (merged org + project) | `[]` |
| `sentry:relay_pii_config` | org, project | PII config dict or None (JSON text accepted) | `None` |
| `sentry:require_scrub_data` | org | bool, forces scrubData | `False` |
| `sentry:require_scrub_defaults` | org | bool, forces scrubDefaults | `False` |
| `sentry:require_scrub_ip_address` | org | bool, forces scrubIpAddresses | `False` |
| `sentry:trusted-relays` | org | `{"public_key", "name", "description"?, "created"?}` | `[]` |
| `sentry:blacklisted_ips` | project | list of IPs / CIDR networks | `[]` |
| `sentry:releases` | project | list of release globs to drop | `[]` |
| `sentry:error_messages` | project | list of error message globs to drop | `[]` |
| `sentry:csp_ignored_sources` | project | list of CSP sources to ignore | `[]` |
| `sentry:csp_ignored_sources_defaults` | project | bool, add Sentry's default sources | `True` |
| `filters:browser-extensions` | project | `"0"` / `"1"` | `"0"` |
| `filters:localhost` | project | `"0"` / `"1"` | `"0"` |
| `filters:web-crawlers` | project | `"0"` / `"1"` | `"0"` |
| `filters:legacy-browsers` | project | `"0"`, `"1"` or list of browser ids | `"0"` |
| `filters:filtered-transaction` | project | `"0"` / `"1"` (health-check transactions) | `"1"` |
| `filters:react-hydration-errors` | project | `"0"` / `"1"` | `"1"` |
| `filters:chunk-load-error` | project | `"0"` / `"1"` | `"1"` |
| `filters:<other>` | project | `"0"` / `"1"` (accepted, not emitted) | `"0"` |
| `quotas:project-rate-limit` | project | `{"window": seconds, "count": n}` or None | `None` |
| `quotas:org-rate-limit` | org | `{"window": seconds, "count": n}` or None | `None` |
| `sentry:dynamic_sampling_rules` | project | `{"version": 2, "rules": [...]}` or None | `None` |
| `sentry:metric_extraction` | project | `{"version": 1-3, "metrics": [..], "tags": [..]}` | None |
| `sentry:features` | org, project | list of `organizations:*` / `projects:*` flags | `[]` |
| `sentry:event_retention` | org | days (1-65535) or None | `90` |
| `sentry:grouping_config` | project | grouping config id | `"newstyle:2023-01-11"` |
| `sentry:grouping_enhancements` | project | enhancement rules text | `""` |
| `sentry:breakdowns` | project | `{name: {"type": "spanOperations", "matches": [..]}}`/None | (1) |
| `ai:policy` | org | one of `AI_POLICIES` | `"allowed"` |
| `relayctl:forward_dsn` | org, project | a Sentry DSN to forward envelopes to, or None (project: opt out) | `None` |

(1) `DEFAULT_BREAKDOWNS`: span_ops over http, db, browser, resource, ui. Trusted relays are a
list of those maps.

Values are plain JSON data: a map key that is not a string, bytes, NaN or infinity is
refused (naming the path), and what is stored is the JSON-normal form of the validated
value. Booleans accept `True`/`False`, `0`/`1` and `"0"`/`"1"`/`"true"`/`"false"`. Filter toggles
accept the same and are stored as `"0"`/`"1"` like Sentry stores them. Lists of strings
accept a newline-separated string; entries are stripped and blank ones dropped.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sentry_relay.auth import PublicKey
from sentry_relay.consts import DataCategory
from sentry_relay.processing import (
    normalize_project_config,
    validate_pii_config,
    validate_rule_condition,
    validate_sampling_configuration,
)

from domain.dsn import InvalidDsn, parse_dsn
from domain.model import Org, Project
from messages.errors import BadRequest

Scope = Literal["org", "project"]
ORG: Scope = "org"
PROJECT: Scope = "project"

FILTER_PREFIX = "filters:"
AI_POLICIES = (
    "allowed",
    "individual_consent",
    "subprocessor",
    "pii_certification_required",
    "denied",
)
DEFAULT_GROUPING_CONFIG = "newstyle:2023-01-11"
DEFAULT_BREAKDOWNS = {
    "span_ops": {"type": "spanOperations", "matches": ["http", "db", "browser", "resource", "ui"]}
}
# Relay stores retention as u16 days.
MAX_EVENT_RETENTION_DAYS = 65535
MAX_METRIC_EXTRACTION_VERSION = 3
TRUSTED_RELAY_FIELDS = frozenset({"public_key", "name", "description", "created"})
_MRI = re.compile(r"^[cdsg]:[a-zA-Z0-9_.]+/[^@\s]+(@[a-zA-Z0-9_]+)?$")

_MISSING: Any = object()


class InvalidOption(BadRequest):
    """An option value (or key) that must not be stored; the message is one line. A domain
    error is a wire error: it reaches the caller as `bad_request` as it is."""


Validator = Callable[[str, Any], Any]


@dataclass(frozen=True)
class OptionSpec:
    key: str
    scopes: frozenset[str]
    default: Any
    validate: Validator


def _fail(key: str, text: str) -> InvalidOption:
    return InvalidOption(f"invalid value for {key}: {text}")


def _first_line(exc: BaseException) -> str:
    # sentry_relay errors carry a Rust stack trace after the first line.
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -- value validators: (key, raw value) -> normalized value ----------------------------------


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    raise _fail(key, f"expected a boolean, got {type(value).__name__}")


def _toggle(key: str, value: Any) -> str:
    return "1" if _bool(key, value) else "0"


def _str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, (list, tuple)):
        raise _fail(key, f"expected a list of strings, got {type(value).__name__}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _fail(
                key, f"expected a list of strings, got an item of type {type(item).__name__}"
            )
        item = item.strip()
        if item and item not in out:
            out.append(item)
    return out


def _ip_list(key: str, value: Any) -> list[str]:
    entries = _str_list(key, value)
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise _fail(key, f"{entry!r} is not an IP address or network") from None
    return entries


def _legacy_browsers(key: str, value: Any) -> str | list[str]:
    if isinstance(value, (list, tuple, set, frozenset)):
        browsers = _str_list(key, sorted(value) if isinstance(value, (set, frozenset)) else value)
        return browsers if browsers else "0"
    return _toggle(key, value)


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(key, f"expected a string, got {type(value).__name__}")
    return value


def _non_empty_str(key: str, value: Any) -> str:
    text = _str(key, value).strip()
    if not text:
        raise _fail(key, "must not be empty")
    return text


def _int(key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, f"expected an integer, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _fail(key, f"{value} is not {bounds}")
    return value


def _event_retention(key: str, value: Any) -> int | None:
    if value is None:
        return None
    return _int(key, value, 1, MAX_EVENT_RETENTION_DAYS)


def _rate_limit(key: str, value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"window", "count"}:
        raise _fail(key, 'expected {"window": seconds, "count": n}')
    return {"window": _int(key, value["window"], 1), "count": _int(key, value["count"], 0)}


def _json_object(key: str, value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise _fail(key, f"not valid JSON: {_first_line(exc)}") from None
    if not isinstance(value, dict):
        raise _fail(key, f"expected a JSON object, got {type(value).__name__}")
    return value


def _pii_config(key: str, value: Any) -> dict[str, Any] | None:
    # Relay validates the text as typed, so its line numbers match what the user wrote.
    text = value if isinstance(value, str) else None
    config = _json_object(key, value)
    if config is None:
        return None
    try:
        validate_pii_config(text if text is not None else json.dumps(config))
    except Exception as exc:
        raise _fail(key, _first_line(exc)) from None
    return config


def _normalized_survives(key: str, field: str, value: Any) -> None:
    """Refuse a value that Relay's own deserializer rejects or silently drops."""
    try:
        normalized = normalize_project_config({field: value})
    except Exception as exc:
        raise _fail(key, _first_line(exc)) from None
    if normalized.get(field) is None:
        raise _fail(key, f"Relay does not accept this as {field}")


def _sampling(key: str, value: Any) -> dict[str, Any] | None:
    if isinstance(value, list):
        value = {"version": 2, "rules": value}
    config = _json_object(key, value)
    if config is None:
        return None
    config = {"version": 2, **config}
    if not isinstance(config.get("rules"), list):
        raise _fail(key, 'expected {"version": 2, "rules": [...]}')
    try:
        validate_sampling_configuration(json.dumps(config))
    except Exception as exc:
        raise _fail(key, _first_line(exc)) from None
    _normalized_survives(key, "sampling", config)
    return config


def _rule_condition(key: str, where: str, condition: Any) -> None:
    try:
        validate_rule_condition(json.dumps(condition))
    except Exception as exc:
        raise _fail(key, f"{where}.condition: {_first_line(exc)}") from None


def _tag_specs(key: str, where: str, tags: Any) -> None:
    if not isinstance(tags, list):
        raise _fail(key, f"{where}.tags must be a list")
    for j, tag in enumerate(tags):
        here = f"{where}.tags[{j}]"
        if not isinstance(tag, dict) or not isinstance(tag.get("key"), str):
            raise _fail(key, f"{here} needs a string key")
        if ("field" in tag) == ("value" in tag):
            raise _fail(key, f"{here} needs exactly one of field or value")
        if not isinstance(tag.get("field", tag.get("value")), str):
            raise _fail(key, f"{here} field/value must be a string")
        if tag.get("condition") is not None:
            _rule_condition(key, here, tag["condition"])


def _metric_extraction(key: str, value: Any) -> dict[str, Any] | None:
    # Relay drops an invalid metricExtraction silently (an error boundary), so the checks
    # that normalize_project_config would do are done here.
    config = _json_object(key, value)
    if config is None:
        return None
    unknown = set(config) - {"version", "metrics", "tags", "globalGroups"}
    if unknown:
        raise _fail(key, f"unknown fields {sorted(unknown)}")
    version = _int(key, config.get("version"), 1, MAX_METRIC_EXTRACTION_VERSION)
    metrics = config.get("metrics", [])
    tags = config.get("tags", [])
    if not isinstance(metrics, list) or not isinstance(tags, list):
        raise _fail(key, "metrics and tags must be lists")
    if not metrics and not tags:
        raise _fail(key, "needs at least one metric or tag mapping")
    for i, spec in enumerate(metrics):
        where = f"metrics[{i}]"
        if not isinstance(spec, dict):
            raise _fail(key, f"{where} must be an object")
        category = spec.get("category")
        if not isinstance(category, str) or DataCategory.parse(category) is None:
            raise _fail(key, f"{where}.category {category!r} is not a data category")
        mri = spec.get("mri")
        if not isinstance(mri, str) or not _MRI.match(mri):
            raise _fail(key, f"{where}.mri {mri!r} is not a metric resource identifier")
        if spec.get("field") is not None and not isinstance(spec["field"], str):
            raise _fail(key, f"{where}.field must be a string")
        if spec.get("condition") is not None:
            _rule_condition(key, where, spec["condition"])
        _tag_specs(key, where, spec.get("tags", []))
    for i, mapping in enumerate(tags):
        where = f"tags[{i}]"
        if not isinstance(mapping, dict) or not isinstance(mapping.get("metrics"), list):
            raise _fail(key, f"{where} needs a list of metrics")
        if not all(isinstance(m, str) for m in mapping["metrics"]):
            raise _fail(key, f"{where}.metrics must be strings")
        _tag_specs(key, where, mapping.get("tags", []))
    return {**config, "version": version}


def _features(key: str, value: Any) -> list[str]:
    features = _str_list(key, value)
    for feature in features:
        if not feature.startswith(("organizations:", "projects:")):
            raise _fail(key, f"{feature!r} must start with organizations: or projects:")
    return features


def _breakdowns(key: str, value: Any) -> dict[str, Any] | None:
    config = _json_object(key, value)
    if config is None:
        return None
    for name, breakdown in config.items():
        if (
            not isinstance(breakdown, dict)
            or breakdown.get("type") != "spanOperations"
            or not isinstance(breakdown.get("matches"), list)
            or not all(isinstance(m, str) for m in breakdown["matches"])
        ):
            raise _fail(key, f'{name}: expected {{"type": "spanOperations", "matches": [...]}}')
    _normalized_survives(key, "breakdownsV2", config)
    return config


def _trusted_relays(key: str, value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise _fail(key, f"expected a list of relays, got {type(value).__name__}")
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise _fail(key, f"entry {i} must be an object")
        unknown = set(entry) - TRUSTED_RELAY_FIELDS
        if unknown:
            raise _fail(key, f"entry {i} has unknown fields {sorted(unknown)}")
        public_key = entry.get("public_key")
        if not isinstance(public_key, str):
            raise _fail(key, f"entry {i} needs a public_key string")
        public_key = public_key.strip()
        try:
            PublicKey.parse(public_key)
        except Exception as exc:
            raise _fail(
                key, f"entry {i}: invalid public key {public_key!r}: {_first_line(exc)}"
            ) from None
        if public_key in seen:
            raise _fail(key, f"entry {i}: duplicate public key {public_key!r}")
        seen.add(public_key)
        relay = {"public_key": public_key, "name": _non_empty_str(key, entry.get("name"))}
        for optional in ("description", "created"):
            if entry.get(optional) is not None:
                relay[optional] = _str(key, entry[optional])
        out.append(relay)
    return out


def _forward_dsn(key: str, value: Any) -> str | None:
    """A DSN the forwarder can send to (actors/forwarder.py), stored stripped; None: none."""
    if value is None:
        return None
    try:
        parse_dsn(value)
    except InvalidDsn as exc:
        raise _fail(key, f"not a usable DSN: {exc}") from None
    return str(value).strip()


def _ai_policy(key: str, value: Any) -> str:
    if value not in AI_POLICIES:
        raise _fail(key, f"{value!r} is not one of {', '.join(AI_POLICIES)}")
    return str(value)


# How an editor takes each validator's values: (input kind, what a value is). Kinds:
# "boolean", "toggle" ("0"/"1"), "lines" (a list, one entry a line), "text", "json".
_TYPES: dict[Validator, tuple[str, str]] = {
    _bool: ("boolean", "true or false"),
    _toggle: ("toggle", '"0" (off) or "1" (on)'),
    _str_list: ("lines", "list of strings, one per line"),
    _ip_list: ("lines", "list of IP addresses or CIDR networks, one per line"),
    _legacy_browsers: ("text", '"0", "1" or a JSON list of browser ids'),
    _str: ("text", "string"),
    _non_empty_str: ("text", "non-empty string"),
    _features: ("lines", "feature flags (organizations:* or projects:*), one per line"),
    _rate_limit: ("json", 'JSON {"window": seconds, "count": n} or null'),
    _pii_config: ("json", "JSON PII config (Relay's rules and applications) or null"),
    _sampling: ("json", 'JSON {"version": 2, "rules": [...]} or null'),
    _metric_extraction: ("json", 'JSON {"version": 1-3, "metrics": [...], "tags": [...]} or null'),
    _breakdowns: ("json", 'JSON {name: {"type": "spanOperations", "matches": [...]}} or null'),
    _forward_dsn: ("text", "a Sentry DSN to forward envelopes to"),
}


# -- the catalogue ---------------------------------------------------------------------------

_P = frozenset({PROJECT})
_O = frozenset({ORG})
_OP = frozenset({ORG, PROJECT})

_SPECS: tuple[OptionSpec, ...] = (
    OptionSpec("sentry:origins", _P, ["*"], _str_list),
    OptionSpec("sentry:scrub_data", _P, True, _bool),
    OptionSpec("sentry:scrub_defaults", _P, True, _bool),
    OptionSpec("sentry:scrub_ip_address", _P, False, _bool),
    OptionSpec("sentry:sensitive_fields", _OP, [], _str_list),
    OptionSpec("sentry:safe_fields", _OP, [], _str_list),
    OptionSpec("sentry:relay_pii_config", _OP, None, _pii_config),
    OptionSpec("sentry:require_scrub_data", _O, False, _bool),
    OptionSpec("sentry:require_scrub_defaults", _O, False, _bool),
    OptionSpec("sentry:require_scrub_ip_address", _O, False, _bool),
    OptionSpec("sentry:trusted-relays", _O, [], _trusted_relays),
    OptionSpec("sentry:blacklisted_ips", _P, [], _ip_list),
    OptionSpec("sentry:releases", _P, [], _str_list),
    OptionSpec("sentry:error_messages", _P, [], _str_list),
    OptionSpec("sentry:csp_ignored_sources", _P, [], _str_list),
    OptionSpec("sentry:csp_ignored_sources_defaults", _P, True, _bool),
    OptionSpec("filters:browser-extensions", _P, "0", _toggle),
    OptionSpec("filters:localhost", _P, "0", _toggle),
    OptionSpec("filters:web-crawlers", _P, "0", _toggle),
    OptionSpec("filters:legacy-browsers", _P, "0", _legacy_browsers),
    OptionSpec("filters:filtered-transaction", _P, "1", _toggle),
    OptionSpec("filters:react-hydration-errors", _P, "1", _toggle),
    OptionSpec("filters:chunk-load-error", _P, "1", _toggle),
    OptionSpec("quotas:project-rate-limit", _P, None, _rate_limit),
    OptionSpec("quotas:org-rate-limit", _O, None, _rate_limit),
    OptionSpec("sentry:dynamic_sampling_rules", _P, None, _sampling),
    OptionSpec("sentry:metric_extraction", _P, None, _metric_extraction),
    OptionSpec("sentry:features", _OP, [], _features),
    OptionSpec("sentry:event_retention", _O, 90, _event_retention),
    OptionSpec("sentry:grouping_config", _P, DEFAULT_GROUPING_CONFIG, _non_empty_str),
    OptionSpec("sentry:grouping_enhancements", _P, "", _str),
    OptionSpec("sentry:breakdowns", _P, DEFAULT_BREAKDOWNS, _breakdowns),
    OptionSpec("ai:policy", _O, "allowed", _ai_policy),
    OptionSpec("relayctl:forward_dsn", _OP, None, _forward_dsn),
)
OPTIONS: dict[str, OptionSpec] = {spec.key: spec for spec in _SPECS}
# Keys under a prefix that are not listed above: accepted with this spec's rules.
PREFIX_OPTIONS: dict[str, OptionSpec] = {
    FILTER_PREFIX: OptionSpec(FILTER_PREFIX, _P, "0", _toggle),
}

OPTION_DEFAULTS: dict[str, Any] = {spec.key: spec.default for spec in _SPECS}

# Options any reader of a project may see: no PII rules (they may hold hash keys), no
# quotas, sampling or relay keys.
PUBLIC_OPTION_KEYS: frozenset[str] = frozenset(
    {
        "sentry:origins",
        "sentry:scrub_data",
        "sentry:scrub_defaults",
        "sentry:scrub_ip_address",
        "sentry:sensitive_fields",
        "sentry:safe_fields",
        "sentry:blacklisted_ips",
        "sentry:releases",
        "sentry:error_messages",
        "sentry:csp_ignored_sources",
        "sentry:csp_ignored_sources_defaults",
        "sentry:grouping_config",
        "sentry:grouping_enhancements",
        "sentry:breakdowns",
        "sentry:features",
        *(key for key in OPTIONS if key.startswith(FILTER_PREFIX)),
    }
)


def option_spec(key: str) -> OptionSpec | None:
    """The spec of a known key or of the prefix it falls under, else None."""
    if key in OPTIONS:
        return OPTIONS[key]
    for prefix, spec in PREFIX_OPTIONS.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return spec
    return None


def option_type(spec: OptionSpec) -> tuple[str, str]:
    """How an editor takes the values of `spec`: its input kind and what a value is."""
    return _TYPES.get(spec.validate, ("json", "JSON value"))


def default_value(key: str) -> Any:
    """The catalogue default of a key (a copy: callers may mutate it), None when unknown."""
    return copy.deepcopy(shared_default(key))


def shared_default(key: str) -> Any:
    """The catalogue default of a key itself, None when unknown: read only (copy it to
    change it, as `default_value` does)."""
    spec = option_spec(key)
    return spec.default if spec is not None else None


# Deeper than any real option value; a bound keeps a crafted control message from
# exhausting the stack of whatever walks the value later.
MAX_VALUE_DEPTH = 32


def _check_plain(key: str, value: Any) -> None:
    """Refuse what JSON cannot hold: map keys that are not strings (msgpack control messages
    may carry ints, None, ...; a JSON encoding would silently turn them into strings, so Relay
    validates one value and another is stored), bytes, NaN and infinity, absurd nesting.
    Lists may still come as tuples or sets: the validators turn those into lists."""
    stack: list[tuple[Any, str, int]] = [(value, "value", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_VALUE_DEPTH:
            raise _fail(key, f"nested deeper than {MAX_VALUE_DEPTH} levels at {path}")
        if isinstance(item, dict):
            for name, child in item.items():
                if not isinstance(name, str):
                    raise _fail(key, f"map key {name!r} at {path} is not a string (option values are JSON)")
                stack.append((child, f"{path}.{name}", depth + 1))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise _fail(key, f"{item!r} at {path} is not a JSON number")
        elif item is not None and not isinstance(item, (str, bool, int, float)):
            raise _fail(key, f"a {type(item).__name__} at {path} is not a JSON value")


def _json_normal(key: str, value: Any) -> Any:
    """`value` exactly as JSON gives it back (tuples become lists): what is stored, hashed
    into the revision and sent to Relay is then one and the same value."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise _fail(key, f"not a JSON value: {exc}") from None


def check_option_key(scope: Scope | str, key: str) -> OptionSpec:
    """The spec of `key` in `scope`, or `InvalidOption`: the one answer for an unknown key
    (or one of the other scope), whether it is set, read or unset."""
    if scope not in (ORG, PROJECT):
        raise InvalidOption(f"unknown option scope {scope!r}")
    if not isinstance(key, str):
        raise InvalidOption(f"unknown option {key!r}")
    spec = option_spec(key)
    if spec is None:
        raise InvalidOption(f"unknown option {key!r}")
    if scope not in spec.scopes:
        raise InvalidOption(
            f"{key} is not an {scope} option" if scope == ORG else f"{key} is not a {scope} option"
        )
    return spec


def validate_option(scope: Scope | str, key: str, value: Any) -> Any:
    """Return the normalized value of `key` in `scope`, or raise `InvalidOption`.

    The value returned is JSON-normal (string map keys, lists, finite numbers); a value
    that is not plain JSON data is refused with the path to the offending part."""
    spec = check_option_key(scope, key)
    _check_plain(key, value)
    return _json_normal(key, spec.validate(key, value))


def get_option(
    project: Project, key: str, default: Any = _MISSING, *, org: Org | None = None
) -> Any:
    """The project's own value, else its template's (when `org` is given), else `default`,
    else the catalogue default."""
    if key in project.options:
        return project.options[key]
    if org is not None and project.template is not None:
        template = org.templates.get(project.template, {})
        if key in template:
            return template[key]
    if default is not _MISSING:
        return default
    return default_value(key)


def get_org_option(org: Org, key: str, default: Any = _MISSING) -> Any:
    """The org's own value, else `default`, else the catalogue default."""
    if key in org.options:
        return org.options[key]
    if default is not _MISSING:
        return default
    return default_value(key)


def get_options(
    projects: Iterable[Project], keys: Iterable[str], *, orgs: Mapping[int, Org] | None = None
) -> dict[int, dict[str, Any]]:
    """Values of the public `keys` for each project, by project id; other keys are left out.

    `orgs` (by id) lets values fall back to the project's template."""
    wanted = [key for key in dict.fromkeys(keys) if key in PUBLIC_OPTION_KEYS]
    result: dict[int, dict[str, Any]] = {}
    for project in projects:
        org = orgs.get(project.org_id) if orgs is not None else None
        result[project.id] = {key: get_option(project, key, org=org) for key in wanted}
    return result
