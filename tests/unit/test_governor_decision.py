"""The governor's pure decisions (SPEC §3): plan parsing, the downsize formula, the gate, the decision order."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microservices.core.efficiency import EfficiencyReading, EffReason
from microservices.core.settings import load_settings
from microservices.governor.batch import Decided, Delivery, gate_updates
from microservices.governor.decision import Event, Facts, KillSwitch, Policy, Reason, decide
from microservices.governor.downsize import DownsizeParams, EffAction, downsize_hint
from microservices.governor.gate import EMPTY_GATE, GateLimits, GateState, gate_block, parse_gate
from microservices.governor.plan import InvalidPlan, Plan, is_reducing, parse_plan
from microservices.governor.settings import GovernorSettings

NOW = 1_800_000_000.0
FRESH_ID = f"{int((NOW - 1) * 1000)}-0"
DEFAULTS = DownsizeParams(threshold=0.45, min_factor=0.25, max_extra_cooldown_sec=120)


def ok(score: float) -> EfficiencyReading:
    return EfficiencyReading(EffReason.OK, score, 0.9, NOW - 10, 10.0)


def policy(**env: str) -> Policy:
    return Policy.from_settings(load_settings(GovernorSettings, {"GOV_CONSUMER": "c", **env}))


def plan(entry_id: str = FRESH_ID, **fields: str) -> Plan:
    base = {"plan_id": "p1", "symbol": "BTC", "action": "OPEN_LONG", "decision": "EXECUTE", "qty": "10"}
    parsed = parse_plan(entry_id, {**base, **fields})
    assert isinstance(parsed, Plan), parsed
    return parsed


# --- the downsize formula ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "action", "factor", "extra"),
    [
        (0.2, EffAction.DOWNSIZE, "0.4444", 96),
        (0.0, EffAction.DOWNSIZE, "0.2500", 120),
        (0.1, EffAction.DOWNSIZE, "0.2500", 108),  # 0.1 / 0.45 = 0.222 is held at the minimum factor
        (0.44, EffAction.DOWNSIZE, "0.9778", 67),
        (0.45, EffAction.NONE, "1.0000", 0),  # strictly below the threshold only
        (0.9, EffAction.NONE, "1.0000", 0),
    ],
)
def test_downsize_formula_with_the_defaults(score: float, action: EffAction, factor: str, extra: int) -> None:
    hint = downsize_hint(ok(score), DEFAULTS)
    assert (hint.action, f"{hint.factor:.4f}", hint.extra_cooldown_sec, hint.reason) == (action, factor, extra, "ok")


@pytest.mark.parametrize("reason", [r for r in EffReason if r is not EffReason.OK])
def test_every_fail_open_reading_gives_the_neutral_hint(reason: EffReason) -> None:
    reading = EfficiencyReading(reason, 0.0, 0.1, NOW, 0.0)
    hint = downsize_hint(reading, DEFAULTS)
    assert (hint.action, hint.factor, hint.extra_cooldown_sec, hint.reason) == (EffAction.NONE, 1.0, 0, reason.value)


@given(
    score=st.floats(0, 1),
    threshold=st.floats(0.01, 1),
    min_factor=st.floats(0.01, 1),
    max_extra=st.integers(0, 10_000),
)
def test_downsize_hint_stays_within_its_bounds(
    score: float, threshold: float, min_factor: float, max_extra: int
) -> None:
    hint = downsize_hint(ok(score), DownsizeParams(threshold, min_factor, max_extra))
    assert min_factor <= hint.factor <= 1.0 or hint.factor == 1.0
    assert 0 <= hint.extra_cooldown_sec <= max_extra
    assert (hint.action is EffAction.DOWNSIZE) == (score < threshold)
    if hint.action is EffAction.NONE:
        assert (hint.factor, hint.extra_cooldown_sec) == (1.0, 0)


# --- plans -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "reduce_only", "reducing"),
    [
        ("FULL_CLOSE_PROPOSED", False, True),
        ("PARTIAL_CLOSE_25", False, True),
        ("PARTIAL_", False, True),
        ("CLOSE", False, True),
        ("CLOSE_LONG", False, True),
        ("close_long", False, False),  # matched exactly, upper case
        ("FULL_CLOSE", False, False),
        ("OPEN_LONG", False, False),
        ("OPEN_LONG", True, True),
        ("", False, False),
    ],
)
def test_reducing_plans(action: str, reduce_only: bool, reducing: bool) -> None:
    assert is_reducing(action, reduce_only) is reducing


REDUCE_ONLY_FLAGS = [("true", True), ("TRUE", True), ("True", True), ("1", True),
                     ("0", False), ("false", False), ("yes", False), ("", False)]  # fmt: skip


@pytest.mark.parametrize(("flag", "reducing"), REDUCE_ONLY_FLAGS)
def test_reduce_only_flag_in_any_case(flag: str, reducing: bool) -> None:
    assert plan(reduceOnly=flag).reducing is reducing


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"symbol": "BTC"}, "plan_id missing"),
        ({"plan_id": "", "symbol": "BTC"}, "plan_id missing"),
        ({"plan_id": "a b", "symbol": "BTC"}, "white space"),
        ({"plan_id": "a\tb", "symbol": "BTC"}, "white space"),
        ({"plan_id": "x" * 129, "symbol": "BTC"}, "longer than 128"),
        ({"plan_id": "p"}, "symbol missing"),
        ({"plan_id": "p", "symbol": ""}, "symbol missing"),
    ],
)
def test_malformed_plans_are_invalid(fields: dict[str, str], problem: str) -> None:
    parsed = parse_plan(FRESH_ID, fields)
    assert isinstance(parsed, InvalidPlan)
    assert problem in parsed.detail


@pytest.mark.parametrize(
    ("fields", "quantity", "kill_score"),
    [
        ({"qty": "ten"}, "qty 'ten' is not a finite number", None),
        ({"qty": "nan"}, "qty 'nan' is not a finite number", None),
        ({"notional": "1,5"}, "notional '1,5' is not a finite number", None),
        ({"qty": "-8"}, "qty '-8' is negative", None),
        ({"notional": "-0.5"}, "notional '-0.5' is negative", None),
        ({"qty": "-0", "kill_score": "-1"}, None, None),  # -0 is 0; a negative kill_score is below any threshold
        ({"qty": "-8", "action": "CLOSE_SHORT"}, None, None),  # a close keeps its number: never held back by a sign
        ({"qty": "-8", "reduceOnly": "true"}, None, None),
        ({"kill_score": "inf"}, None, "kill_score 'inf' is not a finite number"),
        ({"qty": "", "kill_score": ""}, None, None),  # empty: absent
    ],
)
def test_malformed_numbers_are_kept_for_the_steps_that_use_them(
    fields: dict[str, str], quantity: str | None, kill_score: str | None
) -> None:
    parsed = parse_plan(FRESH_ID, {"plan_id": "p", "symbol": "S", **fields})
    assert isinstance(parsed, Plan)
    assert (parsed.quantity_problem, parsed.kill_score_problem) == (quantity, kill_score)


def test_plan_id_of_128_characters_is_accepted_and_bytes_that_are_not_utf8_are_invalid() -> None:
    assert isinstance(parse_plan(FRESH_ID, {"plan_id": "x" * 128, "symbol": "S"}), Plan)
    assert isinstance(parse_plan(FRESH_ID, {b"plan_id": b"\xff", b"symbol": b"S"}), InvalidPlan)


def test_absent_quantities_are_zero() -> None:
    parsed = parse_plan(FRESH_ID, {"plan_id": "p", "symbol": "S", "decision": "EXECUTE"})
    assert isinstance(parsed, Plan)
    assert (parsed.qty, parsed.notional, parsed.kill_score) == (0.0, 0.0, None)
    assert parsed.published_at == pytest.approx(NOW - 1)


# --- the gate ------------------------------------------------------------------------------------------------------

LIMITS = GateLimits(cooldown_sec=60, max_per_5min=2, max_per_hour=3, apply_extra_cooldown=False)


def test_cooldown_ends_exactly_at_its_length() -> None:
    state = GateState(NOW - 60, 0, (NOW - 60,))
    assert gate_block(GateState(NOW - 59.9, 0, (NOW - 59.9,)), LIMITS, NOW) == "cooldown"
    assert gate_block(state, LIMITS, NOW) is None


def test_extra_cooldown_counts_only_when_enforced() -> None:
    state = GateState(NOW - 100, 96, (NOW - 100,))
    assert gate_block(state, LIMITS, NOW) is None
    enforced = GateLimits(60, 2, 3, apply_extra_cooldown=True)
    assert gate_block(state, enforced, NOW) == "cooldown"  # 100 s < 60 + 96
    assert gate_block(GateState(NOW - 156, 96, (NOW - 156,)), enforced, NOW) is None
    no_base = GateLimits(0, 2, 3, apply_extra_cooldown=True)  # 0 turns off the base cooldown, not the extra one
    assert gate_block(state, no_base, NOW) is None
    assert gate_block(GateState(NOW - 50, 96, (NOW - 50,)), no_base, NOW) == "cooldown"


def test_rate_limits_count_permits_in_their_windows() -> None:
    no_cooldown = GateLimits(0, 2, 3, apply_extra_cooldown=False)
    two_recent = GateState(NOW - 100, 0, (NOW - 200, NOW - 100))
    assert gate_block(two_recent, no_cooldown, NOW) == "rate_limit_5min"
    assert gate_block(GateState(NOW - 100, 0, (NOW - 300, NOW - 100)), no_cooldown, NOW) is None  # 300 s is out
    three_in_hour = GateState(NOW - 100, 0, (NOW - 3000, NOW - 2000, NOW - 100))
    assert gate_block(three_in_hour, no_cooldown, NOW) == "rate_limit_hour"
    assert gate_block(GateState(NOW - 100, 0, (NOW - 3600, NOW - 2000, NOW - 100)), no_cooldown, NOW) is None


def test_after_permit_keeps_only_the_last_hour() -> None:
    state = GateState(NOW - 10, 5, (NOW - 4000, NOW - 10)).after_permit(NOW, 96)
    assert state == GateState(NOW, 96, (NOW - 10, NOW))


def test_gate_round_trips_and_malformed_values_read_as_absent() -> None:
    state = GateState(NOW, 96, (NOW - 10, NOW))
    assert parse_gate(state.encode("p1").encode()) == (state, None)
    assert json.loads(state.encode("p1"))["last_plan_id"] == "p1"
    huge = b"1" + b"0" * 400
    for raw in (b"yesterday", b"[1, 2]", b'{"last_permit_ts": "x"}', b'{"extra_cooldown_sec": -5}',
                b'{"recent_permits": [1, "x"]}', b'{"last_permit_ts": NaN}', b"\xff",
                b'{"last_permit_ts": ' + huge + b"}", b'{"recent_permits": [' + huge + b"]}", b"[" * 100_000,
                b'{"extra_cooldown_sec": 1e40}', b'{"extra_cooldown_sec": 10000000000000}'):  # fmt: skip
        parsed, problem = parse_gate(raw)
        assert problem is not None, raw
        assert parsed.extra_cooldown_sec == 0 and parsed.recent == ()
    assert parse_gate(None) == (EMPTY_GATE, None)


# --- the decision order --------------------------------------------------------------------------------------------


def facts(**kw: object) -> Facts:
    return Facts(now=NOW, reading=kw.pop("reading", ok(0.2)), **kw)  # type: ignore[arg-type]


def test_permit_with_the_hint() -> None:
    outcome = decide(plan(), facts(), policy())
    assert (outcome.event, outcome.reason) == (Event.PERMIT, Reason.PERMITTED)
    assert outcome.hint is not None and outcome.hint.action is EffAction.DOWNSIZE
    assert outcome.computed_qty == 10.0  # hint mode: the quantity is unchanged
    assert outcome.gate_after is not None and outcome.gate_after.extra_cooldown_sec == 96


def test_enforce_scales_the_quantity_and_off_is_neutral() -> None:
    enforced = decide(plan(notional="1000"), facts(), policy(P31_GOV_MODE="enforce"))
    assert enforced.computed_qty == pytest.approx(10 * 0.2 / 0.45)
    assert enforced.computed_notional == pytest.approx(1000 * 0.2 / 0.45)
    off = decide(plan(), facts(reading=None), policy(P31_GOV_MODE="off"))
    assert off.hint is not None
    assert (off.hint.action, off.hint.factor, off.hint.reason, off.computed_qty) == (
        EffAction.NONE,
        1.0,
        "disabled",
        10,
    )
    off_reducing = decide(plan(action="CLOSE_LONG"), facts(reading=None), policy(P31_GOV_MODE="off"))
    assert off_reducing.hint is not None and off_reducing.hint.reason == "disabled"


def test_reducing_plans_are_never_downsized_and_leave_the_gate_alone() -> None:
    busy = GateState(NOW - 1, 120, (NOW - 3, NOW - 2, NOW - 1))
    for mode in ("hint", "enforce"):
        outcome = decide(plan(action="FULL_CLOSE_PROPOSED", kill_score="0.99"), facts(reading=ok(0.0), gate=busy),
                         policy(P31_GOV_MODE=mode))  # fmt: skip
        assert outcome.event is Event.PERMIT
        assert outcome.hint is not None
        assert (outcome.hint.action, outcome.hint.factor, outcome.hint.reason) == (EffAction.NONE, 1.0, "reduce_only")
        assert outcome.computed_qty == 10.0
        assert outcome.gate_after is None


STALE_ID = f"{int((NOW - 121) * 1000)}-0"


@pytest.mark.parametrize(
    ("the_plan", "the_facts", "expected"),
    [
        # the consumption rules come first
        (plan(), facts(redelivered="decided", deliveries=9), (None, Reason.ALREADY_DECIDED)),
        (plan(decision="HOLD"), facts(redelivered="decided"), (None, Reason.ALREADY_DECIDED)),
        (plan(decision="HOLD"), facts(permitted="a permit exists"), (Event.SKIP, Reason.NOT_EXECUTE)),  # 2 before 3
        (plan(entry_id=STALE_ID), facts(permitted="a permit exists"), (None, Reason.ALREADY_DECIDED)),  # 3 before 4
        (plan(), facts(deliveries=6), (Event.DEAD_LETTER, Reason.MAX_DELIVERIES)),
        (plan(), facts(deliveries=5), (Event.PERMIT, Reason.PERMITTED)),
        # 1 invalid, 2 not EXECUTE
        (InvalidPlan(FRESH_ID, {}, "plan_id missing"), facts(), (Event.DEAD_LETTER, Reason.INVALID_PLAN)),
        (plan(decision="HOLD", entry_id=STALE_ID), facts(kill_switch=KillSwitch.ALL), (Event.SKIP, Reason.NOT_EXECUTE)),
        (plan(decision="execute"), facts(), (Event.SKIP, Reason.NOT_EXECUTE)),
        # 4 stale before the kill switch; reducing plans too
        (plan(entry_id=STALE_ID), facts(kill_switch=KillSwitch.ALL), (Event.BLOCK, Reason.STALE_PLAN)),
        (plan(entry_id=STALE_ID, action="CLOSE"), facts(), (Event.BLOCK, Reason.STALE_PLAN)),
        # 5 kill switch
        (plan(action="CLOSE"), facts(kill_switch=KillSwitch.ALL), (Event.BLOCK, Reason.KILL_SWITCH)),
        (plan(), facts(kill_switch=KillSwitch.REDUCE_ONLY), (Event.BLOCK, Reason.KILL_SWITCH_REDUCE_ONLY)),
        (plan(action="CLOSE"), facts(kill_switch=KillSwitch.REDUCE_ONLY), (Event.PERMIT, Reason.PERMITTED)),
        # 6 kill score, then cooldown, then the limits
        (plan(kill_score="0.8"), facts(gate=GateState(NOW - 1, 0, (NOW - 1,))), (Event.BLOCK, Reason.KILL_SCORE)),
        (plan(kill_score="0.79"), facts(), (Event.PERMIT, Reason.PERMITTED)),
        # a malformed number: the plan is decided up to the step that uses it
        (plan(decision="HOLD", qty="ten"), facts(), (Event.SKIP, Reason.NOT_EXECUTE)),
        (plan(qty="ten"), facts(permitted="a permit exists"), (None, Reason.ALREADY_DECIDED)),
        (plan(qty="ten"), facts(), (Event.DEAD_LETTER, Reason.INVALID_PLAN)),
        (plan(action="CLOSE", kill_score="n/a"), facts(), (Event.PERMIT, Reason.PERMITTED)),
        (plan(kill_score="n/a"), facts(), (Event.BLOCK, Reason.KILL_SCORE)),  # a risk score unread holds it back
        (InvalidPlan(FRESH_ID, {}, "plan_id missing"), facts(redelivered="decided"), (None, Reason.ALREADY_DECIDED)),
        (plan(), facts(gate=GateState(NOW - 1, 0, (NOW - 2, NOW - 1))), (Event.BLOCK, Reason.COOLDOWN)),
    ],
)
def test_decision_order(the_plan: Plan | InvalidPlan, the_facts: Facts, expected: tuple[Event | None, Reason]) -> None:
    outcome = decide(the_plan, the_facts, policy())
    assert (outcome.event, outcome.reason) == expected


def test_stale_is_strictly_older_than_the_max_age() -> None:
    at_limit = plan(entry_id=f"{int((NOW - 120) * 1000)}-0")
    assert decide(at_limit, facts(), policy()).event is Event.PERMIT


@pytest.mark.parametrize(("raw", "state"), [(b"1", KillSwitch.ALL), ("reduce", KillSwitch.REDUCE_ONLY),
    (None, KillSwitch.OFF), (b"0", KillSwitch.OFF), (b"REDUCE", KillSwitch.OFF), (b" 1", KillSwitch.OFF),
    (b"\xff", KillSwitch.OFF)])  # fmt: skip
def test_kill_switch_values(raw: bytes | str | None, state: KillSwitch) -> None:
    assert KillSwitch.from_value(raw) is state


@given(
    score=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    reason=st.sampled_from(list(EffReason)),
    reducing=st.booleans(),
    mode=st.sampled_from(["hint", "enforce", "off"]),
)
def test_a_permit_never_scales_up_and_only_ok_scores_act(
    score: float | None, reason: EffReason, reducing: bool, mode: str
) -> None:
    finite = score if score is not None and math.isfinite(score) and 0 <= score <= 1 else None
    reading = EfficiencyReading(reason, finite, 0.9, NOW, 0.0)
    the_plan = plan(action="CLOSE" if reducing else "OPEN")
    outcome = decide(the_plan, facts(reading=reading), policy(P31_GOV_MODE=mode))
    assert outcome.event is Event.PERMIT and outcome.hint is not None
    assert 0.25 <= outcome.hint.factor <= 1.0
    assert 0 <= outcome.computed_qty <= 10.0
    if reason is not EffReason.OK or reducing or mode == "off" or finite is None or finite >= 0.45:
        assert (outcome.hint.action, outcome.hint.factor, outcome.hint.extra_cooldown_sec) == (EffAction.NONE, 1.0, 0)


@given(
    last=st.one_of(st.none(), st.floats(1, 4e9)),
    extra=st.integers(0, 10**6),
    recent=st.lists(st.floats(1, 4e9), max_size=5),
    plan_id=st.text(max_size=20),
)
def test_gate_encoding_round_trips_whatever_the_plan_id(
    last: float | None, extra: int, recent: list[float], plan_id: str
) -> None:
    state = GateState(last, extra, tuple(sorted(recent)))
    text = state.encode(plan_id)
    assert json.loads(text)["last_plan_id"] == plan_id
    assert parse_gate(text.encode("utf-8", "surrogatepass")) == (state, None)


def test_the_trace_checks_name_the_check_of_every_reason_decide_gives() -> None:
    """``p31ctl plan`` derives its trace from CHECKS: each reason must belong to exactly one check (invalid_plan to
    two, told apart by whether the plan parsed), and a permit to none."""
    from microservices.governor.decision import CHECKS, Reason, deciding_check
    from microservices.governor.plan import InvalidPlan, parse_plan

    valid = parse_plan("1-0", {"plan_id": "p", "symbol": "S"})
    invalid = InvalidPlan("1-0", {}, "plan_id missing")
    assert deciding_check(valid, Reason.PERMITTED) is None
    assert deciding_check(invalid, Reason.INVALID_PLAN) is CHECKS[1]
    assert deciding_check(valid, Reason.INVALID_PLAN) is CHECKS[4]
    assert deciding_check(valid, Reason.RATE_LIMIT_HOUR) is CHECKS[-1]
    covered = {reason for check in CHECKS for reason in check.reasons}
    assert covered | {Reason.PERMITTED} == set(Reason)


def test_gate_updates_one_per_permitted_symbol_from_its_last_permit_expecting_what_was_read() -> None:
    """Under a cluster the batch's gate writes are one compare-and-set per symbol: the gate after its last permit,
    expecting the value its decisions were made from; a symbol with blocks only changes nothing."""
    p = policy(GOV_SYMBOL_COOLDOWN_SECONDS="0", GOV_MAX_EXEC_PER_5MIN="9", GOV_MAX_EXEC_PER_HOUR="9")
    now = 1_800_000_000.0
    read = GateState(now - 100, 0, (now - 100,))
    items = []
    for i, (symbol, gate) in enumerate([("A", read), ("A", None), ("B", EMPTY_GATE), ("C", read)]):
        the_plan = plan(plan_id=f"p{i}", symbol=symbol, action="OPEN_LONG", decision="EXECUTE")
        state = gate if gate is not None else read.after_permit(now, 0)
        outcome = decide(the_plan, Facts(now, reading=ok(0.9), gate=state), p)
        if symbol == "C":  # blocked: no permit, no update
            outcome = decide(the_plan, Facts(now, kill_switch=KillSwitch.ALL), p)
        raw = None if symbol == "B" else b"as read"
        items.append(Decided(Delivery(f"{i}-0", {}), the_plan, outcome, gate_read=raw))

    updates = gate_updates(items)

    assert [(u.symbol, u.expected, u.plan_id) for u in updates] == [("A", b"as read", "p1"), ("B", None, "p2")]
    assert updates[0].state == items[1].outcome.gate_after
    assert [item.gate_symbol for item in items] == ["A", "A", "B", "C"]
