"""A throwaway multi-master Redis Cluster on loopback, for the tests, the benchmarks and the chaos run: three
masters with one replica each, every node a real ``redis-server`` (:class:`~.redis_server.RedisServer`), joined by
``redis-cli --cluster create … --cluster-replicas 1``.

``cluster-node-timeout`` is short (:data:`NODE_TIMEOUT_MS`), so that a master killed with SIGKILL is failed over to its
replica within a few seconds; ``cluster-replica-validity-factor 0`` lets a replica be promoted however long it was
cut off; a replica's first sync starts at once (``repl-diskless-sync-delay 0``). Nothing is persisted: a node
restarted after a kill comes back empty and rejoins as a replica (its ``nodes.conf`` keeps its identity), syncing
from the master that replaced it.

``with RedisCluster() as cluster:`` gives :attr:`RedisCluster.url` (for ``REDIS_URL`` with ``REDIS_CLUSTER=1``),
:meth:`RedisCluster.client` (redis-py's cluster client), :attr:`~RedisCluster.masters` and
:attr:`~RedisCluster.replicas`, :meth:`~RedisCluster.kill_master`, :meth:`~RedisCluster.wait_for_failover` and
:meth:`~RedisCluster.restart`; :meth:`~RedisCluster.close` stops every node and removes their directories.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster as ClusterClient
from redis.retry import Retry

from microservices.devtools.latency_proxy import LatencyProxy
from microservices.devtools.redis_server import RedisServer
from microservices.devtools.server_process import StartedAndClosed

#: How long a node may not answer before the others judge it failing; a failover follows within a few times this.
NODE_TIMEOUT_MS = 1000
MASTERS = 3
SLOTS = 16384


def find_redis_cli(redis_server: str) -> str:
    """The ``redis-cli`` beside the ``redis-server`` in use (the same release), else the one on the PATH."""
    beside = Path(redis_server).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:  # pragma: no cover - depends on the machine
        raise RuntimeError(f"no redis-cli beside {redis_server} nor on the PATH")
    return found


class FailoverTimeoutError(RuntimeError):
    """The cluster did not reach the wanted state in time."""


class RedisCluster(StartedAndClosed):
    """Three masters with one replica each, as six ``redis-server`` processes on free loopback ports."""

    def __init__(
        self, *, masters: int = MASTERS, node_timeout_ms: int = NODE_TIMEOUT_MS, extra_args: list[str] | None = None
    ) -> None:
        args = [
            "--cluster-node-timeout", str(node_timeout_ms), "--cluster-replica-validity-factor", "0",
            "--repl-diskless-sync-delay", "0", "--cluster-require-full-coverage", "yes", *(extra_args or []),
        ]  # fmt: skip
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = [RedisServer(args, cluster_node=True) for _ in range(masters * 2)]
        self._masters = masters
        #: Proxies in front of masters (by the master's own port): see :meth:`proxy_replication`.
        self._proxies: dict[int, LatencyProxy] = {}

    # --- lifecycle --------------------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.start()
        cli = find_redis_cli(self.nodes[0].binary)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()), check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]} {created.stderr[-2000:]}")
        self._wait(self._healthy, deadline, "every node to see the cluster ok, with a synced replica per master")
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        for proxy in self._proxies.values():
            proxy.close()
        self._proxies.clear()

    # --- what it is made of -----------------------------------------------------------------------------------------

    @property
    def live_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.running]

    @property
    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters owning slots now, in port order."""
        return [node for node in self.live_nodes if self._role(node) == "master" and self._owns_slots(node)]

    @property
    def replicas(self) -> list[RedisServer]:
        """The running nodes that are replicas now."""
        return [node for node in self.live_nodes if self._role(node) == "slave"]

    def replica_of(self, master: RedisServer) -> RedisServer | None:
        """The running replica whose master is ``master``, if any."""
        for node in self.replicas:
            info = self._info(node)
            proxy = self._proxies.get(master.port)
            if info.get("master_port") in (master.port, proxy.port if proxy is not None else None):
                return node
        return None

    def master_of(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now."""
        slot = self.client_slot(key)
        for node in self.masters:
            if self._serves(node, slot):
                return node
        raise RuntimeError(f"no live master serves slot {slot}")

    @staticmethod
    def client_slot(key: str) -> int:
        from redis.crc import key_slot

        return int(key_slot(key.encode()))

    # --- clients ----------------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A ``redis://`` URL of one live master: redis-py's cluster client finds every other node from it."""
        live = self.masters or self.live_nodes
        return f"redis://127.0.0.1:{live[0].port}/0"

    def client(self, **kwargs: Any) -> ClusterClient:
        """redis-py's cluster client, RESP2 and bytes replies as the daemons use it."""
        node = (self.masters or self.live_nodes)[0]
        options: dict[str, Any] = {"protocol": 2, "socket_timeout": 2, "socket_connect_timeout": 1, **kwargs}
        return ClusterClient(host="127.0.0.1", port=node.port, **options)

    # --- faults -----------------------------------------------------------------------------------------------------

    def kill_master(self, i: int = 0) -> RedisServer:
        """SIGKILL the ``i``-th master (of :attr:`masters`, in port order); returns it. Its replica takes over once the
        others have judged it failed (:meth:`wait_for_failover`)."""
        master = self.masters[i]
        master.kill()
        proxy = self._proxies.pop(master.port, None)
        if proxy is not None:
            proxy.close()  # after the kill: what it held goes nowhere, and its replica cannot reconnect through it
        return master

    # --- losing writes on purpose -----------------------------------------------------------------------------------

    def proxy_replication(self, master: RedisServer, timeout: float = 15.0) -> LatencyProxy:
        """Put ``master`` behind a :class:`~.latency_proxy.LatencyProxy`: it announces the proxy's port to the cluster
        (``cluster-announce-port``; its bus stays direct), so its replica, and the clients, reach it through the
        proxy. Returns once its replica replicates through it. Needed before :meth:`hold_replication`."""
        proxy = self._proxies.get(master.port)
        if proxy is not None:
            return proxy
        proxy = LatencyProxy(master.port).start()
        self._proxies[master.port] = proxy
        with master.client() as client:
            client.config_set("cluster-announce-bus-port", master.port + 10000)
            client.config_set("cluster-announce-port", proxy.port)
        self._wait(
            lambda: any(
                self._info(node).get("master_port") == proxy.port and self._info(node).get("master_link_status") == "up"
                for node in self.replicas
            ),
            time.monotonic() + timeout,
            f"the replica of {master.port} to replicate through the proxy on {proxy.port}",
        )
        return proxy

    def hold_replication(self, master: RedisServer) -> None:
        """From now on what ``master`` writes reaches no replica (it stays in the proxy) until
        :meth:`release_replication`: ``WAIT`` times out, and a master killed meanwhile (:meth:`kill_master`) takes those
        writes with it, so that its promoted replica lacks them. On loopback a plain SIGKILL rarely loses a write."""
        proxy = self.proxy_replication(master)
        with master.client(decode_responses=True) as client:
            links: list[dict[str, str]] = client.client_list(_type="replica")
        held = proxy.hold({int(link["addr"].rsplit(":", 1)[1]) for link in links})
        if held != 1:
            proxy.release()
            raise RuntimeError(f"held {held} replication links of {master.port}, not 1: {links}")

    def release_replication(self, master: RedisServer) -> None:
        proxy = self._proxies.get(master.port)
        if proxy is not None:
            proxy.release()

    def wait_for_failover(self, timeout: float = 20.0) -> float:
        """Wait until every slot is served by a live master again (a replica promoted) and every live node says
        ``cluster_state:ok``; returns how long that took, in seconds."""
        started = time.monotonic()
        self._wait(self._serving, started + timeout, "a replica promoted and cluster_state:ok on every live node")
        return time.monotonic() - started

    def restart(self, node: RedisServer, timeout: float = 20.0) -> None:
        """Start a killed node again; once back it rejoins as a replica of the node that took its slots. Waits until
        it is a replica whose link to its master is up, and the cluster is ok on every node."""
        node.start()
        deadline = time.monotonic() + timeout
        self._wait(
            lambda: self._role(node) == "slave" and self._info(node).get("master_link_status") == "up",
            deadline,
            f"node {node.port} to rejoin as a synced replica",
        )
        self._wait(self._serving, deadline, "cluster_state:ok on every live node")

    # --- state ------------------------------------------------------------------------------------------------------

    def _probe(self, node: RedisServer) -> redis.Redis:
        return node.client(socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))

    def _ask(self, node: RedisServer, call: Callable[[redis.Redis], Any]) -> Any:
        probe = self._probe(node)
        try:
            return call(probe)
        except (redis.ConnectionError, redis.TimeoutError):
            return None
        finally:
            probe.close()

    def _info(self, node: RedisServer) -> dict[str, Any]:
        info = self._ask(node, lambda r: r.info("replication"))
        return info if isinstance(info, dict) else {}

    def _role(self, node: RedisServer) -> str | None:
        role = self._info(node).get("role")
        return str(role) if role is not None else None

    def _owns_slots(self, node: RedisServer) -> bool:
        return bool(self._serves(node, None))

    def _serves(self, node: RedisServer, slot: int | None) -> bool:
        """Whether ``node`` serves ``slot`` (any slot, for None), as it says itself (its own ``myself`` line)."""
        lines = self._ask(node, lambda r: r.execute_command("CLUSTER", "NODES"))  # type: ignore[no-untyped-call]
        text = lines.decode() if isinstance(lines, bytes) else str(lines or "")
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 8 or "myself" not in parts[2]:
                continue
            for spec in parts[8:]:
                if spec.startswith("["):  # a slot being migrated
                    continue
                first, _, last = spec.partition("-")
                low, high = int(first), int(last or first)
                if slot is None or low <= slot <= high:
                    return True
        return False

    def _cluster_ok(self, node: RedisServer) -> bool:
        info = self._ask(node, lambda r: r.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
        text = info.decode() if isinstance(info, bytes) else str(info or "")
        return "cluster_state:ok" in text

    def _serving(self) -> bool:
        live = self.live_nodes
        return len(self.masters) == self._masters and all(self._cluster_ok(node) for node in live)

    def _healthy(self) -> bool:
        """Every node up and ok, each master with a replica whose link is up (so that a failover can happen)."""
        if len(self.live_nodes) != len(self.nodes) or not self._serving():
            return False
        return (
            all(self._info(node).get("master_link_status") == "up" for node in self.replicas)
            and len(self.replicas) == len(self.nodes) - self._masters
        )

    @staticmethod
    def _wait(predicate: Callable[[], bool], deadline: float, what: str) -> None:
        while not predicate():
            if time.monotonic() > deadline:
                raise FailoverTimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)
