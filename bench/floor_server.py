"""The floor for the v3 hot path: what any upstream must do at least, and nothing more.

An aiohttp handler that parses the JSON body, does one Redis MGET of the requested
`relayconfig:<key>` values, decompresses them and splices the JSON documents into the
response. No signature check, no access check, no revisions. `bench_relay.py` runs it
beside the real gateway on the same Redis and reports the gateway's throughput as a
fraction of this one's.

    python -m bench.floor_server --port 3100 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import json

import redis.asyncio as aioredis
from aiohttp import web

from bus.config_cache import cache_key, decode_entry


def make_app(redis_url: str) -> web.Application:
    app = web.Application()
    client = aioredis.Redis.from_url(redis_url)

    async def configs(request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        keys = data["publicKeys"]
        values = await client.mget([cache_key(k) for k in keys])
        parts = [b'"' + k.encode() + b'":' + decode_entry(v).body for k, v in zip(keys, values) if v is not None]
        return web.Response(body=b'{"configs":{' + b",".join(parts) + b'},"pending":[]}',
                            content_type="application/json")

    app.router.add_post("/api/0/relays/projectconfigs/", configs)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.redis_url), host="127.0.0.1", port=args.port, print=None, access_log=None,
                reuse_port=True)


if __name__ == "__main__":
    main()
