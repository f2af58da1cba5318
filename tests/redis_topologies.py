"""Real multi-process Redis topologies for the test suite: a 3-master Cluster and Sentinel.

Both are built from the single-server helpers in ``tests.redis_servers`` (free loopback ports,
no persistence, one temporary directory per process) so the layer is tested against the real
routing (MOVED, per-node script caches) and the real failover machinery rather than a mock.
Every wait is bounded: a topology that does not come up raises ``RuntimeError`` with the
reason, and whatever had started is killed before the error propagates.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from idempotent_middleware import RedisPersistenceLayer
from tests.redis_servers import RedisProcess, free_port, redis_binary, start_redis, wait_for_port

SERVICE_NAME = "mymaster"

#: Diskless sync without the default 5 s delay: a replica (or a demoted master) is in sync in
#: milliseconds instead of seconds. Given to every data node of the Sentinel topology.
_FAST_REPLICATION = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; raise ``RuntimeError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (OSError, subprocess.SubprocessError):
            pass  # the process is still starting: try again until the deadline
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def info_field(process: RedisProcess, section: str, name: str) -> str | None:
    """One ``name:value`` field of ``INFO section`` (via redis-cli), or None when absent."""
    for line in process.cli("INFO", section).splitlines():
        key, _, value = line.strip().partition(":")
        if key == name:
            return value
    return None


def replica_online(master: RedisProcess, replica_port: int) -> bool:
    """True when ``master`` lists the replica on ``replica_port`` as ``state=online``.

    The replica's own ``master_link_status:up`` comes earlier: after a diskless sync the master
    counts the replica (for WAIT, for instance) only once its first REPLCONF ACK arrived, up to
    a second later. Tests that WAIT for the replica need this state, not the other.
    """
    for line in master.cli("INFO", "replication").splitlines():
        name, _, fields = line.strip().partition(":")
        if name.startswith("slave") and f"port={replica_port}," in fields:
            return "state=online" in fields
    return False


def _discard(process: RedisProcess) -> None:
    """Kill one process and remove its temporary directory (teardown must not leak either)."""
    process.stop()
    shutil.rmtree(process.directory, ignore_errors=True)


# --- Cluster ---------------------------------------------------------------------------------
@dataclass
class ClusterTopology:
    """Three masters (no replicas) covering all 16384 slots."""

    nodes: list[RedisProcess]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    def flushall(self) -> None:
        """FLUSHALL on every master: keys of one test live on any of them."""
        for node in self.nodes:
            node.cli("FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            _discard(node)


def start_cluster(masters: int = 3, timeout: float = 30.0) -> ClusterTopology:
    """Start ``masters`` cluster-enabled servers, join them, wait for ``cluster_state:ok``.

    Each node gets an explicit ``--cluster-port`` (Redis >= 7.0) from ``free_port`` because the
    default bus port, data port + 10000, can be taken or exceed 65535 for ephemeral ports.
    """
    if shutil.which("redis-cli") is None:
        raise FileNotFoundError("redis-cli is not installed")
    nodes: list[RedisProcess] = []
    try:
        for _ in range(masters):
            nodes.append(
                start_redis(
                    (
                        "--cluster-enabled",
                        "yes",
                        # Relative to --dir, which start_redis sets to the node's own tmpdir.
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-port",
                        str(free_port()),
                        "--cluster-node-timeout",
                        "2000",
                    )
                )
            )
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        for node in nodes:
            wait_until(
                functools.partial(cluster_is_ok, node), timeout, f"cluster_state:ok on {node.port}"
            )
    except BaseException:
        for node in nodes:
            _discard(node)
        raise
    return ClusterTopology(nodes)


def cluster_is_ok(node: RedisProcess) -> bool:
    """``cluster_state:ok`` in ``CLUSTER INFO`` (not an INFO section, so parsed separately)."""
    return "cluster_state:ok" in node.cli("CLUSTER", "INFO").splitlines()


# --- Sentinel --------------------------------------------------------------------------------
@dataclass
class SentinelTopology:
    """One master, one replica, one Sentinel monitoring them as ``mymaster`` (quorum 1).

    ``nodes`` keeps both data servers; which one is the master changes after a failover, so
    ask :meth:`master` rather than remembering the first one.
    """

    nodes: list[RedisProcess]
    sentinel: RedisProcess
    service_name: str = SERVICE_NAME
    _by_port: dict[int, RedisProcess] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_port = {node.port: node for node in self.nodes}

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.sentinel.port)]

    def master_port(self) -> int:
        """The master's port as the Sentinel reports it right now."""
        reply = self.sentinel.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
        return int(reply.splitlines()[-1])

    def master(self) -> RedisProcess:
        return self._by_port[self.master_port()]

    def replica(self) -> RedisProcess:
        port = self.master_port()
        return next(node for node in self.nodes if node.port != port)

    def flushall(self) -> None:
        """FLUSHALL on the master and wait until the replica applied it (bounded)."""
        master = self.master()
        master.cli("FLUSHALL")
        master.cli("WAIT", "1", "2000")

    def wait_replica_in_sync(self, timeout: float = 30.0) -> None:
        """Wait until the non-master node replicates from the master and is counted by WAIT.

        After a failover Sentinel reconfigures the old master as a replica; this is the point
        where the topology is whole again.
        """
        wait_until(
            lambda: replica_online(self.master(), self.replica().port),
            timeout,
            "the replica to be in sync with the master",
        )

    def stop(self) -> None:
        _discard(self.sentinel)
        for node in self.nodes:
            _discard(node)


