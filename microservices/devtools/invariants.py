"""The chaos run's guarantees as pure functions: evidence in, violations out (one sentence each, empty when it holds).

Each function judges one promise of SPEC §2-§6 over frozen records that the run gathered (stop timings, process
lives, counters before and after, what Redis held); none reads Redis or a clock, so each is unit-tested with data
made to break it. Plan outcomes (every entry exactly one outcome, no plan_id two permits, nothing pending) are
:func:`microservices.devtools.plans.outcome_violations`, shared with the fault tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from microservices.devtools.procstats import Check, Sample, verdict

#: SPEC §5: SIGTERM/SIGINT exit 0 within 5 s.
STOP_LIMIT_SEC = 5.0
#: Neutral multiplier of every reason but ``ok`` (SPEC §1, fail-open), as the stream and hash write it.
NEUTRAL = 1.0
#: The shadow fields are formatted: multiplier %.4f, targets %.2f. Half a unit in the last place each.
MULT_ROUNDING = 0.00005
USD_ROUNDING = 0.005
EPS = 1e-9


# --- evidence ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StopRecord:
    """A SIGTERM sent to a daemon: why, and how it ended (``code`` None: still running after the limit)."""

    daemon: str
    life: int
    why: str
    code: int | None
    seconds: float
    #: Where the stacks of a process that did not stop were dumped (its log), if it was made to dump them.
    stacks: str = ""


@dataclass(frozen=True)
class UnexpectedExit:
    """A daemon process that ended with nobody asking it to (or failed to start)."""

    daemon: str
    life: int
    code: int | None
    log_tail: str


@dataclass(frozen=True)
class LifeRecord:
    """One process of a daemon, from start to end, and its resource samples (``work`` = seconds since start)."""

    daemon: str
    life: int
    seconds: float
    samples: tuple[Sample, ...]


@dataclass(frozen=True)
class ResourcePolicy:
    """How a life is judged: only if it lasted ``min_life_sec``, over its samples after ``warmup_sec``."""

    min_life_sec: float
    warmup_sec: float
    max_growth_mb: float
    fd_slack: int


@dataclass(frozen=True)
class Recovery:
    """How long a daemon took, after the last fault cleared, to report a successful loop on /healthz (None: never
    within the time waited), and the bound it had."""

    daemon: str
    seconds: float | None
    bound_sec: float
    restarting: bool


@dataclass(frozen=True)
class MultiplierBounds:
    """The proposer's multiplier settings (SPEC §2): clamp, base and scale."""

    min_mult: float
    max_mult: float
    base: float
    scale: float

    def multiplier(self, score: float) -> float:
        return min(self.max_mult, max(self.min_mult, self.base + self.scale * (score - 0.5)))


@dataclass(frozen=True)
class OutcomeTally:
    """Outcomes of plans, counted either by the governors' metrics or from what Redis holds."""

    outcomes: int
    permits: int
    dead_letters: int
    already_decided: int

    def __sub__(self, other: OutcomeTally) -> OutcomeTally:
        return OutcomeTally(
            self.outcomes - other.outcomes,
            self.permits - other.permits,
            self.dead_letters - other.dead_letters,
            self.already_decided - other.already_decided,
        )


# --- checks -----------------------------------------------------------------------------------------------------------


def stop_violations(stops: Iterable[StopRecord], limit_sec: float = STOP_LIMIT_SEC) -> list[str]:
    """Every SIGTERM ends in exit status 0 within ``limit_sec`` (SPEC §5)."""
    problems = []
    for stop in stops:
        name = f"{stop.daemon} life {stop.life} ({stop.why})"
        if stop.code is None:
            dumped = f"; its threads' stacks are in {stop.stacks}" if stop.stacks else ""
            problems.append(f"{name}: still running {stop.seconds:.1f} s after SIGTERM (killed){dumped}")
        elif stop.code != 0:
            problems.append(f"{name}: SIGTERM ended in exit status {stop.code} after {stop.seconds:.1f} s")
        elif stop.seconds > limit_sec:
            problems.append(f"{name}: SIGTERM took {stop.seconds:.1f} s, over {limit_sec:g} s")
    return problems


