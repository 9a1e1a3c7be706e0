"""What the governor decides for one plan (SPEC §3), as a pure function over values: no Redis, no clock.

:func:`decide` takes the parsed plan and everything read about it (its delivery count, whether an outcome is already
recorded, the kill switch, the efficiency reading, the symbol's gate) and returns an :class:`Outcome` that carries its
reason. The order of the checks is SPEC §3's, preceded by the two consumption rules: an entry whose outcome is already
recorded (a re-delivery) is only acknowledged, and an entry delivered too often is a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum, StrEnum

from microservices.core.efficiency import EfficiencyReading
from microservices.governor.downsize import (
    DISABLED_HINT,
    DownsizeHint,
    DownsizeParams,
    downsize_hint,
    reduce_only_hint,
)
from microservices.governor.gate import EMPTY_GATE, GateLimits, GateState, gate_block, held_by_extra_cooldown
from microservices.governor.plan import EXECUTE, InvalidPlan, Plan
from microservices.governor.settings import GovernorSettings, Mode


class Event(StrEnum):
    """The ``event`` field of the events stream: one per outcome."""

    PERMIT = "permit"
    BLOCK = "block"
    SKIP = "skip"
    DEAD_LETTER = "dead_letter"


class Reason(StrEnum):
    """The ``reason`` field of the events stream and of block records."""

    PERMITTED = "permitted"
    NOT_EXECUTE = "not_execute"
    INVALID_PLAN = "invalid_plan"
    MAX_DELIVERIES = "max_deliveries"
    STALE_PLAN = "stale_plan"
    KILL_SWITCH = "kill_switch"
    KILL_SWITCH_REDUCE_ONLY = "kill_switch_reduce_only"
    KILL_SCORE = "kill_score"
    COOLDOWN = "cooldown"
    RATE_LIMIT_5MIN = "rate_limit_5min"
    RATE_LIMIT_HOUR = "rate_limit_hour"
    #: Not an outcome: the plan's outcome was recorded before (a re-delivery or a republished plan_id).
    ALREADY_DECIDED = "already_decided"


BLOCK_REASONS = (
    Reason.STALE_PLAN,
    Reason.KILL_SWITCH,
    Reason.KILL_SWITCH_REDUCE_ONLY,
    Reason.KILL_SCORE,
    Reason.COOLDOWN,
    Reason.RATE_LIMIT_5MIN,
    Reason.RATE_LIMIT_HOUR,
)
DEAD_LETTER_REASONS = (Reason.INVALID_PLAN, Reason.MAX_DELIVERIES)


@dataclass(frozen=True, slots=True)
class Check:
    """One check of :func:`decide`, as a trace shows it: its name, the reasons an outcome has when it fails there,
    and whether only non-reducing plans go through it."""

    name: str
    reasons: tuple[Reason, ...]
    non_reducing_only: bool = False


#: :func:`decide`'s checks in its order, for traces (``p31ctl plan``): kept next to the function so that the two
#: change together; a unit test holds every outcome's reason to the check :func:`deciding_check` names.
CHECKS = (
    Check("delivered at most GOV_MAX_DELIVERIES times", (Reason.MAX_DELIVERIES,)),
    Check("plan_id and symbol well-formed", (Reason.INVALID_PLAN,)),
    Check("decision is EXECUTE", (Reason.NOT_EXECUTE,)),
    Check("no permit for the plan_id yet", (Reason.ALREADY_DECIDED,)),
    Check("qty and notional usable", (Reason.INVALID_PLAN,)),
    Check("not older than GOV_PLAN_MAX_AGE_SEC", (Reason.STALE_PLAN,)),
    Check("kill switch quantum:kill", (Reason.KILL_SWITCH, Reason.KILL_SWITCH_REDUCE_ONLY)),
    Check("kill_score below GOV_KILL_SCORE_CRITICAL", (Reason.KILL_SCORE,), non_reducing_only=True),
    Check("symbol cooldown", (Reason.COOLDOWN,), non_reducing_only=True),
    Check("rate limits", (Reason.RATE_LIMIT_5MIN, Reason.RATE_LIMIT_HOUR), non_reducing_only=True),
)


def deciding_check(plan: Plan | InvalidPlan, reason: Reason) -> Check | None:
    """The check of :data:`CHECKS` at which a plan with outcome ``reason`` stopped; None for a permit (every check
    passed). ``invalid_plan`` is the identifiers' check for an :class:`InvalidPlan`, else the quantities'."""
    if reason is Reason.PERMITTED:
        return None
    for check in CHECKS:
        if reason in check.reasons:
            if reason is Reason.INVALID_PLAN and isinstance(plan, Plan) and check is CHECKS[1]:
                continue
            return check
    raise ValueError(f"no check gives {reason}")


class KillSwitch(Enum):
    """``quantum:kill``: ``1`` blocks every plan, ``reduce`` every non-reducing plan; anything else is disengaged."""

    OFF = "off"
    ALL = "1"
    REDUCE_ONLY = "reduce"

    @classmethod
    def from_value(cls, raw: bytes | str | None) -> KillSwitch:
        value = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if value == cls.ALL.value:
            return cls.ALL
        if value == cls.REDUCE_ONLY.value:
            return cls.REDUCE_ONLY
        return cls.OFF


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings :func:`decide` reads, gathered once at start-up."""

    mode: Mode
    max_deliveries: int
    plan_max_age_sec: float
    kill_score_critical: float
    gate: GateLimits
    downsize: DownsizeParams

    @classmethod
    def from_settings(cls, s: GovernorSettings) -> Policy:
        return cls(
            mode=s.mode,
            max_deliveries=s.max_deliveries,
            plan_max_age_sec=s.plan_max_age_sec,
            kill_score_critical=s.kill_score_critical,
            gate=GateLimits(
                cooldown_sec=s.symbol_cooldown_sec,
                max_per_5min=s.max_exec_per_5min,
                max_per_hour=s.max_exec_per_hour,
                apply_extra_cooldown=s.mode == "enforce",
            ),
            downsize=DownsizeParams(s.downsize_threshold, s.min_factor, s.max_extra_cooldown_sec),
        )


