"""What every option key means, for `relayctl option list` and the `option set` help.

The catalogue (keys, scopes, defaults, validation) is the domain's; this is only the text a
person reads: the value's type and one line of meaning per key. A test checks that every
catalogue key has an entry here and no entry names a key the catalogue lacks.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple


class OptionDoc(NamedTuple):
    type: str
    meaning: str


# Keys under "filters:" that are not listed: accepted as toggles, never sent to Relay.
PREFIX_DOCS: dict[str, OptionDoc] = {
    "filters:": OptionDoc('"0" | "1"', "any other inbound filter toggle: accepted and stored, not emitted"),
}

OPTION_DOCS: dict[str, OptionDoc] = {
    "sentry:origins": OptionDoc("list of str", "allowed origins (browser SDKs); \"*\" allows any"),
    "sentry:scrub_data": OptionDoc("bool", "server-side data scrubbing (Relay's datascrubbingSettings.scrubData)"),
    "sentry:scrub_defaults": OptionDoc("bool", "scrub Sentry's default sensitive fields (passwords, secrets, ...)"),
    "sentry:scrub_ip_address": OptionDoc("bool", "remove IP addresses from events"),
    "sentry:sensitive_fields": OptionDoc("list of str", "extra field names to scrub (org and project lists merge)"),
    "sentry:safe_fields": OptionDoc("list of str", "field names never scrubbed (org and project lists merge)"),
    "sentry:relay_pii_config": OptionDoc("PII config object | null",
                                         "advanced data scrubbing rules (Relay's piiConfig), checked by Relay"),
    "sentry:require_scrub_data": OptionDoc("bool", "force data scrubbing on for every project of the org"),
    "sentry:require_scrub_defaults": OptionDoc("bool", "force default scrubbing on for every project of the org"),
    "sentry:require_scrub_ip_address": OptionDoc("bool", "force IP address scrubbing on for every project"),
    "sentry:trusted-relays": OptionDoc("list of {public_key, name, description?}",
                                       "relays allowed to fetch this org's configs (see `org trust-relay`)"),
    "sentry:blacklisted_ips": OptionDoc("list of IP / CIDR", "drop events sent from these addresses"),
    "sentry:releases": OptionDoc("list of glob", "drop events of these releases"),
    "sentry:error_messages": OptionDoc("list of glob", "drop errors whose message matches"),
    "sentry:csp_ignored_sources": OptionDoc("list of str", "CSP report sources to ignore"),
    "sentry:csp_ignored_sources_defaults": OptionDoc("bool", "also ignore Sentry's default CSP sources"),
    "filters:browser-extensions": OptionDoc('"0" | "1"', "drop errors caused by browser extensions"),
    "filters:localhost": OptionDoc('"0" | "1"', "drop events from localhost"),
    "filters:web-crawlers": OptionDoc('"0" | "1"', "drop events from known web crawlers"),
    "filters:legacy-browsers": OptionDoc('"0" | "1" | list of browser ids',
                                         "drop events from old browsers (all, or the listed ones)"),
    "filters:filtered-transaction": OptionDoc('"0" | "1"', "drop health-check transactions"),
    "filters:react-hydration-errors": OptionDoc('"0" | "1"', "drop React hydration errors"),
    "filters:chunk-load-error": OptionDoc('"0" | "1"', "drop webpack ChunkLoadError errors"),
    "quotas:project-rate-limit": OptionDoc("{window, count} | null", "at most count events per window seconds"),
    "quotas:org-rate-limit": OptionDoc("{window, count} | null",
                                       "at most count events per window seconds, whole org"),
    "sentry:dynamic_sampling_rules": OptionDoc("{version: 2, rules: [...]} | null",
                                               "dynamic sampling rules (Relay's sampling), checked by Relay"),
    "sentry:metric_extraction": OptionDoc("{version, metrics, tags} | null",
                                          "metrics Relay extracts from events (metricExtraction)"),
    "sentry:features": OptionDoc("list of str", "feature flags (organizations:* / projects:*) sent to Relay"),
    "sentry:event_retention": OptionDoc("int days (1-65535) | null", "how long events are kept"),
    "sentry:grouping_config": OptionDoc("str", "grouping config id (groupingConfig.id)"),
    "sentry:grouping_enhancements": OptionDoc("str", "stack trace grouping enhancement rules"),
    "sentry:breakdowns": OptionDoc("{name: {type: spanOperations, matches}} | null",
                                   "span operation breakdowns of transactions (breakdownsV2)"),
    "ai:policy": OptionDoc("allowed | individual_consent | subprocessor | pii_certification_required | denied",
                           "whether and how AI fix suggestions may use the org's events"),
    "relayctl:forward_dsn": OptionDoc("Sentry DSN | null",
                                      "where the project's envelopes are forwarded (org value: the default)"),
}


def doc_for(key: str) -> OptionDoc | None:
    if key in OPTION_DOCS:
        return OPTION_DOCS[key]
    for prefix, doc in PREFIX_DOCS.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            return doc
    return None


def rows(specs: Any) -> list[dict[str, Any]]:
    """One row per catalogue entry (`OptionSpec`s, in catalogue order): key, scopes, type,
    default, meaning."""
    out = []
    for spec in specs:
        doc = OPTION_DOCS.get(spec.key) or PREFIX_DOCS.get(spec.key) or OptionDoc("?", "")
        key = spec.key + "<name>" if spec.key in PREFIX_DOCS else spec.key
        out.append({"key": key, "scopes": sorted(spec.scopes), "type": doc.type, "default": spec.default,
                    "meaning": doc.meaning})
    return out


def help_epilog(rows_of_scope: list[dict[str, Any]]) -> str:
    """The keys of one scope, one line each, for `org/project option set --help`."""
    lines = ["Keys (`relayctl option list` shows types and defaults):", ""]
    lines.append("\b")  # click: keep these lines as they are
    width = max(len(r["key"]) for r in rows_of_scope)
    lines += [f"{r['key']:<{width}}  {r['meaning']}" for r in rows_of_scope]
    return "\n".join(lines)


def default_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
