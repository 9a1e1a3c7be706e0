"""The governor's Prometheus metrics (SPEC §6); names are those the existing dashboards read."""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as CounterMetric

from microservices.core.efficiency import EffReason
from microservices.core.symbol_metrics import RecentSymbols, label_text
from microservices.core.version import register_build_info
from microservices.governor.decision import BLOCK_REASONS, DEAD_LETTER_REASONS, Event, Outcome, Reason
from microservices.governor.downsize import DISABLED, REDUCE_ONLY, EffAction
from microservices.governor.enforce_effect import EnforceEffect, SizeUnit, enforce_effect
from microservices.governor.plan import InvalidPlan, Plan
from microservices.governor.settings import Mode

#: From a plan's stream id time to its outcome written; the apply layer waits at most 1.2 s for a permit.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.2, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Downsize factors of permits: P31_MIN_FACTOR's default 0.25 up to 1.0 (neutral), which is its own bucket.
FACTOR_BUCKETS = (0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0)
#: A symbol with no plan for this long has gone away: its per-symbol series are removed.
SYMBOL_IDLE_SEC = 3600.0

#: How often symbols that went away are looked for, seconds.
SYMBOL_EXPIRY_EVERY_SEC = 60.0

#: Every (event, reason) pair an outcome can have.
OUTCOME_LABELS: tuple[tuple[Event, Reason], ...] = (
    (Event.PERMIT, Reason.PERMITTED),
    (Event.SKIP, Reason.NOT_EXECUTE),
    *((Event.BLOCK, reason) for reason in BLOCK_REASONS),
    *((Event.DEAD_LETTER, reason) for reason in DEAD_LETTER_REASONS),
)


@dataclass
class BatchTally:
    """What a written batch adds to the metrics, gathered per plan and counted once per series."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    eff_apply: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    already_decided: int = 0
    latencies: list[float] = field(default_factory=list)
    #: The downsize factor of each permit.
    factors: list[float] = field(default_factory=list)
    #: symbol -> (permits, factor of the last one)
    permits: dict[str, tuple[int, float]] = field(default_factory=dict)
    blocks: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: What ``enforce`` would change (see :mod:`microservices.governor.enforce_effect`), summed over the batch.
    requested_size: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    enforce_size: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    enforce_downsized: int = 0
    extra_cooldown_blocks: int = 0

    def add_outcome(self, plan: Plan | InvalidPlan, outcome: Outcome, latency: float) -> None:
        """One written outcome (not an acknowledgement only): the governor's accounting, and the backfilled history
        of the report's tests, count through this one method."""
        if outcome.event is None:
            raise ValueError("an acknowledgement only is no outcome")
        event, reason = outcome.event.value, outcome.reason.value
        self.outcomes[event, reason] += 1
        self.latencies.append(latency)
        if isinstance(plan, Plan):
            self.add_effect(enforce_effect(plan, outcome))
        if outcome.event is Event.PERMIT and outcome.hint is not None:
            self.eff_apply[outcome.hint.action.value, outcome.hint.reason] += 1
            self.factors.append(outcome.hint.factor)
            self.permits[plan.symbol] = (self.permits.get(plan.symbol, (0, 0.0))[0] + 1, outcome.hint.factor)
        elif outcome.event is Event.BLOCK:
            self.blocks[plan.symbol, reason] += 1
        elif outcome.event is Event.DEAD_LETTER:
            self.dead_letters[reason] += 1

    def add_effect(self, effect: EnforceEffect | None) -> None:
        if effect is None:
            return
        for unit, size in effect.requested.items():
            self.requested_size[unit.value] += size
        for unit, size in effect.enforced.items():
            self.enforce_size[unit.value] += size
        self.enforce_downsized += effect.downsized
        self.extra_cooldown_blocks += effect.extra_cooldown_block


def eff_apply_labels(mode: Mode) -> list[tuple[str, str]]:
    """The (action, reason) pairs a permit can carry under ``mode``."""
    if mode == "off":
        return [(EffAction.NONE.value, DISABLED)]
    pairs = [(EffAction.NONE.value, reason.value) for reason in EffReason]
    return [*pairs, (EffAction.NONE.value, REDUCE_ONLY), (EffAction.DOWNSIZE.value, EffReason.OK.value)]


