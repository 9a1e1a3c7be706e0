"""``REDIS_CLUSTER=1``: the proposer through redis-py's cluster client, against a real (one-node) Redis Cluster."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster as RedisClusterClient
from redis.typing import EncodableT

from microservices.core.redis_client import queue_script
from microservices.devtools.daemon_process import ROOT, http_get, metric_value
from microservices.devtools.redis_server import RedisServer, free_port
from tests.daemons import daemon_env, run_once
from tests.redis_util import stream_entries, text_hash

MODULE = "microservices.allocation_target"


@pytest.fixture
def cluster() -> Iterator[RedisServer]:
    with RedisServer(cluster=True) as server:
        yield server


def test_proposer_runs_against_a_cluster(cluster: RedisServer) -> None:
    r: redis.Redis = cluster.client()
    now = time.time()
    r.hset("quantum:allocation:target:BTC", "target_usd", "10")
    r.hset("quantum:capital:efficiency:BTC", mapping={"efficiency_score": "0.9", "confidence": "0.9", "ts": str(now)})
    r.hset("quantum:allocation:target:ETH", "target_usd", "20")
    r.set("quantum:capital:efficiency:ETH", "wrong type")
    r.hset("quantum:allocation:target:XRP", "target_usd", "junk")

    result = run_once(MODULE, cluster.url, {"REDIS_CLUSTER": "1"})

    assert result.returncode == 0, result.stderr
    btc = text_hash(r, "quantum:allocation:target:proposed:BTC")
    assert (btc["multiplier"], btc["proposed_target"], btc["reason"]) == ("1.4000", "14.00", "ok")
    assert text_hash(r, "quantum:allocation:target:proposed:ETH")["reason"] == "redis_error"
    assert r.exists("quantum:allocation:target:proposed:XRP") == 0
    assert 0 < r.ttl("quantum:allocation:target:proposed:BTC") <= 600
    assert r.xlen("quantum:stream:allocation.target.proposed") == 2
    # the scripts are routed by their keys in the client: no round trip per script to ask for them
    assert "cmdstat_command|getkeys" not in r.info("commandstats")


def test_governor_runs_against_a_cluster(cluster: RedisServer) -> None:
    r: redis.Redis = cluster.client()
    r.hset(
        "quantum:capital:efficiency:BTC",
        mapping={"efficiency_score": "0.2", "confidence": "0.9", "ts": str(time.time())},
    )
    plan: dict[EncodableT, EncodableT] = {
        "plan_id": "c1",
        "symbol": "BTC",
        "action": "OPEN_LONG",
        "decision": "EXECUTE",
        "qty": "9",
    }
    r.xadd("quantum:stream:apply.plan", plan)
    r.xadd("quantum:stream:apply.plan", {**plan, "plan_id": "c2"})  # same symbol: cooldown
    r.xadd("quantum:stream:apply.plan", plan)  # republished: acknowledged only

    result = run_once("microservices.governor", cluster.url, {"REDIS_CLUSTER": "1", "GOV_CONSUMER": "g"})

    assert result.returncode == 0, result.stderr
    permit = json.loads(r.get("quantum:permit:c1") or "{}")
    assert (permit["eff_action"], permit["eff_factor"], permit["extra_cooldown_sec"]) == ("DOWNSIZE", "0.4444", "96")
    assert json.loads(r.get("quantum:governor:block:c2") or "{}")["reason"] == "cooldown"
    events = [e["event"] for e in stream_entries(r, "quantum:stream:governor.events")]
    assert events == ["permit", "block"]
    assert r.xpending("quantum:stream:apply.plan", "governor")["pending"] == 0


@pytest.mark.slow
def test_once_exits_69_when_the_cluster_cannot_be_reached_at_start() -> None:
    port = free_port(below=55536)
    result = run_once("microservices.governor", f"redis://127.0.0.1:{port}/0", {"REDIS_CLUSTER": "1"}, timeout=40)
    assert result.returncode == 69, result.stderr
    assert "Redis cannot be reached to start (RedisClusterException" in result.stderr
    assert "Traceback" not in result.stderr


def test_daemon_waits_for_the_cluster_then_runs(tmp_path: Path) -> None:
    port = free_port(below=55536)
    env = daemon_env(f"redis://127.0.0.1:{port}/0", {"REDIS_CLUSTER": "1", "REDIS_BACKOFF_MAX_SEC": "0.5"})
    log_path = tmp_path / "proposer.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "microservices.allocation_target"], env=env, stdout=log_file,
            stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "serving /metrics" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        served = re.search(r"serving /metrics and /healthz on (http://\S+)", log_path.read_text())
        assert served is not None, log_path.read_text()
        base = served.group(1)
        # waiting for the cluster, not crashed, and still answering (SPEC §5): 503, the failures counted, and a last
        # success of 0 for the alerts to see
        time.sleep(1.0)
        assert process.poll() is None, log_path.read_text()
        status, body = http_get(base + "/healthz")
        assert status == 503 and json.loads(body)["last_error"] in ("RedisClusterException", "ConnectionError"), body
        metrics = http_get(base + "/metrics")[1]
        assert (metric_value(metrics, "p29_shadow_redis_errors_total") or 0) >= 1
        assert metric_value(metrics, "p29_shadow_last_success_timestamp_seconds") == 0
        with RedisServer(cluster=True, port=port) as cluster:
            deadline = time.monotonic() + 20
            while http_get(base + "/healthz")[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert http_get(base + "/healthz")[0] == 200, log_path.read_text()
            process.terminate()
            assert process.wait(timeout=5) == 0
            assert cluster.client().ping()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_scripts_on_a_cluster_pipeline_cost_no_round_trip_each_to_find_their_keys(cluster: RedisServer) -> None:
    """redis-py's cluster pipeline asks Redis for a script's keys (``COMMAND GETKEYS``), one round trip per call,
    unless the node is named: :func:`queue_script` names it from the first key (the proposer writes two scripts per
    symbol, the governor one per permitted symbol's gate)."""
    r: redis.Redis = cluster.client()
    client = RedisClusterClient(host="127.0.0.1", port=cluster.port)
    pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]  # untyped upstream
    for i in range(50):
        queue_script(pipe, "EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", [f"k{i}"], ["v"])
    assert pipe.execute() == [b"OK"] * 50
    assert "cmdstat_command|getkeys" not in r.info("commandstats")
    pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]  # untyped upstream
    pipe.execute_command("EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", 1, "k0", "v")
    pipe.execute()
    assert r.info("commandstats")["cmdstat_command|getkeys"]["calls"] == 1  # what it saves, each call
    client.close()
