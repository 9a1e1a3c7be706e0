"""Writes that survive a failover (SPEC §9, ``GOV_MIN_REPLICAS``): a batch's decisions are confirmed with ``WAIT``
before its permits are written, against a real master and a real replica (a replica stopped with SIGSTOP acknowledges
nothing, as one cut off or hung would)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from microservices.devtools.redis_cluster import RedisCluster
from microservices.devtools.redis_server import RedisServer
from tests.daemons import Daemon, daemon_env, run_once, wait_until
from tests.redis_util import hset_text, stream_entries

MODULE = "microservices.governor"
GATE = "quantum:governor:gate:"
PLANS = "quantum:stream:apply.plan"
EVENTS = "quantum:stream:governor.events"
PERMIT = "quantum:permit:"
PROBE = "quantum:governor:replication-probe:"
UNCONFIRMED = "quantum_govern_replication_unconfirmed_total"
CONSUMER = "gov-repl"
REPLICATED = {"GOV_MIN_REPLICAS": "1", "GOV_REPLICA_WAIT_MS": "100", "GOV_CONSUMER": CONSUMER}


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and its replica, the link up and the first sync done."""
    with RedisServer() as master, RedisServer(extra_args=["--replicaof", "127.0.0.1", str(master.port)]) as replica:
        m, r = master.client(), replica.client()
        wait_until(
            lambda: (
                m.info("replication")["connected_slaves"] == 1 and r.info("replication")["master_link_status"] == "up"
            ),
            what="replication link",
        )
        yield master, replica


@contextlib.contextmanager
def replica_stopped(replica: RedisServer) -> Iterator[Callable[[], float]]:
    """The replica stopped (SIGSTOP: it acknowledges nothing) until the block ends or the yielded function resumes it
    (returning the time it did)."""
    pid = int(replica.client().info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)
    resumed: list[float] = []

    def resume() -> float:
        if not resumed:
            os.kill(pid, signal.SIGCONT)
            resumed.append(time.time())
        return resumed[0]

    try:
        yield resume
    finally:
        resume()


def publish_plans(r: redis.Redis, *plan_ids: str) -> None:
    """Opening plans on symbols of their own, published in one transaction: a governor blocked reading gets them in
    one batch."""
    eff = {"efficiency_score": "0.2", "confidence": "0.9", "ts": str(time.time() - 10)}
    for plan_id in plan_ids:
        hset_text(r, "quantum:capital:efficiency:S" + plan_id, eff)
    tx = r.pipeline(transaction=True)
    for plan_id in plan_ids:
        fields = {"plan_id": plan_id, "symbol": "S" + plan_id, "action": "OPEN_LONG", "decision": "EXECUTE", "qty": "3"}
        tx.xadd(PLANS, cast(Any, fields))
    tx.execute()


def events_by_plan(r: redis.Redis) -> dict[str, dict[str, str]]:
    return {e["plan_id"]: e for e in stream_entries(r, EVENTS)}


