"""The per-symbol gate of SPEC §3 step 6: cooldown and rate limits over the symbol's recent non-reducing permits.

The state lives in Redis, one JSON string per symbol (:data:`GATE_KEY_PREFIX`) written with its TTL by one ``SET``, so
restarts and replicas share it and it goes away once it can no longer hold anything back. This module holds its pure
side: parsing it, judging a plan against it, and the state after a permit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from microservices.core.numbers import Raw, show_raw

GATE_KEY_PREFIX = "quantum:governor:gate:"
LAST_PERMIT_FIELD = "last_permit_ts"
EXTRA_COOLDOWN_FIELD = "extra_cooldown_sec"
RECENT_FIELD = "recent_permits"
LAST_PLAN_FIELD = "last_plan_id"

_JSON = json.JSONEncoder(ensure_ascii=False)

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

    def after_permit(self, now: float, extra_cooldown_sec: int) -> GateState:
        recent = (*(t for t in self.recent if now - t < ONE_HOUR), now)
        return GateState(now, extra_cooldown_sec, recent)

    def encode(self, plan_id: str) -> str:
        """The JSON object the gate key holds; ``last_plan_id`` is for people reading it. Built by hand: the numbers
        are finite floats and ints (``repr`` is valid JSON for them), and only the plan_id needs JSON's escaping."""
        recent = ",".join(repr(t) for t in self.recent)
        last = "null" if self.last_permit_ts is None else repr(self.last_permit_ts)
        return (
            f'{{"{LAST_PERMIT_FIELD}":{last},"{EXTRA_COOLDOWN_FIELD}":{self.extra_cooldown_sec},'
            f'"{RECENT_FIELD}":[{recent}],"{LAST_PLAN_FIELD}":{_JSON.encode(plan_id)}}}'
        )

    def ttl_sec(self, limits: GateLimits) -> int:
        """How long the hash must live for every judgement it can still affect: an hour, or the longest cooldown."""
        return int(max(ONE_HOUR, limits.cooldown_sec + self.extra_cooldown_sec)) + 1


EMPTY_GATE = GateState()


#: Largest extra cooldown a gate may hold, seconds: what the settings accept for P31_MAX_EXTRA_COOLDOWN_SEC.
MAX_EXTRA_COOLDOWN_SEC = 2**31 - 1


def _epoch(value: object) -> float | None:
    """A positive, finite epoch time in seconds, or None (for any other JSON value, however large)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def parse_gate(raw: Raw) -> tuple[GateState, str | None]:
    """The gate state from the key's value (None: no key), and what was malformed in it (None: nothing).

    Anything malformed is read as absent: a gate that cannot be read holds nothing back (fail-open, reported), and
    the next permit writes it anew. Whatever the value holds, this returns: a hostile value (a huge number, deeply
    nested arrays) must not stop the governor.
    """
    if raw is None:
        return EMPTY_GATE, None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return EMPTY_GATE, f"not JSON: {show_raw(raw)}"
    if not isinstance(data, dict):
        return EMPTY_GATE, f"not a JSON object: {show_raw(raw)}"
    problems: list[str] = []
    last = _epoch(data.get(LAST_PERMIT_FIELD))
    if last is None and data.get(LAST_PERMIT_FIELD) is not None:
        problems.append(f"{LAST_PERMIT_FIELD} {show_raw(str(data.get(LAST_PERMIT_FIELD)))}")
    extra = data.get(EXTRA_COOLDOWN_FIELD, 0)
    if isinstance(extra, bool) or not isinstance(extra, int) or not 0 <= extra <= MAX_EXTRA_COOLDOWN_SEC:
        problems.append(f"{EXTRA_COOLDOWN_FIELD} {show_raw(str(extra))}")
        extra = 0
    times = data.get(RECENT_FIELD, [])
    recent = [_epoch(t) for t in times] if isinstance(times, list) else [None]
    if any(t is None for t in recent):
        problems.append(f"{RECENT_FIELD} {show_raw(str(times))}")
        recent = []
    state = GateState(last, extra, tuple(sorted(t for t in recent if t is not None)))
    return state, ("; ".join(problems) or None)


def cooldown_left(state: GateState, limits: GateLimits, now: float) -> float:
    """Seconds until the symbol's cooldown ends (0 when none holds): the base cooldown plus, when the limits apply
    it, the last permit's extra cooldown. One function for the governor's judgement and ``p31ctl governor``."""
    cooldown = limits.cooldown_sec + (state.extra_cooldown_sec if limits.apply_extra_cooldown else 0)
    if cooldown <= 0 or state.last_permit_ts is None:
        return 0.0
    return max(0.0, state.last_permit_ts + cooldown - now)


def permits_within(state: GateState, window_sec: float, now: float) -> int:
    """The symbol's non-reducing permits in the last ``window_sec`` seconds, as the rate limits count them."""
    return sum(1 for t in state.recent if now - t < window_sec)


def gate_block(state: GateState, limits: GateLimits, now: float) -> str | None:
    """The reason a non-reducing plan is held back by its symbol's gate, or None: ``cooldown``, then
    ``rate_limit_5min``, then ``rate_limit_hour``. A cooldown of 0 with no extra cooldown is no cooldown at all."""
    if cooldown_left(state, limits, now) > 0:
        return "cooldown"
    if permits_within(state, FIVE_MINUTES, now) >= limits.max_per_5min:
        return "rate_limit_5min"
    if permits_within(state, ONE_HOUR, now) >= limits.max_per_hour:
        return "rate_limit_hour"
    return None


def held_by_extra_cooldown(state: GateState, limits: GateLimits, now: float) -> bool:
    """Whether the last permit's extra cooldown, and it alone, holds a non-reducing plan back now: the base cooldown
    has ended (or is off) but base plus extra has not. It is what ``enforce`` adds to ``hint`` at this step, so
    ``hint`` mode can count the plans it lets through that ``enforce`` would block, from the very gate state it
    judged them by (no other read), and ``enforce`` mode the blocks it owes to the extra cooldown."""
    base = cooldown_left(state, replace(limits, apply_extra_cooldown=False), now)
    return base == 0 and cooldown_left(state, replace(limits, apply_extra_cooldown=True), now) > 0
