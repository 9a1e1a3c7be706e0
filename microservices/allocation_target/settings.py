"""The proposer's settings (SPEC §4): every variable, its default and its check, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from microservices.allocation_target.multiplier import MultiplierParams
from microservices.core.efficiency import EfficiencyPolicy
from microservices.core.settings import (
    MAX_COUNT,
    MAX_REDIS_SECONDS,
    MAX_SECONDS,
    CommonSettings,
    ConfigError,
    no_white_space,
    non_negative,
    port,
    positive,
    positive_up_to,
    setting,
)

DEFAULT_STREAM = "quantum:stream:allocation.target.proposed"


@dataclass(frozen=True)
class ProposerSettings(CommonSettings):
    stale_sec: float = setting(
        "P31_STALE_SEC", 600.0, "an efficiency score older than this is stale_eff, seconds", check=positive
    )
    min_mult: float = setting("P31_MIN_MULT", 0.5, "lowest multiplier", check=non_negative)
    max_mult: float = setting("P31_MAX_MULT", 1.5, "highest multiplier", check=non_negative)
    scale: float = setting("P31_SCALE", 1.0, "multiplier change per unit of score away from 0.5")
    base: float = setting("P31_BASE", 1.0, "multiplier at score 0.5")
    stream_name: str = setting(
        "PROPOSE_STREAM_NAME", DEFAULT_STREAM, "stream the proposals are appended to", check=no_white_space
    )
    stream_maxlen: int = setting(
        "PROPOSE_STREAM_MAXLEN", 10000, "approximate length the stream is trimmed to", check=positive_up_to(MAX_COUNT)
    )
    key_ttl_sec: int = setting(
        "PROPOSE_KEY_TTL", 600, "TTL of each shadow proposal hash, seconds", check=positive_up_to(MAX_REDIS_SECONDS)
    )
    loop_interval_sec: float = setting(
        "LOOP_INTERVAL_SEC", 10.0, "time between loop starts, seconds", check=positive_up_to(MAX_SECONDS)
    )
    metrics_port: int = setting("METRICS_PORT", 8065, "port of the /metrics and /healthz server", check=port)

    def cross_check(self) -> None:
        super().cross_check()
        if self.min_mult > self.max_mult:
            raise ConfigError("P31_MIN_MULT", self.min_mult, f"must not exceed P31_MAX_MULT ({self.max_mult:g})")

    @property
    def efficiency_policy(self) -> EfficiencyPolicy:
        return EfficiencyPolicy(min_conf=self.min_conf, stale_sec=self.stale_sec, max_future_sec=self.max_future_sec)

    @property
    def multiplier_params(self) -> MultiplierParams:
        return MultiplierParams(base=self.base, scale=self.scale, min_mult=self.min_mult, max_mult=self.max_mult)

    @property
    def health_max_age_sec(self) -> float:
        """/healthz is 200 while the last successful loop is younger than three intervals."""
        return 3 * self.loop_interval_sec
