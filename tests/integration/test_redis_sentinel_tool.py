"""The Sentinel topology of the devtools (issue 14): real processes that come up knowing each other, fail over within
seconds of a SIGKILL of the master, lose held writes when told to and nothing otherwise, and leave nothing behind; and
the proxy's hold that makes it lose them."""

from __future__ import annotations

import os
import socket
import time

import pytest
import redis

from microservices.devtools.latency_proxy import LatencyProxy
from microservices.devtools.redis_sentinel import SentinelTopology
from tests.integration.test_chaos_tools import EchoServer

pytestmark = pytest.mark.topology

#: A generous liveness bound: with down-after 1 s a promotion takes about 2 to 4 s on loopback.
PROMOTION_WITHIN_SEC = 15.0


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_topology_comes_up_fails_over_on_a_sigkill_and_leaves_nothing_behind() -> None:
    with SentinelTopology() as topology:
        servers = [topology.master, *topology.replicas, *topology.sentinels]
        pids = [server._process.pid for server in servers if server._process is not None]
        assert len(pids) == 6
        replica_ports = {replica.port for replica in topology.replicas}
        for sentinel in topology.sentinels:
            with sentinel.client(decode_responses=True) as client:
                known = client.sentinel_slaves(topology.master_name)
                assert {int(r["port"]) for r in known} == replica_ports
                assert client.sentinel_master(topology.master_name)["num-other-sentinels"] == 2
        assert topology.sentinels_env == ",".join(f"127.0.0.1:{s.port}" for s in topology.sentinels)
        old = topology.master_address()
        assert topology.server_at(old) is topology.master

        with topology.master_client() as master:
            master.mset({f"k{i}": i for i in range(100)})
        assert topology.sync_replicas() == 2  # not held: the proxy passes the replication stream on at once
        assert topology.kill_master() == old
        failover = topology.wait_for_failover(timeout=30)

        assert failover.killed_at is not None
        assert failover.promoted_at - failover.killed_at < PROMOTION_WITHIN_SEC
        assert failover.killed_at < failover.promoted_at <= failover.switched_at
        assert failover.address[1] in replica_ports
        assert topology.master_address() == failover.address
        with topology.client(failover.address) as new_master:
            assert new_master.mget([f"k{i}" for i in range(100)]) == [str(i).encode() for i in range(100)]
            assert new_master.info("replication")["role"] == "master"
        dirs = [server._dir for server in servers]
    assert all(_gone(pid) for pid in pids)
    assert not any(path.exists() for path in dirs)
    with pytest.raises(redis.ConnectionError), redis.Redis(port=failover.address[1], socket_timeout=1) as client:
        client.ping()


def test_writes_made_while_replication_is_held_are_lost_by_the_failover() -> None:
    with SentinelTopology() as topology:
        with topology.master_client() as master:
            master.mset({f"before{i}": i for i in range(50)})
            assert topology.sync_replicas() == 2
            topology.hold_replication()
            master.mset({f"held{i}": i for i in range(50)})
            assert master.get("held49") == b"49"  # the master has them...
            assert master.wait(1, 300) == 0  # ...no replica acknowledges them
        topology.kill_master()
        failover = topology.wait_for_failover(timeout=30)
        with topology.client(failover.address) as new_master:
            assert new_master.mget([f"before{i}" for i in range(50)]) == [str(i).encode() for i in range(50)]
            assert new_master.mget([f"held{i}" for i in range(50)]) == [None] * 50


def test_without_the_proxy_the_sentinels_name_the_masters_own_port_and_nothing_can_be_held() -> None:
    with SentinelTopology(proxied=False) as topology:
        assert topology.proxy is None
        assert topology.master_address() == ("127.0.0.1", topology.master.port)
        with topology.master_client() as master:
            master.set("k", "v")
        assert topology.sync_replicas() == 2
        with pytest.raises(RuntimeError, match="held back"):
            topology.hold_replication()


def test_the_proxy_keeps_held_bytes_until_released_and_drops_them_when_closed() -> None:
    echo = EchoServer()
    proxy = LatencyProxy(echo.port).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.settimeout(0.3)
            sock.sendall(b"before")
            assert sock.recv(100) == b"before"
            # the link forwards from its creation, before the accepting thread records it: the echo can come first
            deadline = time.monotonic() + 5
            while not proxy._links and time.monotonic() < deadline:
                time.sleep(0.01)
            (link,) = proxy._links
            assert proxy.hold({link.upstream_local_port + 1}) == 0  # another connection's port: nothing held
            assert proxy.hold({link.upstream_local_port}) == 1
            sock.sendall(b"held")  # reaches the echo server, whose answer stays in the proxy
            with pytest.raises(TimeoutError):
                sock.recv(100)
            proxy.release()
            assert sock.recv(100) == b"held"
            proxy.hold({link.upstream_local_port})
            sock.sendall(b"dropped")
            with pytest.raises(TimeoutError):
                sock.recv(100)
            proxy.close()
            assert sock.recv(100) == b""  # closed, and what was held never came
    finally:
        proxy.close()
        echo.close()
