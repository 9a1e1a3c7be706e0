"""``p31ctl explain SYMBOL``: every check the daemons run on one symbol, in order, with the value each looked at.

Nothing is judged here a second time. The reason comes from the shared classification (the proposer's own batch
read, :func:`~microservices.core.efficiency_reads.efficiency_readings`); the trace is derived from it: the checks
before the deciding one passed, the deciding one failed, the later ones were not reached. The numbers come from the
shared formulas (:func:`~microservices.allocation_target.proposal.decide` and its multiplier, the governor's
:func:`~microservices.governor.decision.hint_for`); only their display, with the numbers substituted, is written here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from microservices.allocation_target.multiplier import multiplier_for
from microservices.allocation_target.proposal import (
    LIVE_TARGET_PREFIX,
    PROPOSED_PREFIX,
    TARGET_FIELD,
    Proposal,
    Skip,
    SkipReason,
    decide,
    encode,
)
from microservices.allocation_target.proposer import discover_symbols
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import (
    CONFIDENCE_FIELD,
    EFFICIENCY_FIELDS,
    SCORE_FIELD,
    TIMESTAMP_FIELD,
    TS_FIELD,
    EffCheck,
    EfficiencyPolicy,
    EfficiencyReading,
    EffReason,
)
from microservices.core.efficiency_reads import efficiency_readings, queue_efficiency_read
from microservices.core.numbers import Raw, parse_float, show_raw
from microservices.core.redis_client import RedisClient
from microservices.core.settings import environment, load_settings
from microservices.governor.decision import Policy, hint_for
from microservices.governor.downsize import DISABLED, REDUCE_ONLY, DownsizeHint, EffAction
from microservices.governor.plan import Plan, parse_plan
from microservices.governor.settings import GovernorSettings
from microservices.ops.symbols import closest_symbol, no_live_target
from microservices.ops.tables import format_table

if TYPE_CHECKING:
    from microservices.ops.cli import Context


class Status(StrEnum):
    PASS = "pass"
    FAIL = "FAIL"
    NOT_REACHED = "not reached"
    INFO = "info"


@dataclass(frozen=True)
class Step:
    section: str
    check: str
    status: Status
    value: str


def deciding_check(reading: EfficiencyReading) -> EffCheck | None:
    """The check that gave ``reading`` its reason (None for ``ok``: every check passed), as the classification
    recorded it."""
    return reading.check


def _raw(values: Mapping[str, Raw], name: str) -> str:
    raw = values.get(name)
    return f"{name} absent" if raw is None else f"{name}={show_raw(raw)}"


def _looked_at(check: EffCheck, reading: EfficiencyReading, values: Mapping[str, Raw], policy: EfficiencyPolicy) -> str:
    """What ``check`` looked at, with the threshold it compares against."""
    age = reading.age_sec
    match check:
        case EffCheck.READ:
            return reading.detail if reading.reason is EffReason.REDIS_ERROR else "HMGET answered"
        case EffCheck.PRESENT:
            found = [name for name in EFFICIENCY_FIELDS if values.get(name) is not None]
            if reading.reason is EffReason.MISSING:
                return "key absent or empty (EXISTS returned 0)"
            return "fields " + ", ".join(found) if found else "hash present, none of the fields"
        case EffCheck.SCORE:
            return _raw(values, SCORE_FIELD) + ", must be a number in [0, 1]"
        case EffCheck.CONFIDENCE:
            return _raw(values, CONFIDENCE_FIELD) + ", must be a number in [0, 1]"
        case EffCheck.TIMESTAMP:
            if values.get(TS_FIELD) is not None or values.get(TIMESTAMP_FIELD) is None:
                shown = _raw(values, TS_FIELD)
            else:  # the fall-back, only when ts is absent
                shown = f"{TS_FIELD} absent, {_raw(values, TIMESTAMP_FIELD)}"
            return shown + (f" -> epoch {reading.ts:.3f}" if reading.ts is not None else "")
        case EffCheck.FUTURE:
            where = "?" if age is None else f"{-age:.1f}s ahead of now" if age < 0 else f"{age:.1f}s ago"
            return f"timestamp {where}; at most P31_MAX_FUTURE_SEC={policy.max_future_sec:g}s ahead"
        case EffCheck.STALE:
            return f"age {age:.1f}s; stale when > {policy.stale_sec:g}s" if age is not None else "?"
        case EffCheck.MIN_CONF:
            return f"confidence {reading.confidence:g}; low when < P31_MIN_CONF={policy.min_conf:g}"
    raise AssertionError(check)  # pragma: no cover


def efficiency_trace(
    reading: EfficiencyReading, values: Mapping[str, Raw], policy: EfficiencyPolicy, section: str
) -> list[Step]:
    """SPEC §1's checks for ``reading``: passed before the deciding one, failed at it, not reached after."""
    decider = deciding_check(reading)
    steps: list[Step] = []
    reached = True
    for check in EffCheck:
        if not reached:
            steps.append(Step(section, check.value, Status.NOT_REACHED, ""))
            continue
        looked = _looked_at(check, reading, values, policy)
        if check is decider:
            reached = False
            detail = reading.detail
            steps.append(Step(section, check.value, Status.FAIL, f"{looked} -> {reading.reason.value}: {detail}"))
        else:
            steps.append(Step(section, check.value, Status.PASS, looked))
    return steps


