"""SPEC §3 end to end: ``python -m microservices.governor --once`` as a process against real Redis, every decision
checked by the exact keys, JSON, stream entries and metrics it leaves behind."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from microservices.devtools.redis_server import RedisServer
from microservices.governor.gate import GateState
from tests.daemons import Daemon, daemon_env, run_once
from tests.redis_util import hset_text, stream_entries

MODULE = "microservices.governor"
PLANS = "quantum:stream:apply.plan"
DLQ = PLANS + ".dlq"
EVENTS = "quantum:stream:governor.events"
GROUP = "governor"
CONSUMER = "gov-test"
EFF = "quantum:capital:efficiency:"
PERMIT = "quantum:permit:"
BLOCK = "quantum:governor:block:"
GATE = "quantum:governor:gate:"
KILL = "quantum:kill"
PERMIT_KEYS = {
    "granted", "plan_id", "symbol", "decision", "action", "computed_qty", "computed_notional", "created_at", "consumed",
    "eff_score", "eff_confidence", "eff_stale", "eff_factor", "eff_action", "eff_reason", "downsize_factor",
    "extra_cooldown_sec",
}  # fmt: skip
HINT_KEYS = ("eff_action", "eff_factor", "extra_cooldown_sec", "eff_reason", "eff_score", "eff_confidence", "eff_stale")
EVENT_KEYS = {"event", "plan_id", "symbol", "reason", "ts"}
PERMITTED = ("permit", "permitted")
SKIPPED = ("skip", "not_execute")
#: The P3.1 fields of a permit that nothing acted on, in HINT_KEYS order (score, confidence and stale left out).
NEUTRAL = ("NONE", "1.0000", "0")


# --- helpers ---------------------------------------------------------------------------------------------------------


def plan(
    plan_id: str, symbol: str, action: str = "OPEN_LONG", decision: str = "EXECUTE", **extra: str
) -> dict[str, str]:
    return {"plan_id": plan_id, "symbol": symbol, "action": action, "decision": decision, "side": "BUY", **extra}


def publish(r: redis.Redis, fields: Mapping[str, str], entry_id: str = "*", stream: str = PLANS) -> str:
    raw = r.xadd(stream, cast(Any, dict(fields)), id=entry_id)
    return cast(bytes, raw).decode()


def old_id(seconds_ago: float, seq: int = 0) -> str:
    """A stream entry id of ``seconds_ago`` seconds ago."""
    return f"{int((time.time() - seconds_ago) * 1000)}-{seq}"


def govern(redis_url: str, env: Mapping[str, str] | None = None) -> str:
    """One ``--once`` run of the governor; returns its log."""
    result = run_once(MODULE, redis_url, {"GOV_CONSUMER": CONSUMER, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stderr


def set_eff(r: redis.Redis, symbol: str, score: str, confidence: str = "0.9", ts: float | str | None = None) -> None:
    fields = {"efficiency_score": score, "confidence": confidence, "ts": str(time.time() - 10 if ts is None else ts)}
    hset_text(r, EFF + symbol, fields)


def seed_gate(r: redis.Redis, symbol: str, last_ago: float, recent_ago: list[float], extra: int = 0) -> None:
    """A symbol's gate as if permits had been written ``recent_ago`` seconds ago (the last ``last_ago`` ago)."""
    now = time.time()
    state = GateState(now - last_ago, extra, tuple(sorted(now - ago for ago in recent_ago)))
    r.set(GATE + symbol, state.encode("seeded"))


def get_text(r: redis.Redis, key: str) -> str | None:
    raw = cast(bytes | None, r.get(key))
    return None if raw is None else raw.decode()


def permit(r: redis.Redis, plan_id: str) -> dict[str, Any]:
    raw = get_text(r, PERMIT + plan_id)
    assert raw is not None, f"no permit for {plan_id}"
    value = json.loads(raw)
    assert isinstance(value, dict)
    return value


def hint(r: redis.Redis, plan_id: str) -> tuple[str, ...]:
    fields = permit(r, plan_id)
    assert fields["downsize_factor"] == fields["eff_factor"], plan_id
    return tuple(fields[key] for key in HINT_KEYS)


def outcomes(r: redis.Redis) -> dict[str, tuple[str, str]]:
    """plan_id -> (event, reason) of the events stream, checking the exact fields and exactly one event per plan."""
    found: dict[str, tuple[str, str]] = {}
    for fields in stream_entries(r, EVENTS):
        assert set(fields) >= EVENT_KEYS, fields
        assert fields["plan_id"] not in found, f"two events for {fields['plan_id']}"
        found[fields["plan_id"]] = (fields["event"], fields["reason"])
    return found


def pending(r: redis.Redis, stream: str = PLANS, group: str = GROUP) -> int:
    info = r.xpending(stream, group)
    return int(info["pending"])


def assert_recorded(r: redis.Redis, expected: Mapping[str, tuple[str, str]]) -> None:
    """Exactly these outcomes, with a permit key exactly for permits and a block record exactly for blocks."""
    assert outcomes(r) == dict(expected)
    for plan_id, (event, _reason) in expected.items():
        assert bool(r.exists(PERMIT + plan_id)) == (event == "permit"), plan_id
        assert bool(r.exists(BLOCK + plan_id)) == (event == "block"), plan_id
    assert pending(r) == 0


# --- §1 through the permit: every efficiency reading ---------------------------------------------------------------


