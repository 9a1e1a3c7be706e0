"""Bad input on the pure functions, thousands of examples (issue 5 item 3): hostile efficiency hashes and absurd plans
never raise, every output stays within its bounds, every bad input gets a reason, and a 1 MB value costs what a short
one does.

What ``test_efficiency.py``, ``test_numbers.py``, ``test_multiplier.py`` and ``test_governor_decision.py`` already
show is not repeated: they classify arbitrary short text and bound each formula alone. Here the hostile spellings of
*valid* numbers (unicode digits, white space, hex floats, ``1e309``, 400 digits, ...) are generated on purpose, and a
reading is followed all the way to what the daemons write: the proposal's fields and the permit's JSON.
"""

from __future__ import annotations

import json
import math
import re
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microservices.allocation_target.multiplier import MultiplierParams
from microservices.allocation_target.proposal import Skip, SkipReason
from microservices.allocation_target.proposal import decide as propose
from microservices.core.efficiency import (
    CONFIDENCE_FIELD,
    SCORE_FIELD,
    EfficiencyPolicy,
    EfficiencyReading,
    EffReason,
    classify_values,
)
from microservices.core.numbers import MAX_NUMBER_LENGTH, Raw, parse_float, show_raw
from microservices.core.settings import load_settings
from microservices.governor.decision import (
    BLOCK_REASONS,
    DEAD_LETTER_REASONS,
    Event,
    Facts,
    KillSwitch,
    Outcome,
    Policy,
    Reason,
    decide,
)
from microservices.governor.downsize import DISABLED, REDUCE_ONLY, DownsizeParams
from microservices.governor.gate import GateLimits
from microservices.governor.plan import MAX_ID_LENGTH, MAX_SHOWN_ID_LENGTH, InvalidPlan, Plan, parse_plan
from microservices.governor.records import dead_letter_fields, event_args, permit_json
from microservices.governor.settings import GovernorSettings, Mode

NOW = 1_800_000_000.0
POLICY = EfficiencyPolicy(min_conf=0.65, stale_sec=600.0, max_future_sec=60.0)
ENTRY_ID = f"{int((NOW - 1) * 1000)}-0"
EFF_REASONS = {reason.value for reason in EffReason}

# --- hostile numbers -------------------------------------------------------------------------------------------------

#: Digits of other scripts, which ``float()`` accepts as numbers: fullwidth, Arabic-Indic, Extended Arabic-Indic,
#: Devanagari, Bengali, Thai, mathematical bold.
UNICODE_ZEROS = (0xFF10, 0x0660, 0x06F0, 0x0966, 0x09E6, 0x0E50, 0x1D7CE)
SPACES = [" ", "\t", "\n", "\r", "\v", "\f", "\u00a0", "\u2003", "\u3000", "\ufeff"]
NAMED = [
    "nan", "NaN", "-nan", "+nan", "inf", "-inf", "Infinity", "-Infinity", "infinity", "1e309", "-1e309", "1e999",
    "0x1p-1", "0X.8P0", "0x0.8p+0", "1_0", "0_.5", "0.5_", "0,5", "½", "0.5 # note", "0.5;", "0.5\x00", "\x000.5",
    "", " ", "+", "-", ".", "e", "e5", "1e", "--1", "0.5.", "0.5e", "\uff11", "\u0660.\u0665", "\u06f0.\u06f5",
    "\u0966.\u096b", "\uff10.\uff15", "\U0001d7ce.\U0001d7d3", "0b1",
    "0o1", "1j", "True", "None", "null", "0.5f", "5%", "0.5\u200b",
]  # fmt: skip


def _unicode_digits(text: str, zero: int) -> str:
    return "".join(chr(zero + int(c)) if c.isdigit() else c for c in text)


