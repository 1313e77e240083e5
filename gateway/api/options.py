"""A project's options with where each value comes from (relayctl's own, for the console).

`GET /api/0/projects/{org}/{project}/relayctl/options/` (`project:read`): for each project
option of the catalogue its type and default, the project template's value, the org's (for
options an org sets too) and the project's own, and the value its config is built from with
its source (domain/queries.py `option_sources`). Values of options outside the public ones
(PII rules, quotas, sampling, the forwarding DSN) only for a caller with `project:write` in
the org - who may change them anyway; others see whether each is set, not its value.
Setting and clearing stay Sentry's `PUT /api/0/projects/{org}/{project}/` `{"options": {...}}`
(null clears the project's own value).
"""

from __future__ import annotations

from aiohttp import web

from domain.access import org_scopes
from gateway.api.routes import _slug, org_access, read
from gateway.errors import json_response


async def project_options(request: web.Request) -> web.Response:
    """A project's options, each with where its value comes from (relayctl's own).

    For each option its type, default, the template's, the org's and the project's own
    value, and the value the config is built from with its source (`project:read`; values of
    options outside the public ones with `project:write`)."""
    who, org = await org_access(request, "project:read")
    private = "project:write" in (org_scopes(who, org) or frozenset())
    payload = {"org": org, "project": _slug(request, "project"), "private": private}
    return json_response(await read(request, "api.project_options", payload))
