"""The proposer's settings (SPEC §4): every variable, its default and its check, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from microservices.allocation_target.multiplier import MultiplierParams
from microservices.core.efficiency import EfficiencyPolicy
from microservices.core.settings import (
    MAX_COUNT,
    MAX_REDIS_SECONDS,
    MAX_SECONDS,
    Check,
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
DEFAULT_LEASE_KEY = "quantum:allocation_target:leader"
#: The lease's default TTL, in loop intervals (SPEC §9).
LEASE_TTL_INTERVALS = 3


def _unset_or(check: Check) -> Check:
    """``check`` for a value that may be unset (None: its default is computed at start-up)."""
    return lambda value: None if value is None else check(value)


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
    lease_key: str = setting(
        "PROPOSER_LEASE_KEY", DEFAULT_LEASE_KEY,
        "key of the lease the one writing proposer holds; every proposer of a deployment must use the same",
        check=no_white_space,
    )  # fmt: skip
    lease_ttl_setting: float | None = setting(
        "PROPOSER_LEASE_TTL_SEC", None,
        "TTL of the proposer lease, seconds (default: 3 x LOOP_INTERVAL_SEC): a standby takes over within it plus one "
        "interval of the holder's death",
        check=_unset_or(positive_up_to(MAX_SECONDS)),
    )  # fmt: skip

    def cross_check(self) -> None:
        super().cross_check()
        if self.min_mult > self.max_mult:
            raise ConfigError("P31_MIN_MULT", self.min_mult, f"must not exceed P31_MAX_MULT ({self.max_mult:g})")
        if self.lease_ttl_sec <= self.loop_interval_sec:  # else the holder's lease lapses between two renewals
            raise ConfigError(
                "PROPOSER_LEASE_TTL_SEC", self.lease_ttl_setting,
                f"must exceed LOOP_INTERVAL_SEC ({self.loop_interval_sec:g})",
            )  # fmt: skip

    @property
    def lease_ttl_sec(self) -> float:
        """``PROPOSER_LEASE_TTL_SEC``, or 3 x ``LOOP_INTERVAL_SEC`` when it is unset."""
        if self.lease_ttl_setting is not None:
            return self.lease_ttl_setting
        return LEASE_TTL_INTERVALS * self.loop_interval_sec

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
