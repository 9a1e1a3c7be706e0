"""``REDIS_CLUSTER=1``: the proposer through redis-py's cluster client, against a real (one-node) Redis Cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from microservices.devtools.redis_server import RedisServer
from tests.daemons import run_once
from tests.redis_util import text_hash

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