def _multiplier_steps(reading: EfficiencyReading, settings: ProposerSettings) -> list[Step]:
    params = settings.multiplier_params
    section = "§2 proposer"
    score = reading.usable_score
    multiplier = multiplier_for(reading, params)
    if score is None:
        return [Step(section, "multiplier", Status.INFO, f"reason {reading.reason.value} is not ok: 1.0 (fail-open)")]
    unclamped = multiplier_for(reading, replace(params, min_mult=-math.inf, max_mult=math.inf))
    formula = (
        f"P31_BASE + P31_SCALE x (score - 0.5) = {params.base:g} + {params.scale:g} x ({score:g} - 0.5)"
        f" = {unclamped:.4f}"
    )
    if multiplier == unclamped:
        clamp = f"within [P31_MIN_MULT={params.min_mult:g}, P31_MAX_MULT={params.max_mult:g}]: not applied"
    else:
        bound = "P31_MAX_MULT" if multiplier < unclamped else "P31_MIN_MULT"
        clamp = f"{unclamped:.4f} outside [{params.min_mult:g}, {params.max_mult:g}]: clamped to {bound}={multiplier:g}"
    return [
        Step(section, "multiplier formula", Status.PASS, formula),
        Step(section, "clamp", Status.PASS, clamp),
    ]


def _hint_steps(hint: DownsizeHint, reading: EfficiencyReading, gov: GovernorSettings) -> list[Step]:
    """The governor's hint for a non-reducing plan, with the numbers substituted into SPEC §3's formulas."""
    section = "§3 governor"
    name = "downsize hint (non-reducing plan)"
    mode = f"P31_GOV_MODE={gov.mode}"
    score = reading.usable_score
    if hint.reason in (DISABLED, REDUCE_ONLY):
        return [Step(section, name, Status.INFO, f"{hint.reason} ({mode}): NONE, factor 1.0, extra cooldown 0")]
    if score is None:
        text = f"reason {reading.reason.value} is not ok: NONE, factor 1.0, extra cooldown 0 (fail-open)"
        return [Step(section, name, Status.INFO, text)]
    threshold = f"P31_DOWNSIZE_THRESHOLD={gov.downsize_threshold:g}"
    if hint.action is EffAction.NONE:
        return [Step(section, name, Status.INFO, f"score {score:g} >= {threshold}: NONE, factor 1.0, extra cooldown 0")]
    return [
        Step(section, name, Status.INFO, f"score {score:g} < {threshold}: DOWNSIZE ({mode})"),
        Step(
            section,
            "downsize factor",
            Status.INFO,
            f"max(P31_MIN_FACTOR, score / P31_DOWNSIZE_THRESHOLD) = max({gov.min_factor:g}, {score:g} / "
            f"{gov.downsize_threshold:g}) = {hint.factor:.4f}",
        ),
        Step(
            section,
            "extra cooldown",
            Status.INFO,
            f"round((1 - score) x P31_MAX_EXTRA_COOLDOWN_SEC) = round((1 - {score:g}) x "
            f"{gov.max_extra_cooldown_sec}) = {hint.extra_cooldown_sec} s",
        ),
    ]


