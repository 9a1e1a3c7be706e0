"""SPEC §2: the multiplier formula, its clamp and its neutral value."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from microservices.allocation_target.multiplier import MultiplierParams, multiplier_for
from microservices.core.efficiency import EfficiencyReading, EffReason

DEFAULTS = MultiplierParams()


def ok(score: float) -> EfficiencyReading:
    return EfficiencyReading(EffReason.OK, score=score, confidence=0.9, ts=1.0, age_sec=1.0)


@pytest.mark.parametrize(
    ("score", "expected"), [(0.9, 1.4), (0.3, 0.8), (0.5, 1.0), (1.0, 1.5), (0.0, 0.5)]
)  # fmt: skip
def test_default_formula(score: float, expected: float) -> None:
    assert multiplier_for(ok(score), DEFAULTS) == pytest.approx(expected)
    assert f"{multiplier_for(ok(score), DEFAULTS):.4f}" == f"{expected:.4f}"


def test_clamped_at_both_ends() -> None:
    steep = MultiplierParams(base=1.0, scale=4.0, min_mult=0.5, max_mult=1.5)
    assert multiplier_for(ok(1.0), steep) == 1.5
    assert multiplier_for(ok(0.0), steep) == 0.5
    assert multiplier_for(ok(0.55), steep) == pytest.approx(1.2)


@pytest.mark.parametrize("reason", [r for r in EffReason if r is not EffReason.OK])
def test_every_other_reason_is_exactly_neutral(reason: EffReason) -> None:
    reading = EfficiencyReading(reason, score=0.95, confidence=0.99, ts=1.0, age_sec=1.0)
    assert multiplier_for(reading, MultiplierParams(base=3.0, scale=5.0, min_mult=2.0, max_mult=4.0)) == 1.0


_finite = st.floats(-1e6, 1e6, allow_nan=False)


@given(score=st.floats(0, 1), base=_finite, scale=_finite, low=st.floats(0, 1), high=st.floats(1, 1e6))
def test_multiplier_always_within_the_clamp(score: float, base: float, scale: float, low: float, high: float) -> None:
    params = MultiplierParams(base=base, scale=scale, min_mult=low, max_mult=high)
    for reading in (ok(score), EfficiencyReading(EffReason.INVALID), EfficiencyReading(EffReason.STALE, score=score)):
        assert low <= multiplier_for(reading, params) <= high


@given(score=st.floats(0, 1), base=_finite, scale=_finite, low=_finite, high=_finite)
def test_a_usable_score_is_clamped_for_any_bounds(
    score: float, base: float, scale: float, low: float, high: float
) -> None:
    assume(low <= high)
    assert low <= multiplier_for(ok(score), MultiplierParams(base, scale, low, high)) <= high
