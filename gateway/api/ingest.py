"""The management API's view of the data plane: ingest status and the error events stored.

Reads, so the gateway checks the caller (gateway/api/routes.py `org_access`): a project's
counts and events take `project:read` in its org (an org the caller may not see is 404),
the whole stream's status takes a superuser or `relayctl.admin` (it spans orgs). The
forwarder answers these on its own narrow endpoint (`api.ingest_status`, `api.events`,
`api.event` on `rc.ingest.api`): counts without any dead letter's contents, and only the
events of the one project a request names - never `events.show`, which finds any event
by its id alone.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.auth import principal
from gateway.api.routes import NOT_FOUND, _slug, listed, org_access, paging, read, relay_admin
from gateway.errors import HTTPFailure, json_response


async def ingest_status(request: web.Request) -> web.Response:
    """The ingest stream as `relayctl ingest status` counts it: size, oldest envelope, each
    consumer's backlog, the forward backlog and dead letters per project (superusers and
    `relayctl.admin`; counts only)."""
    who = await principal(request)
    assert who is not None
    relay_admin(who)
    return json_response(await read(request, "api.ingest_status", {}))


async def project_ingest_status(request: web.Request) -> web.Response:
    """One project's share of the ingest status: its forward backlog, its dead letters and
    its outcome counts for the last hour and 24 hours (`project:read`)."""
    _, org = await org_access(request, "project:read")
    return json_response(await read(request, "api.ingest_status", {"org": org, "project": _slug(request, "project")}))


async def project_events(request: web.Request) -> web.Response:
    """The project's newest error events, newest first: id, title, dateCreated (`project:read`)."""
    _, org = await org_access(request, "project:read")
    answer = await read(request, "api.events", {"org": org, "project": _slug(request, "project"), **paging(request)})
    return listed(request, answer)


async def project_event(request: web.Request) -> web.Response:
    """One stored error event of the project, scrubbed as stored (`project:read`; 404 for
    an event of another project)."""
    _, org = await org_access(request, "project:read")
    event_id = request.match_info["event_id"].replace("-", "").lower()
    if len(event_id) != 32 or any(c not in "0123456789abcdef" for c in event_id):
        raise HTTPFailure(404, NOT_FOUND)
    payload = {"org": org, "project": _slug(request, "project"), "event_id": event_id}
    return json_response(await read(request, "api.event", payload))
