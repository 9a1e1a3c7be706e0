"""SPEC §9, one active proposer (issue 14 item 3): real proposer processes on one private Redis.

Exactly one writes at a time; the others stand by, healthy and counting no loops; a SIGKILLed leader is replaced
within one lease TTL plus one interval; and a leader paused (SIGSTOP) after it renewed and read and before it wrote
writes nothing when it wakes up after another took over: its writes are fenced in Redis itself. The fence is also
shown in-process, on a real Redis, with a lease whose end has passed.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import cast

import pytest
import redis
from prometheus_client import CollectorRegistry

from microservices.allocation_target.lease import Fence
from microservices.allocation_target.metrics import ProposerMetrics
from microservices.allocation_target.proposal import Proposal, Skip
from microservices.allocation_target.proposer import LeaseLostError, Proposer
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.settings import load_settings
from microservices.devtools.daemon_process import metric_value
from microservices.devtools.latency_proxy import LatencyProxy
from microservices.devtools.redis_cluster import RedisCluster
from microservices.devtools.redis_server import RedisServer
from tests.daemons import Daemon, daemon_env, wait_until
from tests.redis_util import hset_text

pytestmark = pytest.mark.topology

MODULE = "microservices.allocation_target"
LIVE = "quantum:allocation:target:"
PROPOSED = "quantum:allocation:target:proposed:"
EFF = "quantum:capital:efficiency:"
STREAM = "quantum:stream:allocation.target.proposed"
LEASE = "quantum:allocation_target:leader"
SYMBOLS = ("AAA", "BBB", "CCC")
INTERVAL = 0.5
TTL = 3 * INTERVAL  # the default
#: Scheduling slack on a shared, loaded machine (two cores, four people).
SLACK = 1.0


def seed(r: redis.Redis, symbols: Sequence[str] = SYMBOLS) -> None:
    """Live targets of 100 with a fresh ok score of 0.9: multiplier P31_BASE + 0.4."""
    for symbol in symbols:
        hset_text(r, LIVE + symbol, {"target_usd": "100"})
        hset_text(r, EFF + symbol, {"efficiency_score": "0.9", "confidence": "0.9", "ts": str(time.time())})


def entries(r: redis.Redis) -> list[tuple[int, str, str]]:
    """(server ms of the entry id, symbol, multiplier) of every stream entry, in stream order."""
    raw: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange(STREAM)  # type: ignore[assignment]
    return [(int(i.split(b"-")[0]), f[b"symbol"].decode(), f[b"multiplier"].decode()) for i, f in raw]


def start(stack: ExitStack, url: str, tmp_path: Path, name: str, **extra: str) -> Daemon:
    env = daemon_env(url, {"LOOP_INTERVAL_SEC": str(INTERVAL), "P31_MAX_MULT": "2", **extra})
    daemon = Daemon(MODULE, env, tmp_path / f"{name}.log")
    stack.callback(daemon.close)
    return daemon


def page(daemon: Daemon) -> str:
    return daemon.get("/metrics")[1]


def value(text: str, name: str) -> float:
    found = metric_value(text, name)
    assert found is not None, name
    return found


def proposed(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("p29_shadow_proposed_total{")
    )


def the_leader(daemons: Sequence[Daemon]) -> Daemon:
    """Wait until exactly one instance says it leads, and has looped twice; that one."""

    def one() -> bool:
        pages = [page(d) for d in daemons]
        leaders = [p for p in pages if value(p, "p29_shadow_leader") == 1]
        return len(leaders) == 1 and value(leaders[0], "p29_shadow_loops_total") >= 2

    wait_until(one, 20, "exactly one leader that has looped twice")
    return next(d for d in daemons if value(page(d), "p29_shadow_leader") == 1)


def settled(r: redis.Redis, daemons: Sequence[Daemon]) -> tuple[list[str], list[tuple[int, str, str]]]:
    """Every instance's metrics and the stream, read between two loops (the leader's count unchanged around it)."""
    for _ in range(100):
        before = [page(d) for d in daemons]
        stream = entries(r)
        after = [page(d) for d in daemons]
        if [proposed(p) for p in before] == [proposed(p) for p in after]:
            return after, stream
    raise AssertionError("the metrics never held still around a read of the stream")


def assert_one_writer(r: redis.Redis, daemons: Sequence[Daemon], leader: Daemon, since: float = 0.0) -> None:
    """Every stream entry written after ``since`` (epoch) is the leader's: as many as it counts, one per symbol per
    loop; the others stand by, healthy, counting and exporting nothing of a loop."""
    pages, stream = settled(r, daemons)
    stream = [entry for entry in stream if entry[0] > since * 1000]
    by_daemon = dict(zip(daemons, pages, strict=True))
    lead = by_daemon[leader]
    assert value(lead, "p29_shadow_leader") == 1
    loops = value(lead, "p29_shadow_loops_total")
    # every entry is the leader's (its own count of what it wrote), one per symbol per loop
    assert len(stream) == proposed(lead) == loops * len(SYMBOLS)
    assert [symbol for _, symbol, _ in stream] == list(SYMBOLS) * int(loops)  # each loop's batch, in order
    for daemon, text in by_daemon.items():
        if daemon is leader:
            continue
        assert value(text, "p29_shadow_leader") == 0
        assert value(text, "p29_shadow_loops_total") == 0
        assert proposed(text) == 0
        assert value(text, "p29_shadow_symbols") == 0
        assert value(text, "p29_shadow_last_success_timestamp_seconds") > time.time() - 3 * INTERVAL - SLACK
        status, body = daemon.get("/healthz")
        assert status == 200, body
        assert "p29_shadow_multiplier{" not in text
    assert r.get(LEASE) is not None


def takeover(r: redis.Redis, since: float, timeout: float) -> float:
    """Seconds from ``since`` (epoch) to the first stream entry written after it."""
    found: list[int] = []

    def written() -> bool:
        found[:] = [ms for ms, _, _ in entries(r) if ms > since * 1000]
        return bool(found)

    wait_until(written, timeout, "a stream entry from a new leader")
    return min(found) / 1000 - since


@pytest.mark.parametrize("instances", [2, 3])
def test_exactly_one_of_several_proposers_writes_a_killed_or_stopped_leader_is_replaced(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path, instances: int
) -> None:
    seed(r)
    with ExitStack() as stack:
        daemons = [start(stack, redis_server.url, tmp_path, f"p{i}") for i in range(instances)]
        leader = the_leader(daemons)
        time.sleep(4 * INTERVAL)  # a few more loops, each instance checking the lease each interval
        assert_one_writer(r, daemons, leader)
        assert leader.log().count("acquired the proposer lease") == 1
        for standby in (d for d in daemons if d is not leader):
            assert standby.log().count("standing by behind") == 1  # once, not once per loop
            assert "loop: " not in standby.log()

        rest = [d for d in daemons if d is not leader]
        if instances == 3:  # SIGKILL: the lease ends with its TTL
            killed_at = time.time()
            leader.process.kill()
            left = r.pttl(LEASE) / 1000  # what the dead leader's lease still had
            leader.process.wait()
            took = takeover(r, killed_at, TTL + INTERVAL + SLACK)
            print(
                f"\nSIGKILL of the leader: another proposer wrote {took:.3f}s later; its lease had {left:.3f}s left "
                f"(bound: TTL {TTL}s + interval {INTERVAL}s)"
            )
            # not before the killed one's lease had run out: a live lease is never taken
            assert 0 < left <= TTL
            assert left - 0.05 <= took <= TTL + INTERVAL + SLACK
        else:  # SIGTERM: the leader gives its lease up, a standby takes over at its next check
            stopped_at = time.time()
            assert leader.terminate()[0] == 0
            took = takeover(r, stopped_at, INTERVAL + SLACK)
            print(f"\nSIGTERM of the leader: another proposer wrote {took:.3f}s later (interval {INTERVAL}s)")
            assert "released the proposer lease" in leader.log()
        successor = the_leader(rest)
        time.sleep(4 * INTERVAL)
        assert_one_writer(r, rest, successor, since=killed_at if instances == 3 else stopped_at)
        took_over = r"acquired the proposer lease as [^:]+:(\d+):\w+ \(after [^:]+:(\d+):\w+\)"
        acquired = re.search(took_over, successor.log())
        assert acquired is not None
        assert acquired.groups() == (str(successor.process.pid), str(leader.process.pid))


def test_on_a_three_master_cluster_one_of_two_proposers_writes_and_a_late_write_is_fenced(tmp_path: Path) -> None:
    """Under Redis Cluster the lease and the shadow keys live on different masters: the writes are fenced by the
    lease's deadline alone (no lease key in their scripts, which would be a cross-slot error)."""
    with RedisCluster() as cluster, ExitStack() as stack:
        client = cast(redis.Redis, cluster.client())
        stack.callback(client.close)
        seed(client)
        masters = {cluster.master_of(key).port for key in (LEASE, STREAM, *(PROPOSED + s for s in SYMBOLS))}
        assert len(masters) > 1  # the lease, the stream and the hashes do not share one node
        daemons = [start(stack, cluster.url, tmp_path, f"c{i}", REDIS_CLUSTER="1") for i in range(2)]
        leader = the_leader(daemons)
        time.sleep(4 * INTERVAL)
        assert_one_writer(client, daemons, leader)
        for daemon in daemons:
            assert daemon.terminate()[0] == 0
        client.delete(STREAM, *(PROPOSED + s for s in SYMBOLS))
        a, _ = proposer(client, "a:1:x", REDIS_CLUSTER="1")
        lease = a.renew()
        assert lease.held
        with pytest.raises(LeaseLostError, match="3 of 3 shadow writes of a batch were fenced"):
            a.write_fenced(Fence(lease.server_ms - 1, "a:1:x", None), decisions(a))
        assert nothing_written(client)
        assert a.write_fenced(lease.fence(None), decisions(a)) == {}  # in time: written, over several masters
        assert client.xlen(STREAM) == len(SYMBOLS)


