"""The per-symbol gate of SPEC §3 step 6: cooldown and rate limits over the symbol's recent non-reducing permits.

The state lives in Redis, in one hash per symbol (:data:`GATE_KEY_PREFIX`), so restarts and replicas share it. This
module holds its pure side: parsing it, judging a plan against it, and the state after a permit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from microservices.core.numbers import Raw, parse_float, parse_int, show_raw

GATE_KEY_PREFIX = "quantum:governor:gate:"
LAST_PERMIT_FIELD = "last_permit_ts"
EXTRA_COOLDOWN_FIELD = "extra_cooldown_sec"
RECENT_FIELD = "recent_permits"
LAST_PLAN_FIELD = "last_plan_id"
#: The fields read, in this order, with ``HMGET``.
GATE_FIELDS: tuple[str, ...] = (LAST_PERMIT_FIELD, EXTRA_COOLDOWN_FIELD, RECENT_FIELD)

FIVE_MINUTES = 300.0
ONE_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class GateLimits:
    cooldown_sec: float
    max_per_5min: int
    max_per_hour: int
    #: ``enforce`` mode: the last permit's extra cooldown extends the symbol's cooldown.
    apply_extra_cooldown: bool


@dataclass(frozen=True, slots=True)
class GateState:
    """A symbol's recent non-reducing permits: the last one's time and extra cooldown, and the times of those within
    the last hour (oldest first)."""

    last_permit_ts: float | None = None
    extra_cooldown_sec: int = 0
    recent: tuple[float, ...] = ()
    #: False for a gate key of another type: it holds nothing back and is never written over.
    writable: bool = True

    def after_permit(self, now: float, extra_cooldown_sec: int) -> GateState:
        recent = (*(t for t in self.recent if now - t < ONE_HOUR), now)
        return GateState(now, extra_cooldown_sec, recent, self.writable)

    def hash_fields(self, plan_id: str) -> dict[str, str]:
        return {
            LAST_PERMIT_FIELD: f"{self.last_permit_ts:.6f}" if self.last_permit_ts is not None else "",
            EXTRA_COOLDOWN_FIELD: str(self.extra_cooldown_sec),
            RECENT_FIELD: ",".join(f"{t:.6f}" for t in self.recent),
            LAST_PLAN_FIELD: plan_id,
        }

    def ttl_sec(self, limits: GateLimits) -> int:
        """How long the hash must live for every judgement it can still affect: an hour, or the longest cooldown."""
        return int(max(ONE_HOUR, limits.cooldown_sec + self.extra_cooldown_sec)) + 1


EMPTY_GATE = GateState()
UNREADABLE_GATE = GateState(writable=False)


def parse_gate(values: Sequence[Raw] | None) -> tuple[GateState, str | None]:
    """The gate state from the ``HMGET`` reply of :data:`GATE_FIELDS`, and what was malformed in it (None: nothing).

    A malformed field is read as absent: a gate that cannot be read holds nothing back (fail-open, reported).
    """
    if values is None:
        return EMPTY_GATE, None
    raw_last, raw_extra, raw_recent = values
    problems: list[str] = []
    last = parse_float(raw_last) if raw_last not in (None, b"", "") else None
    if last is None and raw_last not in (None, b"", ""):
        problems.append(f"{LAST_PERMIT_FIELD} {show_raw(raw_last)}")
    extra = parse_int(raw_extra) if raw_extra not in (None, b"", "") else 0
    if extra is None or extra < 0:
        problems.append(f"{EXTRA_COOLDOWN_FIELD} {show_raw(raw_extra)}")
        extra = 0
    recent: list[float] = []
    if raw_recent not in (None, b"", ""):
        text = raw_recent.decode("ascii", "replace") if isinstance(raw_recent, bytes) else str(raw_recent)
        times = [parse_float(part) for part in text.split(",")]
        if any(t is None for t in times):
            problems.append(f"{RECENT_FIELD} {show_raw(raw_recent)}")
        else:
            recent = [t for t in times if t is not None]
    state = GateState(last, extra, tuple(sorted(recent)))
    return state, ("; ".join(problems) or None)


def gate_block(state: GateState, limits: GateLimits, now: float) -> str | None:
    """The reason a non-reducing plan is held back by its symbol's gate, or None: ``cooldown``, then
    ``rate_limit_5min``, then ``rate_limit_hour``. A cooldown of 0 with no extra cooldown is no cooldown at all."""
    cooldown = limits.cooldown_sec + (state.extra_cooldown_sec if limits.apply_extra_cooldown else 0)
    if cooldown > 0 and state.last_permit_ts is not None and now - state.last_permit_ts < cooldown:
        return "cooldown"
    if sum(1 for t in state.recent if now - t < FIVE_MINUTES) >= limits.max_per_5min:
        return "rate_limit_5min"
    if sum(1 for t in state.recent if now - t < ONE_HOUR) >= limits.max_per_hour:
        return "rate_limit_hour"
    return None
