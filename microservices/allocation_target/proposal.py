"""What the proposer decides for one symbol (SPEC §2), as values with no I/O: a proposal or a skip, and its fields."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from microservices.allocation_target.multiplier import MultiplierParams, multiplier_for
from microservices.core.efficiency import EfficiencyReading
from microservices.core.numbers import Raw, parse_float, show_raw

LIVE_TARGET_PREFIX = "quantum:allocation:target:"
PROPOSED_PREFIX = "quantum:allocation:target:proposed:"
TARGET_FIELD = "target_usd"
#: The one field of the shadow hash that the stream entry does not carry.
LAST_UPDATE_FIELD = "last_update_ts_epoch"
MODE = "shadow"


_LIVE_PREFIX = LIVE_TARGET_PREFIX.encode()


def symbols_from_live_keys(keys: Iterable[bytes]) -> set[str]:
    """The symbols of the live target keys among ``keys``; other keys (``...:proposed:...`` and the like) are not
    symbols. Called with every key ``SCAN`` returns, so it is one comprehension rather than a call per key."""
    start = len(_LIVE_PREFIX)
    return {
        key[start:].decode("utf-8", "surrogateescape")
        for key in keys
        if key.startswith(_LIVE_PREFIX) and len(key) > start and b":" not in key[start:]
    }


def encode(text: str) -> bytes:
    """Text back to the exact bytes it was read as (symbols may hold bytes that are not UTF-8)."""
    return text.encode("utf-8", "surrogateescape")


class SkipReason(StrEnum):
    INVALID_TARGET = "invalid_target"
    REDIS_ERROR = "redis_error"


@dataclass(frozen=True, slots=True)
class Skip:
    """No proposal for this symbol this loop, and why."""

    symbol: str
    reason: SkipReason
    detail: str


@dataclass(frozen=True, slots=True)
class Proposal:
    symbol: str
    base_target: float
    multiplier: float
    reading: EfficiencyReading
    ts_epoch: int

    @property
    def proposed_target(self) -> float:
        return self.base_target * self.multiplier

    @property
    def reason(self) -> str:
        return self.reading.reason.value

    def stream_fields(self) -> dict[str, str]:
        """The stream entry (SPEC §2). Scores and confidences that are not finite numbers are written as ""."""
        reading = self.reading
        return {
            "ts_epoch": str(self.ts_epoch),
            "symbol": self.symbol,
            "base_target": f"{self.base_target:.2f}",
            "proposed_target": f"{self.proposed_target:.2f}",
            "multiplier": f"{self.multiplier:.4f}",
            "eff_score": "" if reading.score is None else f"{reading.score:.4f}",
            "eff_confidence": "" if reading.confidence is None else f"{reading.confidence:.3f}",
            "eff_stale": reading.stale_flag,
            "reason": self.reason,
            "mode": MODE,
        }

    def hash_fields(self) -> dict[str, str]:
        """The shadow hash ``quantum:allocation:target:proposed:{symbol}`` (SPEC §2)."""
        return {**self.stream_fields(), LAST_UPDATE_FIELD: str(self.ts_epoch)}


def parse_target(raw: Raw) -> float | None:
    """``target_usd`` as a finite number ≥ 0, else None."""
    value = parse_float(raw)
    return value if value is not None and value >= 0 else None


def decide(
    symbol: str, raw_target: Raw, reading: EfficiencyReading, params: MultiplierParams, now: float
) -> Proposal | Skip:
    """The proposal for one symbol from its live target and efficiency reading, or the reason there is none."""
    base = parse_target(raw_target)
    if base is None:
        shown = "absent" if raw_target is None else show_raw(raw_target)
        return Skip(symbol, SkipReason.INVALID_TARGET, f"{TARGET_FIELD} {shown} is not a finite number >= 0")
    proposal = Proposal(symbol, base, multiplier_for(reading, params), reading, int(now))
    if not math.isfinite(proposal.proposed_target):
        return Skip(symbol, SkipReason.INVALID_TARGET, f"{TARGET_FIELD} {base:g} overflows when scaled")
    return proposal