def client_addresses(r: redis.Redis, name: str) -> set[str]:
    return {c["addr"] for c in r.client_list() if c.get("name") == name}


def test_a_leader_paused_after_it_renewed_and_read_writes_nothing_once_another_took_over(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A reaches Redis through a proxy adding 0.15 s each way; it is SIGSTOPped the moment Redis has run its batch
    read (after its lease renewal and the check before the batch), so its writes are still to come. B, direct,
    takes the lease over once A's has run out and writes; then A is woken. The two are told apart by what they
    write: A's multiplier is 1.4 (P31_BASE 1.0), B's 1.6 (P31_BASE 1.2)."""
    seed(r)
    lease_ttl = "3"  # a slow loop (about five round trips of 0.3 s) stays well inside it
    with ExitStack() as stack:
        proxy = stack.enter_context(LatencyProxy(redis_server.port))
        proxy.delay_sec = 0.15
        a = start(stack, f"redis://127.0.0.1:{proxy.port}/0", tmp_path, "a", PROPOSER_LEASE_TTL_SEC=lease_ttl)
        a.wait_for(lambda: (a.metric("p29_shadow_loops_total") or 0) >= 1, what="A's first loop as leader")
        a_addresses = client_addresses(r, "allocation-target")
        assert a_addresses
        b = start(stack, redis_server.url, tmp_path, "b", PROPOSER_LEASE_TTL_SEC=lease_ttl, P31_BASE="1.2")
        b.wait_for(lambda: b.metric("p29_shadow_leader") == 0 and "standing by" in b.log(), what="B standing by")

        def a_has_read() -> bool:
            return any(
                c["addr"] in a_addresses and c["cmd"] == "hmget"
                for c in r.client_list()  # its batch read, just run
            )

        wait_until(lambda: not a_has_read(), 5, "A between batch reads")
        wait_until(a_has_read, 10, "A's next batch read")
        os.kill(a.process.pid, signal.SIGSTOP)
        stopped_at = time.time()
        try:
            took = takeover(r, stopped_at, float(lease_ttl) + INTERVAL + SLACK)
            assert {m for ms, _, m in entries(r) if ms > stopped_at * 1000} == {"1.6000"}  # B's
            time.sleep(2 * INTERVAL)
        finally:
            os.kill(a.process.pid, signal.SIGCONT)
        woke_at = time.time()
        print(f"\nA paused after its read; B wrote {took:.3f}s later (lease TTL {lease_ttl}s); A woken")
        a.wait_for(lambda: "lost the proposer lease during a loop" in a.log(), what="A fenced")
        time.sleep(3 * INTERVAL)  # A's later checks, B's later loops

        stream = entries(r)
        first_of_b = min(ms for ms, _, m in stream if m == "1.6000")
        # nothing of A's after B's first write, and nothing of A's at all once it was paused
        assert [ms for ms, _, m in stream if m == "1.4000" and ms >= first_of_b] == []
        assert [ms for ms, _, m in stream if m == "1.4000" and ms > stopped_at * 1000] == []
        assert any(ms > woke_at * 1000 for ms, _, _ in stream)  # B went on writing
        for symbol in SYMBOLS:  # every shadow hash is B's: A's fenced writes did not overwrite one
            assert r.hget(PROPOSED + symbol, "multiplier") == b"1.6000"
        # the fence refused A's writes in Redis (the lease check before the batch had passed before the pause)
        assert f"{len(SYMBOLS)} of {len(SYMBOLS)} shadow writes of a batch were fenced" in a.log()
        text = page(a)
        assert value(text, "p29_shadow_leader") == 0
        assert value(text, "p29_shadow_symbols") == 0
        assert "p29_shadow_multiplier{" not in text
        assert a.get("/healthz")[0] == 200
        assert value(page(b), "p29_shadow_leader") == 1
        holder = r.get(LEASE)
        assert isinstance(holder, bytes)
        assert holder.decode().split(":")[1] == str(b.process.pid)


# --- in-process, on the real Redis ---------------------------------------------------------------------------------


def proposer(r: redis.Redis, me: str, batch_size: int = 1000, **env: str) -> tuple[Proposer, ProposerMetrics]:
    settings = load_settings(ProposerSettings, {"LOOP_INTERVAL_SEC": "1", **env})
    metrics = ProposerMetrics(CollectorRegistry(), settings.metrics_max_symbols)
    return Proposer(r, settings, metrics, batch_size=batch_size, instance_id=me), metrics


def decisions(p: Proposer) -> list[Proposal]:
    return [d for d in p.read_and_decide(list(SYMBOLS), time.time()) if isinstance(d, Proposal)]


def nothing_written(r: redis.Redis) -> bool:
    return r.exists(STREAM) == 0 and all(r.exists(PROPOSED + s) == 0 for s in SYMBOLS)


def test_a_write_past_the_lease_end_writes_nothing(r: redis.Redis) -> None:
    seed(r)
    a, _ = proposer(r, "a:1:x")
    lease = a.renew()
    assert lease.held
    now_ms = int(r.time()[0]) * 1000
    for key in (LEASE, None):  # with the lease's value checked too (one Redis), and by the deadline alone (Cluster)
        with pytest.raises(LeaseLostError, match="3 of 3 shadow writes of a batch were fenced"):
            a.write_fenced(Fence(now_ms - 1, "a:1:x", key), decisions(a))
        assert nothing_written(r)
    # the lease's own fence is still in the future: the same write goes through
    assert a.write_fenced(lease.fence(LEASE), decisions(a)) == {}
    assert r.xlen(STREAM) == len(SYMBOLS)


def test_a_write_under_a_lease_another_now_holds_writes_nothing(r: redis.Redis) -> None:
    """The paused holder on one Redis: its deadline not yet past by the server's clock, but the lease is B's."""
    seed(r)
    a, _ = proposer(r, "a:1:x")
    stale = a.renew().fence(LEASE)
    r.delete(LEASE)  # as if A's lease had run out while it was paused
    b, _ = proposer(r, "b:2:y")
    assert b.renew().held
    with pytest.raises(LeaseLostError, match="fenced"):
        a.write_fenced(stale, decisions(a))
    assert nothing_written(r)


def test_a_loop_paused_mid_batch_stops_at_the_fence_and_stands_by(r: redis.Redis) -> None:
    """Two batches; A "pauses" in its second batch's read, past its lease, while B takes over: the first batch is
    written, the second is fenced, the loop ends, A clears its gauges and counts no loop."""
    seed(r)
    a, metrics = proposer(r, "a:1:x", batch_size=2, PROPOSER_LEASE_TTL_SEC="1.5")  # AAA BBB, then CCC
    read = a.read_and_decide
    batches: list[Sequence[str]] = []

    def paused_on_second(symbols: Sequence[str], now: float) -> list[Proposal | Skip]:
        batches.append(symbols)
        if len(batches) == 2:
            time.sleep(1.6)  # the lease (1.5 s) has run out meanwhile
            b, _ = proposer(r, "b:2:y")
            assert b.renew().held
        return read(symbols, now)

    a.read_and_decide = paused_on_second  # type: ignore[method-assign]
    summary = a.run_loop(threading.Event())
    assert (summary.standby, summary.interrupted) == (True, True)
    assert [s for _, s, _ in entries(r)] == ["AAA", "BBB"]
    assert r.exists(PROPOSED + "CCC") == 0
    assert r.get(LEASE) == b"b:2:y"
    registry = metrics.registry
    assert registry.get_sample_value("p29_shadow_leader") == 0
    assert registry.get_sample_value("p29_shadow_loops_total") == 0
    assert registry.get_sample_value("p29_shadow_symbols") == 0
    assert registry.get_sample_value("p29_shadow_multiplier", {"symbol": "AAA"}) is None
    assert not a.leading


def test_a_standby_loop_only_checks_the_lease_and_release_hands_it_over(r: redis.Redis) -> None:
    seed(r)
    a, _ = proposer(r, "a:1:x")
    b, b_metrics = proposer(r, "b:2:y")
    assert a.run_loop(threading.Event()).proposed == {"ok": 3}
    summary = b.run_loop(threading.Event())
    assert (summary.standby, summary.symbols, dict(summary.proposed)) == (True, 0, {})
    assert b_metrics.registry.get_sample_value("p29_shadow_loops_total") == 0
    assert b_metrics.registry.get_sample_value("p29_shadow_last_success_timestamp_seconds") > time.time() - 5  # type: ignore[operator]
    assert 0 < r.pttl(LEASE) <= 3000  # a:1:x's, 3 x LOOP_INTERVAL_SEC
    b.release()  # not its lease: left alone
    assert r.get(LEASE) == b"a:1:x"
    a.release()
    assert r.exists(LEASE) == 0
    assert b.run_loop(threading.Event()).proposed == {"ok": 3}
    assert b_metrics.registry.get_sample_value("p29_shadow_leader") == 1