def explain_plan(symbol: str) -> Plan:
    """The plan the governor's hint is shown for: an ordinary, non-reducing EXECUTE plan of ``symbol``."""
    plan = parse_plan(
        "0-0", {"plan_id": "p31ctl-explain", "symbol": symbol, "action": "OPEN_LONG", "decision": "EXECUTE"}
    )
    if not isinstance(plan, Plan):
        raise ValueError(f"{symbol!r} is not a symbol a plan can carry: {plan.detail}")
    return plan


@dataclass(frozen=True)
class Facts:
    """What was read about the symbol."""

    values: Mapping[str, Raw]
    target: Raw | Exception
    shadow: Mapping[str, str] | None


@dataclass(frozen=True)
class Explanation:
    symbol: str
    now: float
    reading: EfficiencyReading
    decided_by: EffCheck | None
    decision: Proposal | Skip
    governor_reading: EfficiencyReading
    hint: DownsizeHint
    steps: tuple[Step, ...]

    def as_json(self) -> dict[str, Any]:
        proposal = self.decision if isinstance(self.decision, Proposal) else None
        return {
            "symbol": self.symbol,
            "now": self.now,
            "reason": self.reading.reason.value,
            "decided_by": None if self.decided_by is None else self.decided_by.value,
            "detail": self.reading.detail,
            "score": self.reading.score,
            "confidence": self.reading.confidence,
            "age_sec": self.reading.age_sec,
            "proposal": None
            if proposal is None
            else {
                "base_target": proposal.base_target,
                "multiplier": proposal.multiplier,
                "proposed_target": proposal.proposed_target,
            },
            "skip": {"reason": self.decision.reason.value, "detail": self.decision.detail}
            if isinstance(self.decision, Skip)
            else None,
            "governor": {
                "reason": self.governor_reading.reason.value,
                "eff_action": self.hint.action.value,
                "factor": self.hint.factor,
                "extra_cooldown_sec": self.hint.extra_cooldown_sec,
                "eff_reason": self.hint.reason,
            },
            "checks": [
                {"section": s.section, "check": s.check, "status": s.status.value, "value": s.value} for s in self.steps
            ],
        }


def build_explanation(
    symbol: str,
    *,
    facts: Facts,
    reading: EfficiencyReading,
    governor_reading: EfficiencyReading,
    now: float,
    proposer: ProposerSettings,
    governor: GovernorSettings,
) -> Explanation:
    """The whole trace, from what was read and the two daemons' classifications of it (pure)."""
    steps = efficiency_trace(reading, facts.values, proposer.efficiency_policy, "§1 efficiency")
    section = "§2 proposer"
    decision: Proposal | Skip
    if isinstance(facts.target, Exception):
        decision = Skip(symbol, SkipReason.REDIS_ERROR, f"reading {TARGET_FIELD} failed: {facts.target}")
    else:
        decision = decide(symbol, facts.target, reading, proposer.multiplier_params, now)
    raw_target = "?" if isinstance(facts.target, Exception) else facts.target
    shown = f"{TARGET_FIELD} absent" if raw_target is None else f"{TARGET_FIELD}={show_raw(raw_target)}"
    if isinstance(decision, Skip):
        steps.append(Step(section, "base target valid", Status.FAIL, f"{decision.reason.value}: {decision.detail}"))
        steps.append(Step(section, "proposed target", Status.NOT_REACHED, "no proposal this loop"))
    else:
        steps.append(Step(section, "base target valid", Status.PASS, f"{shown}, a finite number >= 0"))
        steps += _multiplier_steps(reading, proposer)
        steps.append(
            Step(
                section,
                "proposed target",
                Status.INFO,
                f"base x multiplier = {decision.base_target:.2f} x {decision.multiplier:.4f} = "
                f"{decision.proposed_target:.2f}",
            )
        )
    shadow = facts.shadow
    if shadow:
        stamp = parse_float(shadow.get("last_update_ts_epoch"))
        ago = "age unknown" if stamp is None else f"{now - stamp:.0f}s ago"
        steps.append(
            Step(
                section,
                "last shadow proposal",
                Status.INFO,
                f"proposed_target={shadow.get('proposed_target', '?')} multiplier={shadow.get('multiplier', '?')} "
                f"reason={shadow.get('reason', '?')}, {ago}",
            )
        )
    else:
        steps.append(Step(section, "last shadow proposal", Status.INFO, "none (no shadow hash)"))

    section = "§3 governor"
    gov_decider = deciding_check(governor_reading)
    steps.append(
        Step(
            section,
            "reading",
            Status.INFO,
            f"reason {governor_reading.reason.value}"
            + (f" (decided by '{gov_decider.value}': {governor_reading.detail})" if gov_decider else "")
            + f"; stale after P31_EFF_TTL_SEC={governor.eff_ttl_sec:g}s",
        )
    )
    hint = hint_for(explain_plan(symbol), governor_reading, Policy.from_settings(governor))
    steps += _hint_steps(hint, governor_reading, governor)
    return Explanation(
        symbol=symbol,
        now=now,
        reading=reading,
        decided_by=deciding_check(reading),
        decision=decision,
        governor_reading=governor_reading,
        hint=hint,
        steps=tuple(steps),
    )


