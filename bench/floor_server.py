"""The floors for the v3 hot path: what any upstream must do at least, and nothing more.

Two aiohttp handlers on the same Redis values as the gateway (`relayconfig:<key>`):

- `decompress` (the first floor): parse the JSON body, one Redis MGET of the requested
  keys, decompress every value's document and splice the documents into the response.
- `minimal` (issue 17's floor): parse the body, one MGET, concatenate the cached JSON.
  The documents are stored compressed, so this floor keeps each value's JSON once it has
  seen that value (a dict keyed by the raw Redis bytes): per request it does one dict
  lookup per key and a join - the response bytes are the gateway's.
- `packed`: the minimal floor reading through the gateway's own cache read
  (bus/redis_clients.get_many on a `deadline` client: the MGET packed in one string, one
  timeout per read) instead of redis-py's `mget`, so the gateway's own cheaper MGET does
  not hide what else it spends.

Neither checks a signature, access, MAC or revision. `bench_relay.py` runs both beside the
real gateway on the same Redis and reports the gateway's throughput as a fraction of each.

    python -m bench.floor_server --port 3100 --redis-url redis://127.0.0.1:6379/0 [--kind minimal]
"""

from __future__ import annotations

import argparse
import json

import redis.asyncio as aioredis
from aiohttp import web

from bus import redis_clients
from bus.config_cache import cache_key, decode_entry


def make_app(redis_url: str, kind: str = "decompress") -> web.Application:
    app = web.Application()
    client = aioredis.Redis.from_url(redis_url)
    reader = redis_clients.async_client(redis_url, deadline=True)
    known: dict[bytes, bytes] = {}

    async def configs(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        keys = data["publicKeys"]
        values: list[bytes | None] = await client.mget([cache_key(k) for k in keys])  # type: ignore[assignment]
        parts = [b'"' + k.encode() + b'":' + decode_entry(v).body for k, v in zip(keys, values) if v is not None]
        return web.Response(body=b'{"configs":{' + b",".join(parts) + b'},"pending":[]}',
                            content_type="application/json")

    async def minimal(request: web.Request) -> web.Response:
        keys = json.loads(await request.read())["publicKeys"]
        names = ["relayconfig:" + k for k in keys]
        values: list[bytes | None]
        if kind == "packed":
            values = await redis_clients.get_many(reader, names)
        else:
            values = await client.mget(names)  # type: ignore[assignment]
        parts = []
        for k, v in zip(keys, values):
            if v is None:
                continue
            body = known.get(v)
            if body is None:
                body = known[v] = decode_entry(v).body
            parts.append(b'"%s":%s' % (k.encode(), body))
        return web.Response(body=b'{"configs":{' + b",".join(parts) + b'},"pending":[]}',
                            content_type="application/json")

    app.router.add_post("/api/0/relays/projectconfigs/", configs if kind == "decompress" else minimal)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--kind", choices=("decompress", "minimal", "packed"), default="decompress")
    args = parser.parse_args()
    web.run_app(make_app(args.redis_url, args.kind), host="127.0.0.1", port=args.port, print=None,
                access_log=None, reuse_port=True)


if __name__ == "__main__":
    main()
