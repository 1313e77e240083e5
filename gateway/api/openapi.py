"""The OpenAPI 3 document of the management API, served at `/api/0/openapi.json`.

Made from the route table (gateway/api/table.py) and each handler's docstring, so a route
cannot exist without being described; the schemas name the fields Sentry's tools read.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from gateway.errors import json_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAPI_PATH = "/api/0/openapi.json"

_STR, _BOOL, _INT = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "properties": {"detail": _STR}},
    "FieldErrors": {"type": "object", "additionalProperties": {"type": "array", "items": _STR}},
    "Organization": {"type": "object",
                     "required": ["id", "slug", "name", "dateCreated", "isEarlyAdopter", "require2FA"],
                     "properties": {"id": _STR, "slug": _STR, "name": _STR,
                                    "dateCreated": {**_STR, "format": "date-time"},
                                    "isEarlyAdopter": _BOOL, "require2FA": _BOOL,
                                    "features": {"type": "array", "items": _STR}}},
    "Team": {"type": "object", "properties": {"id": _STR, "slug": _STR, "name": _STR}},
    "Project": {"type": "object", "required": ["id", "slug", "name"],
                "properties": {"id": _STR, "slug": _STR, "name": _STR, "platform": {**_STR, "nullable": True},
                               "dateCreated": {**_STR, "format": "date-time"},
                               "options": {"type": "object"}, "allowedDomains": {"type": "array", "items": _STR},
                               "organization": {"$ref": "#/components/schemas/Team"},
                               "teams": {"type": "array", "items": {"$ref": "#/components/schemas/Team"}}}},
    "RateLimit": {"type": "object", "nullable": True, "properties": {"window": _INT, "count": _INT}},
    "ProjectKey": {"type": "object", "required": ["id", "name", "public", "projectId", "isActive", "dsn"],
                   "properties": {"id": _STR, "name": _STR, "label": _STR, "public": _STR, "secret": _STR,
                                  "projectId": _INT, "isActive": _BOOL,
                                  "rateLimit": {"$ref": "#/components/schemas/RateLimit"},
                                  "dsn": {"type": "object", "properties": {k: _STR for k in (
                                      "public", "secret", "csp", "security", "minidump", "cdn")}},
                                  "dateCreated": {**_STR, "format": "date-time"}}},
    "Member": {"type": "object", "properties": {"id": _STR, "email": _STR, "role": _STR}},
    "ProjectConfig": {"type": "object", "description": "The project config Relay fetches for the key"},
    "HistoryEvent": {"type": "object", "properties": {"sequence": _INT, "type": _STR, "actor": _STR,
                                                      "dateCreated": {**_STR, "format": "date-time"},
                                                      "payload": {"type": "object"}}},
    "Relay": {"type": "object", "properties": {"publicKey": _STR, "relayId": _STR, "internal": _BOOL,
                                               "banned": _BOOL, "version": _STR, "firstSeen": _STR,
                                               "lastSeen": _STR}},
    "IngestStatus": {"type": "object", "description": "Counts only: the whole stream's (stream, consumers, "
                                                      "backlog and deadLetters per project) or one project's "
                                                      "(backlog, deadLetters, outcomes)",
                     "properties": {"stream": {"type": "object"}, "consumers": {"type": "object"},
                                    "backlog": {}, "deadLetters": {"type": "object"},
                                    "outcomes": {"type": "object"}}},
    "Event": {"type": "object", "required": ["id", "eventID", "title", "dateCreated"],
              "properties": {"id": _STR, "eventID": _STR, "projectID": _STR, "title": _STR,
                             "message": {**_STR, "nullable": True},
                             "dateCreated": {**_STR, "format": "date-time"},
                             "dateReceived": {**_STR, "format": "date-time"},
                             "platform": {**_STR, "nullable": True},
                             "event": {"type": "object", "description": "The stored event, scrubbed (details only)"}}},
    "ProjectOptions": {"type": "object", "description": "A project's options, each with where its value comes from",
                       "properties": {"project": _STR, "template": {**_STR, "nullable": True},
                                      "options": {"type": "array",
                                                  "items": {"$ref": "#/components/schemas/OptionSource"}}}},
    "OptionSource": {"type": "object", "required": ["key", "kind", "type", "default", "readable", "source"],
                     "properties": {"key": _STR, "kind": {"type": "string",
                                                          "enum": ["boolean", "toggle", "lines", "text", "json"]},
                                    "type": _STR, "default": {}, "scopes": {"type": "array", "items": _STR},
                                    "readable": {**_BOOL, "description": "false: values not shown (no project:write)"},
                                    "combine": {"type": "string", "nullable": True,
                                                "enum": ["append", "union", "pii", "fallback"]},
                                    "template": {"$ref": "#/components/schemas/OptionLayer"},
                                    "org": {"$ref": "#/components/schemas/OptionLayer"},
                                    "project": {"$ref": "#/components/schemas/OptionLayer"},
                                    "forcedBy": {**_STR, "nullable": True},
                                    "value": {"description": "What the config is built from (when readable)"},
                                    "source": {"type": "string", "enum": ["project", "template", "org", "default",
                                                                          "org+project", "org+template"]}}},
    "OptionLayer": {"type": "object", "nullable": True, "description": "null: no template / not an org option",
                    "properties": {"isSet": _BOOL, "value": {"description": "When set and readable"}}},
    "ConfigChange": {"type": "object", "description": "The data of one `config` server-sent event",
                     "properties": {"publicKey": _STR, "projectId": _INT, "projectSlug": _STR, "orgSlug": _STR,
                                    "revision": _STR, "propagationMs": {**_INT, "nullable": True}}},
}
_RESULT = {"organizations": "Organization", "teams": "Team", "projects": "Project", "keys": "ProjectKey",
           "members": "Member", "config": "ProjectConfig", "history": "HistoryEvent", "relays": "Relay",
           "ingest": "IngestStatus", "events": "Event", "config-changes": "ConfigChange",
           "options": "ProjectOptions"}
_STREAMS = ("config-changes/",)  # server-sent events, each event's data as the schema
_LISTS = ("organizations/", "projects/", "keys/", "teams/", "members/", "history/", "relays/", "events/")


def _schema_for(path: str) -> str | None:
    """The schema a path answers with: named after its last plain segment."""
    segments = [s for s in path.split("/") if s and not s.startswith("{")]
    for segment in reversed(segments):
        if segment in _RESULT:
            return _RESULT[segment]
    return None


def _operation(method: str, path: str, handler: Handler) -> dict[str, Any]:
    doc = (handler.__doc__ or handler.__name__.replace("_", " ")).strip()
    summary = doc.splitlines()[0]
    params = [{"name": name, "in": "path", "required": True, "schema": _STR}
              for name in re.findall(r"{(\w+)}", path)]
    schema = _schema_for(path)
    lists = method == "GET" and path.endswith(_LISTS) \
        and not re.search(r"/teams/{org}/{team}/$", path)
    content: dict[str, Any] = {}
    if schema:
        ref = {"$ref": f"#/components/schemas/{schema}"}
        media = "text/event-stream" if path.endswith(_STREAMS) else "application/json"
        content = {media: {"schema": {"type": "array", "items": ref} if lists else ref}}
    if lists:
        params.append({"name": "cursor", "in": "query", "required": False, "schema": _STR})
        params.append({"name": "per_page", "in": "query", "required": False,
                       "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 100}})
    ok = {"201": "Created"} if method == "POST" else {"204": "Deleted"} if method == "DELETE" else {"200": "OK"}
    responses: dict[str, Any] = {
        code: {"description": text, **({"content": content} if content and code != "204" else {})}
        for code, text in ok.items()}
    if lists:
        responses["200"]["headers"] = {"Link": {"description": "Sentry's pagination links with cursors",
                                                "schema": _STR}}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    responses.update({"401": {"description": "No token or an unknown one", "content": error},
                      "403": {"description": "A visible org without the scope, or what spans orgs without "
                                             "being a superuser or relayctl.admin", "content": error},
                      "404": {"description": "Does not exist or is not visible to the token", "content": error}})
    if method in ("POST", "PUT"):
        responses["400"] = {"description": "Invalid input", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/FieldErrors"}}}}
        responses["409"] = {"description": "A slug in use", "content": error}
    operation: dict[str, Any] = {"summary": summary, "operationId": f"{handler.__name__}", "parameters": params,
                                 "responses": responses, "security": [{"bearer": []}]}
    if method in ("POST", "PUT"):
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
    return operation


def document(routes: Iterable[tuple[str, str, Handler]]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, handler in routes:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, handler)
    paths[OPENAPI_PATH] = {"get": {"summary": "This document", "operationId": "openapi", "parameters": [],
                                   "responses": {"200": {"description": "OpenAPI 3 document"}}, "security": []}}
    return {"openapi": "3.0.3",
            "info": {"title": "relayctl management API", "version": "0",
                     "description": "Sentry's API for organizations, teams, projects and keys, as sentry-cli and "
                                    "the Terraform provider for Sentry call it. Bearer tokens from "
                                    "`relayctl token create`."},
            "paths": paths,
            "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}


def openapi_handler(routes: list[tuple[str, str, Handler]]) -> Handler:
    doc = document(routes)

    async def openapi(request: web.Request) -> web.Response:
        return json_response(doc)
    return openapi