def render_explanation(ex: Explanation) -> str:
    rows = [[s.section, s.check, s.status.value, s.value] for s in ex.steps]
    decided = "every check passed" if ex.decided_by is None else f"decided by '{ex.decided_by.value}'"
    return f"{ex.symbol}: reason {ex.reading.reason.value} ({decided})\n" + format_table(
        ("section", "check", "result", "looked at"), rows
    )


def read_facts(client: RedisClient, symbol: str) -> tuple[Facts, list[Raw] | Exception]:
    """One pipelined round trip: the efficiency fields, the live target and the last shadow proposal."""
    raw = encode(symbol)
    pipe = client.pipeline(transaction=False)
    queue_efficiency_read(pipe, raw)
    pipe.hget(LIVE_TARGET_PREFIX.encode() + raw, TARGET_FIELD)
    pipe.hgetall(PROPOSED_PREFIX.encode() + raw)
    eff, target, shadow = pipe.execute(raise_on_error=False)
    values = {} if isinstance(eff, Exception) else dict(zip(EFFICIENCY_FIELDS, eff, strict=True))
    shadow_text = (
        None
        if isinstance(shadow, Exception)
        else {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in shadow.items()}
    )
    return Facts(values, target, shadow_text), eff


def run_explain(ctx: Context) -> int:
    from microservices.ops.cli import UsageError

    symbol: str = ctx.args.symbol
    proposer: ProposerSettings = ctx.settings(ProposerSettings)
    governor_file = ctx.args.governor_env_file or ctx.env_file
    governor = load_settings(GovernorSettings, environment(governor_file))
    try:
        explain_plan(symbol)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    with ctx.connect(proposer) as client:
        facts, reply = read_facts(client, symbol)
        # a SCAN of the whole keyspace only to name the closest symbol, when this one has no live target hash
        live = client.type(LIVE_TARGET_PREFIX.encode() + encode(symbol)) == b"hash"
        known = [] if live else discover_symbols(client)
        now = time.time()
        raws: Sequence[bytes] = [encode(symbol)]
        reading = efficiency_readings(client, raws, [reply], now, proposer.efficiency_policy)[0]
        governor_reading = efficiency_readings(client, raws, [reply], now, governor.efficiency_policy)[0]
    explanation = build_explanation(
        symbol,
        facts=facts,
        reading=reading,
        governor_reading=governor_reading,
        now=now,
        proposer=proposer,
        governor=governor,
    )
    if ctx.json:
        ctx.emit_json(
            {
                **explanation.as_json(),
                "live_target": live,
                "did_you_mean": None if live else closest_symbol(symbol, known),
            }
        )
    else:
        ctx.out.write(render_explanation(explanation))
    if not live:  # the trace is still true, but most likely not about the symbol the operator meant
        print(f"note: {no_live_target(symbol, known)}: the proposer does not see it", file=ctx.err)
    return 0
