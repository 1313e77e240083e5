"""What a relay looks up besides configs: other relays' public keys, keys' project ids.

`POST /api/0/relays/publickeys/` (signed): the public key of each relay id asked, and
whether it is internal - told to internal relays only, as Sentry does.
`POST /api/0/relays/projectids/` (signed): the project id of each public key asked
(`keys.lookup`); a key nobody created is left out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.ask import ask_for_relay
from gateway.errors import HTTPFailure, from_error, json_response, parse_json
from gateway.relay_auth import UUID_RE, RelayAuth
from messages.commands import PUBLIC_KEY_RE
from messages.errors import RelayctlError


class RelayLookups:
    def __init__(self, app: web.Application, auth: RelayAuth) -> None:
        self.app = app
        self.auth = auth

    async def public_keys(self, request: web.Request) -> web.Response:
        body = await request.read()
        caller = await self.auth.authenticate(request, body)
        data = parse_json(body)
        ids = data.get("relay_ids") if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise HTTPFailure(400, "relay_ids must be a list of relay ids")
        if len(ids) > 1000:
            raise HTTPFailure(400, "at most 1000 relay_ids per request")
        infos = await asyncio.gather(*(self.auth.relay_info(i) if UUID_RE.fullmatch(i) else _none() for i in ids))
        keys: dict[str, Any] = {}
        relays: dict[str, Any] = {}
        for relay_id, info in zip(ids, infos):
            keys[relay_id] = info["publicKey"] if info else None
            # As Sentry: whether a relay is internal is told to internal relays only.
            relays[relay_id] = ({"publicKey": info["publicKey"],
                                 "internal": caller.internal and bool(info.get("internal"))} if info else None)
        return json_response({"public_keys": keys, "relays": relays})

    async def project_ids(self, request: web.Request) -> web.Response:
        body = await request.read()
        await self.auth.authenticate(request, body)
        data = parse_json(body)
        keys = data.get("publicKeys") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            raise HTTPFailure(400, "publicKeys must be a list of project keys")
        valid = [k for k in keys if isinstance(k, str) and PUBLIC_KEY_RE.fullmatch(k)]
        try:
            found = await ask_for_relay(self.app, "keys.lookup", {"public_keys": valid}) if valid else {}
        except RelayctlError as exc:
            return from_error(exc)
        return json_response({"projectIds": {k: v["projectId"] for k, v in found.items() if v}})


async def _none() -> None:
    return None
