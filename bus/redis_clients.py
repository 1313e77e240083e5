"""Every Redis client relayctl makes, on one Redis or on a Redis Cluster (`--redis-cluster`).

A URL names one server (`redis://user:password@host:port/0`); with `cluster` it names one
or more start nodes of a Redis Cluster, comma-separated (`redis://u:p@a:7000,redis://b:7001`,
the credentials of the first used on every node - a cluster has the same users on each),
and the client finds the others itself (redis-py's `RedisCluster`). A cluster has one
database, so a URL naming another index is refused.

What differs on a cluster is in the three functions here, so the callers do not ask:
- `get_many` (the gateway's hot path): on one server one MGET; on a cluster the keys are
  grouped by node and each node reads its share in one Lua script (a GET per key: no
  MGET may span slots), the nodes asked in parallel - one round trip per node touched;
- `write_batch` (the materializing actors): on one server a MULTI/EXEC (a reader sees the
  whole batch or none of it); on a cluster, where no transaction or MSET may span slots,
  the batch is split per node and each part is one Lua script on its node, so each node
  swaps its share at once (the keys go as arguments: a script may touch any local key);
- `server_id`: the run_id of every primary, so a restarted or failed-over node - empty, or
  an older copy - is noticed as a restart (actors/redis_watch.py writes everything again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, LoadBalancingStrategy, RedisCluster

__all__ = ["RedisUrlError", "async_client", "check_url", "follow_topology", "get_many", "get_one", "is_cluster",
           "server_id", "sync_client", "write_batch"]


class RedisUrlError(ValueError):
    """A Redis URL relayctl cannot use (a cluster URL naming a database, say)."""


def _start_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The (host, port) of each comma-separated URL and the first one's credentials."""
    nodes: list[tuple[str, int]] = []
    auth: dict[str, Any] = {}
    for one in (part.strip() for part in url.split(",")):
        if not one:
            continue
        parts = urlsplit(one)
        if parts.scheme not in ("redis", "rediss"):
            raise RedisUrlError(f"not a redis:// URL: {parts.scheme}://…")
        database = parts.path.strip("/")
        if database not in ("", "0"):
            raise RedisUrlError(f"a Redis Cluster has no database {database}: drop /{database} from the URL")
        nodes.append((parts.hostname or "127.0.0.1", parts.port or 6379))
        if not auth:
            auth = {"username": unquote(parts.username) if parts.username else None,
                    "password": unquote(parts.password) if parts.password else None,
                    "ssl": parts.scheme == "rediss"}
    if not nodes:
        raise RedisUrlError("no Redis Cluster start node in the URL")
    return nodes, auth


def check_url(url: str, *, cluster: bool = False) -> None:
    """Raises RedisUrlError for a URL `sync_client`/`async_client` would refuse."""
    if cluster:
        _start_nodes(url)
    elif "," in url:
        raise RedisUrlError("several Redis URLs need --redis-cluster (RELAYCTL_REDIS_CLUSTER=1)")


def sync_client(url: str, *, cluster: bool = False, timeout: float = 2.0) -> Any:
    """A blocking client (the actors' threads)."""
    if not cluster:
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=1)
    nodes, auth = _start_nodes(url)
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], socket_timeout=timeout,
                        socket_connect_timeout=1, **auth)


def async_client(url: str, *, cluster: bool = False, timeout: float = 2.0, replicas: bool = False,
                 deadline: bool = False) -> Any:
    """An asyncio client; `replicas`: on a cluster, read from replicas where there are any
    (`--redis-read-url`). It connects on first use.

    `deadline`: `timeout` bounds each whole `get_many`/`get_one` call instead of each socket
    read and write (redis-py's per-write timeout starts a task for every command: about 5%
    of the gateway's hot path); such a client is for those two functions only. A call cut
    off drops its connection (redis-py disconnects on cancel), so no late answer is read
    by the next one."""
    socket_timeout = None if deadline else timeout
    client: Any
    if not cluster:
        client = aioredis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=1)
    else:
        nodes, auth = _start_nodes(url)
        client = AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in nodes], socket_timeout=socket_timeout,
            socket_connect_timeout=1, **auth,
            load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN_REPLICAS if replicas else None)
    client.relayctl_deadline = timeout if deadline else None
    if deadline and not cluster:
        pool = client.connection_pool  # its connections take a command packed by `get_many`
        pool.connection_class = _prepacking(pool.connection_class)
    return client


class _Packed(bytes):
    """A whole RESP command, packed by its caller (`_pack_mget`)."""