def test_every_efficiency_reading_gives_its_exact_hint(r: redis.Redis, redis_server: RedisServer) -> None:
    now = time.time()

    def ms(ago: float) -> str:
        return str(int((now - ago) * 1000))

    iso = datetime.fromtimestamp(now - 30, UTC).replace(tzinfo=None).isoformat()
    ok_02 = ("DOWNSIZE", "0.4444", "96", "ok", "0.2000", "0.900", "0")
    cases: dict[str, tuple[dict[str, str] | None, tuple[str, ...]]] = {
        "S020": ({"efficiency_score": "0.2", "confidence": "0.9", "ts": f"{now - 10}"}, ok_02),
        "S000": ({"efficiency_score": "0.0", "confidence": "0.9", "ts": f"{now}"},
                 ("DOWNSIZE", "0.2500", "120", "ok", "0.0000", "0.900", "0")),
        "S010": ({"efficiency_score": "0.1", "confidence": "0.9", "ts": f"{now}"},
                 ("DOWNSIZE", "0.2500", "108", "ok", "0.1000", "0.900", "0")),
        "S0449": ({"efficiency_score": "0.449", "confidence": "0.9", "ts": f"{now}"},
                  ("DOWNSIZE", "0.9978", "66", "ok", "0.4490", "0.900", "0")),
        "S045": ({"efficiency_score": "0.45", "confidence": "0.9", "ts": f"{now}"},
                 (*NEUTRAL, "ok", "0.4500", "0.900", "0")),
        "S090": ({"efficiency_score": "0.9", "confidence": "0.9", "ts": f"{int(now) - 5}"},
                 (*NEUTRAL, "ok", "0.9000", "0.900", "0")),
        "S100": ({"efficiency_score": "1", "confidence": "1", "ts": f"{now}"},
                 (*NEUTRAL, "ok", "1.0000", "1.000", "0")),
        "MISSING": (None, (*NEUTRAL, "missing_eff", "", "", "0")),
        "NOFIELDS": ({"other": "x"}, (*NEUTRAL, "invalid_eff", "", "", "0")),
        "NAN": ({"efficiency_score": "NaN", "confidence": "0.9", "ts": f"{now}"},
                (*NEUTRAL, "invalid_eff", "", "0.900", "0")),
        "INF": ({"efficiency_score": "inf", "confidence": "0.9", "ts": f"{now}"},
                (*NEUTRAL, "invalid_eff", "", "0.900", "0")),
        "TEXT": ({"efficiency_score": "high", "confidence": "0.9", "ts": f"{now}"},
                 (*NEUTRAL, "invalid_eff", "", "0.900", "0")),
        "RANGE": ({"efficiency_score": "1.5", "confidence": "0.9", "ts": f"{now}"},
                  (*NEUTRAL, "invalid_eff", "1.5000", "0.900", "0")),
        "NEG": ({"efficiency_score": "-0.1", "confidence": "0.9", "ts": f"{now}"},
                (*NEUTRAL, "invalid_eff", "-0.1000", "0.900", "0")),
        "CONFRANGE": ({"efficiency_score": "0.2", "confidence": "1.2", "ts": f"{now}"},
                      (*NEUTRAL, "invalid_eff", "0.2000", "1.200", "0")),
        "CONFNAN": ({"efficiency_score": "0.2", "confidence": "nan", "ts": f"{now}"},
                    (*NEUTRAL, "invalid_eff", "0.2000", "", "0")),
        "NOCONF": ({"efficiency_score": "0.2", "ts": f"{now}"}, (*NEUTRAL, "invalid_eff", "0.2000", "", "0")),
        "NOTS": ({"efficiency_score": "0.2", "confidence": "0.9"}, (*NEUTRAL, "invalid_eff", "0.2000", "0.900", "0")),
        "BADTS": ({"efficiency_score": "0.2", "confidence": "0.9", "ts": "yesterday", "timestamp": f"{now}"},
                  (*NEUTRAL, "invalid_eff", "0.2000", "0.900", "0")),
        "FUTURE": ({"efficiency_score": "0.2", "confidence": "0.9", "ts": f"{now + 3600}"},
                   (*NEUTRAL, "invalid_eff", "0.2000", "0.900", "0")),
        "FUTUREMS": ({"efficiency_score": "0.2", "confidence": "0.9", "ts": ms(-3600)},
                     (*NEUTRAL, "invalid_eff", "0.2000", "0.900", "0")),
        "NEARFUTURE": ({"efficiency_score": "0.2", "confidence": "0.9", "ts": f"{now + 30}"}, ok_02),
        "MILLIS": ({"efficiency_score": "0.2", "confidence": "0.9", "ts": ms(20)}, ok_02),
        "ISO": ({"efficiency_score": "0.2", "confidence": "0.9", "timestamp": iso}, ok_02),
        "ISOZONE": ({"efficiency_score": "0.2", "confidence": "0.9", "timestamp": iso + "+00:00"}, ok_02),
        "EPOCHSTAMP": ({"efficiency_score": "0.2", "confidence": "0.9", "timestamp": f"{now - 10}"}, ok_02),
        "NEARSTALE": ({"efficiency_score": "0.2", "confidence": "0.9", "ts": f"{now - 540}"}, ok_02),
        "STALE": ({"efficiency_score": "0.2", "confidence": "0.9", "ts": f"{now - 700}"},
                  (*NEUTRAL, "stale_eff", "0.2000", "0.900", "1")),
        "STALEMS": ({"efficiency_score": "0.2", "confidence": "0.9", "ts": ms(700)},
                    (*NEUTRAL, "stale_eff", "0.2000", "0.900", "1")),
        "STALELOW": ({"efficiency_score": "0.2", "confidence": "0.1", "ts": f"{now - 700}"},
                     (*NEUTRAL, "stale_eff", "0.2000", "0.100", "1")),
        "LOWCONF": ({"efficiency_score": "0.2", "confidence": "0.64", "ts": f"{now}"},
                    (*NEUTRAL, "low_conf", "0.2000", "0.640", "0")),
        "CONFEDGE": ({"efficiency_score": "0.2", "confidence": "0.65", "ts": f"{now}"},
                     ("DOWNSIZE", "0.4444", "96", "ok", "0.2000", "0.650", "0")),
        "LISTKEY": (None, (*NEUTRAL, "redis_error", "", "", "0")),
        "STRINGKEY": (None, (*NEUTRAL, "redis_error", "", "", "0")),
    }  # fmt: skip
    for symbol, (eff, _) in cases.items():
        if eff is not None:
            hset_text(r, EFF + symbol, dict(eff, unrelated="y" * 50))
    r.rpush(EFF + "LISTKEY", "not", "a", "hash")
    r.set(EFF + "STRINGKEY", "0.2")
    for symbol in cases:
        publish(r, plan(f"eff-{symbol}", symbol, qty="3"))

    govern(redis_server.url)

    assert outcomes(r) == {f"eff-{symbol}": PERMITTED for symbol in cases}
    for symbol, (_, expected) in cases.items():
        assert hint(r, f"eff-{symbol}") == expected, symbol
        assert permit(r, f"eff-{symbol}")["computed_qty"] == 3.0, symbol  # hint mode: never scaled
    assert r.type(EFF + "LISTKEY") == b"list"  # read, never repaired


