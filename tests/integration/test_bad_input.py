"""Bad input at the process level (issue 5 item 3): the real daemons, ``--once``, against a real Redis holding
hypothesis-drawn hostile efficiency hashes, targets and plans, keys of the wrong type, a 10,000-field hash and 1 MB
values. They never crash (exit 0), every output stays within its bounds, and every bad input gets a reason.

The hypothesis tests draw whole Redis contents (~200 symbols or plans per example) and run one daemon loop per example:
a few examples cover ~1,000 hostile inputs at ~1 s each. ``test_bad_input_properties.py`` covers thousands of
examples on the pure functions.
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microservices.core.efficiency import EfficiencyPolicy, EffReason, classify_values
from microservices.devtools.redis_server import RedisServer
from microservices.governor.plan import MAX_SHOWN_ID_LENGTH
from tests.daemons import run_once
from tests.redis_util import stream_entries

PROPOSER, GOVERNOR = "microservices.allocation_target", "microservices.governor"
LIVE = b"quantum:allocation:target:"
PROPOSED = b"quantum:allocation:target:proposed:"
EFF = b"quantum:capital:efficiency:"
PROPOSALS = "quantum:stream:allocation.target.proposed"
PLANS = "quantum:stream:apply.plan"
DLQ = PLANS + ".dlq"
EVENTS = "quantum:stream:governor.events"
PERMIT = "quantum:permit:"
EFF_REASONS = {reason.value for reason in EffReason}
#: The proposer's defaults (SPEC §4): min/max multiplier, and the efficiency policy.
MIN_MULT, MAX_MULT = 0.5, 1.5
PROPOSER_POLICY = EfficiencyPolicy(min_conf=0.65, stale_sec=600.0, max_future_sec=60.0)
#: The governor's settings under test: the downsize bounds the permits are held to.
MIN_FACTOR, MAX_EXTRA = 0.25, 120
PROCESS_EXAMPLES = settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.data_too_large, HealthCheck.too_slow],
)

# --- hostile values, as bytes ---------------------------------------------------------------------------------------

HOSTILE = [
    b"nan", b"-nan", b"inf", b"-Infinity", b"1e309", b"-0", b"0x1p-1", b"1_0", "\uff10.\uff15".encode(),
    "\u0660.\u0665".encode(),
    "\u06f0.\u06f5".encode(), b" 0.5", b"0.5 ", b"\t0.5\n", b"0.5 # note", b"9" * 400, b"", b"\xff\xfe", b"0.5\x00",
    b"1e-320",
    b"1.7976931348623157e308", b"0.5e", b"--1", b"0,5",
]  # fmt: skip
#: A Redis key's contents drawn from hypothesis, ~200 symbols or plans per example, are more than hypothesis lets one
#: example draw; so each example draws a seed, and a seeded ``random.Random`` builds the contents from it.
SYMBOLS = [b"A:B", b"*", b"{BTC}", b"B T C", b"BTC\n", "🚀".encode(), b"x" * 1000, b"\xff\xfe", b"a*{b}"]
TS_KINDS = ["fresh", "stale", "future", "fresh_ms"]


def any_value(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.choice(HOSTILE)
    if kind == 1:
        return repr(rng.random()).encode()
    if kind == 2:
        return repr(rng.choice([1e308, 5e-324, -0.0, 1e-7, 0.5, 1.0, 0.0, -1.0, 2.0])).encode()
    if kind == 3:
        return rng.randbytes(rng.randrange(30))
    return f"{rng.uniform(-0.5, 1.5):.6f}".encode()


def any_symbol(rng: random.Random) -> bytes:
    kind = rng.randrange(3)
    if kind == 0:
        return "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=rng.randrange(2, 12))).encode()
    if kind == 1:
        return rng.choice(SYMBOLS)
    return rng.randbytes(rng.randrange(1, 20))


def resolve_ts(kind: str, now: float) -> bytes:
    """Timestamps well away from every boundary (fresh, stale, future), so the daemon's clock and the test's agree."""
    if kind == "fresh_ms":
        return str(int((now - 10) * 1000)).encode()
    return repr(now + {"fresh": -10.0, "stale": -10_000.0, "future": 10_000.0}[kind]).encode()


def efficiency_hash(rng: random.Random, now: float) -> dict[bytes, bytes] | None:
    """None (absent), or a hash with any of the four fields, hostile or not, and any other fields besides."""
    if rng.randrange(10) == 0:
        return None
    fields = {rng.randbytes(rng.randrange(1, 10)): any_value(rng) for _ in range(rng.randrange(3))}
    for name in (b"efficiency_score", b"confidence"):
        if rng.randrange(6):
            fields[name] = any_value(rng)
    for name in (b"ts", b"timestamp"):
        if rng.randrange(3):
            fields[name] = resolve_ts(rng.choice(TS_KINDS), now) if rng.randrange(3) else any_value(rng)
    return fields or None


def hmget_values(fields: dict[bytes, bytes] | None) -> list[bytes | None] | None:
    if fields is None:
        return None
    return [fields.get(name) for name in (b"efficiency_score", b"confidence", b"ts", b"timestamp")]


# --- the proposer -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
@PROCESS_EXAMPLES
@given(seed=st.integers(0, 2**64))
def test_proposer_on_hostile_hashes_and_symbols_stays_in_bounds(
    r: redis.Redis, redis_server: RedisServer, seed: int
) -> None:
    r.flushall()
    rng = random.Random(seed)
    now = time.time()
    symbols = list(dict.fromkeys(any_symbol(rng) for _ in range(200)))
    expected: dict[bytes, tuple[bytes, list[bytes | None] | None]] = {}
    pipe = r.pipeline(transaction=False)
    for symbol in symbols:
        target = rng.choice([b"100", b"0", b"1e308", b"-5", b"nan", b"", b" 5", any_value(rng)])
        eff = efficiency_hash(rng, now)
        pipe.hset(LIVE + symbol, mapping={b"target_usd": target})
        if eff is not None:
            pipe.hset(EFF + symbol, mapping=cast(Any, eff))
        expected[symbol] = (target, hmget_values(eff))
    pipe.execute()

    result = run_once(PROPOSER, redis_server.url)
    assert result.returncode == 0, result.stderr[-3000:]
    now = time.time()
    proposed = 0
    for symbol, (target, values) in expected.items():
        shadow = cast(dict[bytes, bytes], r.hgetall(PROPOSED + symbol))
        if b":" in symbol:  # not a symbol (SPEC §2): never proposed
            assert shadow == {}
            continue
        base = _plain_target(target)
        if base is None:  # no proposal: counted as skipped with its reason (checked in the log below)
            assert shadow == {}, symbol
            continue
        if not shadow:  # only a base that overflows when scaled may be skipped too
            assert not math.isfinite(base * MAX_MULT), symbol
            continue
        proposed += 1
        reason = shadow[b"reason"].decode()
        reading = classify_values(values, now, PROPOSER_POLICY)
        assert reason == reading.reason.value, (symbol, values, shadow)
        multiplier = float(shadow[b"multiplier"])
        if reason == "ok":
            assert MIN_MULT <= multiplier <= MAX_MULT
        else:
            assert shadow[b"multiplier"] == b"1.0000"
        assert shadow[b"symbol"] == symbol and shadow[b"mode"] == b"shadow"
        assert r.ttl(PROPOSED + symbol) > 0
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(PROPOSALS))
    assert len(entries) == proposed
    assert all(fields[b"reason"].decode() in EFF_REASONS for _, fields in entries)
    if proposed < sum(1 for s in expected if b":" not in s):
        assert "no proposal, invalid_target" in result.stderr  # every skip has its reason in the log
    assert len(result.stderr) < 20_000  # problems are summarised per kind, never one line per symbol


def _plain_target(raw: bytes) -> float | None:
    """What SPEC §2 accepts as a base target, judged independently of the code: plain ASCII decimal, finite, >= 0."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    allowed = set("0123456789.+-eE")
    if not text or len(text) > 64 or set(text) - allowed:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