def exit_violations(exits: Iterable[UnexpectedExit]) -> list[str]:
    """A daemon never exits by itself, whatever Redis does (SPEC §5)."""
    return [f"{e.daemon} life {e.life} exited by itself with status {e.code}: ...{e.log_tail[-600:]!r}" for e in exits]


def resource_checks(lives: Iterable[LifeRecord], policy: ResourcePolicy) -> list[Check]:
    """Memory and descriptors flat over every life long enough to judge (:func:`procstats.verdict`)."""
    checks: list[Check] = []
    for life in lives:
        samples = [s for s in life.samples if s.work <= life.seconds]
        if life.seconds < policy.min_life_sec or len(samples) < 3:
            continue
        label = f"{life.daemon} life {life.life} ({life.seconds:.0f} s)"
        warmup = policy.warmup_sec / life.seconds
        checks += verdict(label, samples, life.seconds, warmup, policy.max_growth_mb, fd_slack=policy.fd_slack)
    return checks


def recovery_violations(recoveries: Iterable[Recovery]) -> list[str]:
    """Each daemon healthy again within one interval plus the backoff cap of the last fault clearing (SPEC §5)."""
    problems = []
    for r in recoveries:
        how = " (restarting)" if r.restarting else ""
        if r.seconds is None:
            problems.append(f"{r.daemon}{how}: no successful loop after the last fault cleared")
        elif r.seconds > r.bound_sec:
            problems.append(f"{r.daemon}{how}: healthy again after {r.seconds:.1f} s, over {r.bound_sec:.1f} s")
    return problems


def _number(fields: Mapping[str, str], name: str) -> float | None:
    try:
        value = float(fields[name])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def proposal_violations(where: str, fields: Mapping[str, str], bounds: MultiplierBounds) -> list[str]:
    """One proposal (a stream entry or a shadow hash) against SPEC §1/§2: the multiplier within the clamp, exactly
    1.0 for every reason but ``ok`` and the clamp of the score's line for ``ok``; ``proposed_target`` =
    ``base_target`` x multiplier; ``eff_stale`` "1" exactly for ``stale_eff``. Tolerances are the rounding of the
    fields' own formats (%.4f, %.2f), nothing more."""
    reason = fields.get("reason", "")
    mult, base, proposed = (_number(fields, name) for name in ("multiplier", "base_target", "proposed_target"))
    if mult is None or base is None or proposed is None:
        return [f"{where}: unreadable proposal {dict(fields)}"]
    problems = []
    if not bounds.min_mult - EPS <= mult <= bounds.max_mult + EPS:
        problems.append(f"{where}: multiplier {mult} outside [{bounds.min_mult}, {bounds.max_mult}] ({reason})")
    if reason != "ok" and mult != NEUTRAL:
        problems.append(f"{where}: multiplier {mult} with reason {reason}, not 1.0")
    if reason == "ok":
        score = _number(fields, "eff_score")
        if score is None:
            problems.append(f"{where}: reason ok without a score")
        elif abs(mult - bounds.multiplier(score)) > MULT_ROUNDING * (1 + bounds.scale) + EPS:
            problems.append(f"{where}: multiplier {mult} for score {score}, expected {bounds.multiplier(score):.4f}")
    # the daemon multiplies unrounded values and rounds the product: each rounded field moves it this much at most
    if abs(proposed - base * mult) > USD_ROUNDING * (1 + mult) + base * MULT_ROUNDING + EPS:
        problems.append(f"{where}: proposed_target {proposed} is not base_target {base} x multiplier {mult}")
    if (fields.get("eff_stale") == "1") != (reason == "stale_eff"):
        problems.append(f"{where}: eff_stale {fields.get('eff_stale')!r} with reason {reason}")
    return problems


def double_permit_violations(doubles: Mapping[str, Sequence[str]]) -> list[str]:
    """A plan_id whose permit, read again, was not the one first read: two different permits for one plan (SPEC §3),
    one sentence per later value. (A permit gone is not a change: its TTL, or a plan not permitted yet.)"""
    return [
        f"plan {plan_id} seen with two different permits: {values[0]} then {permit}"
        for plan_id, values in doubles.items()
        for permit in values[1:]
    ]


