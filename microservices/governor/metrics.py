"""The governor's Prometheus metrics (SPEC §6); names are those the existing dashboards read."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from microservices.core.efficiency import EffReason
from microservices.core.symbol_metrics import RecentSymbols, label_text
from microservices.governor.decision import BLOCK_REASONS, DEAD_LETTER_REASONS, Event, Reason
from microservices.governor.downsize import DISABLED, REDUCE_ONLY, EffAction
from microservices.governor.settings import Mode

#: From a plan's stream id time to its outcome written; the apply layer waits at most 1.2 s for a permit.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.2, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: A symbol with no plan for this long has gone away: its per-symbol series are removed.
SYMBOL_IDLE_SEC = 3600.0

#: Every (event, reason) pair an outcome can have.
OUTCOME_LABELS: tuple[tuple[Event, Reason], ...] = (
    (Event.PERMIT, Reason.PERMITTED),
    (Event.SKIP, Reason.NOT_EXECUTE),
    *((Event.BLOCK, reason) for reason in BLOCK_REASONS),
    *((Event.DEAD_LETTER, reason) for reason in DEAD_LETTER_REASONS),
)


def eff_apply_labels(mode: Mode) -> list[tuple[str, str]]:
    """The (action, reason) pairs a permit can carry under ``mode``."""
    if mode == "off":
        return [(EffAction.NONE.value, DISABLED)]
    pairs = [(EffAction.NONE.value, reason.value) for reason in EffReason]
    return [*pairs, (EffAction.NONE.value, REDUCE_ONLY), (EffAction.DOWNSIZE.value, EffReason.OK.value)]


class GovernorMetrics:
    def __init__(self, registry: CollectorRegistry, mode: Mode, max_symbols: int) -> None:
        self.registry = registry
        self.eff_apply = Counter(
            "p32_eff_apply", "Permits written, by eff_action and eff_reason", ["action", "reason"], registry=registry
        )
        self.eff_factor = Gauge("p32_eff_factor", "Factor of the symbol's last permit", ["symbol"], registry=registry)
        self.allow = Counter("quantum_govern_allow", "Permits written, by symbol", ["symbol"], registry=registry)
        self.block = Counter(
            "quantum_govern_block", "Plans blocked, by symbol and reason", ["symbol", "reason"], registry=registry
        )
        self.outcomes = Counter(
            "quantum_govern_outcomes", "Plan outcomes written, by event and reason", ["event", "reason"],
            registry=registry,
        )  # fmt: skip
        self.already_decided = Counter(
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
        self.dead_letters = Counter(
            "quantum_govern_dead_letter", "Plans sent to the dead-letter stream", ["reason"], registry=registry
        )
        self.redis_errors = Counter(
            "quantum_govern_redis_errors", "Failed Redis calls (whole rounds or single commands)", registry=registry
        )
        self.conflicts = Counter(
            "quantum_govern_write_conflicts",
            "Batches decided again because another writer changed a watched key first",
            registry=registry,
        )
        self.unreadable_state = Counter(
            "quantum_govern_unreadable_state",
            "Kill switch or symbol gate that could not be read or parsed (treated as disengaged, fail-open)",
            ["kind"],
            registry=registry,
        )
        self.last_success = Gauge(
            "quantum_govern_last_success_timestamp_seconds", "End of the last successful read or batch, epoch",
            registry=registry,
        )  # fmt: skip
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

    def count_permit(self, symbol: str, action: str, reason: str, factor: float, now: float) -> None:
        self.eff_apply.labels(action, reason).inc()
        self.outcomes.labels(Event.PERMIT.value, Reason.PERMITTED.value).inc()
        if self.symbols.admit(symbol, now):
            label = label_text(symbol)
            self.allow.labels(label).inc()
            self.eff_factor.labels(label).set(factor)

    def count_block(self, symbol: str, reason: str, now: float) -> None:
        self.outcomes.labels(Event.BLOCK.value, reason).inc()
        if self.symbols.admit(symbol, now):
            self.block.labels(label_text(symbol), reason).inc()
            self._block_reasons.setdefault(symbol, set()).add(reason)

    def expire_symbols(self, now: float) -> None:
        """Remove the per-symbol series of symbols that have gone away."""
        for symbol in self.symbols.expire(now):
            label = label_text(symbol)
            for metric in (self.allow, self.eff_factor):
                with contextlib.suppress(KeyError):  # a symbol with blocks only has no permit series
                    metric.remove(label)
            for reason in self._block_reasons.pop(symbol, ()):
                self.block.remove(label, reason)
