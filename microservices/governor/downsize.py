"""The P3.1 downsize hint (SPEC §3): the formula that turns an efficiency reading into a factor and extra cooldown."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from microservices.core.efficiency import EfficiencyReading


class EffAction(StrEnum):
    NONE = "NONE"
    DOWNSIZE = "DOWNSIZE"


#: ``eff_reason`` values beyond the efficiency reasons of SPEC §1.
REDUCE_ONLY = "reduce_only"
DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class DownsizeParams:
    threshold: float
    min_factor: float
    max_extra_cooldown_sec: int


@dataclass(frozen=True, slots=True)
class DownsizeHint:
    """What P3.1 says about one plan: ``reason`` is the ``eff_reason`` field (an efficiency reason, ``reduce_only`` or
    ``disabled``); ``reading`` is what the score and confidence fields show (None: nothing was read)."""

    action: EffAction
    factor: float
    extra_cooldown_sec: int
    reason: str
    reading: EfficiencyReading | None


def downsize_hint(reading: EfficiencyReading, params: DownsizeParams) -> DownsizeHint:
    """With reason ``ok`` and ``score < threshold`` (strict): DOWNSIZE, ``max(min_factor, score / threshold)`` and
    ``round((1 - score) * max_extra_cooldown)``; otherwise NONE, 1.0, 0. Defaults: 0.2 gives 0.4444 and 96 s."""
    score = reading.usable_score
    if score is None or not score < params.threshold:
        return DownsizeHint(EffAction.NONE, 1.0, 0, reading.reason.value, reading)
    factor = max(params.min_factor, score / params.threshold)
    extra = round((1.0 - score) * params.max_extra_cooldown_sec)
    return DownsizeHint(EffAction.DOWNSIZE, factor, extra, reading.reason.value, reading)


def reduce_only_hint(reading: EfficiencyReading | None) -> DownsizeHint:
    """A reducing plan is never downsized, whatever its score."""
    return DownsizeHint(EffAction.NONE, 1.0, 0, REDUCE_ONLY, reading)


#: ``P31_GOV_MODE=off``: neutral fields for every plan, nothing read.
DISABLED_HINT = DownsizeHint(EffAction.NONE, 1.0, 0, DISABLED, None)