def test_reducing_plans_are_never_downsized(r: redis.Redis, redis_server: RedisServer) -> None:
    cases = [  # (action, reduceOnly or None, reducing)
        ("FULL_CLOSE_PROPOSED", None, True), ("PARTIAL_25", None, True), ("PARTIAL_CLOSE", None, True),
        ("CLOSE_LONG", None, True), ("CLOSE", None, True), ("OPEN_LONG", "true", True), ("OPEN_LONG", "1", True),
        ("OPEN_LONG", "TRUE", True), ("OPEN_SHORT", "True", True),
        ("close_long", None, False), ("partial_25", None, False), ("Close_Long", None, False),
        ("FULL_CLOSE", None, False), ("FULL_CLOSE_PROPOSED_LATER", None, False), ("OPEN_LONG", "false", False),
        ("OPEN_LONG", "0", False), ("OPEN_LONG", "yes", False), ("OPEN_LONG", "", False),
    ]  # fmt: skip
    for i, (action, reduce_only, _) in enumerate(cases):
        set_eff(r, f"R{i}", "0.0")
        extra = {} if reduce_only is None else {"reduceOnly": reduce_only}
        publish(r, plan(f"red-{i}", f"R{i}", action, qty="8", **extra))

    govern(redis_server.url, {"P31_GOV_MODE": "enforce"})

    assert outcomes(r) == {f"red-{i}": PERMITTED for i in range(len(cases))}
    for i, (action, reduce_only, reducing) in enumerate(cases):
        fields = permit(r, f"red-{i}")
        if reducing:
            expected = (*NEUTRAL, "reduce_only", "0.0000", "0.900", "0")
            qty = 8.0
        else:
            expected = ("DOWNSIZE", "0.2500", "120", "ok", "0.0000", "0.900", "0")
            qty = 2.0
        assert hint(r, f"red-{i}") == expected, (action, reduce_only)
        assert fields["computed_qty"] == pytest.approx(qty), (action, reduce_only)
        assert fields["action"] == action


# --- the permit ------------------------------------------------------------------------------------------------------


def test_permit_json_has_every_key_with_its_type_and_the_default_ttl(r: redis.Redis, redis_server: RedisServer) -> None:
    set_eff(r, "BTC", "0.2")
    publish(r, plan("with-qty", "BTC", "OPEN_LONG", qty="2.5"))
    publish(r, plan("no-qty", "ETH", "OPEN_SHORT"))
    before = time.time()
    govern(redis_server.url)
    after = time.time()

    for plan_id, symbol, action, qty in (("with-qty", "BTC", "OPEN_LONG", 2.5), ("no-qty", "ETH", "OPEN_SHORT", 0.0)):
        fields = permit(r, plan_id)
        assert set(fields) == PERMIT_KEYS, plan_id
        assert fields["granted"] is True
        assert fields["consumed"] is False
        assert (fields["plan_id"], fields["symbol"], fields["decision"], fields["action"]) == (
            plan_id, symbol, "EXECUTE", action,
        )  # fmt: skip
        assert isinstance(fields["computed_qty"], float) and fields["computed_qty"] == qty
        assert isinstance(fields["computed_notional"], float)
        assert isinstance(fields["created_at"], float) and before - 1 <= fields["created_at"] <= after + 1
        for key in (*HINT_KEYS, "downsize_factor"):
            assert isinstance(fields[key], str), (plan_id, key)
        ttl, pttl = r.ttl(PERMIT + plan_id), r.pttl(PERMIT + plan_id)
        assert 50 < ttl <= 60 and 50_000 < pttl <= 60_000, (ttl, pttl)
    assert hint(r, "with-qty") == ("DOWNSIZE", "0.4444", "96", "ok", "0.2000", "0.900", "0")
    assert hint(r, "no-qty") == (*NEUTRAL, "missing_eff", "", "", "0")


def test_permit_ttl_follows_the_setting(r: redis.Redis, redis_server: RedisServer) -> None:
    publish(r, plan("short", "BTC"))
    govern(redis_server.url, {"PERMIT_TTL_SEC": "7"})
    assert permit(r, "short")["granted"] is True
    assert 0 < r.ttl(PERMIT + "short") <= 7
    assert 5_000 < r.pttl(PERMIT + "short") <= 7_000


# --- modes -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hint", "enforce"])
def test_enforce_scales_qty_and_extends_the_cooldown_hint_does_neither(
    r: redis.Redis, redis_server: RedisServer, mode: str
) -> None:
    enforce = mode == "enforce"
    set_eff(r, "DOWN", "0.2")
    set_eff(r, "FULL", "0.9")
    seed_gate(r, "PAST", last_ago=100, recent_ago=[100], extra=96)  # 100 s > 0 + 96 s: free in both modes
    seed_gate(r, "WITHIN", last_ago=90, recent_ago=[90], extra=96)  # 90 s < 0 + 96 s: held in enforce only
    publish(r, plan("down-1", "DOWN", qty="9"))
    publish(r, plan("down-2", "DOWN", qty="9"))
    publish(r, plan("down-close", "DOWN", "CLOSE_LONG", qty="9"))
    publish(r, plan("full", "FULL", qty="9"))
    publish(r, plan("past", "PAST", qty="1"))
    publish(r, plan("within", "WITHIN", qty="1"))

    govern(redis_server.url, {"P31_GOV_MODE": mode, "GOV_SYMBOL_COOLDOWN_SECONDS": "0"})

    held = ("block", "cooldown") if enforce else PERMITTED
    assert_recorded(
        r, {"down-1": PERMITTED, "down-2": held, "down-close": PERMITTED, "full": PERMITTED, "past": PERMITTED,
            "within": held},
    )  # fmt: skip
    assert hint(r, "down-1") == ("DOWNSIZE", "0.4444", "96", "ok", "0.2000", "0.900", "0")
    assert permit(r, "down-1")["computed_qty"] == pytest.approx(4.0 if enforce else 9.0)
    assert permit(r, "down-close")["computed_qty"] == 9.0
    assert hint(r, "down-close")[:4] == (*NEUTRAL, "reduce_only")
    assert permit(r, "full")["computed_qty"] == 9.0
    assert permit(r, "past")["computed_qty"] == 1.0
    if not enforce:
        assert hint(r, "down-2")[:4] == ("DOWNSIZE", "0.4444", "96", "ok")
        assert permit(r, "down-2")["computed_qty"] == 9.0


