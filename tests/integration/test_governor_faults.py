"""The governor when things go wrong between its read and its write: a lost EXEC reply, a replica that stalls while
another claims its plans, writes refused under a cluster, hostile state, malformed numbers, endless producers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, cast

import pytest
import redis
from prometheus_client import CollectorRegistry

from microservices.core.redis_client import connect
from microservices.core.settings import load_settings
from microservices.devtools.redis_server import RedisServer
from microservices.governor.batch import BatchIO
from microservices.governor.consumer import Governor
from microservices.governor.metrics import GovernorMetrics
from microservices.governor.settings import GovernorSettings
from tests.daemons import run_once
from tests.redis_util import stream_entries

PLANS = "quantum:stream:apply.plan"
DLQ = PLANS + ".dlq"
EVENTS = "quantum:stream:governor.events"


def governor(url: str, consumer: str, **env: str) -> tuple[Governor, GovernorMetrics]:
    settings = load_settings(GovernorSettings, {"REDIS_URL": url, "GOV_CONSUMER": consumer, **env})
    metrics = GovernorMetrics(CollectorRegistry(), settings.mode, settings.metrics_max_symbols)
    client = connect(settings, client_name=consumer, socket_timeout=float(env.get("SOCKET_TIMEOUT", "3")))
    return Governor(client, settings, metrics), metrics


def add(r: redis.Redis, fields: Mapping[str, str]) -> None:
    r.xadd(PLANS, cast(Any, dict(fields)))


def total(metric: object) -> float:
    return sum(s.value for family in metric.collect() for s in family.samples if s.name.endswith("_total"))  # type: ignore[attr-defined]


def publish_mix(r: redis.Redis) -> None:
    r.xadd(PLANS, {"plan_id": "ok-1", "symbol": "A", "action": "CLOSE", "decision": "EXECUTE"})
    r.xadd(PLANS, {"plan_id": "ok-2", "symbol": "B", "action": "OPEN_LONG", "decision": "EXECUTE"})
    r.xadd(PLANS, {"symbol": "C", "decision": "EXECUTE"})  # no plan_id: a dead letter


def assert_one_outcome_per_entry(r: redis.Redis) -> None:
    per_entry = Counter(e["source_id"] for e in stream_entries(r, EVENTS))
    assert sorted(per_entry.values()) == [1, 1, 1], per_entry
    assert len(stream_entries(r, DLQ)) == 1
    assert r.xpending(PLANS, "governor")["pending"] == 0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


def test_an_exec_whose_reply_is_lost_is_neither_written_twice_nor_counted_twice(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = server.client()
    publish_mix(r)
    gov, metrics = governor(server.url, "g1", SOCKET_TIMEOUT="0.5")
    last_read = BatchIO.dead_letter_stream_type_if_unusable

    def read_then_pause_redis(self: BatchIO) -> str | None:
        usable = last_read(self)  # the batch's last read before its EXEC
        server.client().client_pause(1500, all=False)  # writes wait: EXEC runs after the client gave up on it
        return usable

    monkeypatch.setattr(BatchIO, "dead_letter_stream_type_if_unusable", read_then_pause_redis)
    with pytest.raises(redis.ConnectionError):  # not a write conflict: the outcome of EXEC is unknown
        gov.poll(threading.Event())
    monkeypatch.setattr(BatchIO, "dead_letter_stream_type_if_unusable", last_read)
    time.sleep(1.6)
    gov.poll(threading.Event())  # the pending pass: everything was written, nothing is written again

    assert_one_outcome_per_entry(r)
    assert total(metrics.eff_apply) == 2  # each permit counted exactly once, late
    assert total(metrics.dead_letters) == 1
    assert total(metrics.already_decided) == 0


def test_a_stalled_replica_whose_plans_were_claimed_writes_nothing_twice(server: RedisServer) -> None:
    r = server.client()
    publish_mix(r)
    stalled, _ = governor(server.url, "stalled")
    stalled._ensure_group()
    in_hand = stalled._read_new(None)  # read, then stalled past GOV_CLAIM_IDLE_MS
    time.sleep(0.05)
    other, _ = governor(server.url, "other", GOV_CLAIM_IDLE_MS="10")
    other.drain(threading.Event())
    stalled._process(in_hand)  # wakes up and decides what it holds
    assert_one_outcome_per_entry(r)


def test_a_hostile_gate_value_does_not_stop_the_governor(server: RedisServer) -> None:
    r = server.client()
    r.set("quantum:governor:gate:A", '{"last_permit_ts": 1' + "0" * 400 + "}")
    r.set("quantum:governor:gate:B", "[" * 100_000)
    for symbol in ("A", "B", "C"):
        r.xadd(PLANS, {"plan_id": f"p-{symbol}", "symbol": symbol, "action": "OPEN_LONG", "decision": "EXECUTE"})
    result = run_once("microservices.governor", server.url, {"GOV_CONSUMER": "g1"})
    assert result.returncode == 0, result.stderr
    assert [e["event"] for e in stream_entries(r, EVENTS)] == ["permit", "permit", "permit"]
    assert "gate of A cannot be used" in result.stderr


def test_malformed_numbers_are_judged_only_where_a_decision_uses_them(server: RedisServer) -> None:
    r = server.client()
    plans: dict[str, dict[str, str]] = {
        "hold": {"decision": "HOLD", "kill_score": "n/a", "qty": "1,5"},
        "close": {"decision": "EXECUTE", "action": "CLOSE_LONG", "kill_score": "n/a"},
        "open": {"decision": "EXECUTE", "action": "OPEN_LONG", "kill_score": "n/a"},
        "qty": {"decision": "EXECUTE", "action": "CLOSE_LONG", "qty": "1,5"},
    }
    for plan_id, fields in plans.items():
        add(r, {"plan_id": plan_id, "symbol": plan_id.upper(), **fields})
    result = run_once("microservices.governor", server.url, {"GOV_CONSUMER": "g1"})
    assert result.returncode == 0, result.stderr
    outcomes = {e["plan_id"]: (e["event"], e["reason"]) for e in stream_entries(r, EVENTS)}
    assert outcomes == {
        "hold": ("skip", "not_execute"),
        "close": ("permit", "permitted"),  # reducing plans never look at kill_score
        "open": ("block", "kill_score"),  # a risk score that cannot be read holds the plan back
        "qty": ("dead_letter", "invalid_plan"),  # no quantity is guessed into a permit
    }
    assert stream_entries(r, DLQ)[0]["plan_id"] == "qty"


def test_a_plan_id_once_permitted_is_never_permitted_again(server: RedisServer) -> None:
    r = server.client()
    plan = {"plan_id": "p1", "symbol": "A", "action": "CLOSE", "decision": "EXECUTE"}
    env = {"GOV_CONSUMER": "g1", "PERMIT_TTL_SEC": "1"}
    add(r, plan)
    add(r, {**plan, "decision": "HOLD"})  # republished as HOLD: skipped, the permit's record stays
    assert run_once("microservices.governor", server.url, env).returncode == 0
    time.sleep(1.2)  # the permit key expires
    add(r, plan)
    assert run_once("microservices.governor", server.url, env).returncode == 0
    assert [e["event"] for e in stream_entries(r, EVENTS)] == ["permit", "skip"]


def test_once_ends_although_producers_keep_publishing(server: RedisServer) -> None:
    r = server.client()
    r.xadd(PLANS, {"plan_id": "first", "symbol": "A", "action": "CLOSE", "decision": "EXECUTE"})
    stop = threading.Event()

    def produce() -> None:
        client, i = server.client(), 0
        while not stop.is_set():
            client.xadd(PLANS, {"plan_id": f"more-{i}", "symbol": f"S{i}", "action": "CLOSE", "decision": "EXECUTE"})
            i += 1

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        # events kept untrimmed: on a loaded machine the producer outpaces the drain by more than the default 10,000
        env = {"GOV_CONSUMER": "g1", "GOV_EVENTS_MAXLEN": "100000000"}
        result = run_once("microservices.governor", server.url, env, timeout=30)
    finally:
        stop.set()
        producer.join()
    assert result.returncode == 0, result.stderr
    assert stream_entries(r, EVENTS)[0]["plan_id"] == "first"


def test_cluster_plans_whose_writes_fail_stay_pending() -> None:
    with RedisServer(cluster=True) as cluster:
        r = cluster.client()
        r.xadd(PLANS, {"plan_id": "p1", "symbol": "A", "action": "CLOSE", "decision": "EXECUTE"})
        gov, _ = governor(cluster.url, "g1", REDIS_CLUSTER="1")
        gov._ensure_group()
        r.config_set("maxmemory", "1")  # every write refused (OOM); XACK would still be accepted
        with pytest.raises(redis.RedisError):
            gov.drain(threading.Event())
        assert r.xpending(PLANS, "governor")["pending"] == 1
        assert not r.exists("quantum:permit:p1") and not r.exists(EVENTS)
        r.config_set("maxmemory", "0")
        gov.drain(threading.Event())
        assert r.xpending(PLANS, "governor")["pending"] == 0
        assert [e["event"] for e in stream_entries(r, EVENTS)] == ["permit"]
