"""Control messages (subject `rc.ctl.<aggregate>.<command>`) and query messages.

Each entry of `CONTROL` maps a message type `"<aggregate>.<command>"` to the schema of its
payload; `QUERIES` does the same for the actor queries. The subject each type is sent on,
who serves it and who may send it are in `messages/endpoints.py`. Changes reply once their
events are stored; reads reply with state that includes every change acknowledged before
they were sent (read-your-writes).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from messages.schema import Schema, field

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
PUBLIC_KEY_RE = re.compile(r"^[0-9a-f]{32}$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,99}$")
PERMISSION_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,99}$")
RELAY_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
OPTION_KEY_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,199}$")


def _matches(regex: re.Pattern[str], what: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if regex.fullmatch(value) else f"not a valid {what}"
    return check


slug = field(str, check=_matches(SLUG_RE, "slug (lowercase letters, digits, - and _)"))
public_key = field(str, check=_matches(PUBLIC_KEY_RE, "project key (32 hex characters)"))
relay_key = field(str, check=_matches(RELAY_KEY_RE, "relay public key (43 url-safe base64 characters)"))
username = field(str, check=_matches(USERNAME_RE, "username"))
option_key = field(str, check=_matches(OPTION_KEY_RE, "option key"))
name = field(str, required=False)
any_value = field(object, nullable=True)

_org_project: Schema = {"org": slug, "project": slug}
TOKEN_ID_RE = re.compile(r"^[0-9a-f]{12}$")
_page: Schema = {"cursor": field(str, required=False), "per_page": field(int, required=False, default=100)}

CONTROL: dict[str, Schema] = {
    # owner: a user made the org's owner in the same commit (the management API's creator)
    "org.create": {"slug": slug, "name": name, "owner": field(
        str, required=False, check=_matches(USERNAME_RE, "username"))},
    "org.option_set": {"org": slug, "key": option_key, "value": any_value},
    "org.option_get": {"org": slug, "key": option_key},
    "org.option_unset": {"org": slug, "key": option_key},
    "org.trust_relay": {"org": slug, "public_key": relay_key, "name": name,
                        "description": field(str, required=False)},
    "org.untrust_relay": {"org": slug, "public_key": relay_key},
    "org.template_set": {"org": slug, "template": slug, "options": field(dict)},
    "project.create": {**_org_project, "name": name, "template": field(str, required=False)},
    "project.option_set": {**_org_project, "key": option_key, "value": any_value},
    "project.option_get": {**_org_project, "key": option_key},
    "project.option_unset": {**_org_project, "key": option_key},
    "project.disable": _org_project,
    "project.enable": _org_project,
    "project.delete": _org_project,
    "key.create": {**_org_project, "public_key": field(
        str, required=False, check=_matches(PUBLIC_KEY_RE, "project key (32 hex characters)"))},
    "key.disable": {"public_key": public_key},
    "key.enable": {"public_key": public_key},
    "key.delete": {"public_key": public_key},
    # a key's rate limit (count per window, Relay's key quota); `clear` removes it
    "key.rate_limit": {"public_key": public_key, "count": field(int, required=False),
                       "window": field(int, required=False), "clear": field(bool, required=False, default=False)},
    "key.list": _org_project,
    "relay.allow": {"public_key": relay_key, "internal": field(bool, required=False, default=False)},
    "relay.deny": {"public_key": relay_key},
    "relay.list": {},
    # a relay by its public key or by any id it registered under (`relayctl relay status`)
    "relay.status": {"relay": field(str, check=lambda v: None if 0 < len(v) <= 100 else "not a relay id or key")},
    "relay.register": {"relay_id": field(str), "public_key": relay_key,
                       "version": field(str, required=False)},
    "user.create": {"username": username, "email": field(str, required=False),
                    "superuser": field(bool, required=False, default=False)},
    "user.token_create": {"username": username},
    "user.permission_add": {"username": username, "permission": field(
        str, check=_matches(PERMISSION_RE, "permission"))},
    "user.permission_remove": {"username": username, "permission": field(str)},
    "user.permission_list": {"username": username},
    "user.authenticate": {"token": field(str)},
    # API tokens sentry-cli recognizes (domain/access.py): scopes None = every scope; with
    # `org` an org auth token naming `url`, the API's base URL
    "token.create": {"username": username, "scopes": field(list, required=False), "org": field(
        str, required=False, check=_matches(SLUG_RE, "org slug")), "url": field(str, required=False), "name": name},
    "token.list": {"username": username},
    "token.revoke": {"token_id": field(str, check=_matches(TOKEN_ID_RE, "token id (12 hex characters)"))},
    "org.update": {"org": slug, "name": field(str, required=False, check=lambda v: None if 0 < len(v) <= 64
                                              else "1 to 64 characters")},
    "org.member_add": {"org": slug, "username": username, "role": field(str)},
    "team.create": {"org": slug, "team": slug, "name": name},
    "team.delete": {"org": slug, "team": slug},
    "project.team_add": {**_org_project, "team": slug},
    "project.team_remove": {**_org_project, "team": slug},
    "org.member_remove": {"org": slug, "username": username},
    "org.member_list": {"org": slug},
    "project.update": {**_org_project, "name": name, "slug": field(
        str, required=False, check=_matches(SLUG_RE, "slug (lowercase letters, digits, - and _)")),
        "platform": field(str, required=False, check=lambda v: None if len(v) <= 64 else "at most 64 characters")},
    "key.update": {"public_key": public_key, "name": field(
        str, required=False, nullable=True, check=lambda v: None if len(v) <= 64 else "at most 64 characters")},
    # the management API's reads (domain/management.py): Sentry's shapes, a page at a time
    "api.orgs": {"slugs": field(list, required=False, nullable=True), **_page},
    "api.org": {"org": slug},
    "api.projects": {"org": slug, **_page},
    "api.project": _org_project,
    "api.keys": {**_org_project, "base_url": field(str), "status": field(str, required=False), **_page},
    "api.key": {**_org_project, "key_id": field(str), "base_url": field(str)},
    # a project's options with their template, org and default values (`private`: also the
    # values of options outside the public ones)
    "api.project_options": {**_org_project, "private": field(bool, required=False, default=False)},
    # `part`: a piece of an import in parts (domain/importer.py): {id, first, projects, last};
    # `restart`: abandon an unfinished import of the org of another id first
    "import.org": {"org": field(dict), "part": field(dict, required=False, nullable=True),
                   "restart": field(bool, required=False, default=False)},
    # drop an org's unfinished import in parts (`import_id`: only if it is that one)
    "import.abandon": {"org": slug, "import_id": field(str, required=False, nullable=True)},
    # Everything `import.org` reads, for every org: the answer is `{"orgs": [...]}`.
    "export.orgs": {},
    # The event stream as the command handlers see it (`relayctl status`): folded sequence,
    # undecodable commits skipped, the last append the store refused. Answered without the store.
    "stream.status": {},
}

# actor queries
QUERIES: dict[str, Schema] = {
    "keys.lookup": {"public_keys": field(list)},
    "org.has_access": {"relay_public_key": relay_key, "org_ids": field(list)},
    "org.relay_auth": {"relay_id": field(str, required=False), "public_key": field(str, required=False)},
    # Config replies carry each config's trusted relay keys; the caller (the gateway) decides
    # what a relay may see, the same way for cached and freshly built configs.
    "config.get": {"public_keys": field(list), "version": field(int, required=False, default=3)},
    "config.get_v1": {"project_ids": field(list)},
    "config.build": {"public_keys": field(list), "global": field(bool, required=False, default=False)},
    "config.history": {"public_key": public_key},
    "metrics.snapshot": {"format": field(str, required=False, default="json")},
    # AI fix suggestions (actors/ai.py) and the error events they are for (actors/error_events.py)
    "ai.suggest": {**_org_project, "event_id": field(str), "stream": field(bool, required=False, default=True),
                   "consent": field(bool, required=False, default=False),
                   "pii_certified": field(bool, required=False, default=False),
                   "model": field(str, required=False)},
    "events.store": {**_org_project, "event": field(dict)},
    "events.get": {**_org_project, "event_id": field(str)},
    "transport.flush": {},
    # the ingest stream's consumers (actors/forwarder.py)
    "ingest.status": {},
    "ingest.stats": _org_project,
    "ingest.replay": {"org": field(str, required=False), "project": field(str, required=False),
                      "sequence": field(int, required=False)},
    "events.list": {**_org_project, "limit": field(int, required=False, default=20)},
    "events.show": {"event_id": field(str)},
    # the management API's (the gateway checks the caller's scope on the org named):
    # counts only, of the whole (neither given) or of one project; one project's error events
    "api.ingest_status": {"org": field(str, required=False), "project": field(str, required=False)},
    "api.events": {**_org_project, **_page},
    "api.event": {**_org_project, "event_id": field(str)},
}