@st.composite
def hostile_spelling(draw: st.DrawFn, valid: str) -> str | bytes:
    """``valid`` (a plain decimal number) spelled so that Python's ``float()`` may still read it, but no producer
    of plain ASCII decimal does: other digits, surrounding or inner white space, underscores, a comment."""
    how = draw(st.sampled_from(["digits", "space", "underscore", "comment", "utf16", "latin1-nbsp"]))
    if how == "digits":
        return _unicode_digits(valid, draw(st.sampled_from(UNICODE_ZEROS)))
    if how == "space":
        pad = draw(st.lists(st.sampled_from(SPACES), min_size=1, max_size=3).map("".join))
        return draw(st.sampled_from([pad + valid, valid + pad, pad + valid + pad]))
    if how == "underscore":
        digits = [i for i, c in enumerate(valid) if c.isdigit()]
        at = draw(st.sampled_from(digits))
        return valid[: at + 1] + "_" + valid[at + 1 :]
    if how == "comment":
        return valid + draw(st.sampled_from([" # note", "#", " ;x", " USD"]))
    if how == "utf16":
        return valid.encode("utf-16")
    return b"\xa0" + valid.encode()  # a Latin-1 no-break space: not UTF-8 at all


def _plain_decimal(draw: st.DrawFn, low: float, high: float) -> str:
    value = draw(st.floats(low, high, allow_nan=False))
    return draw(st.sampled_from([repr(value), f"{value:.6f}", f"{value:e}", f"{value:.3g}"]))


def plain_unit_number() -> st.SearchStrategy[str]:
    return st.composite(lambda draw: _plain_decimal(draw, 0.0, 1.0))()


hostile_raw: st.SearchStrategy[Raw] = st.one_of(
    st.sampled_from(NAMED),
    plain_unit_number().flatmap(hostile_spelling),
    st.integers(10**399, 10**400).map(str),  # 400 digits
    st.integers(-(10**70), 10**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),  # huge, tiny (5e-324), -0.0, nan, inf
    st.binary(max_size=80),  # any bytes, most not UTF-8
    st.text(max_size=80),
    st.sampled_from([b"\xff\xfe0.5", b"0.5\xff", b"\xc0\xae5", "0.5".encode("utf-32")]),
)
#: A field's value as HMGET returns it: absent, a plain valid value, or something hostile.
any_value = st.one_of(st.none(), plain_unit_number(), hostile_raw)
any_ts = st.one_of(
    st.none(),
    st.sampled_from([repr(NOW - 10), repr(NOW - 10_000), repr(NOW + 10_000), repr((NOW - 10) * 1000), "-0", "0"]),
    hostile_raw,
)
_PLAIN = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def plain_ascii_decimal(raw: Raw) -> bool:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return data is not None and len(data) <= MAX_NUMBER_LENGTH and _PLAIN.fullmatch(data) is not None


# --- settings drawn within what the settings accept ------------------------------------------------------------------

multiplier_params = st.builds(
    lambda low, width, base, scale: MultiplierParams(base=base, scale=scale, min_mult=low, max_mult=low + width),
    st.floats(0, 10),
    st.floats(0, 10),
    st.floats(-1e6, 1e6),
    st.floats(-1e6, 1e6),
)


@st.composite
def governor_policy(draw: st.DrawFn) -> Policy:
    """A policy as :meth:`Policy.from_settings` builds it, over the range each setting accepts (no cooldown, so that
    every plan reaches its permit or block on its own)."""
    mode: Mode = draw(st.sampled_from(["hint", "enforce", "off"]))
    return Policy(
        mode=mode,
        max_deliveries=5,
        plan_max_age_sec=120.0,
        kill_score_critical=draw(st.floats(0, 1)),
        gate=GateLimits(0.0, 2, 3, apply_extra_cooldown=mode == "enforce"),
        downsize=DownsizeParams(draw(st.floats(1e-6, 1)), draw(st.floats(1e-6, 1)), draw(st.integers(0, 2**31 - 1))),
    )