_PREPACKING: dict[type, type] = {}


def _prepacking(base: type) -> type:
    """`base` (TCP, TLS or Unix socket connection) sending a `_Packed` command as it is:
    redis-py packs each argument separately, about 70 us for a 100-key MGET - a tenth of
    the gateway's hot path - where the names joined into one string take a few."""
    made = _PREPACKING.get(base)
    if made is None:
        def pack_command(self: Any, *args: Any) -> Any:
            if len(args) == 2 and type(args[1]) is _Packed:
                return [args[1]]
            return base.pack_command(self, *args)  # type: ignore[attr-defined]

        made = _PREPACKING[base] = type(f"Prepacking{base.__name__}", (base,), {"pack_command": pack_command})
    return made


def _pack_mget(names: Sequence[str]) -> _Packed:
    """MGET of `names` in RESP: `*<n+1>`, then `$<length>` and each argument. A relay's
    names share one length (the prefix and a 32-digit key; the global config's name may
    follow), so the lengths are written once per run instead of once per name."""
    head = f"*{len(names) + 1}\r\n$4\r\nMGET\r\n"
    *run, last = names
    if run and len(set(map(len, run))) == 1:  # every name but perhaps the last of one length
        size = len(run[0])
        text = head + f"${size}\r\n" + f"\r\n${size}\r\n".join(run) + f"\r\n${len(last)}\r\n{last}\r\n"
    else:
        text = head + "".join([f"${len(n)}\r\n{n}\r\n" for n in names])
    if text.isascii():  # then every length counted in characters is one in bytes
        return _Packed(text.encode())
    encoded = [n.encode() for n in names]
    return _Packed(f"*{len(names) + 1}\r\n$4\r\nMGET\r\n".encode()
                   + b"".join(b"$%d\r\n%s\r\n" % (len(n), n) for n in encoded))


TOPOLOGY_EVERY = 30.0  # seconds between two reads of a cluster's slot table by a reading client


async def follow_topology(client: Any, every: float = TOPOLOGY_EVERY) -> None:
    """Read a cluster's slot table again every `every` seconds, for ever (a task): redis-py
    reads it at the first command and then only after MOVED or a connection error, so a
    replica added later would never be read from, and a replica that was removed is asked
    until it fails. A failed read keeps the table it had. Nothing to do on one server."""
    if not isinstance(client, AsyncRedisCluster):
        return
    while True:
        await asyncio.sleep(every)
        try:
            await client.nodes_manager.initialize()
        except (redis.RedisError, OSError):
            pass  # the next command, or the next round, tries again


def is_cluster(client: Any) -> bool:
    return isinstance(client, (RedisCluster, AsyncRedisCluster))


async def get_many(client: Any, names: Sequence[str]) -> list[bytes | None]:
    """The values of `names`, in order (None: missing). Raises redis.RedisError (a
    redis.TimeoutError past a `deadline` client's timeout)."""
    deadline = getattr(client, "relayctl_deadline", None)
    if deadline is None:
        return await _get_many_again(client, names)
    try:
        async with asyncio.timeout(deadline):
            return await _get_many_again(client, names)
    except TimeoutError as exc:
        raise redis.TimeoutError(f"no answer from Redis within {deadline:g} s") from exc


async def get_one(client: Any, name: str) -> bytes | None:
    """The value of `name` (None: missing), as `get_many` reads it."""
    return (await get_many(client, [name]))[0]


async def _get_many_again(client: Any, names: Sequence[str]) -> list[bytes | None]:
    try:
        return await _get_many(client, names)
    except redis.ConnectionError:
        # A pooled connection the server had closed (Redis restarted, a client killed):
        # redis-py drops it; once more, on a new one (a Redis that is down fails again).
        return await _get_many(client, names)


async def _get_many(client: Any, names: Sequence[str]) -> list[bytes | None]:
    if isinstance(client, AsyncRedisCluster):
        return await _get_many_cluster(client, names)
    if not names:
        return []
    if client.connection_pool.connection_class in _PREPACKING.values():
        return list(await client.execute_command("MGET", _pack_mget(names)))
    return list(await client.mget(list(names)))


# One script per node reads that node's keys, whatever their slots (the keys go as
# arguments, each GET checked by the node to be local - a replica with READONLY serves its
# primary's slots). A relay's 100 keys fall in about 100 slots: 100 MGETs cost the client
# far more than three scripts.
_READ = "local r = {} for i, k in ipairs(ARGV) do r[i] = redis.call('GET', k) end return r"