@dataclass(frozen=True, slots=True)
class Facts:
    """What was read about one plan, at time ``now`` (epoch seconds)."""

    now: float
    deliveries: int = 1
    #: Why this very entry's outcome is recorded already (a re-delivery), or None.
    redelivered: str | None = None
    #: Why a permit counts as granted for the plan_id already (step 3), or None.
    permitted: str | None = None
    kill_switch: KillSwitch = KillSwitch.OFF
    #: None in ``off`` mode, where nothing is read.
    reading: EfficiencyReading | None = None
    gate: GateState = EMPTY_GATE


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision and its reason. ``event`` is None when the plan is only acknowledged (its outcome was recorded
    before). A permit carries its hint and quantities, and, for a non-reducing plan, the symbol's gate after it."""

    event: Event | None
    reason: Reason
    detail: str = ""
    hint: DownsizeHint | None = None
    computed_qty: float = 0.0
    computed_notional: float = 0.0
    gate_after: GateState | None = None
    #: The last permit's extra cooldown, and it alone, holds this plan back in ``enforce`` mode: a ``cooldown``
    #: block there, a permit ``enforce`` would have blocked in ``hint`` mode (what switching would change).
    extra_cooldown_held: bool = False


def _block(reason: Reason, detail: str) -> Outcome:
    return Outcome(Event.BLOCK, reason, detail)


def hint_for(plan: Plan, reading: EfficiencyReading | None, policy: Policy) -> DownsizeHint:
    """The P3.1 fields of a permit: neutral in ``off`` mode and for reducing plans, else the downsize formula."""
    if policy.mode == "off":
        return DISABLED_HINT
    if plan.reducing:
        return reduce_only_hint(reading)
    if reading is None:
        raise ValueError("an efficiency reading is needed outside off mode")
    return downsize_hint(reading, policy.downsize)


def decide(plan: Plan | InvalidPlan, facts: Facts, policy: Policy) -> Outcome:
    if facts.redelivered is not None:
        return Outcome(None, Reason.ALREADY_DECIDED, facts.redelivered)
    if facts.deliveries > policy.max_deliveries:
        return Outcome(
            Event.DEAD_LETTER,
            Reason.MAX_DELIVERIES,
            f"delivered {facts.deliveries} times, more than {policy.max_deliveries}",
        )
    if isinstance(plan, InvalidPlan):  # 1
        return Outcome(Event.DEAD_LETTER, Reason.INVALID_PLAN, plan.detail)
    if plan.decision != EXECUTE:  # 2
        return Outcome(Event.SKIP, Reason.NOT_EXECUTE, f"decision {plan.decision!r}")
    if facts.permitted is not None:  # 3
        return Outcome(None, Reason.ALREADY_DECIDED, facts.permitted)
    if plan.quantity_problem is not None:  # an EXECUTE plan whose quantity cannot be known
        return Outcome(Event.DEAD_LETTER, Reason.INVALID_PLAN, plan.quantity_problem)
    age = facts.now - plan.published_at
    if age > policy.plan_max_age_sec:  # 4
        return _block(Reason.STALE_PLAN, f"published {age:.0f}s ago > {policy.plan_max_age_sec:g}s")
    if facts.kill_switch is KillSwitch.ALL:  # 5
        return _block(Reason.KILL_SWITCH, "quantum:kill is 1")
    reducing = plan.reducing
    if facts.kill_switch is KillSwitch.REDUCE_ONLY and not reducing:
        return _block(Reason.KILL_SWITCH_REDUCE_ONLY, "quantum:kill is reduce")
    hint = hint_for(plan, facts.reading, policy)
    gate_after = None
    extra_held = False
    if not reducing:  # 6
        if plan.kill_score_problem is not None:  # a risk score that cannot be read holds the plan back
            return _block(Reason.KILL_SCORE, plan.kill_score_problem)
        if plan.kill_score is not None and plan.kill_score >= policy.kill_score_critical:
            return _block(Reason.KILL_SCORE, f"kill_score {plan.kill_score:g} >= {policy.kill_score_critical:g}")
        held = gate_block(facts.gate, policy.gate, facts.now)
        # a rate-limited plan is held back whatever the cooldown: only a permit or a cooldown block can owe it to this
        if held in (None, Reason.COOLDOWN.value):
            extra_held = held_by_extra_cooldown(facts.gate, policy.gate, facts.now)
        if held is not None:
            return replace(_block(Reason(held), f"symbol {plan.symbol} gate: {held}"), extra_cooldown_held=extra_held)
        gate_after = facts.gate.after_permit(facts.now, hint.extra_cooldown_sec)
    scale = hint.factor if policy.mode == "enforce" else 1.0
    return Outcome(  # 7
        Event.PERMIT,
        Reason.PERMITTED,
        hint=hint,
        computed_qty=plan.qty * scale,
        computed_notional=plan.notional * scale,
        gate_after=gate_after,
        extra_cooldown_held=extra_held,
    )