# --- efficiency readings to the proposal ----------------------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=1500)
@given(score=any_value, conf=any_value, ts=any_ts, timestamp=any_ts, params=multiplier_params)
def test_any_efficiency_values_give_a_bounded_proposal_with_a_reason(
    score: Raw, conf: Raw, ts: Raw, timestamp: Raw, params: MultiplierParams
) -> None:
    reading = classify_values([score, conf, ts, timestamp], NOW, POLICY)
    assert reading.reason in set(EffReason) - {EffReason.REDIS_ERROR}
    assert reading.ok or reading.detail  # every reading that may not act says why
    if reading.ok:  # only plain ASCII decimal numbers within range ever act
        assert plain_ascii_decimal(score) and plain_ascii_decimal(conf)
        assert reading.score is not None and 0 <= reading.score <= 1
    proposal = propose("SYM", b"1000", reading, params, NOW)
    if isinstance(proposal, Skip):  # a huge base x multiplier that overflows: skipped, with its reason
        assert proposal.reason is SkipReason.INVALID_TARGET and proposal.detail
        return
    fields = proposal.stream_fields()
    if reading.ok:  # within the clamp (as written: %.4f)
        assert params.min_mult - 5e-5 <= float(fields["multiplier"]) <= params.max_mult + 5e-5
    else:  # exactly neutral, even when the clamp excludes 1.0: fail-open is never scaled
        assert fields["multiplier"] == "1.0000" and proposal.multiplier == 1.0
    assert fields["reason"] == reading.reason.value
    for name in ("eff_score", "eff_confidence", "proposed_target", "base_target"):
        assert fields[name] == "" or math.isfinite(float(fields[name])), (name, fields[name])
    assert fields["eff_stale"] == ("1" if reading.reason is EffReason.STALE else "0")


@pytest.mark.slow
@settings(max_examples=1000)
@given(st.data())
def test_a_valid_score_or_confidence_in_a_hostile_spelling_is_invalid_and_says_which(data: st.DataObject) -> None:
    which = data.draw(st.sampled_from([SCORE_FIELD, CONFIDENCE_FIELD]))
    valid = data.draw(plain_unit_number())
    spelled = data.draw(hostile_spelling(valid))
    values: list[Raw] = [b"0.9", b"0.9", repr(NOW - 10).encode(), None]
    values[0 if which == SCORE_FIELD else 1] = spelled
    reading = classify_values(values, NOW, POLICY)
    assert reading.reason is EffReason.INVALID, spelled
    assert which in reading.detail
    assert len(reading.detail) < 200  # the value is shown cut, whatever its length


@pytest.mark.parametrize("raw", NAMED)
def test_every_named_hostile_value_is_not_a_number(raw: str) -> None:
    assert parse_float(raw) is None
    assert parse_float(raw.encode("utf-8")) is None


# --- absurd plans to the permit ---------------------------------------------------------------------------------------

ODD_SYMBOLS = ["BTC:USDT", "*", "{BTC}", "B T C", "BTC\n", "BTC\r\nX", "🚀", "BTC🚀", "\u200b", "x" * 1000, "a*b{c}:d"]
absurd_number = st.one_of(
    st.sampled_from(["1e308", "-1e308", "-5", "-0", "0", "inf", "-inf", "nan", "1e309", "9" * 400, "", "0x10"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    hostile_raw,
)
identifier = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True),
    st.sampled_from(ODD_SYMBOLS),
    st.just("p" * 10_000),  # a 10 kB plan_id
    st.text(max_size=200),
    st.binary(max_size=40),
)
PLAN_FIELDS = ["plan_id", "symbol", "action", "decision", "side", "qty", "notional", "reduceOnly", "kill_score"]


@st.composite
def absurd_plan(draw: st.DrawFn) -> dict[str | bytes, str | bytes]:
    fields: dict[str | bytes, str | bytes] = {}
    for name in PLAN_FIELDS:
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing field
        if name in ("plan_id", "symbol"):
            fields[name] = draw(identifier)
        elif name in ("qty", "notional", "kill_score"):
            number = draw(absurd_number)
            fields[name] = "" if number is None else number
        elif name == "decision":
            fields[name] = draw(st.sampled_from(["EXECUTE", "EXECUTE", "execute", "HOLD", "", "EXECUTE "]))
        elif name == "action":
            fields[name] = draw(st.sampled_from(["OPEN_LONG", "CLOSE", "PARTIAL_25", "FULL_CLOSE_PROPOSED", "é"]))
        elif name == "reduceOnly":
            fields[name] = draw(st.sampled_from(["true", "TRUE", "1", "0", "no", "", "\xff"]))
        else:
            fields[name] = draw(st.text(max_size=20))
    extra: dict[str | bytes, str | bytes] = draw(
        st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3)
    )
    return {**extra, **fields}