def wait_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def test_permits_are_written_once_a_live_replica_confirms_the_decisions(
    servers: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = servers
    m, r = master.client(), replica.client()
    publish_plans(m, "a1", "a2", "a3")

    result = run_once(MODULE, master.url, REPLICATED)

    assert result.returncode == 0, result.stderr
    assert wait_calls(m) >= 1  # confirmed with WAIT (on the probe's connection)
    assert m.exists(PROBE + CONSUMER) == 1
    assert {e["event"] for e in events_by_plan(m).values()} == {"permit"}
    assert m.xpending(PLANS, "governor")["pending"] == 0
    permits = {plan_id: m.get(PERMIT + plan_id) for plan_id in ("a1", "a2", "a3")}
    assert all(permit is not None and json.loads(permit)["plan_id"] == p for p, permit in permits.items()), permits
    wait_until(lambda: {p: r.get(PERMIT + p) for p in permits} == permits, what="the permits on the replica")


def test_no_wait_and_no_probe_when_off(servers: tuple[RedisServer, RedisServer]) -> None:
    master, _ = servers
    m = master.client()
    m.config_resetstat()
    publish_plans(m, "b1")

    result = run_once(MODULE, master.url, {"GOV_CONSUMER": CONSUMER})

    assert result.returncode == 0, result.stderr
    assert m.get(PERMIT + "b1") is not None
    assert "cmdstat_wait" not in m.info("commandstats")
    assert m.keys(PROBE + "*") == []


def test_unconfirmed_decisions_hold_their_permits_until_the_replica_is_back(
    servers: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    master, replica = servers
    m = master.client()
    with contextlib.closing(Daemon(MODULE, daemon_env(master.url, REPLICATED), tmp_path / "gov.log")) as daemon:
        daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="healthy")
        with replica_stopped(replica) as resume:
            publish_plans(m, "c1", "c2", "c3")
            daemon.wait_for(lambda: len(events_by_plan(m)) == 3, what="the decisions recorded")
            daemon.wait_for(lambda: daemon.metric(UNCONFIRMED) == 1, what="the batch counted unconfirmed")
            # decided, recorded and acknowledged; no permit written
            assert m.xpending(PLANS, "governor")["pending"] == 0
            assert m.keys(PERMIT + "*") == []
            status, body = daemon.get("/healthz")
            assert status == 503, body
            assert "3 permit(s) held" in json.loads(body)["blocked"], body
            # safety over liveness: no new plan is decided meanwhile; the batch is counted once, however long
            publish_plans(m, "c4")
            time.sleep(1.5)
            assert "c4" not in events_by_plan(m)
            assert m.keys(PERMIT + "*") == []
            assert daemon.metric(UNCONFIRMED) == 1
            assert "replica(s) confirmed within 100 ms" in daemon.log()
            resumed_at = resume()
            daemon.wait_for(lambda: len(m.keys(PERMIT + "*")) == 4, what="the held permits, then c4's")
        events = events_by_plan(m)
        for plan_id in ("c1", "c2", "c3"):
            permit = json.loads(m.get(PERMIT + plan_id) or "{}")
            # the JSON built when it was decided (its created_at is the event's ts), not when it was written
            assert f"{permit['created_at']:.3f}" == events[plan_id]["ts"]
            assert permit["created_at"] < resumed_at
            # and it expires PERMIT_TTL_SEC after it was decided, not after it was written
            assert 0 < m.pttl(PERMIT + plan_id) <= (permit["created_at"] + 60 - time.time()) * 1000 + 50
        assert daemon.metric(UNCONFIRMED) == 1
        daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="healthy again")
        assert "blocked" not in json.loads(daemon.get("/healthz")[1])


def test_a_permit_confirmed_after_its_ttl_since_the_decision_is_not_written(
    servers: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    """A permit never outlives ``created_at`` + ``PERMIT_TTL_SEC``: one whose decision replicas confirm only later is
    not written at all (its decision stands; the apply layer times out on it, as on a permit lost in a failover)."""
    master, replica = servers
    m = master.client()
    env = daemon_env(master.url, {**REPLICATED, "PERMIT_TTL_SEC": "1"})
    with contextlib.closing(Daemon(MODULE, env, tmp_path / "gov.log")) as daemon:
        daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="healthy")
        with replica_stopped(replica) as resume:
            publish_plans(m, "late1")
            daemon.wait_for(lambda: daemon.metric(UNCONFIRMED) == 1, what="the batch counted unconfirmed")
            time.sleep(1.2)
            resume()
            daemon.wait_for(lambda: "1 held permit(s) not written: replicas confirmed" in daemon.log(), what="log")
            daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="healthy again")
        assert m.exists(PERMIT + "late1") == 0
        assert events_by_plan(m)["late1"]["event"] == "permit"  # the decision stands


def test_sigterm_while_permits_are_held_exits_0_and_names_them(
    servers: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    master, replica = servers
    m = master.client()
    with contextlib.closing(Daemon(MODULE, daemon_env(master.url, REPLICATED), tmp_path / "gov.log")) as daemon:
        daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="healthy")
        with replica_stopped(replica):
            publish_plans(m, "d1", "d2")
            daemon.wait_for(lambda: daemon.metric(UNCONFIRMED) == 1, what="the batch counted unconfirmed")

            code, took = daemon.terminate()

            assert (code, took < 5) == (0, True), (code, took)
            assert "stopping with 2 permit(s) not written" in daemon.log()
            assert "plan_ids d1 d2" in daemon.log()
        assert m.keys(PERMIT + "*") == []
        assert {e["event"] for e in events_by_plan(m).values()} == {"permit"}  # the decisions stand


