"""The proposer's Prometheus metrics (SPEC §6); names are those the existing dashboards read."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from microservices.allocation_target.proposal import SkipReason
from microservices.core.efficiency import EffReason
from microservices.core.symbol_metrics import SymbolSeries
from microservices.core.version import register_build_info

LOOP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


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
        self.build_info = register_build_info(registry)
        for reason in EffReason:
            self.proposed.labels(reason.value)
        for skip in SkipReason:
            self.skipped.labels(skip.value)
        self.per_symbol = SymbolSeries((self.multiplier, self.eff_score, self.eff_confidence), max_symbols)
