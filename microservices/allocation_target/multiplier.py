"""The allocation multiplier (SPEC §2): how far an efficiency score moves a symbol's target."""

from __future__ import annotations

from dataclasses import dataclass

from microservices.core.efficiency import EfficiencyReading

NEUTRAL = 1.0


@dataclass(frozen=True)
class MultiplierParams:
    base: float = 1.0
    scale: float = 1.0
    min_mult: float = 0.5
    max_mult: float = 1.5


def multiplier_for(reading: EfficiencyReading, params: MultiplierParams) -> float:
    """``clamp(min_mult, max_mult, base + scale * (score - 0.5))`` for a usable reading; exactly 1.0 otherwise.

    With the defaults, score 0.9 gives 1.4 and score 0.3 gives 0.8.
    """
    score = reading.usable_score
    if score is None:
        return NEUTRAL
    return min(params.max_mult, max(params.min_mult, params.base + params.scale * (score - 0.5)))