# --- the governor -----------------------------------------------------------------------------------------------------


def absurd_number(rng: random.Random) -> bytes:
    if rng.randrange(2):
        return rng.choice([b"1e308", b"-1e308", b"-5", b"-0", b"0", b"inf", b"nan", b"9" * 400, b"", b"0x10", b"\xff"])
    return repr(rng.uniform(-1e6, 1e6)).encode() if rng.randrange(2) else any_value(rng)


def absurd_plan(rng: random.Random, index: int) -> dict[bytes, bytes]:
    plan: dict[bytes, bytes] = {}
    kind = rng.randrange(10)
    if kind == 1:
        plan[b"plan_id"] = rng.choice([b"p" * 10_000, b"a b", b"", b"\xff\xfe", b"x\n"])
    elif kind > 1:
        plan[b"plan_id"] = f"plan-{index}".encode() + rng.choice([b"", b":x", b"*", b"{1}", "🚀".encode()])
    if rng.randrange(10):
        plan[b"symbol"] = rng.choice([b"BTC", b"ETH", b"SOL", any_symbol(rng)])
    plan[b"decision"] = rng.choice([b"EXECUTE"] * 4 + [b"HOLD", b"execute", b""])
    plan[b"action"] = rng.choice([b"OPEN_LONG", b"OPEN_SHORT", b"CLOSE_LONG", b"PARTIAL_50", b"\xff"])
    for name in (b"qty", b"kill_score"):
        if rng.randrange(2):
            plan[name] = absurd_number(rng)
    if rng.randrange(2):
        plan[b"reduceOnly"] = rng.choice([b"true", b"0", b"TRUE"])
    return plan


