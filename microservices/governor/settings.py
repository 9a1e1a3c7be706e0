"""The governor's settings (SPEC §4): every variable, its default and its check, in one place."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal

from microservices.core.efficiency import EfficiencyPolicy
from microservices.core.settings import (
    MAX_COUNT,
    MAX_REDIS_SECONDS,
    CommonSettings,
    between,
    no_white_space,
    port,
    positive,
    positive_up_to,
    probability,
    setting,
)

Mode = Literal["hint", "enforce", "off"]

DEFAULT_PLANS_STREAM = "quantum:stream:apply.plan"
#: Reads block at most this long whatever GOV_BLOCK_MS says, so that a SIGTERM is honoured within SPEC §5's 5 s.
MAX_READ_BLOCK_MS = 2000
#: Margin of the socket timeout over the longest blocking read, so a read that blocks its full time never times out.
SOCKET_TIMEOUT_MARGIN_SEC = 2.0
#: /healthz is 200 while the last successful read is younger than this (SPEC §5): every read is a loop.
HEALTH_MAX_AGE_SEC = 10.0
#: Longest ``WAIT`` for replicas, ms: well under the client's 2 s socket timeout (a longer WAIT would time the
#: connection out instead of answering), and short enough that a last try on SIGTERM fits in SPEC §5's 5 s.
MAX_REPLICA_WAIT_MS = 1000
#: Most replicas a batch can be made to wait for: more than any deployment runs, low enough to catch a typo.
MAX_MIN_REPLICAS = 100


def _host_name() -> str:
    return socket.gethostname() or "governor"


@dataclass(frozen=True)
class GovernorSettings(CommonSettings):
    # --- P3.1 downsize hint
    downsize_threshold: float = setting(
        "P31_DOWNSIZE_THRESHOLD",
        0.45,
        "an ok score below this downsizes the plan",
        check=positive_up_to(1),
    )
    min_factor: float = setting(
        "P31_MIN_FACTOR",
        0.25,
        "smallest downsize factor",
        check=positive_up_to(1),
    )
    max_extra_cooldown_sec: int = setting(
        "P31_MAX_EXTRA_COOLDOWN_SEC",
        120,
        "extra cooldown at score 0, seconds (scaled by 1 - score)",
        check=between(0, MAX_REDIS_SECONDS),
    )
    eff_ttl_sec: float = setting(
        "P31_EFF_TTL_SEC", 600.0, "an efficiency score older than this is stale_eff, seconds", check=positive
    )
    mode: Mode = setting(
        "P31_GOV_MODE", "hint", "hint: fields only; enforce: scale qty and extend cooldown; off: neutral fields"
    )
    # --- permits and records
    permit_ttl_sec: int = setting(
        "PERMIT_TTL_SEC", 60, "TTL of each permit key, seconds", check=positive_up_to(MAX_REDIS_SECONDS)
    )
    # --- consumption
    plans_stream: str = setting(
        "STREAM_PLANS", DEFAULT_PLANS_STREAM, "stream of execution plans; dead letters go to <STREAM_PLANS>.dlq",
        check=no_white_space,
    )  # fmt: skip
    group: str = setting("GOV_GROUP", "governor", "consumer group on STREAM_PLANS", check=no_white_space)
    consumer: str = setting(
        "GOV_CONSUMER",
        doc="consumer name, stable across restarts so that pending plans are re-read (default: the host name)",
        default_factory=_host_name,
        check=no_white_space,
    )
    block_ms: int = setting(
        "GOV_BLOCK_MS",
        1000,
        f"longest wait of one read for new plans, ms (reads never block over {MAX_READ_BLOCK_MS} ms)",
        check=between(1, 5000),
    )
    claim_idle_ms: int = setting(
        "GOV_CLAIM_IDLE_MS",
        30000,
        "plans pending this long in another consumer are claimed, ms",
        check=positive_up_to(MAX_REDIS_SECONDS),
    )
    max_deliveries: int = setting(
        "GOV_MAX_DELIVERIES",
        5,
        "a plan delivered more often than this goes to the dead-letter stream",
        check=positive_up_to(MAX_COUNT),
    )
    plan_max_age_sec: float = setting(
        "GOV_PLAN_MAX_AGE_SEC",
        120.0,
        "a plan whose stream id is older than this is blocked as stale_plan, seconds",
        check=positive_up_to(MAX_REDIS_SECONDS),
    )
    events_maxlen: int = setting(
        "GOV_EVENTS_MAXLEN", 10000, "approximate length of the events stream", check=positive_up_to(MAX_COUNT)
    )
    # --- the governor's own gates
    kill_score_critical: float = setting(
        "GOV_KILL_SCORE_CRITICAL", 0.8, "a non-reducing plan with kill_score at or above this is blocked",
        check=probability,
    )  # fmt: skip
    symbol_cooldown_sec: float = setting(
        "GOV_SYMBOL_COOLDOWN_SECONDS",
        60.0,
        "time after a non-reducing permit before the next for that symbol, seconds (0: off)",
        check=between(0, MAX_REDIS_SECONDS),
    )
    max_exec_per_5min: int = setting(
        "GOV_MAX_EXEC_PER_5MIN", 2, "most non-reducing permits per symbol in any 5 minutes",
        check=between(1, MAX_COUNT),
    )  # fmt: skip
    max_exec_per_hour: int = setting(
        "GOV_MAX_EXEC_PER_HOUR", 3, "most non-reducing permits per symbol in any hour", check=between(1, MAX_COUNT)
    )
    # --- writes that survive a failover (SPEC §9)
    min_replicas: int = setting(
        "GOV_MIN_REPLICAS",
        0,
        "replicas that must confirm a batch's decisions (WAIT) before its permits are written (0: off)",
        check=between(0, MAX_MIN_REPLICAS),
    )
    replica_wait_ms: int = setting(
        "GOV_REPLICA_WAIT_MS",
        100,
        "longest WAIT for GOV_MIN_REPLICAS replicas per try, ms; an unconfirmed batch's permits wait and it is tried "
        "again",
        check=between(1, MAX_REPLICA_WAIT_MS),
    )
    metrics_port: int = setting("METRICS_PORT", 8044, "port of the /metrics and /healthz server", check=port)

    @property
    def efficiency_policy(self) -> EfficiencyPolicy:
        return EfficiencyPolicy(min_conf=self.min_conf, stale_sec=self.eff_ttl_sec, max_future_sec=self.max_future_sec)

    @property
    def read_block_ms(self) -> int:
        return min(self.block_ms, MAX_READ_BLOCK_MS)

    @property
    def socket_timeout_sec(self) -> float:
        return self.read_block_ms / 1000 + SOCKET_TIMEOUT_MARGIN_SEC

    @property
    def dead_letter_stream(self) -> str:
        return self.plans_stream + ".dlq"
