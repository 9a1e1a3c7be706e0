"""SPEC §5 and §6 for the proposer as a long-running process: systemd protocol, HTTP, metrics, signals, outages."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from microservices.devtools.redis_server import RedisServer, free_port
from tests.daemons import Daemon, NotifySocket, assert_systemd_lifecycle, daemon_env, run_once

MODULE = "microservices.allocation_target"
LIVE = "quantum:allocation:target:"
EFF = "quantum:capital:efficiency:"
REASONS = ("ok", "missing_eff", "invalid_eff", "stale_eff", "low_conf", "redis_error")


def _seed(r: redis.Redis, symbols: list[str]) -> None:
    for symbol in symbols:
        r.hset(LIVE + symbol, "target_usd", "100")
        r.hset(EFF + symbol, mapping={"efficiency_score": "0.9", "confidence": "0.9", "ts": str(time.time())})


def test_daemon_serves_metrics_and_health_notifies_systemd_and_stops_on_sigterm(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path, notify: NotifySocket
) -> None:
    _seed(r, ["AAA", "BBB", "CCC"])
    env = daemon_env(redis_server.url, {"LOOP_INTERVAL_SEC": "0.3", "NOTIFY_SOCKET": str(notify.path)})
    daemon = Daemon(MODULE, env, tmp_path / "daemon.log")
    try:
        daemon.wait_for(lambda: (daemon.metric("p29_shadow_loops_total") or 0) >= 2, what="two loops")
        for reason in REASONS:  # pre-created at 0, so rate() works from the first scrape
            assert daemon.metric("p29_shadow_proposed_total", f'reason="{reason}"') is not None, reason
        for reason in ("invalid_target", "redis_error"):
            assert daemon.metric("p29_shadow_skipped_total", f'reason="{reason}"') == 0.0
        assert daemon.metric("p29_shadow_symbols") == 3.0
        assert daemon.metric("p29_shadow_multiplier", 'symbol="AAA"') == pytest.approx(1.4)
        assert daemon.metric("p29_shadow_eff_score", 'symbol="BBB"') == pytest.approx(0.9)
        assert daemon.metric("p29_shadow_eff_confidence", 'symbol="CCC"') == pytest.approx(0.9)
        assert (daemon.metric("p29_shadow_last_success_timestamp_seconds") or 0) > time.time() - 30
        assert (daemon.metric("p29_shadow_loop_duration_seconds_count") or 0) >= 2
        assert daemon.metric("p29_shadow_redis_errors_total") == 0.0
        status, body = daemon.get("/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert daemon.get("/nope")[0] == 404

        r.delete(LIVE + "BBB")  # the symbol goes away: so do its series
        loops = daemon.metric("p29_shadow_loops_total") or 0
        daemon.wait_for(lambda: (daemon.metric("p29_shadow_loops_total") or 0) >= loops + 2, what="two more loops")
        assert daemon.metric("p29_shadow_multiplier", 'symbol="BBB"') is None
        assert daemon.metric("p29_shadow_eff_score", 'symbol="BBB"') is None
        assert daemon.metric("p29_shadow_symbols") == 2.0

        code, took = daemon.terminate()
        assert code == 0 and took < 5
    finally:
        daemon.close()
    assert_systemd_lifecycle(notify)


def test_per_symbol_series_are_capped(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    _seed(r, [f"S{i}" for i in range(5)])
    env = daemon_env(redis_server.url, {"LOOP_INTERVAL_SEC": "0.3", "METRICS_MAX_SYMBOLS": "2"})
    daemon = Daemon(MODULE, env, tmp_path / "daemon.log")
    try:
        daemon.wait_for(lambda: (daemon.metric("p29_shadow_loops_total") or 0) >= 1, what="a loop")
        exported = [
            line for line in daemon.get("/metrics")[1].splitlines() if line.startswith("p29_shadow_multiplier{")
        ]
        assert sorted(exported) == ['p29_shadow_multiplier{symbol="S0"} 1.4', 'p29_shadow_multiplier{symbol="S1"} 1.4']
        assert daemon.metric("p29_shadow_symbols") == 5.0
    finally:
        daemon.close()


@pytest.mark.slow
def test_once_exits_69_when_redis_cannot_be_reached() -> None:
    started = time.monotonic()
    result = run_once(MODULE, f"redis://127.0.0.1:{free_port()}/0", {"REDIS_BACKOFF_MAX_SEC": "1"}, timeout=40)
    took = time.monotonic() - started
    assert result.returncode == 69, result.stderr
    assert 9 <= took < 25
    assert "no successful loop for 10s in --once mode: giving up" in result.stderr


@pytest.mark.slow
def test_daemon_rides_out_a_redis_outage(tmp_path: Path) -> None:
    port = free_port()
    server = RedisServer(port=port).start()
    try:
        _seed(server.client(), ["BTC"])
        env = daemon_env(server.url, {"LOOP_INTERVAL_SEC": "0.5", "REDIS_BACKOFF_MAX_SEC": "1"})
        daemon = Daemon(MODULE, env, tmp_path / "daemon.log")
        try:
            daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="healthy")
            server.stop()
            daemon.wait_for(lambda: daemon.get("/healthz")[0] == 503, timeout=20, what="unhealthy while Redis is down")
            assert (daemon.metric("p29_shadow_redis_errors_total") or 0) >= 1
            assert daemon.process.poll() is None
            server.start()  # same port, empty data: the daemon must reconnect by itself
            _seed(server.client(), ["ETH"])
            daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, timeout=20, what="healthy again")
            daemon.wait_for(
                lambda: server.client().exists("quantum:allocation:target:proposed:ETH") == 1, what="proposals resumed"
            )
            assert daemon.log().count("Redis call failed") == 1  # logged once per outage, not per attempt
            assert daemon.terminate()[0] == 0
        finally:
            daemon.close()
    finally:
        server.close()


def test_json_log_format_gives_one_object_per_line(r: redis.Redis, redis_server: RedisServer) -> None:
    _seed(r, ["BTC"])
    r.hset(LIVE + "BAD", "target_usd", "junk")
    result = run_once(MODULE, redis_server.url, {}, "--log-format", "json")
    assert result.returncode == 0
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert len(entries) >= 3
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in entries)
    assert any(entry["level"] == "warning" and "invalid_target" in entry["msg"] for entry in entries)


@pytest.mark.slow
def test_sigterm_mid_loop_finishes_the_batch_and_exits_0_within_5s(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(40_000):
        pipe.hset(f"{LIVE}S{i:05d}", "target_usd", "100")
    pipe.execute()
    daemon = Daemon(MODULE, daemon_env(redis_server.url, {"LOOP_INTERVAL_SEC": "0.1"}), tmp_path / "daemon.log")
    try:
        daemon.wait_for(lambda: r.exists("quantum:allocation:target:proposed:S00000") == 1, what="first batch")
        code, took = daemon.terminate()
        assert code == 0 and took < 5
        assert "(interrupted by shutdown)" in daemon.log()
    finally:
        daemon.close()
    # whatever was written is whole: each shadow hash has every field and its TTL
    for key in r.scan_iter(match="quantum:allocation:target:proposed:*", count=1000):
        assert r.hlen(key) == 11 and r.ttl(key) > 0


class SilentServer:
    """A TCP server that accepts connections and never answers: a hung Redis."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.accepted.append(self.sock.accept()[0])

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def hung_redis() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.mark.slow
def test_sigterm_is_honoured_within_5s_while_redis_hangs(hung_redis: SilentServer, tmp_path: Path) -> None:
    env = daemon_env(f"redis://127.0.0.1:{hung_redis.port}/0", {"LOOP_INTERVAL_SEC": "1"})
    daemon = Daemon(MODULE, env, tmp_path / "daemon.log")
    try:
        daemon.wait_for(lambda: len(hung_redis.accepted) >= 1, what="a connection to the hung server")
        time.sleep(0.5)  # the daemon is now blocked in a read that will never be answered
        assert daemon.get("/healthz")[0] == 503
        code, took = daemon.terminate(timeout=10)
        assert code == 0 and took < 5, daemon.log()
    finally:
        daemon.close()


@pytest.mark.slow
def test_once_gives_up_within_its_limit_while_redis_hangs(hung_redis: SilentServer) -> None:
    started = time.monotonic()
    result = run_once(MODULE, f"redis://127.0.0.1:{hung_redis.port}/0", {}, timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 69, result.stderr
    assert took < 15, took
    assert "TimeoutError" in result.stderr
