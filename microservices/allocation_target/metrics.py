"""The proposer's Prometheus metrics (SPEC §6); names are those the existing dashboards read."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from microservices.allocation_target.proposal import SkipReason
from microservices.core.efficiency import EffReason
from microservices.core.symbol_metrics import SymbolSeries
from microservices.core.version import register_build_info

LOOP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
#: Multipliers of proposals: 0.99 and 1.0 as bounds, so "would shrink", "unchanged" and "would grow" are buckets.
MULTIPLIER_BUCKETS = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 2.0)


class ProposerMetrics:
    def __init__(self, registry: CollectorRegistry, max_symbols: int) -> None:
        self.registry = registry
        self.loops = Counter("p29_shadow_loops", "Completed proposer loops", registry=registry)
        self.proposed = Counter(
            "p29_shadow_proposed", "Shadow proposals written, by efficiency reason", ["reason"], registry=registry
        )
        self.skipped = Counter(
            "p29_shadow_skipped", "Symbols with no proposal this loop, by reason", ["reason"], registry=registry
        )
        self.multiplier = Gauge("p29_shadow_multiplier", "Last proposed multiplier", ["symbol"], registry=registry)
        self.eff_score = Gauge("p29_shadow_eff_score", "Last efficiency score read", ["symbol"], registry=registry)
        self.eff_confidence = Gauge(
            "p29_shadow_eff_confidence", "Last efficiency confidence read", ["symbol"], registry=registry
        )
        self.loop_duration = Histogram(
            "p29_shadow_loop_duration_seconds", "Duration of a proposer loop", buckets=LOOP_BUCKETS, registry=registry
        )
        self.symbols = Gauge("p29_shadow_symbols", "Live target hashes discovered by the last loop", registry=registry)
        self.redis_errors = Counter(
            "p29_shadow_redis_errors", "Failed Redis calls (whole loops or single reads)", registry=registry
        )
        self.last_success = Gauge(
            "p29_shadow_last_success_timestamp_seconds", "End of the last successful loop, epoch", registry=registry
        )
        # The alerts compare loop age and loop duration with this, so they hold for any configured interval.
        self.loop_interval = Gauge(
            "p29_shadow_loop_interval_seconds", "Configured time between loop starts (LOOP_INTERVAL_SEC)",
            registry=registry,
        )  # fmt: skip
        # "If enforced": what the live targets would become were the proposals applied, per loop and over days
        self.live_usd = Gauge(
            "p29_shadow_live_usd", "Sum of the live targets proposed for by the last loop, by efficiency reason",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.proposed_usd = Gauge(
            "p29_shadow_proposed_usd", "Sum of the proposed targets of the last loop, by efficiency reason",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.proposal_multiplier = Histogram(
            "p29_shadow_proposal_multiplier", "Multiplier of each proposal written (one per symbol and loop)",
            buckets=MULTIPLIER_BUCKETS, registry=registry,
        )  # fmt: skip
        self.leader = Gauge(
            "p29_shadow_leader", "1 while this instance holds the proposer lease and writes, 0 while it stands by",
            registry=registry,
        )  # fmt: skip
        self.build_info = register_build_info(registry)
        for reason in EffReason:
            self.proposed.labels(reason.value)
            self.live_usd.labels(reason.value)
            self.proposed_usd.labels(reason.value)
        for skip in SkipReason:
            self.skipped.labels(skip.value)
        self.per_symbol = SymbolSeries((self.multiplier, self.eff_score, self.eff_confidence), max_symbols)

    def publish_usd_totals(self, live: Mapping[str, float], proposed: Mapping[str, float]) -> None:
        """Set the last loop's totals, every reason (absent ones to 0, so a reason that went away does not linger)."""
        for reason in EffReason:
            self.live_usd.labels(reason.value).set(live.get(reason.value, 0.0))
            self.proposed_usd.labels(reason.value).set(proposed.get(reason.value, 0.0))

    def clear_loop_gauges(self) -> None:
        """Forget the last loop's gauges (per-symbol series, totals, symbol count) when this instance stops leading:
        a standby must not go on exporting a former leadership's view, or sums over the instances count it twice."""
        self.per_symbol.publish({})
        self.publish_usd_totals({}, {})
        self.symbols.set(0)