def test_off_mode_writes_neutral_fields_for_every_plan(r: redis.Redis, redis_server: RedisServer) -> None:
    set_eff(r, "DOWN", "0.2")
    set_eff(r, "STALE", "0.2", ts=time.time() - 7000)
    r.rpush(EFF + "LISTKEY", "x")
    publish(r, plan("off-open", "DOWN", qty="9"))
    publish(r, plan("off-close", "DOWN", "FULL_CLOSE_PROPOSED", qty="9"))
    publish(r, plan("off-flag", "DOWN", "OPEN_SHORT", qty="9", reduceOnly="true"))
    publish(r, plan("off-missing", "MISSING", qty="9"))
    publish(r, plan("off-stale", "STALE", qty="9"))
    publish(r, plan("off-list", "LISTKEY", qty="9"))

    govern(redis_server.url, {"P31_GOV_MODE": "off"})

    ids = ["off-open", "off-close", "off-flag", "off-missing", "off-stale", "off-list"]
    assert_recorded(r, {plan_id: PERMITTED for plan_id in ids})
    for plan_id in ids:
        assert hint(r, plan_id) == (*NEUTRAL, "disabled", "", "", "0"), plan_id
        assert permit(r, plan_id)["computed_qty"] == 9.0, plan_id


# --- decision order --------------------------------------------------------------------------------------------------


def test_invalid_plans_are_dead_lettered_with_their_fields(r: redis.Redis, redis_server: RedisServer) -> None:
    long_id = "p" * 128
    invalid: list[dict[str, str]] = [
        {"symbol": "BTC", "decision": "EXECUTE", "action": "OPEN_LONG"},
        plan("", "BTC"),
        plan(" ", "BTC"),
        plan("a b", "BTC"),
        plan("tab\there", "BTC"),
        plan("trailing\n", "BTC"),
        plan("p" * 129, "BTC"),
        {"plan_id": "no-symbol", "decision": "EXECUTE", "action": "OPEN_LONG"},
        plan("empty-symbol", ""),
        plan("", "BTC", decision="HOLD"),  # step 1 comes before step 2
    ]
    ids = [publish(r, fields) for fields in invalid]
    publish(r, plan(long_id, "ETH"))  # 128 characters: valid

    govern(redis_server.url)

    raw = cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(DLQ))
    assert len(raw) == len(invalid)
    for (_, entry), source_id, original in zip(raw, ids, invalid, strict=True):
        fields = {k.decode(): v.decode() for k, v in entry.items()}
        assert fields == {**original, "reason": "invalid_plan", "source_id": source_id, "deliveries": "1"}
    events = stream_entries(r, EVENTS)
    assert [(e["event"], e["reason"], e["plan_id"], e["symbol"]) for e in events] == [
        *(("dead_letter", "invalid_plan", f.get("plan_id", ""), f.get("symbol", "")) for f in invalid),
        ("permit", "permitted", long_id, "ETH"),
    ]
    assert all(set(e) >= EVENT_KEYS for e in events)
    assert permit(r, long_id)["plan_id"] == long_id
    assert not r.exists(PERMIT + "no-symbol", PERMIT + "empty-symbol", PERMIT + "a b", BLOCK + "no-symbol")
    assert pending(r) == 0
    assert r.xlen(PLANS) == len(invalid) + 1  # acknowledged, never deleted from the plans stream


def test_non_execute_plans_are_skipped_and_start_nothing(r: redis.Redis, redis_server: RedisServer) -> None:
    decisions = ["HOLD", "SKIP", "execute", "Execute", "EXECUTE ", ""]
    for i, decision in enumerate(decisions):
        publish(r, plan(f"skip-{i}", "BTC", decision=decision, qty="1"))
    publish(r, {"plan_id": "skip-absent", "symbol": "BTC", "action": "OPEN_LONG"})
    publish(r, plan("after", "BTC"))  # no skip started a cooldown or counted toward a limit
    publish(r, plan("close-skip", "ETH", "CLOSE_LONG", decision="HOLD"))

    govern(redis_server.url)

    expected = {f"skip-{i}": SKIPPED for i in range(len(decisions))}
    assert_recorded(r, {**expected, "skip-absent": SKIPPED, "after": PERMITTED, "close-skip": SKIPPED})
    assert r.xlen(DLQ) == 0


def test_an_existing_permit_is_only_acknowledged(r: redis.Redis, redis_server: RedisServer) -> None:
    r.set(PERMIT + "pre-1", "someone else's permit", ex=500)
    existing = json.dumps({"granted": True, "plan_id": "pre-2", "eff_action": "DOWNSIZE"})
    r.set(PERMIT + "pre-2", existing, ex=500)
    publish(r, plan("pre-1", "BTC", qty="5"))
    publish(r, plan("pre-2", "ETH", "CLOSE_LONG"))
    publish(r, plan("next", "BTC"))  # the existing permit started no cooldown: nothing was written for it

    govern(redis_server.url)

    assert get_text(r, PERMIT + "pre-1") == "someone else's permit"
    assert get_text(r, PERMIT + "pre-2") == existing
    assert 490 < r.ttl(PERMIT + "pre-1") <= 500
    assert outcomes(r) == {"next": PERMITTED}
    assert not r.exists(BLOCK + "pre-1", BLOCK + "pre-2")
    assert pending(r) == 0


def test_a_non_execute_plan_is_skipped_even_when_its_permit_exists(r: redis.Redis, redis_server: RedisServer) -> None:
    """SPEC §3: step 2 (decision != EXECUTE -> skip) comes before step 3 (permit exists -> acknowledge only)."""
    r.set(PERMIT + "held", "earlier permit", ex=500)
    publish(r, plan("held", "BTC", decision="HOLD"))
    govern(redis_server.url)
    assert get_text(r, PERMIT + "held") == "earlier permit"
    assert outcomes(r) == {"held": SKIPPED}
    assert pending(r) == 0


