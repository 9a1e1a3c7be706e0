"""SPEC §5 and §6 for the governor as a long-running process: systemd protocol, HTTP, metrics, signals, --once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from microservices.devtools.plans import PLANS, publish
from microservices.devtools.redis_server import RedisServer, free_port
from tests.daemons import Daemon, NotifySocket, assert_systemd_lifecycle, daemon_env, run_once
from tests.integration.test_governor_delivery import assert_exactly_one_outcome_each

MODULE = "microservices.governor"


@pytest.mark.slow
def test_a_notify_socket_nobody_reads_neither_stalls_the_governor_nor_keeps_it_from_stopping(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path, notify: NotifySocket
) -> None:
    """Issue 10's hang: a WATCHDOG=1 after each of hundreds of reads filled the notify socket's queue (its reader, a
    busy PID 1 or this test's socket, not reading), and the next blocking sendto stopped the governor for good: plans
    undecided, no log line, SIGTERM handled yet never obeyed. Plans published one at a time make one read each."""
    env = daemon_env(redis_server.url, {"GOV_CONSUMER": "g1", "GOV_SYMBOL_COOLDOWN_SECONDS": "0",
                                        "NOTIFY_SOCKET": str(notify.path)})  # fmt: skip
    daemon = Daemon(MODULE, env, tmp_path / "governor.log")
    try:
        for i in range(1000):  # nothing reads the notify socket meanwhile
            r.xadd(PLANS, {"plan_id": f"t{i}", "symbol": f"S{i}", "action": "OPEN_LONG", "decision": "EXECUTE"})
            time.sleep(0.002)
        daemon.wait_for(lambda: r.xpending(PLANS, "governor")["pending"] == 0 and _lag(r) == 0, timeout=30,
                        what="every plan decided")  # fmt: skip
        assert r.xlen("quantum:stream:governor.events") == 1000
        code, took = daemon.terminate()
        assert (code, took < 5) == (0, True), daemon.log()[-2000:]
    finally:
        daemon.close()
    messages = notify.collect()
    assert messages[0] == "READY=1" and messages[-1] == "STOPPING=1"
    assert 1 <= messages.count("WATCHDOG=1") < 100  # at most one a second, not one per read


def _lag(r: redis.Redis) -> int:
    return int(next(g for g in r.xinfo_groups(PLANS) if g["name"] == b"governor")["lag"] or 0)


def test_governor_serves_metrics_and_health_notifies_systemd_and_stops_on_sigterm_while_blocked(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path, notify: NotifySocket
) -> None:
    env = daemon_env(
        redis_server.url, {"GOV_CONSUMER": "g1", "GOV_BLOCK_MS": "5000", "NOTIFY_SOCKET": str(notify.path)}
    )
    daemon = Daemon(MODULE, env, tmp_path / "governor.log")
    try:
        daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="healthy")
        body = daemon.get("/healthz")[1]
        assert json.loads(body)["status"] == "ok"
        assert daemon.get("/nope")[0] == 404
        # pre-created at 0: every (action, reason) a permit can carry in hint mode, every outcome, every dead letter
        for action, reason in [("DOWNSIZE", "ok"), ("NONE", "ok"), ("NONE", "reduce_only"), ("NONE", "missing_eff"),
                               ("NONE", "invalid_eff"), ("NONE", "stale_eff"), ("NONE", "low_conf"),
                               ("NONE", "redis_error")]:  # fmt: skip
            assert daemon.metric("p32_eff_apply_total", f'action="{action}",reason="{reason}"') == 0.0
        assert daemon.metric("p32_eff_apply_total", 'action="NONE",reason="disabled"') is None
        for reason in ("invalid_plan", "max_deliveries"):
            assert daemon.metric("quantum_govern_dead_letter_total", f'reason="{reason}"') == 0.0
        assert daemon.metric("quantum_govern_outcomes_total", 'event="block",reason="cooldown"') == 0.0
        assert daemon.metric("quantum_govern_pending") == 0.0

        r.hset("quantum:capital:efficiency:BTC", mapping={"efficiency_score": "0.2", "confidence": "0.9",
                                                          "ts": str(time.time())})  # fmt: skip
        r.xadd(PLANS, {"plan_id": "m1", "symbol": "BTC", "action": "OPEN_LONG", "decision": "EXECUTE", "qty": "1"})
        r.xadd(PLANS, {"plan_id": "m2", "symbol": "BTC", "action": "OPEN_LONG", "decision": "EXECUTE", "qty": "1"})
        r.xadd(PLANS, {"plan_id": "m3", "symbol": "ETH", "action": "CLOSE_LONG", "decision": "EXECUTE"})
        daemon.wait_for(lambda: daemon.metric("quantum_govern_outcomes_total", 'event="block",reason="cooldown"') == 1,
                        what="the three plans decided")  # fmt: skip
        assert daemon.metric("p32_eff_apply_total", 'action="DOWNSIZE",reason="ok"') == 1.0
        assert daemon.metric("p32_eff_apply_total", 'action="NONE",reason="reduce_only"') == 1.0
        assert daemon.metric("quantum_govern_allow_total", 'symbol="BTC"') == 1.0
        assert daemon.metric("quantum_govern_block_total", 'reason="cooldown",symbol="BTC"') == 1.0
        assert daemon.metric("p32_eff_factor", 'symbol="BTC"') == pytest.approx(0.4444, abs=1e-4)
        assert daemon.metric("p32_eff_factor", 'symbol="ETH"') == 1.0
        assert daemon.metric("quantum_govern_plan_latency_seconds_count") == 3.0
        assert (daemon.metric("quantum_govern_last_success_timestamp_seconds") or 0) > time.time() - 10

        time.sleep(0.5)  # let it block in its read again: the block is capped so that SIGTERM is honoured in time
        code, took = daemon.terminate()
        assert code == 0 and took < 5
    finally:
        daemon.close()
    assert_systemd_lifecycle(notify)


def test_sigterm_mid_stream_finishes_the_batch_and_leaves_the_rest_pending(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    published = publish(r, 3000, symbols=500, seed=21)
    daemon = Daemon(MODULE, daemon_env(redis_server.url, {"GOV_CONSUMER": "g1"}), tmp_path / "governor.log")
    try:
        daemon.wait_for(lambda: r.exists("quantum:stream:governor.events"), what="some outcomes")
        code, took = daemon.terminate()
        assert code == 0 and took < 5
    finally:
        daemon.close()
    assert "received SIGTERM: the batch in hand was finished" in daemon.log()
    assert r.xpending(PLANS, "governor")["pending"] == 0  # what was read was decided and acknowledged
    [group] = r.xinfo_groups(PLANS)
    assert group["lag"] > 0  # the stop came mid-stream: the rest was never read, and is decided by the next run
    result = run_once(MODULE, redis_server.url, {"GOV_CONSUMER": "g1"})
    assert result.returncode == 0, result.stderr
    assert_exactly_one_outcome_each(r, published)


def test_once_with_nothing_to_do_exits_0(r: redis.Redis, redis_server: RedisServer) -> None:
    result = run_once(MODULE, redis_server.url, {"GOV_CONSUMER": "g1"})
    assert result.returncode == 0, result.stderr
    assert r.xinfo_groups(PLANS)[0]["name"] == b"governor"


def test_per_symbol_series_are_capped(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    env = daemon_env(redis_server.url, {"GOV_CONSUMER": "g1", "METRICS_MAX_SYMBOLS": "2"})
    daemon = Daemon(MODULE, env, tmp_path / "governor.log")
    try:
        for i in range(4):
            r.xadd(PLANS, {"plan_id": f"c{i}", "symbol": f"S{i}", "action": "CLOSE", "decision": "EXECUTE"})
        permits = 'event="permit",reason="permitted"'
        daemon.wait_for(lambda: daemon.metric("quantum_govern_outcomes_total", permits) == 4, what="four permits")
        exported = [line for line in daemon.get("/metrics")[1].splitlines() if line.startswith("quantum_govern_allow")]
        assert sorted(exported) == ['quantum_govern_allow_total{symbol="S0"} 1.0',
                                    'quantum_govern_allow_total{symbol="S1"} 1.0']  # fmt: skip
    finally:
        daemon.close()


@pytest.mark.slow
def test_once_exits_69_when_redis_cannot_be_reached() -> None:
    result = run_once(MODULE, f"redis://127.0.0.1:{free_port()}/0", {"REDIS_BACKOFF_MAX_SEC": "1"}, timeout=40)
    assert result.returncode == 69, result.stderr