@pytest.mark.slow
@pytest.mark.timeout(300)
@PROCESS_EXAMPLES
@given(seed=st.integers(0, 2**64), mode=st.sampled_from(["hint", "enforce", "off"]))
def test_governor_on_absurd_plans_gives_every_plan_one_bounded_outcome(
    r: redis.Redis, redis_server: RedisServer, seed: int, mode: str
) -> None:
    r.flushall()
    rng = random.Random(seed)
    now = time.time()
    pipe = r.pipeline(transaction=False)
    for symbol in (b"BTC", b"ETH", b"SOL"):
        eff = efficiency_hash(rng, now)
        if eff is not None:
            pipe.hset(EFF + symbol, mapping=cast(Any, eff))
    plans = [absurd_plan(rng, i) for i in range(200)]
    for plan in plans:
        pipe.xadd(PLANS, cast(Any, plan))
    entry_ids = [entry_id.decode() for entry_id in cast(list[bytes], pipe.execute()[-len(plans) :])]

    env = {"GOV_CONSUMER": "gov-test", "P31_GOV_MODE": mode, "GOV_SYMBOL_COOLDOWN_SECONDS": "0",
           "P31_MIN_FACTOR": str(MIN_FACTOR), "P31_MAX_EXTRA_COOLDOWN_SEC": str(MAX_EXTRA)}  # fmt: skip
    result = run_once(GOVERNOR, redis_server.url, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(r.xpending(PLANS, "governor")["pending"]) == 0  # every plan decided

    events = stream_entries_raw(r, EVENTS)
    dead = stream_entries_raw(r, DLQ)
    by_entry = {fields[b"source_id"].decode(): fields for fields in events}
    assert len(by_entry) == len(events)  # one event per entry (plan_ids are unique: none is already decided)
    assert set(by_entry) == set(entry_ids)
    assert {fields[b"source_id"].decode() for fields in dead} == {
        entry for entry, fields in by_entry.items() if fields[b"event"] == b"dead_letter"
    }
    for fields in dead:
        assert fields[b"reason"] in (b"invalid_plan", b"max_deliveries")
    for entry_id, plan in zip(entry_ids, plans, strict=True):
        event = by_entry[entry_id]
        assert event[b"reason"], event  # every outcome has its reason
        assert len(event[b"plan_id"]) <= 4 * (MAX_SHOWN_ID_LENGTH + 3)  # bounded, whatever the plan held
        if event[b"event"] == b"permit":
            check_permit(r, plan, mode)


def stream_entries_raw(r: redis.Redis, name: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(name))]


def refuse_constant(constant: str) -> object:
    raise AssertionError(f"{constant} in a permit")


def check_permit(r: redis.Redis, plan: dict[bytes, bytes], mode: str) -> None:
    raw = cast(bytes, r.get(PERMIT.encode() + plan[b"plan_id"]))
    permit = json.loads(raw, parse_constant=refuse_constant)
    factor = float(permit["eff_factor"])
    assert MIN_FACTOR <= factor <= 1.0 and permit["downsize_factor"] == permit["eff_factor"]
    assert permit["extra_cooldown_sec"].isdigit() and 0 <= int(permit["extra_cooldown_sec"]) <= MAX_EXTRA
    assert permit["eff_reason"] in EFF_REASONS | {"reduce_only", "disabled"}
    qty = float(plan[b"qty"]) if plan.get(b"qty") else 0.0  # a permit's qty was a finite number (or absent)
    if mode == "enforce":
        assert abs(permit["computed_qty"]) <= abs(qty) and permit["computed_qty"] * qty >= 0
    else:
        assert permit["computed_qty"] == qty


