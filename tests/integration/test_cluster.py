"""``REDIS_CLUSTER=1``: the proposer through redis-py's cluster client, against a real (one-node) Redis Cluster."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from redis.typing import EncodableT

from microservices.devtools.redis_server import RedisServer
from tests.daemons import run_once
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
