"""The throwaway multi-master Redis Cluster the topology tests, benchmarks and chaos run rely on: three masters with a
replica each, keys over all of them, a SIGKILLed master failed over in seconds and rejoining as a replica, and nothing
left behind."""

from __future__ import annotations

import pytest

from microservices.devtools.redis_cluster import RedisCluster

pytestmark = pytest.mark.topology


def test_three_masters_each_with_a_replica_and_keys_over_all_of_them() -> None:
    cluster = RedisCluster()
    with cluster:
        masters, replicas = cluster.masters, cluster.replicas
        assert len(masters) == 3 and len(replicas) == 3
        paired = {cluster.replica_of(master) for master in masters}
        assert paired == set(replicas)  # one replica each, none shared
        client = cluster.client()
        for i in range(300):
            client.set(f"k{i}", str(i))
        counts = [master.client().dbsize() for master in masters]
        assert sum(counts) == 300 and all(n > 50 for n in counts), counts
        assert cluster.master_of("k7") in masters
        assert cluster.master_of("k7").client().get("k7") == b"7"
        assert client.get("k299") == b"299"
        client.close()
        url = cluster.url
        assert url.startswith("redis://127.0.0.1:") and int(url.rsplit(":", 1)[1].split("/")[0]) < 55536
        processes = [node._process for node in cluster.nodes]
    assert not any(node.running for node in cluster.nodes)
    assert all(p is not None and p.poll() is not None for p in processes)
    assert not any(node._dir.exists() for node in cluster.nodes)


def test_a_killed_master_is_failed_over_in_seconds_and_rejoins_as_a_replica() -> None:
    with RedisCluster() as cluster:
        client = cluster.client()
        for i in range(100):
            client.set(f"k{i}", str(i))
        victim = cluster.master_of("k1")
        replica = cluster.replica_of(victim)
        assert replica is not None
        assert victim.client().wait(1, 2000) == 1  # k1 is on the replica before the crash

        killed = cluster.kill_master(cluster.masters.index(victim))
        assert killed is victim and not victim.running
        took = cluster.wait_for_failover(timeout=20)

        print(f"failover after SIGKILL of a master: cluster ok again after {took:.2f}s")
        assert took < 15  # liveness only: node timeout 1 s, election in a few
        assert replica in cluster.masters and cluster.master_of("k1") is replica
        assert client.get("k1") == b"1"
        client.set("after", "yes")

        cluster.restart(victim)
        assert victim in cluster.replicas and cluster.replica_of(replica) is victim
        assert len(cluster.masters) == 3
        assert client.get("after") == b"yes"
        client.close()


def test_a_write_made_while_the_replica_is_held_back_is_lost_with_its_master() -> None:
    """On loopback a plain SIGKILL rarely loses a write; holding the replica back makes the failover lose them."""
    with RedisCluster() as cluster:
        client = cluster.client()
        victim = cluster.master_of("k")
        cluster.proxy_replication(victim)
        with victim.client() as direct:
            direct.set("k", "replicated")
            assert direct.wait(1, 2000) == 1
            cluster.hold_replication(victim)
            direct.set("k", "held")
            assert direct.wait(1, 300) == 0  # the replica never got it
        cluster.kill_master(cluster.masters.index(victim))
        cluster.wait_for_failover(timeout=20)
        assert client.get("k") == b"replicated"
        cluster.restart(victim)
        assert cluster.replica_of(cluster.master_of("k")) is victim
        client.close()