def _as_bytes(fields: dict[str | bytes, str | bytes]) -> dict[bytes, bytes]:
    """As the stream returns them: bytes (text that cannot be UTF-8 encoded is sent as its surrogate escapes)."""
    return {
        (k if isinstance(k, bytes) else k.encode("utf-8", "surrogatepass")): (
            v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass")
        )
        for k, v in fields.items()
    }


def _strict_json(text: str) -> dict[str, object]:
    def refuse(constant: str) -> object:
        raise AssertionError(f"{constant} in a permit")

    value = json.loads(text, parse_constant=refuse)
    assert isinstance(value, dict)
    return value


@pytest.mark.slow
@settings(max_examples=1000)
@given(
    fields=absurd_plan(),
    eff=st.tuples(any_value, any_value, any_ts, any_ts),
    policy=governor_policy(),
    deliveries=st.integers(1, 7),
    kill=st.sampled_from(list(KillSwitch)),
)
def test_any_plan_is_decided_with_a_reason_and_a_bounded_permit(
    fields: dict[str | bytes, str | bytes],
    eff: tuple[Raw, Raw, Raw, Raw],
    policy: Policy,
    deliveries: int,
    kill: KillSwitch,
) -> None:
    raw = _as_bytes(fields)
    plan = parse_plan(ENTRY_ID, raw)
    reading = None if policy.mode == "off" else classify_values(list(eff), NOW, POLICY)
    outcome = decide(plan, Facts(NOW, deliveries, kill_switch=kill, reading=reading), policy)
    assert outcome.event is not None  # nothing is recorded yet: every plan gets an outcome
    if outcome.event is Event.DEAD_LETTER:
        assert outcome.reason in DEAD_LETTER_REASONS and outcome.detail
        dead = dead_letter_fields(raw, outcome, ENTRY_ID, deliveries)
        assert dead[b"reason"] == outcome.reason.value.encode() and dead[b"source_id"] == ENTRY_ID.encode()
    elif outcome.event is Event.BLOCK:
        assert outcome.reason in BLOCK_REASONS and outcome.detail
    elif outcome.event is Event.SKIP:
        assert outcome.reason is Reason.NOT_EXECUTE
    else:
        assert isinstance(plan, Plan)
        check_permit(plan, outcome, policy)
    args = event_args(plan, outcome, NOW)
    assert all(isinstance(part, str) for part in args)
    event = dict(zip(args[0::2], args[1::2], strict=True))
    assert event["reason"] == outcome.reason.value
    # an event names the plan with at most MAX_SHOWN_ID_LENGTH characters (and "..."), whatever the plan held
    assert len(event["plan_id"]) <= MAX_SHOWN_ID_LENGTH + 3 and len(event["symbol"]) <= MAX_SHOWN_ID_LENGTH + 3


def check_permit(plan: Plan, outcome: Outcome, policy: Policy) -> None:
    permit = _strict_json(permit_json(plan, outcome, NOW))
    factor = float(str(permit["eff_factor"]))
    assert permit["downsize_factor"] == permit["eff_factor"]
    assert round(policy.downsize.min_factor, 4) <= factor <= 1.0
    extra = str(permit["extra_cooldown_sec"])
    assert extra.isdigit() and 0 <= int(extra) <= policy.downsize.max_extra_cooldown_sec
    assert permit["eff_reason"] in EFF_REASONS | {REDUCE_ONLY, DISABLED}
    if permit["eff_action"] == "NONE":
        assert (factor, extra) == (1.0, "0")
    qty, computed = plan.qty, permit["computed_qty"]
    assert isinstance(computed, float) and math.isfinite(computed)
    assert qty >= 0 or plan.reducing  # a negative size opening a position is a dead letter before any permit
    if policy.mode == "enforce" and not plan.reducing:  # scaled down, never beyond the plan's quantity
        assert 0 <= computed <= qty
    else:  # hint and off modes, and any close: the plan's own number
        assert computed == qty


# --- a 1 MB value costs what a short one does ------------------------------------------------------------------------

MB = 1 << 20
#: Classifying a value, or parsing a plan field, may hold the value (which the caller already holds) and a bounded
#: amount besides: 64 KiB covers the reading, its detail and the interpreter's noise, and is 1/16 of the value, so
#: any copy or decoding of the whole value would exceed it.
FIXED_OVERHEAD = 64 * 1024


