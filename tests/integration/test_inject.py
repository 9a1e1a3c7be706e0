"""The shared test-data injectors write exactly what they are given, and what the daemons' own readers then judge."""

from __future__ import annotations

import time

import pytest
import redis

from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import EffReason
from microservices.core.efficiency_reads import efficiency_readings, queue_efficiency_read
from microservices.governor.plan import Plan, parse_plan
from microservices.ops.inject import (
    LiveTargetExistsError,
    PlanSpec,
    inject_efficiency,
    inject_live_target,
    inject_plan,
    is_test_symbol,
)
from tests.redis_util import stream_entries


def test_efficiency_is_written_verbatim_with_a_ttl_and_read_back_by_the_daemons_reader(r: redis.Redis) -> None:
    key = inject_efficiency(r, "INJ1USDT", score="0.9", confidence="0.8", ts="1700000000.5", ttl_sec=120)
    assert key == "quantum:capital:efficiency:INJ1USDT"
    assert r.hgetall(key) == {b"efficiency_score": b"0.9", b"confidence": b"0.8", b"ts": b"1700000000.5"}
    assert 0 < r.ttl(key) <= 120

    inject_efficiency(r, "INJ1USDT", score="abc", confidence=None, extra={"note": "x"})
    fields = r.hgetall(key)
    assert fields[b"efficiency_score"] == b"abc"
    assert b"confidence" not in fields  # a field given as None is left out, and the old value is gone
    assert abs(float(fields[b"ts"]) - time.time()) < 60  # ts defaults to now
    assert fields[b"note"] == b"x"


def test_no_fields_means_the_hash_is_absent(r: redis.Redis) -> None:
    inject_efficiency(r, "INJ2USDT", score="0.5", confidence="0.9")
    inject_efficiency(r, "INJ2USDT", score=None, confidence=None)
    assert r.exists("quantum:capital:efficiency:INJ2USDT") == 0
    pipe = r.pipeline(transaction=False)
    queue_efficiency_read(pipe, b"INJ2USDT")
    replies = pipe.execute(raise_on_error=False)
    [reading] = efficiency_readings(r, [b"INJ2USDT"], replies, time.time(), ProposerSettings().efficiency_policy)
    assert reading.reason is EffReason.MISSING


def test_live_target_is_a_hash_with_its_ttl_and_never_written_over_an_existing_one(r: redis.Redis) -> None:
    key = inject_live_target(r, "INJ3USDT", "1000", ttl_sec=60)
    assert key == "quantum:allocation:target:INJ3USDT"
    assert r.hgetall(key) == {b"target_usd": b"1000"}
    assert 0 < r.ttl(key) <= 60

    r.hset("quantum:allocation:target:REALUSDT", "target_usd", "250000")
    with pytest.raises(LiveTargetExistsError):
        inject_live_target(r, "REALUSDT", "5")
    assert r.hgetall("quantum:allocation:target:REALUSDT") == {b"target_usd": b"250000"}
    assert r.ttl("quantum:allocation:target:REALUSDT") == -1


def test_test_symbols_are_known_by_their_prefix() -> None:
    assert is_test_symbol("P31TESTBTCUSDT") and is_test_symbol("P31PROOF1HIGHUSDT-abc")
    assert not is_test_symbol("BTCUSDT") and not is_test_symbol("p31testusdt")


def test_plan_fields_are_appended_as_given_and_parse_as_the_governor_parses_them(r: redis.Redis) -> None:
    spec = PlanSpec(plan_id="p-1", symbol="INJ4USDT", action="CLOSE_LONG", qty="2.5", reduce_only="true", timestamp="1")
    entry_id = inject_plan(r, "test:plans", spec)
    assert r.xinfo_stream("test:plans")["last-generated-id"].decode() == entry_id
    [fields] = stream_entries(r, "test:plans")
    assert fields == {
        "plan_id": "p-1",
        "symbol": "INJ4USDT",
        "action": "CLOSE_LONG",
        "decision": "EXECUTE",
        "side": "BUY",
        "qty": "2.5",
        "reduceOnly": "true",
        "timestamp": "1",
    }
    plan = parse_plan(entry_id, fields)
    assert isinstance(plan, Plan)
    assert plan.reducing and plan.qty == 2.5

    inject_plan(r, "test:plans", PlanSpec(plan_id=None, symbol="X", extra={"odd": "value"}))
    last = stream_entries(r, "test:plans")[-1]
    assert "plan_id" not in last and last["odd"] == "value"