def symbols_on_every_master(cluster: RedisCluster) -> list[str]:
    """A few symbols whose gate keys land on every master: the batch's decisions then go to all of them."""
    chosen: dict[int, str] = {}
    for i in range(1000):
        symbol = f"X{i}"
        chosen.setdefault(cluster.master_of(GATE + symbol).port, symbol)
        if len(chosen) == len(cluster.masters):
            return list(chosen.values())
    raise AssertionError("no symbols spread over every master")


@pytest.mark.topology
def test_on_a_cluster_every_master_that_took_the_batch_confirms_it(tmp_path: Path) -> None:
    """Three masters with a replica each: each master that took a batch's decisions is asked (a probe key in its own
    slots, then WAIT); one replica that stops acknowledging holds the permits of a batch that wrote to its master,
    until it is back."""
    with RedisCluster() as cluster:
        c = cluster.client()
        eff = {"efficiency_score": "0.9", "confidence": "0.9", "ts": str(time.time() - 10)}
        symbols = symbols_on_every_master(cluster)
        for symbol in symbols:
            c.hset("quantum:capital:efficiency:" + symbol, mapping=cast(Any, eff))
        env = {"REDIS_CLUSTER": "1", **REPLICATED}
        for symbol in symbols:
            c.xadd(PLANS, cast(Any, {"plan_id": "e" + symbol, "symbol": symbol, "action": "OPEN_LONG",
                                     "decision": "EXECUTE"}))  # fmt: skip

        result = run_once(MODULE, cluster.url, env)

        assert result.returncode == 0, result.stderr
        assert all(c.exists(PERMIT + "e" + symbol) for symbol in symbols)
        assert all(wait_calls(master.client()) >= 1 for master in cluster.masters)

        master = cluster.master_of(GATE + symbols[0])
        replica = cluster.replica_of(master)
        assert replica is not None
        # a symbol of its own whose gate, a decision of the next batch, is on that master
        other = next(f"Y{i}" for i in range(1000) if cluster.master_of(f"{GATE}Y{i}").port == master.port)
        c.hset("quantum:capital:efficiency:" + other, mapping=cast(Any, eff))
        with contextlib.closing(Daemon(MODULE, daemon_env(cluster.url, env), tmp_path / "gov.log")) as daemon:
            daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="healthy")
            with replica_stopped(replica) as resume:
                fields = {"plan_id": "f1", "symbol": other, "action": "OPEN_LONG", "decision": "EXECUTE"}
                c.xadd(PLANS, cast(Any, fields))
                daemon.wait_for(lambda: daemon.metric(UNCONFIRMED) == 1, what="the batch counted unconfirmed")
                assert not c.exists(PERMIT + "f1")
                assert daemon.get("/healthz")[0] == 503
                resume()
                daemon.wait_for(lambda: c.exists(PERMIT + "f1"), what="the held permit")
            daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="healthy again")


def test_a_held_permit_whose_decision_is_gone_is_not_written(
    servers: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    """A failover that lost a batch's unconfirmed decisions (here: its outcome marker deleted while the permit waits)
    leaves the plan to be decided again: the held permit, which no recorded decision stands behind, is not written."""
    master, replica = servers
    m = master.client()
    with contextlib.closing(Daemon(MODULE, daemon_env(master.url, REPLICATED), tmp_path / "gov.log")) as daemon:
        daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="healthy")
        with replica_stopped(replica) as resume:
            publish_plans(m, "g1", "g2")
            daemon.wait_for(lambda: daemon.metric(UNCONFIRMED) == 1, what="the batch counted unconfirmed")
            m.delete("quantum:governor:outcome:g1")
            time.sleep(0.5)  # a confirmation under way read the marker before it was deleted: let it fail first
            resume()
            daemon.wait_for(lambda: m.exists(PERMIT + "g2"), what="the permit whose decision stands")
        daemon.wait_for(lambda: "1 held permit(s) not written: their decision is no longer in Redis" in daemon.log())
        assert "g1" in daemon.log().rsplit("no longer in Redis", 1)[1]
        assert m.exists(PERMIT + "g1") == 0