# --- keys of the wrong type -------------------------------------------------------------------------------------------

WRONG_TYPES = ["string", "list", "set", "zset", "stream"]


def make_key(r: redis.Redis, key: bytes, kind: str) -> None:
    if kind == "string":
        r.set(key, "x")
    elif kind == "list":
        r.rpush(key, "x")
    elif kind == "set":
        r.sadd(key, "x")
    elif kind == "zset":
        r.zadd(key, {"x": 1.0})
    else:
        r.xadd(key, {"x": "1"})


def test_proposer_with_keys_of_every_wrong_type(r: redis.Redis, redis_server: RedisServer) -> None:
    """Under the efficiency key: redis_error, multiplier 1.0. Under the live target key: not a symbol at all (SPEC
    §2: symbols are the hashes). Under the shadow key: no proposal, skipped as redis_error, the key untouched."""
    fresh = {"efficiency_score": "0.9", "confidence": "0.9", "ts": str(time.time())}
    for kind in WRONG_TYPES:
        sym = kind.upper().encode()
        r.hset(LIVE + b"EFF" + sym, "target_usd", "100")
        make_key(r, EFF + b"EFF" + sym, kind)
        make_key(r, LIVE + b"LIVE" + sym, kind)
        r.hset(LIVE + b"SHADOW" + sym, "target_usd", "100")
        r.hset(EFF + b"SHADOW" + sym, mapping=cast(Any, fresh))
        make_key(r, PROPOSED + b"SHADOW" + sym, kind)
        r.expire(PROPOSED + b"SHADOW" + sym, 5000)
    r.hset(LIVE + b"GOOD", "target_usd", "100")
    r.hset(EFF + b"GOOD", mapping=cast(Any, fresh))
    result = run_once(PROPOSER, redis_server.url)
    assert result.returncode == 0, result.stderr
    for kind in WRONG_TYPES:
        sym = kind.upper().encode()
        shadow = cast(dict[bytes, bytes], r.hgetall(PROPOSED + b"EFF" + sym))
        assert (shadow[b"reason"], shadow[b"multiplier"], shadow[b"eff_score"]) == (b"redis_error", b"1.0000", b"")
        assert not r.exists(PROPOSED + b"LIVE" + sym)
        assert r.type(LIVE + b"LIVE" + sym) == kind.encode()  # never written
        assert r.type(PROPOSED + b"SHADOW" + sym) == kind.encode()
        assert 4900 < r.ttl(PROPOSED + b"SHADOW" + sym) <= 5000  # its TTL untouched too
    assert cast(dict[bytes, bytes], r.hgetall(PROPOSED + b"GOOD"))[b"multiplier"] == b"1.4000"
    assert "no proposal, redis_error: 5 symbol(s)" in result.stderr
    assert "redis_error (multiplier held at 1.0): 5 symbol(s)" in result.stderr


def test_governor_with_efficiency_keys_of_every_wrong_type(r: redis.Redis, redis_server: RedisServer) -> None:
    for kind in WRONG_TYPES:
        make_key(r, EFF + kind.encode(), kind)
        r.xadd(PLANS, {"plan_id": f"w-{kind}", "symbol": kind, "decision": "EXECUTE", "action": "OPEN", "qty": "4"})
    result = run_once(GOVERNOR, redis_server.url, {"GOV_CONSUMER": "gov-test", "P31_GOV_MODE": "enforce"})
    assert result.returncode == 0, result.stderr
    for kind in WRONG_TYPES:
        permit = json.loads(cast(bytes, r.get(f"{PERMIT}w-{kind}")))
        hint = (permit["eff_action"], permit["eff_factor"], permit["extra_cooldown_sec"], permit["eff_reason"])
        assert hint == ("NONE", "1.0000", "0", "redis_error"), kind
        assert permit["computed_qty"] == 4.0
        assert r.type(EFF + kind.encode()) == kind.encode()


# --- bounded cost: what is read and held ------------------------------------------------------------------------------