def _start_sentinel_process(master_port: int, timeout: float) -> RedisProcess:
    binary = redis_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    port = free_port()
    directory = tempfile.mkdtemp(prefix="idem-sentinel-")
    config = os.path.join(directory, "sentinel.conf")  # Sentinel rewrites it: must be writable
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f"dir {directory}\n"
            f"logfile {os.path.join(directory, 'sentinel.log')}\n"
            f"sentinel monitor {SERVICE_NAME} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE_NAME} 1000\n"
            f"sentinel failover-timeout {SERVICE_NAME} 5000\n"
            f"sentinel parallel-syncs {SERVICE_NAME} 1\n"
        )
    process = subprocess.Popen([binary, config, "--sentinel"], stdout=subprocess.DEVNULL)
    sentinel = RedisProcess(port, process, directory)
    try:
        wait_for_port(port, timeout)
    except RuntimeError:
        _discard(sentinel)
        raise
    return sentinel


def start_sentinel(timeout: float = 30.0) -> SentinelTopology:
    """Start master, replica and Sentinel; return once the Sentinel knows both data nodes.

    Order matters: the replica is in sync before the Sentinel starts, so the Sentinel's first
    ``INFO`` of the master already lists it (otherwise discovery waits for the next INFO
    period). ``SENTINEL DEBUG`` then shortens the INFO and publish periods (10 s and 2 s by
    default) so that after a failover the old master is demoted (and its clients killed) about
    1 s after the switch instead of about 10 s; it changes timing only, not behaviour.
    """
    processes: list[RedisProcess] = []
    try:
        master = start_redis(_FAST_REPLICATION)
        processes.append(master)
        replica = start_redis((*_FAST_REPLICATION, "--replicaof", "127.0.0.1", str(master.port)))
        processes.append(replica)
        topology_nodes = [master, replica]
        wait_until(
            lambda: replica_online(master, replica.port), timeout, "the replica's initial sync"
        )
        sentinel = _start_sentinel_process(master.port, timeout)
        processes.append(sentinel)
        topology = SentinelTopology(topology_nodes, sentinel)
        wait_until(
            lambda: topology.master_port() == master.port,
            timeout,
            "the Sentinel to report the master",
        )
        wait_until(
            lambda: (
                f"127.0.0.1:{replica.port}" in sentinel.cli("SENTINEL", "REPLICAS", SERVICE_NAME)
            ),
            timeout,
            "the Sentinel to discover the replica",
        )
        sentinel.cli("SENTINEL", "DEBUG", "INFO-PERIOD", "500", "PUBLISH-PERIOD", "250")
    except BaseException:
        for process in processes:
            _discard(process)
        raise
    return topology


# --- Layers on these topologies --------------------------------------------------------------
#: Bounded socket waits for every test client: a dead node must fail a test, not hang it.
CLIENT_TIMEOUTS: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}


def async_cluster_client(topology: ClusterTopology) -> Any:
    """An asyncio ``RedisCluster`` on ``topology`` (it discovers the cluster on first use)."""
    nodes = [AsyncClusterNode(host, port) for host, port in topology.startup_nodes]
    return AsyncRedisCluster(startup_nodes=nodes, **CLIENT_TIMEOUTS)


def cluster_layer(topology: ClusterTopology) -> RedisPersistenceLayer:
    """A layer on ``RedisCluster`` clients, sync and asyncio (one asyncio client per loop)."""
    nodes = [ClusterNode(host, port) for host, port in topology.startup_nodes]
    return RedisPersistenceLayer(
        client=RedisCluster(startup_nodes=nodes, **CLIENT_TIMEOUTS),
        async_client_factory=lambda: async_cluster_client(topology),
    )


def sentinel_layer(topology: SentinelTopology) -> RedisPersistenceLayer:
    """A layer on Sentinel-managed master clients, sync and asyncio (master discovered)."""
    sync = Sentinel(topology.sentinels, sentinel_kwargs=CLIENT_TIMEOUTS, **CLIENT_TIMEOUTS)

    def async_master() -> Any:
        sentinel = AsyncSentinel(
            topology.sentinels, sentinel_kwargs=CLIENT_TIMEOUTS, **CLIENT_TIMEOUTS
        )
        return sentinel.master_for(topology.service_name)

    return RedisPersistenceLayer(
        client=sync.master_for(topology.service_name), async_client_factory=async_master
    )


__all__ = [
    "CLIENT_TIMEOUTS",
    "SERVICE_NAME",
    "ClusterTopology",
    "SentinelTopology",
    "async_cluster_client",
    "cluster_layer",
    "info_field",
    "replica_online",
    "sentinel_layer",
    "start_cluster",
    "start_sentinel",
    "wait_until",
]