def peak_allocation(work: Callable[[], object]) -> int:
    work()  # warm: first calls allocate caches (regular expressions, interned strings) that are no cost of the value
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("value", [b"0" * MB, b"0." + b"5" * MB, b"\xff" * MB, "\u0665".encode() * (MB // 2)])
def test_a_1mb_efficiency_value_is_invalid_at_a_cost_independent_of_its_size(value: bytes) -> None:
    """The daemon receives the value from HMGET (1 MB over the wire, once); classifying it looks at no more than
    MAX_NUMBER_LENGTH bytes of it, and its detail shows 40 characters: never a copy or decoding of the whole."""
    values: list[Raw] = [value, b"0.9", repr(NOW - 10).encode(), None]
    reading = classify_values(values, NOW, POLICY)
    assert reading.reason is EffReason.INVALID and SCORE_FIELD in reading.detail
    assert len(reading.detail) < 200
    assert peak_allocation(lambda: classify_values(values, NOW, POLICY)) < FIXED_OVERHEAD


@pytest.mark.parametrize("name", ["qty", "kill_score", "plan_id", "symbol", "action"])
def test_a_1mb_plan_field_is_parsed_in_bounded_memory(name: str) -> None:
    """A plan's fields are text: the 1 MB field is decoded once (1 MB, the one copy there is), and nothing more of
    it is copied: not to parse it as a number, not to show it in a reason, not into the event."""
    fields = {b"plan_id": b"p1", b"symbol": b"BTC", b"decision": b"EXECUTE", b"qty": b"1", name.encode(): b"9" * MB}
    plan = parse_plan(ENTRY_ID, fields)
    if name == "qty":
        assert isinstance(plan, Plan) and plan.quantity_problem is not None and len(plan.quantity_problem) < 200
    elif name == "kill_score":
        assert isinstance(plan, Plan) and plan.kill_score_problem is not None
    elif name in ("plan_id", "symbol"):
        assert isinstance(plan, InvalidPlan) and f"{name} longer than {MAX_ID_LENGTH}" in plan.detail
        assert len(plan.plan_id) <= MAX_SHOWN_ID_LENGTH + 3 and len(plan.symbol) <= MAX_SHOWN_ID_LENGTH + 3
    else:
        assert isinstance(plan, Plan) and len(plan.action) == MB  # any text: permitted as published
    assert peak_allocation(lambda: parse_plan(ENTRY_ID, fields)) < MB + FIXED_OVERHEAD


def test_showing_a_value_costs_what_its_head_does() -> None:
    assert show_raw(b"\xff" * MB) == repr("\ufffd" * 40 + "...")
    assert show_raw(b"0.5") == "'0.5'" and show_raw("x" * 41) == repr("x" * 40 + "...")
    assert show_raw("é".encode() * 40) == repr("é" * 40)  # 80 bytes, 40 characters: not cut
    assert peak_allocation(lambda: show_raw(b"\xff" * MB)) < MB + FIXED_OVERHEAD  # the argument itself is 1 MB


def test_huge_quantities_are_scaled_down_in_enforce_mode_and_negative_ones_are_dead_letters() -> None:
    policy = Policy.from_settings(load_settings(GovernorSettings, {"GOV_CONSUMER": "c", "P31_GOV_MODE": "enforce"}))
    ok = EfficiencyReading(EffReason.OK, 0.0, 0.9, NOW - 10, 10.0)
    for qty, expected in (("1e308", 2.5e307), ("-0", 0.0), ("8", 2.0)):
        plan = parse_plan(ENTRY_ID, {"plan_id": "p", "symbol": "S", "decision": "EXECUTE", "qty": qty})
        assert isinstance(plan, Plan)
        outcome = decide(plan, Facts(NOW, reading=ok), policy)
        assert outcome.event is Event.PERMIT and outcome.computed_qty == expected
    negative = parse_plan(ENTRY_ID, {"plan_id": "p", "symbol": "S", "decision": "EXECUTE", "qty": "-8"})
    assert isinstance(negative, Plan)
    outcome = decide(negative, Facts(NOW, reading=ok), policy)
    assert (outcome.event, outcome.reason.value) == (Event.DEAD_LETTER, "invalid_plan")
