"""SPEC §9 "Cluster": governor replicas under ``REDIS_CLUSTER=1`` (no MULTI/EXEC across slots) keep each symbol's
cooldown and rate limits, because each check and update of a symbol's gate is atomic on that one key.

Three governor processes (distinct ``GOV_CONSUMER``) on a one-node cluster; opening plans are published three at a
time per symbol, so that each replica is handed one and all three decide the same symbol at once, for several rounds
spaced by the cooldown. From the permits and the events: no symbol ever has two permits inside its cooldown nor more
than its rate limits. Before the gate was compare-and-set, this failed in nearly every round (three permits per symbol
per round)."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.cluster import RedisCluster

from microservices.core.settings import load_settings
from microservices.devtools.redis_server import RedisServer
from microservices.governor.batch import BatchIO, GateUpdate
from microservices.governor.gate import GATE_KEY_PREFIX, GateState
from microservices.governor.service import make_metrics
from microservices.governor.settings import GovernorSettings
from tests.daemons import Daemon, daemon_env, wait_until
from tests.redis_util import hset_text, stream_entries

MODULE = "microservices.governor"
PLANS = "quantum:stream:apply.plan"
EVENTS = "quantum:stream:governor.events"
REPLICAS = 3
SYMBOLS = ("RA", "RB", "RC", "RD")
ROUNDS = 5
COOLDOWN_SEC = 1.0
MAX_PER_5MIN = 3
MAX_PER_HOUR = 4
GATE = {
    "GOV_SYMBOL_COOLDOWN_SECONDS": str(COOLDOWN_SEC),
    "GOV_MAX_EXEC_PER_5MIN": str(MAX_PER_5MIN),
    "GOV_MAX_EXEC_PER_HOUR": str(MAX_PER_HOUR),
}


@pytest.fixture
def cluster() -> Iterator[RedisServer]:
    with RedisServer(cluster=True) as server:
        yield server


def healthy(daemon: Daemon) -> bool:
    return daemon.get("/healthz")[0] == 200


def decided_plan_ids(r: redis.Redis) -> set[str]:
    return {e["plan_id"] for e in stream_entries(r, EVENTS)}


def violations(times_by_symbol: dict[str, list[float]]) -> list[str]:
    """Every breach of the cooldown or of the rate limits among the permit times of each symbol."""
    found = []
    for symbol, unsorted in sorted(times_by_symbol.items()):
        times = sorted(unsorted)
        for earlier, later in itertools.pairwise(times):
            if later - earlier < COOLDOWN_SEC:
                found.append(f"{symbol}: permits {later - earlier:.3f}s apart, inside the {COOLDOWN_SEC:g}s cooldown")
        # the test lasts well under 5 minutes: every permit of a symbol is in one 5-minute and one one-hour window
        if len(times) > MAX_PER_5MIN:
            found.append(f"{symbol}: {len(times)} permits in 5 minutes, more than {MAX_PER_5MIN}")
        if len(times) > MAX_PER_HOUR:
            found.append(f"{symbol}: {len(times)} permits in an hour, more than {MAX_PER_HOUR}")
    return found


def test_replicas_on_a_cluster_never_pass_a_symbols_gate_together(cluster: RedisServer, tmp_path: Path) -> None:
    r = cluster.client()
    eff = {"efficiency_score": "0.9", "confidence": "0.9", "ts": str(time.time() + 30)}
    for symbol in SYMBOLS:
        hset_text(r, "quantum:capital:efficiency:" + symbol, eff)
    with contextlib.ExitStack() as stack:
        daemons = [
            stack.enter_context(
                contextlib.closing(
                    Daemon(
                        MODULE,
                        daemon_env(cluster.url, {"REDIS_CLUSTER": "1", "GOV_CONSUMER": f"gov-{i}", **GATE}),
                        tmp_path / f"gov-{i}.log",
                    )
                )
            )
            for i in range(REPLICAS)
        ]
        for daemon in daemons:
            daemon.wait_for(partial(healthy, daemon), what="healthy")
        published: list[str] = []
        for round_ in range(ROUNDS):
            for symbol in SYMBOLS:
                # one plan per replica, each XADD handed to the next replica blocked reading: all decide at once
                pipe = r.pipeline(transaction=False)
                for copy in range(REPLICAS):
                    plan_id = f"{symbol}-{round_}-{copy}"
                    fields = {"plan_id": plan_id, "symbol": symbol, "action": "OPEN_LONG", "decision": "EXECUTE"}
                    pipe.xadd(PLANS, cast(Any, fields))
                    published.append(plan_id)
                pipe.execute()
                time.sleep(0.05)  # the replicas are back to their blocking reads
            wait_until(lambda: decided_plan_ids(r) >= set(published), 30, f"round {round_} decided")
            time.sleep(COOLDOWN_SEC + 0.1)
        assert all(daemon.running for daemon in daemons)
        conflicts = sum(daemon.metric("quantum_govern_write_conflicts_total") or 0 for daemon in daemons)

    permit_events: dict[str, list[float]] = defaultdict(list)
    seen: set[str] = set()
    for event in stream_entries(r, EVENTS):
        if event["event"] == "permit" and event["plan_id"] not in seen:  # under a cluster an event may repeat
            seen.add(event["plan_id"])
            permit_events[event["symbol"]].append(float(event["ts"]))
    permits: dict[str, list[float]] = defaultdict(list)
    for key in r.scan_iter(match="quantum:permit:*"):
        permit = json.loads(r.get(key) or "{}")
        permits[permit["symbol"]].append(permit["created_at"])
    assert {s: len(t) for s, t in permits.items()} == {s: len(t) for s, t in permit_events.items()}
    assert violations(permits) == []
    assert violations(permit_events) == []
    # the contention was real: every symbol was permitted, and some replicas found a symbol's gate changed since
    # they read it, and decided its plans again
    assert set(permits) == set(SYMBOLS)
    assert conflicts >= 1
    assert r.xpending(PLANS, "governor")["pending"] == 0


def test_the_gate_compare_and_set_expects_exactly_what_was_read(cluster: RedisServer) -> None:
    """Absent, or a key of another type, is expected as absent; a value only as itself, byte for byte."""
    r = cluster.client()
    settings = load_settings(GovernorSettings, {"REDIS_CLUSTER": "1"})
    client = RedisCluster.from_url(cluster.url)
    io = BatchIO(client, settings, make_metrics(settings), transactional=False)
    state = GateState(time.time(), 0, (time.time(),))
    key = GATE_KEY_PREFIX

    def update(symbol: str, expected: bytes | None) -> GateUpdate:
        return GateUpdate(symbol, expected, state, "p1")

    r.set(key + "B", "old")
    r.rpush(key + "C", "a list")
    r.set(key + "D", "old")
    results = io.compare_and_set_gates(
        [update("A", None), update("B", b"old"), update("C", None), update("D", b"other"), update("E", b"gone")]
    )
    assert results == [True, True, True, False, False]
    assert r.get(key + "A") == r.get(key + "B") == r.get(key + "C") == state.encode("p1").encode()
    assert r.get(key + "D") == b"old" and r.exists(key + "E") == 0
    assert 3600 < r.ttl(key + "A") <= 3601
    # a second replica that read the same old value now finds the gate changed
    assert io.compare_and_set_gates([update("B", b"old")]) == [False]
    client.close()
