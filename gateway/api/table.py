"""Every route of the management API, in one table (the OpenAPI document is checked
against it: tests/integration/test_management_api_writes.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.api import changes as c
from gateway.api import ingest as i
from gateway.api import options as o
from gateway.api import routes as r
from gateway.api import writes as w
from gateway.api.auth import failure_limiter
from gateway.api.openapi import OPENAPI_PATH, openapi_handler
from gateway.keys import API_AUTH_FAILURES, CONFIG_CHANGES, SETTINGS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
P = r.PREFIX
ORG = P + "/organizations/{org}"
PROJECT = P + "/projects/{org}/{project}"
TEAM = P + "/teams/{org}/{team}"

ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", P + "/", r.api_index),
    ("GET", P + "/internal/health/", r.internal_health),
    ("GET", P + "/organizations/", r.organizations),
    ("POST", P + "/organizations/", w.create_organization),
    ("GET", ORG + "/", r.organization),
    ("PUT", ORG + "/", w.update_organization),
    ("GET", ORG + "/projects/", r.org_projects),
    ("GET", ORG + "/teams/", r.org_teams),
    ("POST", ORG + "/teams/", w.create_team),
    ("GET", ORG + "/members/", r.org_members),
    ("POST", ORG + "/members/", w.add_member),
    ("PUT", ORG + "/members/{member_id}/", w.update_member),
    ("DELETE", ORG + "/members/{member_id}/", w.remove_member),
    ("GET", TEAM + "/", r.team),
    ("DELETE", TEAM + "/", w.delete_team),
    ("POST", TEAM + "/projects/", w.create_project),
    ("GET", PROJECT + "/", r.project),
    ("PUT", PROJECT + "/", w.update_project),
    ("DELETE", PROJECT + "/", w.delete_project),
    ("POST", PROJECT + "/teams/{team}/", w.add_project_team),
    ("DELETE", PROJECT + "/teams/{team}/", w.remove_project_team),
    ("GET", PROJECT + "/keys/", r.project_keys),
    ("POST", PROJECT + "/keys/", w.create_key),
    ("GET", PROJECT + "/keys/{key_id}/", r.project_key),
    ("PUT", PROJECT + "/keys/{key_id}/", w.update_key),
    ("DELETE", PROJECT + "/keys/{key_id}/", w.delete_key),
    # relayctl's own
    ("GET", PROJECT + "/keys/{key_id}/config/", r.key_config),
    ("GET", PROJECT + "/keys/{key_id}/history/", r.key_history),
    ("GET", PROJECT + "/relayctl/options/", o.project_options),
    ("GET", P + "/relayctl/relays/", r.relays),
    ("POST", P + "/relayctl/relays/", w.allow_relay),
    ("GET", P + "/relayctl/relays/{public_key}/", r.relay),
    ("DELETE", P + "/relayctl/relays/{public_key}/", w.deny_relay),
    ("GET", P + "/relayctl/ingest/", i.ingest_status),
    ("GET", PROJECT + "/relayctl/ingest/", i.project_ingest_status),
    ("GET", PROJECT + "/events/", i.project_events),
    ("GET", PROJECT + "/events/{event_id}/", i.project_event),
    ("GET", P + "/relayctl/config-changes/", c.config_changes),
]


def add_management_routes(app: web.Application) -> None:
    app[API_AUTH_FAILURES] = failure_limiter(app[SETTINGS])
    app[CONFIG_CHANGES] = c.ConfigChanges()
    app.on_shutdown.append(c.close_streams)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_get(OPENAPI_PATH, openapi_handler(ROUTES))