class GovernorMetrics:
    def __init__(self, registry: CollectorRegistry, mode: Mode, max_symbols: int) -> None:
        self.registry = registry
        self.eff_apply = CounterMetric(
            "p32_eff_apply", "Permits written, by eff_action and eff_reason", ["action", "reason"], registry=registry
        )
        self.eff_factor = Gauge("p32_eff_factor", "Factor of the symbol's last permit", ["symbol"], registry=registry)
        self.allow = CounterMetric("quantum_govern_allow", "Permits written, by symbol", ["symbol"], registry=registry)
        self.block = CounterMetric(
            "quantum_govern_block", "Plans blocked, by symbol and reason", ["symbol", "reason"], registry=registry
        )
        self.outcomes = CounterMetric(
            "quantum_govern_outcomes", "Plan outcomes written, by event and reason", ["event", "reason"],
            registry=registry,
        )  # fmt: skip
        self.already_decided = CounterMetric(
            "quantum_govern_already_decided",
            "Plans only acknowledged: their outcome was recorded before (re-delivery or republished plan_id)",
            registry=registry,
        )
        self.latency = Histogram(
            "quantum_govern_plan_latency_seconds",
            "From a plan's stream id time to its outcome written",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.pending = Gauge(
            "quantum_govern_pending", "Plans delivered to the group and not yet acknowledged", registry=registry
        )
        self.lag = Gauge("quantum_govern_lag", "Plans in the stream not yet delivered to the group", registry=registry)
        self.dead_letters = CounterMetric(
            "quantum_govern_dead_letter", "Plans sent to the dead-letter stream", ["reason"], registry=registry
        )
        self.redis_errors = CounterMetric(
            "quantum_govern_redis_errors", "Failed Redis calls (whole rounds or single commands)", registry=registry
        )
        self.conflicts = CounterMetric(
            "quantum_govern_write_conflicts",
            "Batches decided again because another writer changed a watched key first",
            registry=registry,
        )
        self.replication_unconfirmed = CounterMetric(
            "quantum_govern_replication_unconfirmed",
            "Batches whose decisions GOV_MIN_REPLICAS replicas did not confirm within GOV_REPLICA_WAIT_MS (once per "
            "batch): their permits wait, and no new batch is decided, until they do",
            registry=registry,
        )
        self.unreadable_state = CounterMetric(
            "quantum_govern_unreadable_state",
            "Kill switch or symbol gate that could not be read or parsed (treated as disengaged, fail-open)",
            ["kind"],
            registry=registry,
        )
        self.last_success = Gauge(
            "quantum_govern_last_success_timestamp_seconds", "End of the last successful read or batch, epoch",
            registry=registry,
        )  # fmt: skip
        # "If enforced": counters, so that increase() answers for any window what switching P31_GOV_MODE would change
        self.requested_size = CounterMetric(
            "p32_eff_requested_size",
            "Size the permitted plans asked for (unit: qty, or notional in USD), summed over permits",
            ["unit"],
            registry=registry,
        )
        self.enforce_size = CounterMetric(
            "p32_eff_enforce_size",
            "Size enforce mode permits for the same permits: requested size x downsize factor (in enforce mode, what "
            "was permitted)",
            ["unit"],
            registry=registry,
        )
        self.permit_factor = Histogram(
            "p32_eff_permit_factor", "Downsize factor of each permit (1.0: not downsized)", buckets=FACTOR_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.enforce_downsized = CounterMetric(
            "p32_eff_enforce_downsized", "Permits enforce mode shrinks (eff_action DOWNSIZE)", registry=registry
        )
        self.extra_cooldown_blocks = CounterMetric(
            "p32_eff_extra_cooldown_blocks",
            "Plans the last permit's extra cooldown alone holds back: blocked in enforce mode, permitted in hint mode",
            registry=registry,
        )
        self.build_info = register_build_info(registry)
        for unit in SizeUnit:
            self.requested_size.labels(unit.value)
            self.enforce_size.labels(unit.value)
        for action, reason in eff_apply_labels(mode):
            self.eff_apply.labels(action, reason)
        for event, outcome_reason in OUTCOME_LABELS:
            self.outcomes.labels(event.value, outcome_reason.value)
        for dead_reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(dead_reason.value)
        for kind in ("kill_switch", "gate"):
            self.unreadable_state.labels(kind)
        self.symbols = RecentSymbols(max_symbols, SYMBOL_IDLE_SEC)
        self._block_reasons: dict[str, set[str]] = {}
        self._next_expiry = 0.0

    def record(self, tally: BatchTally, now: float) -> None:
        """Count a written batch: each labelled series once per batch, not once per plan."""
        for (event, reason), n in tally.outcomes.items():
            self.outcomes.labels(event, reason).inc(n)
        for (action, reason), n in tally.eff_apply.items():
            self.eff_apply.labels(action, reason).inc(n)
        for reason, n in tally.dead_letters.items():
            self.dead_letters.labels(reason).inc(n)
        if tally.already_decided:
            self.already_decided.inc(tally.already_decided)
        for latency in tally.latencies:
            self.latency.observe(latency)
        for factor in tally.factors:
            self.permit_factor.observe(factor)
        for unit, size in tally.requested_size.items():
            self.requested_size.labels(unit).inc(size)
        for unit, size in tally.enforce_size.items():
            self.enforce_size.labels(unit).inc(size)
        if tally.enforce_downsized:
            self.enforce_downsized.inc(tally.enforce_downsized)
        if tally.extra_cooldown_blocks:
            self.extra_cooldown_blocks.inc(tally.extra_cooldown_blocks)
        for symbol, (n, factor) in tally.permits.items():
            if self.symbols.admit(symbol, now):
                label = label_text(symbol)
                self.allow.labels(label).inc(n)
                self.eff_factor.labels(label).set(factor)
        for (symbol, reason), n in tally.blocks.items():
            if self.symbols.admit(symbol, now):
                self.block.labels(label_text(symbol), reason).inc(n)
                self._block_reasons.setdefault(symbol, set()).add(reason)
        self.last_success.set(now)
        if now >= self._next_expiry:
            self._next_expiry = now + SYMBOL_EXPIRY_EVERY_SEC
            self.expire_symbols(now)

    def expire_symbols(self, now: float) -> None:
        """Remove the per-symbol series of symbols that have gone away."""
        for symbol in self.symbols.expire(now):
            label = label_text(symbol)
            for metric in (self.allow, self.eff_factor):
                with contextlib.suppress(KeyError):  # a symbol with blocks only has no permit series
                    metric.remove(label)
            for reason in self._block_reasons.pop(symbol, ()):
                self.block.remove(label, reason)