def growth_violations(name: str, lengths: Sequence[int]) -> list[str]:
    """A stream that is never trimmed (plans, events) only grows: a shrink means Redis lost acknowledged writes
    (a restart without its AOF, a replica that resynchronised from nothing)."""
    return [
        f"{name} shrank from {before} to {after} entries"
        for before, after in itertools.pairwise(lengths)
        if after < before
    ]


def lost_write_violations(what: str, acknowledged: Iterable[str], held: Collection[str]) -> list[str]:
    """Everything Redis acknowledged is still there at the end."""
    lost = sorted(set(acknowledged) - set(held))
    return [f"{len(lost)} {what} acknowledged by Redis and lost: {lost[:10]}"] if lost else []


def tally_violations(counted: OutcomeTally, written: OutcomeTally) -> list[str]:
    """The governors' counters moved by exactly what was written to Redis over the same quiet stretch (SPEC §6:
    each outcome counted once, each permit once in ``p32_eff_apply_total``)."""
    pairs = {
        "outcomes (quantum_govern_outcomes_total)": (counted.outcomes, written.outcomes),
        "permits (p32_eff_apply_total)": (counted.permits, written.permits),
        "dead letters (quantum_govern_dead_letter_total)": (counted.dead_letters, written.dead_letters),
        "acknowledged-only plans (quantum_govern_already_decided_total)": (
            counted.already_decided,
            written.already_decided,
        ),
    }
    return [
        f"governors counted {got} {name} where Redis holds {want}" for name, (got, want) in pairs.items() if got != want
    ]


def pending_violations(pending: Mapping[str, float | None]) -> list[str]:
    """Once every plan is decided, each governor's ``quantum_govern_pending`` says 0."""
    return [f"{daemon}: quantum_govern_pending is {value}, not 0" for daemon, value in pending.items() if value != 0]


def proposer_metric_violations(
    live: Mapping[str, float | None],
    shadow_multipliers: Mapping[str, float | None],
    symbols_gauge: float | None,
    multiplier_gauges: Mapping[str, float],
) -> list[str]:
    """The proposer's metrics against Redis after a quiet loop (SPEC §6): ``p29_shadow_symbols`` is the number of
    live target hashes; a multiplier series exists for exactly the live symbols with a usable target (``live``
    maps each live symbol to its target, None when unusable), and says what its shadow hash says."""
    problems = []
    if symbols_gauge != len(live):
        problems.append(f"p29_shadow_symbols is {symbols_gauge}, Redis holds {len(live)} live target hashes")
    proposed = {symbol for symbol, target in live.items() if target is not None}
    if set(multiplier_gauges) != proposed:
        extra, missing = sorted(set(multiplier_gauges) - proposed), sorted(proposed - set(multiplier_gauges))
        problems.append(f"p29_shadow_multiplier series: extra {extra}, missing {missing}")
    for symbol in sorted(proposed & set(multiplier_gauges)):
        shadow = shadow_multipliers.get(symbol)
        gauge = multiplier_gauges[symbol]
        if shadow is None or abs(gauge - shadow) > MULT_ROUNDING + EPS:
            problems.append(f"p29_shadow_multiplier{{symbol={symbol!r}}} is {gauge}, its shadow hash says {shadow}")
    return problems


def live_target_violations(
    written: Mapping[str, Mapping[str, str] | None], held: Mapping[str, dict[str, str]]
) -> list[str]:
    """The live target hashes hold what their writer last wrote, nothing more (SPEC §2: the proposer never writes,
    renames, expires or deletes one). ``written`` maps a symbol to its fields, or None when its writer deleted it;
    symbols whose last write went unconfirmed are left out by the caller."""
    problems = []
    for symbol, fields in sorted(written.items()):
        have = held.get(symbol) or None
        if have != (dict(fields) if fields is not None else None):
            problems.append(f"live target of {symbol} is {have}, its writer left {fields}")
    return problems