def loop_cost(r: redis.Redis, redis_server: RedisServer) -> tuple[dict[str, int], int]:
    """One proposer loop's commands (name -> calls) and bytes Redis sent, from Redis's own counters."""
    r.config_resetstat()
    result = run_once(PROPOSER, redis_server.url)
    assert result.returncode == 0, result.stderr
    stats = r.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    return calls, int(r.info("stats")["total_net_output_bytes"])


def test_a_10000_field_hash_costs_what_a_4_field_one_does(r: redis.Redis, redis_server: RedisServer) -> None:
    """HMGET of the four fields, never HGETALL: the reply, and so what crosses the wire and is held, is the same
    for a hash of 10,000 fields (~200 kB) as for one of 4. The bound: the two loops' output bytes differ by less
    than 1 kB (INFO replies and timestamps), where reading the big hash whole would add ~200 kB."""
    fields = {"efficiency_score": "0.9", "confidence": "0.9", "ts": str(time.time() + 30)}
    r.hset(LIVE + b"BIG", "target_usd", "100")
    r.hset(EFF + b"BIG", mapping=cast(Any, fields))
    small_calls, small_bytes = loop_cost(r, redis_server)
    r.hset(EFF + b"BIG", mapping=cast(Any, {f"junk{i:05d}": "y" * 10 for i in range(9_996)}))
    assert r.hlen(EFF + b"BIG") == 9_999
    big_calls, big_bytes = loop_cost(r, redis_server)
    assert "hgetall" not in big_calls and "hscan" not in big_calls and "hkeys" not in big_calls
    assert big_calls.get("hmget") == small_calls.get("hmget") == 1
    assert abs(big_bytes - small_bytes) < 1_000, (small_bytes, big_bytes)
    assert r.hget(PROPOSED + b"BIG", "reason") == b"ok"


def test_a_1mb_score_is_read_once_and_gives_invalid_eff(r: redis.Redis, redis_server: RedisServer) -> None:
    """The 1 MB value crosses the wire once (the loop's output grows by 1 MB and less than 1 MB + 10 kB), is
    refused as invalid_eff, and shows up cut in the log (which stays small)."""
    r.hset(LIVE + b"HUGE", "target_usd", "100")
    r.hset(EFF + b"HUGE", mapping={"efficiency_score": "0.5", "confidence": "0.9", "ts": str(time.time() + 30)})
    _, baseline = loop_cost(r, redis_server)
    r.hset(EFF + b"HUGE", "efficiency_score", b"5" * (1 << 20))
    _, huge = loop_cost(r, redis_server)
    grown = huge - baseline
    assert (1 << 20) - 100 <= grown < (1 << 20) + 10_000, grown
    shadow = cast(dict[bytes, bytes], r.hgetall(PROPOSED + b"HUGE"))
    assert (shadow[b"reason"], shadow[b"multiplier"], shadow[b"eff_score"]) == (b"invalid_eff", b"1.0000", b"")
    result = run_once(PROPOSER, redis_server.url)  # once more, for its log
    assert "efficiency_score '5555" in result.stderr and len(result.stderr) < 10_000


@pytest.mark.parametrize("name", ["plan_id", "symbol", "qty"])
def test_a_1mb_plan_field_is_a_dead_letter_with_a_bounded_event_and_log(
    r: redis.Redis, redis_server: RedisServer, name: str
) -> None:
    """The dead letter keeps the plan as published (1 MB, SPEC §3); the event and the log name it cut."""
    plan = {"plan_id": "big-1", "symbol": "BTC", "decision": "EXECUTE", "action": "OPEN", "qty": "1", name: "9" * 2**20}
    entry_id = cast(bytes, r.xadd(PLANS, cast(Any, plan)))
    result = run_once(GOVERNOR, redis_server.url, {"GOV_CONSUMER": "gov-test"})
    assert result.returncode == 0, result.stderr
    [event] = stream_entries(r, EVENTS)
    assert (event["event"], event["reason"], event["source_id"]) == ("dead_letter", "invalid_plan", entry_id.decode())
    assert len(event["plan_id"]) <= MAX_SHOWN_ID_LENGTH + 3 and len(event["symbol"]) <= MAX_SHOWN_ID_LENGTH + 3
    [dead] = stream_entries_raw(r, DLQ)
    assert dead[name.encode()] == b"9" * 2**20 and dead[b"reason"] == b"invalid_plan"
    assert len(result.stderr) < 10_000