async def _get_many_cluster(client: AsyncRedisCluster, names: Sequence[str]) -> list[bytes | None]:
    await client.initialize()  # no-op once connected
    by_node: dict[str, tuple[Any, list[str]]] = {}
    for name in dict.fromkeys(names):
        node = client.nodes_manager.get_node_from_slot(client.keyslot(name),
                                                       load_balancing_strategy=client.load_balancing_strategy)
        by_node.setdefault(node.name, (node, []))[1].append(name)
    try:
        answers = await asyncio.gather(*(client.execute_command("EVAL", _READ, 0, *keys, target_nodes=node)
                                         for node, keys in by_node.values()))
    except redis.ResponseError as exc:
        if "non local key" not in str(exc):
            raise
        return await _get_many_by_slot(client, names)  # slots moved: MGETs follow MOVED and refresh the map
    values: dict[str, bytes | None] = {}
    for (_node, keys), answer in zip(by_node.values(), answers, strict=True):
        values.update(zip(keys, answer, strict=True))
    return [values[name] for name in names]


async def _get_many_by_slot(client: AsyncRedisCluster, names: Sequence[str]) -> list[bytes | None]:
    """One MGET per slot, pipelined per node (redis-py follows MOVED and ASK)."""
    by_slot: dict[int, list[str]] = {}
    for name in names:
        by_slot.setdefault(client.keyslot(name), []).append(name)
    pipe = client.pipeline()
    for slot, keys in by_slot.items():
        node = client.nodes_manager.get_node_from_slot(slot, load_balancing_strategy=client.load_balancing_strategy)
        pipe.execute_command("MGET", *keys, target_nodes=[node])
    values: dict[str, bytes | None] = {}
    for keys, answer in zip(by_slot.values(), await pipe.execute(), strict=True):
        values.update(zip(keys, answer, strict=True))
    return [values[name] for name in names]


# KEYS are undeclared (all in ARGV), so one script may write keys of several slots on its
# node. ARGV: ttl ("" for none), the number of pairs, then name/value pairs, then deletions.
_SWAP = """
local ttl = tonumber(ARGV[1])
local pairs = tonumber(ARGV[2])
for i = 0, pairs - 1 do
  local name, value = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  if ttl then redis.call('SET', name, value, 'EX', ttl) else redis.call('SET', name, value) end
end
for i = 3 + 2 * pairs, #ARGV do redis.call('DEL', ARGV[i]) end
return pairs
"""


def write_batch(client: Any, values: Mapping[str, bytes], delete: Iterable[str] = (), ttl: int | None = None) -> None:
    """Set `values` (for `ttl` seconds if given) and delete `delete`: at once on one server,
    at once per node on a cluster. Raises redis.RedisError."""
    deleted = list(delete)
    if isinstance(client, RedisCluster):
        _write_cluster(client, values, deleted, ttl)
        return
    if not deleted and ttl is None:
        if values:
            client.mset(dict(values))
        return
    pipe = client.pipeline(transaction=True)
    if ttl is None:
        if values:
            pipe.mset(dict(values))
    else:
        for name, value in values.items():
            pipe.set(name, value, ex=ttl)
    if deleted:
        pipe.delete(*deleted)
    pipe.execute()


def _write_cluster(client: RedisCluster, values: Mapping[str, bytes], deleted: list[str], ttl: int | None) -> None:
    by_node: dict[str, tuple[Any, list[Any], list[str]]] = {}

    def node_of(name: str) -> tuple[Any, list[Any], list[str]]:
        node = client.nodes_manager.get_node_from_slot(client.keyslot(name))
        return by_node.setdefault(node.name, (node, [], []))

    for name, value in values.items():
        node_of(name)[1].extend((name, value))
    for name in deleted:
        node_of(name)[2].append(name)
    for node, pairs, gone in by_node.values():
        client.execute_command("EVAL", _SWAP, 0, "" if ttl is None else str(ttl), str(len(pairs) // 2),
                               *pairs, *gone, target_nodes=node)


def server_id(client: Any) -> str:
    """Which server instance(s) hold the data: one run_id, or every primary's on a cluster."""
    if isinstance(client, RedisCluster):
        infos = client.info("server", target_nodes=RedisCluster.PRIMARIES)
        if not isinstance(infos, dict) or "run_id" in infos:  # one primary: redis-py answers it alone
            return str(infos.get("run_id", "")) if isinstance(infos, dict) else ""
        return ",".join(f"{name}={info.get('run_id', '')}" for name, info in sorted(infos.items()))
    return str(client.info("server").get("run_id", ""))