def test_a_republished_plan_id_gets_one_permit_and_one_event_across_runs(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    publish(r, plan("again", "BTC", qty="1"))
    publish(r, plan("again", "BTC", qty="1"))
    publish(r, plan("again", "ETH", "CLOSE_LONG", qty="2"))  # same plan_id, other fields: still permitted already
    govern(redis_server.url)
    first = get_text(r, PERMIT + "again")
    assert_recorded(r, {"again": PERMITTED})
    assert permit(r, "again")["computed_qty"] == 1.0

    publish(r, plan("again", "BTC", qty="1"))
    govern(redis_server.url)  # a new process

    assert get_text(r, PERMIT + "again") == first
    assert_recorded(r, {"again": PERMITTED})
    assert r.xlen(EVENTS) == 1
    assert r.xlen(PLANS) == 4


def test_a_republished_plan_id_that_was_not_permitted_is_decided_again(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    """SPEC §3 step 3 acknowledges a plan only when a permit exists: a blocked or skipped plan_id published again
    goes through the decision again, one outcome per entry."""
    seed_gate(r, "HELD", last_ago=10, recent_ago=[10])
    publish(r, plan("retry", "HELD"))
    publish(r, plan("scored", "ETH", kill_score="0.9"))
    publish(r, plan("scored", "ETH", kill_score="0.9"))
    publish(r, plan("held", "SOL", decision="HOLD"))
    govern(redis_server.url)
    r.delete(GATE + "HELD")  # the cooldown is over
    publish(r, plan("retry", "HELD"))
    publish(r, plan("held", "SOL", decision="HOLD"))
    govern(redis_server.url)

    events = [(e["plan_id"], e["event"], e["reason"]) for e in stream_entries(r, EVENTS)]
    assert events == [
        ("retry", "block", "cooldown"),
        ("scored", "block", "kill_score"),
        ("scored", "block", "kill_score"),
        ("held", "skip", "not_execute"),
        ("retry", "permit", "permitted"),
        ("held", "skip", "not_execute"),
    ]
    assert permit(r, "retry")["symbol"] == "HELD"
    assert pending(r) == 0


def test_stale_plans_are_blocked_even_when_reducing(r: redis.Redis, redis_server: RedisServer) -> None:
    r.set(PERMIT + "stale-permitted", "already", ex=500)
    publish(r, plan("stale-open", "SA"), old_id(200))
    publish(r, plan("stale-close", "SB", "FULL_CLOSE_PROPOSED", reduceOnly="true"), old_id(199))
    publish(r, plan("stale-hold", "SC", decision="HOLD"), old_id(198))  # step 2 before step 4
    publish(r, plan("stale-permitted", "SE"), old_id(150))  # step 3 before step 4
    publish(r, plan("stale-nosym", ""), old_id(149))  # step 1 before step 4
    publish(r, plan("aged-100", "SD"), old_id(100))
    publish(r, plan("fresh", "SA"))  # the stale block started no cooldown
    started = time.time()

    govern(redis_server.url)

    assert_recorded(
        r, {"stale-open": ("block", "stale_plan"), "stale-close": ("block", "stale_plan"), "stale-hold": SKIPPED,
            "stale-nosym": ("dead_letter", "invalid_plan"), "aged-100": PERMITTED, "fresh": PERMITTED},
    )  # fmt: skip
    assert get_text(r, PERMIT + "stale-permitted") == "already"
    for plan_id, symbol in (("stale-open", "SA"), ("stale-close", "SB")):
        raw = get_text(r, BLOCK + plan_id)
        assert raw is not None
        record = json.loads(raw)
        assert set(record) == {"reason", "timestamp", "symbol", "plan_id"}
        assert (record["reason"], record["symbol"], record["plan_id"]) == ("stale_plan", symbol, plan_id)
        assert isinstance(record["timestamp"], float) and started - 1 <= record["timestamp"] <= time.time() + 1
        assert 3590 < r.ttl(BLOCK + plan_id) <= 3600


KILL_CASES: dict[str, tuple[dict[str, str], tuple[str, str, str]]] = {
    # plan_id: (fields, (expected reason with the switch at "1", at "reduce", disengaged))
    "k-open": (plan("k-open", "KA"), ("kill_switch", "kill_switch_reduce_only", "permitted")),
    "k-close": (plan("k-close", "KB", "CLOSE_LONG"), ("kill_switch", "permitted", "permitted")),
    "k-partial": (plan("k-partial", "KB", "PARTIAL_50"), ("kill_switch", "permitted", "permitted")),
    "k-flag": (plan("k-flag", "KC", "OPEN_SHORT", reduceOnly="1"), ("kill_switch", "permitted", "permitted")),
    "k-score": (plan("k-score", "KD", kill_score="0.9"), ("kill_switch", "kill_switch_reduce_only", "kill_score")),
    "k-hold": (plan("k-hold", "KE", decision="HOLD"), ("not_execute", "not_execute", "not_execute")),
    "k-lower": (plan("k-lower", "KF", "close_long"), ("kill_switch", "kill_switch_reduce_only", "permitted")),
}
EVENT_OF = {"permitted": "permit", "not_execute": "skip"}


@pytest.mark.parametrize("value", ["1", "reduce", None, "0", "REDUCE", "true", "1 ", "", "reduce_only"])
def test_kill_switch(r: redis.Redis, redis_server: RedisServer, value: str | None) -> None:
    if value is not None:
        r.set(KILL, value)
    publish(r, plan("k-stale", "KG"), old_id(300))  # step 4 before step 5
    for fields, _ in KILL_CASES.values():
        publish(r, fields)
    publish(r, plan("", "KH"))  # step 1 before step 5

    govern(redis_server.url)

    column = {"1": 0, "reduce": 1}.get(value or "", 2)
    expected = {plan_id: reasons[column] for plan_id, (_, reasons) in KILL_CASES.items()}
    found = outcomes(r)
    assert found.pop("") == ("dead_letter", "invalid_plan")
    assert found.pop("k-stale") == ("block", "stale_plan")
    assert found == {plan_id: (EVENT_OF.get(reason, "block"), reason) for plan_id, reason in expected.items()}
    for plan_id, reason in expected.items():
        assert bool(r.exists(PERMIT + plan_id)) == (reason == "permitted"), plan_id
    assert pending(r) == 0
    assert get_text(r, KILL) == value  # read, never written


def test_kill_score_blocks_non_reducing_plans_from_the_threshold(r: redis.Redis, redis_server: RedisServer) -> None:
    plans = [
        (plan("ks-080", "A080", kill_score="0.8"), ("block", "kill_score")),
        (plan("ks-079", "A079", kill_score="0.79"), PERMITTED),
        (plan("ks-1", "A1", kill_score="1"), ("block", "kill_score")),
        (plan("ks-0", "A0", kill_score="0"), PERMITTED),
        (plan("ks-close", "B", "CLOSE_LONG", kill_score="0.95"), PERMITTED),
        (plan("ks-full", "B", "FULL_CLOSE_PROPOSED", kill_score="0.99"), PERMITTED),
        (plan("ks-flag", "B", "OPEN_LONG", kill_score="1.0", reduceOnly="TRUE"), PERMITTED),
        # one symbol: a kill_score block starts no cooldown, and kill_score is checked before the cooldown
        (plan("x-1", "X", kill_score="0.9"), ("block", "kill_score")),
        (plan("x-2", "X", kill_score="0.1"), PERMITTED),
        (plan("x-3", "X", kill_score="0.85"), ("block", "kill_score")),
        (plan("x-4", "X", kill_score="0.2"), ("block", "cooldown")),
    ]
    for fields, _ in plans:
        publish(r, fields)
    govern(redis_server.url)
    assert_recorded(r, {fields["plan_id"]: expected for fields, expected in plans})


def test_cooldown_holds_a_symbol_and_survives_a_restart(r: redis.Redis, redis_server: RedisServer) -> None:
    seed_gate(r, "S61", last_ago=61, recent_ago=[61])
    seed_gate(r, "S30", last_ago=30, recent_ago=[30])
    first = [
        (plan("a-1", "A"), PERMITTED),
        (plan("a-close", "A", "CLOSE_SHORT"), PERMITTED),  # reducing plans are never held
        (plan("a-2", "A"), ("block", "cooldown")),
        (plan("b-1", "B"), PERMITTED),  # per symbol
        (plan("c-close", "C", "PARTIAL_10"), PERMITTED),
        (plan("c-1", "C"), PERMITTED),  # a reducing permit started no cooldown
        (plan("s61", "S61"), PERMITTED),
        (plan("s30", "S30"), ("block", "cooldown")),
    ]
    for fields, _ in first:
        publish(r, fields)
    govern(redis_server.url)
    expected = {fields["plan_id"]: outcome for fields, outcome in first}
    assert_recorded(r, expected)

    publish(r, plan("a-3", "A"))
    publish(r, plan("b-2", "B"))
    publish(r, plan("b-close", "B", "CLOSE_LONG"))
    govern(redis_server.url)  # a new process: the gate lives in Redis

    expected |= {"a-3": ("block", "cooldown"), "b-2": ("block", "cooldown"), "b-close": PERMITTED}
    assert_recorded(r, expected)


def test_no_cooldown_when_it_is_zero(r: redis.Redis, redis_server: RedisServer) -> None:
    seed_gate(r, "S1", last_ago=1, recent_ago=[1])
    for plan_id, symbol in (("z-1", "Z"), ("z-2", "Z"), ("s1", "S1")):
        publish(r, plan(plan_id, symbol))
    govern(redis_server.url, {"GOV_SYMBOL_COOLDOWN_SECONDS": "0"})
    assert_recorded(r, {"z-1": PERMITTED, "z-2": PERMITTED, "s1": PERMITTED})


def test_rate_limits_count_non_reducing_permits_and_survive_a_restart(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    env = {"GOV_SYMBOL_COOLDOWN_SECONDS": "0"}
    seed_gate(r, "H", last_ago=400, recent_ago=[1000, 400])  # two in the hour, none in 5 minutes
    seed_gate(r, "OLD", last_ago=3700, recent_ago=[7200, 3700, 3650])  # none within the hour
    first = [
        (plan("a-1", "A"), PERMITTED),
        (plan("a-c1", "A", "CLOSE_LONG"), PERMITTED),
        (plan("a-2", "A"), PERMITTED),
        (plan("a-c2", "A", "PARTIAL_50"), PERMITTED),
        (plan("a-3", "A"), ("block", "rate_limit_5min")),
        (plan("a-c3", "A", "FULL_CLOSE_PROPOSED"), PERMITTED),
        (plan("a-f", "A", reduceOnly="true"), PERMITTED),
        (plan("h-1", "H"), PERMITTED),
        (plan("h-2", "H"), ("block", "rate_limit_hour")),
        (plan("old-1", "OLD"), PERMITTED),
        (plan("old-2", "OLD"), PERMITTED),
        (plan("old-3", "OLD"), ("block", "rate_limit_5min")),
    ]
    for fields, _ in first:
        publish(r, fields)
    govern(redis_server.url, env)
    expected = {fields["plan_id"]: outcome for fields, outcome in first}
    assert_recorded(r, expected)

    publish(r, plan("a-4", "A"))
    govern(redis_server.url, env)  # a new process: the recent permits live in Redis
    expected["a-4"] = ("block", "rate_limit_5min")
    assert_recorded(r, expected)

    for i in range(1, 5):
        publish(r, plan(f"b-{i}", "B"))
    publish(r, plan("a-5", "A"))  # A's third in the hour
    publish(r, plan("a-6", "A"))
    govern(redis_server.url, {**env, "GOV_MAX_EXEC_PER_5MIN": "10"})
    expected |= {"b-1": PERMITTED, "b-2": PERMITTED, "b-3": PERMITTED, "b-4": ("block", "rate_limit_hour")}
    expected |= {"a-5": PERMITTED, "a-6": ("block", "rate_limit_hour")}
    assert_recorded(r, expected)


# --- events ----------------------------------------------------------------------------------------------------------


def test_every_outcome_adds_exactly_one_event_in_order(r: redis.Redis, redis_server: RedisServer) -> None:
    publish(r, plan("e-permit", "BTC"))
    publish(r, plan("e-skip", "BTC", decision="HOLD"))
    publish(r, plan("e-block", "ETH", kill_score="0.95"))
    publish(r, plan("e bad", "SOL"))
    publish(r, plan("e-permit", "BTC"))
    publish(r, plan("e-cool", "BTC"))
    started = time.time()
    govern(redis_server.url)

    events = stream_entries(r, EVENTS)
    assert [(e["event"], e["plan_id"], e["symbol"], e["reason"]) for e in events] == [
        ("permit", "e-permit", "BTC", "permitted"),
        ("skip", "e-skip", "BTC", "not_execute"),
        ("block", "e-block", "ETH", "kill_score"),
        ("dead_letter", "e bad", "SOL", "invalid_plan"),
        ("block", "e-cool", "BTC", "cooldown"),
    ]
    for event in events:
        assert set(event) >= EVENT_KEYS
        assert started - 1 <= float(event["ts"]) <= time.time() + 1


def test_events_stream_is_trimmed_approximately(r: redis.Redis, redis_server: RedisServer) -> None:
    for i in range(300):
        publish(r, plan(f"t-{i}", "BTC", decision="HOLD"))
    govern(redis_server.url, {"GOV_EVENTS_MAXLEN": "5"})
    # MAXLEN ~ drops whole macro nodes (100 entries each by default): at least 5 are kept, far fewer than 300
    assert 5 <= r.xlen(EVENTS) <= 100
    assert stream_entries(r, EVENTS)[-1]["plan_id"] == "t-299"
    assert pending(r) == 0


# --- consumption -----------------------------------------------------------------------------------------------------


def test_plans_delivered_too_often_are_dead_lettered(r: redis.Redis, redis_server: RedisServer) -> None:
    over_fields, at_fields = plan("over", "BTC", qty="1"), plan("at-limit", "ETH")
    over, _ = publish(r, over_fields), publish(r, at_fields)
    r.xgroup_create(PLANS, GROUP, id="0")
    r.xreadgroup(GROUP, CONSUMER, {PLANS: ">"})  # both delivered once, never acknowledged
    for _ in range(3):
        r.xreadgroup(GROUP, CONSUMER, {PLANS: "0"})  # both: 4 deliveries
    r.xreadgroup(GROUP, CONSUMER, {PLANS: "0"}, count=1)  # "over": 5
    publish(r, plan("new", "SOL"))

    govern(redis_server.url)  # re-reads its pending plans: "over" 6 > 5, "at-limit" 5

    raw = cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(DLQ))
    assert [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw] == [
        {**over_fields, "reason": "max_deliveries", "source_id": over, "deliveries": "6"}
    ]
    assert_recorded(r, {"over": ("dead_letter", "max_deliveries"), "at-limit": PERMITTED, "new": PERMITTED})
    assert stream_entries(r, EVENTS)[0]["symbol"] == "BTC"


def test_plans_pending_in_another_consumer_are_claimed(r: redis.Redis, redis_server: RedisServer) -> None:
    worn_fields = plan("worn", "ETH")
    worn = publish(r, worn_fields)
    publish(r, plan("orphan", "BTC"))
    r.xgroup_create(PLANS, GROUP, id="0")
    r.xreadgroup(GROUP, "crashed-replica", {PLANS: ">"})  # both delivered once, never acknowledged
    for _ in range(4):
        r.xreadgroup(GROUP, "crashed-replica", {PLANS: "0"}, count=1)  # "worn" only: 5 deliveries
    time.sleep(0.05)

    govern(redis_server.url, {"GOV_CLAIM_IDLE_MS": "10"})  # the claim is a delivery: "worn" 6, "orphan" 2

    assert_recorded(r, {"worn": ("dead_letter", "max_deliveries"), "orphan": PERMITTED})
    assert stream_entries(r, DLQ) == [{**worn_fields, "reason": "max_deliveries", "source_id": worn, "deliveries": "6"}]
    consumers = r.xinfo_consumers(PLANS, GROUP)
    assert {c["name"]: c["pending"] for c in consumers} == {b"crashed-replica": 0, CONSUMER.encode(): 0}


def test_plans_published_before_the_group_exists_are_all_decided(r: redis.Redis, redis_server: RedisServer) -> None:
    ids = [publish(r, plan(f"early-{i}", f"S{i}")) for i in range(5)]
    assert not r.exists(GATE + "S0")
    govern(redis_server.url)
    assert_recorded(r, {f"early-{i}": PERMITTED for i in range(5)})
    groups = r.xinfo_groups(PLANS)
    assert [(g["name"], g["pending"], g["last-delivered-id"]) for g in groups] == [
        (GROUP.encode(), 0, ids[-1].encode())
    ]


def test_custom_stream_and_group_names(r: redis.Redis, redis_server: RedisServer) -> None:
    stream = "custom:plans"
    publish(r, plan("c-ok", "BTC"), stream=stream)
    bad = publish(r, plan("c bad", "BTC"), stream=stream)
    govern(redis_server.url, {"STREAM_PLANS": stream, "GOV_GROUP": "g2"})
    assert outcomes(r) == {"c-ok": PERMITTED, "c bad": ("dead_letter", "invalid_plan")}
    assert stream_entries(r, stream + ".dlq") == [
        {**plan("c bad", "BTC"), "reason": "invalid_plan", "source_id": bad, "deliveries": "1"}
    ]
    assert pending(r, stream, "g2") == 0
    assert not r.exists(PLANS, DLQ)


# --- metrics ---------------------------------------------------------------------------------------------------------


def block_total(daemon: Daemon, symbol: str, reason: str) -> float | None:
    """``quantum_govern_block_total{symbol,reason}``, whatever order the exposition writes its labels in."""
    for family in text_string_to_metric_families(daemon.get("/metrics")[1]):
        for sample in family.samples:
            if sample.name == "quantum_govern_block_total" and sample.labels == {"symbol": symbol, "reason": reason}:
                return float(sample.value)
    return None


EFF_REASONS = ("redis_error", "missing_eff", "invalid_eff", "stale_eff", "low_conf", "ok", "reduce_only")


def test_metrics_count_each_outcome_once(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    set_eff(r, "DOWN", "0.2")
    set_eff(r, "FULL", "0.9")
    env = daemon_env(redis_server.url, {"GOV_CONSUMER": CONSUMER, "GOV_BLOCK_MS": "100"})
    daemon = Daemon(MODULE, env, tmp_path / "governor.log")
    try:
        daemon.wait_for(lambda: r.exists(PLANS), what="the group")
        apply = "p32_eff_apply_total"
        for reason in EFF_REASONS:  # pre-created at 0
            assert daemon.metric(apply, f'action="NONE",reason="{reason}"') == 0.0, reason
        assert daemon.metric(apply, 'action="DOWNSIZE",reason="ok"') == 0.0
        assert daemon.metric(apply, 'action="NONE",reason="disabled"') is None
        assert daemon.metric(apply, 'action="DOWNSIZE",reason="missing_eff"') is None
        for reason in ("invalid_plan", "max_deliveries"):
            assert daemon.metric("quantum_govern_dead_letter_total", f'reason="{reason}"') == 0.0

        for fields in (
            plan("m-down", "DOWN", qty="9"),
            plan("m-down-2", "DOWN"),  # cooldown
            plan("m-full", "FULL"),
            plan("m-close", "FULL", "CLOSE_LONG"),
            plan("m-miss", "MISS"),
            plan("m-kill", "MISS", kill_score="0.9"),
            plan("m bad", "BAD"),
            plan("m-hold", "FULL", decision="HOLD"),
            plan("m-down", "DOWN", qty="9"),  # republished: counted once
        ):
            publish(r, fields)
        daemon.wait_for(lambda: r.xlen(EVENTS) >= 8 and pending(r) == 0, what="eight outcomes")
        daemon.wait_for(
            lambda: daemon.metric("quantum_govern_dead_letter_total", 'reason="invalid_plan"') == 1.0,
            what="the metrics of the batch",
        )
        assert daemon.metric(apply, 'action="DOWNSIZE",reason="ok"') == 1.0
        assert daemon.metric(apply, 'action="NONE",reason="ok"') == 1.0
        assert daemon.metric(apply, 'action="NONE",reason="reduce_only"') == 1.0
        assert daemon.metric(apply, 'action="NONE",reason="missing_eff"') == 1.0
        for reason in ("redis_error", "invalid_eff", "stale_eff", "low_conf"):
            assert daemon.metric(apply, f'action="NONE",reason="{reason}"') == 0.0, reason
        assert daemon.metric("quantum_govern_allow_total", 'symbol="DOWN"') == 1.0
        assert daemon.metric("quantum_govern_allow_total", 'symbol="FULL"') == 2.0
        assert daemon.metric("quantum_govern_allow_total", 'symbol="MISS"') == 1.0
        assert block_total(daemon, "DOWN", "cooldown") == 1.0
        assert block_total(daemon, "MISS", "kill_score") == 1.0
        assert daemon.metric("quantum_govern_dead_letter_total", 'reason="max_deliveries"') == 0.0
        assert daemon.metric("p32_eff_factor", 'symbol="DOWN"') == pytest.approx(0.2 / 0.45)
        assert daemon.metric("p32_eff_factor", 'symbol="FULL"') == 1.0
        assert daemon.metric("p32_eff_factor", 'symbol="MISS"') == 1.0
        code, took = daemon.terminate()
        assert code == 0 and took < 5
    finally:
        daemon.close()


def test_metrics_in_off_mode_have_only_the_disabled_series(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    set_eff(r, "DOWN", "0.2")
    env = daemon_env(redis_server.url, {"GOV_CONSUMER": CONSUMER, "GOV_BLOCK_MS": "100", "P31_GOV_MODE": "off"})
    daemon = Daemon(MODULE, env, tmp_path / "governor.log")
    try:
        apply = "p32_eff_apply_total"
        daemon.wait_for(lambda: daemon.metric(apply, 'action="NONE",reason="disabled"') == 0.0, what="metrics")
        for reason in EFF_REASONS:
            assert daemon.metric(apply, f'action="NONE",reason="{reason}"') is None, reason
        assert daemon.metric(apply, 'action="DOWNSIZE",reason="ok"') is None
        publish(r, plan("off-1", "DOWN"))
        publish(r, plan("off-2", "DOWN", "CLOSE_LONG"))
        daemon.wait_for(lambda: daemon.metric(apply, 'action="NONE",reason="disabled"') == 2.0, what="two permits")
        assert daemon.metric("p32_eff_factor", 'symbol="DOWN"') == 1.0
    finally:
        daemon.close()


def test_keys_of_the_wrong_type_fail_open_and_are_reported(r: redis.Redis, redis_server: RedisServer) -> None:
    """A kill switch that is not a string reads as disengaged; a gate or outcome marker of another type reads as
    absent and is written anew; an efficiency key of another type is redis_error. Each is counted and logged, and
    nothing crashes."""
    r.rpush(KILL, "1")
    r.rpush(GATE + "G", "junk")  # the governor's own keys: replaced by the next permit
    r.rpush("quantum:governor:outcome:m-1", "junk")
    r.set(GATE + "J", "{not json")
    r.rpush(EFF + "L", "0.2")
    for fields in (plan("g-1", "G"), plan("m-1", "M"), plan("j-1", "J"), plan("l-1", "L")):
        publish(r, fields)
    log = govern(redis_server.url)
    assert_recorded(r, {"g-1": PERMITTED, "m-1": PERMITTED, "j-1": PERMITTED, "l-1": PERMITTED})
    assert "kill switch quantum:kill cannot be read" in log
    assert "gate of J cannot be used" in log
    assert r.type(GATE + "G") == b"string" and json.loads(get_text(r, GATE + "G") or "")["last_plan_id"] == "g-1"
    assert get_text(r, "quantum:governor:outcome:m-1") is not None
    assert hint(r, "l-1")[:4] == (*NEUTRAL, "redis_error")
    assert r.lrange(KILL, 0, -1) == [b"1"]  # never written


def test_a_permit_key_of_another_type_is_never_overwritten(r: redis.Redis, redis_server: RedisServer) -> None:
    r.hset(PERMIT + "h-1", "foreign", "1")
    publish(r, plan("h-1", "H"))
    log = govern(redis_server.url)
    assert r.hgetall(PERMIT + "h-1") == {b"foreign": b"1"}
    assert "a permit for this plan_id exists; acknowledged only" in log  # SPEC §3 step 3, whatever its type
    assert outcomes(r) == {}
    assert pending(r) == 0


def test_dead_letters_stay_pending_while_the_dead_letter_stream_cannot_take_them(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    r.set(DLQ, "not a stream")
    publish(r, {"symbol": "X", "decision": "EXECUTE"})  # no plan_id: a dead letter
    publish(r, plan("ok-1", "X", "CLOSE"))
    log = govern(redis_server.url)
    assert "dead letter(s) left pending" in log and "is a string, not a stream" in log
    assert outcomes(r) == {"ok-1": PERMITTED}  # the rest of the batch is decided
    assert pending(r) == 1
    r.delete(DLQ)
    govern(redis_server.url)  # the next pass over the pending list delivers it again
    assert [d["reason"] for d in stream_entries(r, DLQ)] == ["invalid_plan"]
    assert pending(r) == 0
