"""``p31ctl explain``: the trace is derived from the shared classification, and shows the shared formulas' numbers."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import EffCheck, EfficiencyReading, EffReason, classify_efficiency
from microservices.core.numbers import Raw
from microservices.governor.settings import GovernorSettings
from microservices.ops.explain import Explanation, Facts, Status, build_explanation, deciding_check

NOW = 1_700_000_000.0
PROPOSER = ProposerSettings()
GOVERNOR = GovernorSettings(consumer="test")


def fields(score: str = "0.9", conf: str = "0.8", ts: str | None = None, **extra: str) -> dict[str, str]:
    values = {"efficiency_score": score, "confidence": conf, "ts": ts if ts is not None else str(NOW - 5)}
    values.update(extra)
    return {k: v for k, v in values.items() if v != "-"}


def explain(
    values: Mapping[str, str] | None,
    target: Raw | Exception = "1000",
    proposer: ProposerSettings = PROPOSER,
    governor: GovernorSettings = GOVERNOR,
    reading: EfficiencyReading | None = None,
) -> Explanation:
    if reading is None:
        reading = classify_efficiency(values, NOW, proposer.efficiency_policy)
    gov_reading = classify_efficiency(values, NOW, governor.efficiency_policy)
    return build_explanation(
        "BTC",
        facts=Facts(dict(values or {}), target, None),
        reading=reading,
        governor_reading=gov_reading,
        now=NOW,
        proposer=proposer,
        governor=governor,
    )


def statuses(ex: Explanation) -> list[tuple[str, Status]]:
    return [(s.check, s.status) for s in ex.steps if s.section == "§1 efficiency"]


def step(ex: Explanation, check: str) -> str:
    return next(s.value for s in ex.steps if s.check == check)


@pytest.mark.parametrize(
    ("values", "reason", "decider"),
    [
        (fields(), EffReason.OK, None),
        (None, EffReason.MISSING, EffCheck.PRESENT),
        ({}, EffReason.INVALID, EffCheck.SCORE),
        (fields(score="abc"), EffReason.INVALID, EffCheck.SCORE),
        (fields(score="1.5"), EffReason.INVALID, EffCheck.SCORE),
        (fields(conf="-"), EffReason.INVALID, EffCheck.CONFIDENCE),
        (fields(conf="nan"), EffReason.INVALID, EffCheck.CONFIDENCE),
        (fields(ts="yesterday"), EffReason.INVALID, EffCheck.TIMESTAMP),
        (fields(ts="-"), EffReason.INVALID, EffCheck.TIMESTAMP),
        (fields(ts="-", timestamp="not a time"), EffReason.INVALID, EffCheck.TIMESTAMP),
        (fields(ts=str(NOW + 61)), EffReason.INVALID, EffCheck.FUTURE),
        (fields(ts=str(NOW - 601)), EffReason.STALE, EffCheck.STALE),
        (fields(conf="0.5"), EffReason.LOW_CONF, EffCheck.MIN_CONF),
    ],
)
def test_the_deciding_check_failed_those_before_passed_those_after_were_not_reached(
    values: dict[str, str] | None, reason: EffReason, decider: EffCheck | None
) -> None:
    ex = explain(values)
    assert ex.reading.reason is reason
    assert ex.decided_by is decider
    order = list(EffCheck)
    cut = len(order) if decider is None else order.index(decider)
    expected = [(c.value, Status.PASS) for c in order[:cut]]
    if decider is not None:
        expected += [(decider.value, Status.FAIL)] + [(c.value, Status.NOT_REACHED) for c in order[cut + 1 :]]
    assert statuses(ex) == expected


def test_a_failed_read_is_decided_by_the_read() -> None:
    ex = explain(None, reading=EfficiencyReading.redis_error("reading the efficiency hash failed: WRONGTYPE"))
    assert ex.decided_by is EffCheck.READ
    assert statuses(ex)[0] == ("read ok", Status.FAIL)
    assert "WRONGTYPE" in step(ex, "read ok")
    assert deciding_check(ex.reading) is EffCheck.READ


def test_stale_shows_the_age_and_the_threshold() -> None:
    ex = explain(fields(ts=str(NOW - 700)))
    assert step(ex, "not stale").startswith("age 700.0s; stale when > 600s -> stale_eff")
    assert "1.0 (fail-open)" in step(ex, "multiplier")
    assert step(ex, "proposed target") == "base x multiplier = 1000.00 x 1.0000 = 1000.00"


def test_multiplier_formula_with_numbers_substituted() -> None:
    ex = explain(fields(score="0.9"))
    assert step(ex, "multiplier formula") == ("P31_BASE + P31_SCALE x (score - 0.5) = 1 + 1 x (0.9 - 0.5) = 1.4000")
    assert step(ex, "clamp") == "within [P31_MIN_MULT=0.5, P31_MAX_MULT=1.5]: not applied"
    assert step(ex, "proposed target") == "base x multiplier = 1000.00 x 1.4000 = 1400.00"
    assert ex.as_json()["proposal"] == {
        "base_target": 1000.0,
        "multiplier": pytest.approx(1.4),
        "proposed_target": pytest.approx(1400.0),
    }


def test_the_clamp_is_shown_when_applied() -> None:
    steep = ProposerSettings(scale=2.0)
    high = explain(fields(score="1.0"), proposer=steep)
    assert step(high, "multiplier formula").endswith("= 2.0000")
    assert step(high, "clamp") == "2.0000 outside [0.5, 1.5]: clamped to P31_MAX_MULT=1.5"
    low = explain(fields(score="0.0"), proposer=steep)
    assert step(low, "clamp") == "0.0000 outside [0.5, 1.5]: clamped to P31_MIN_MULT=0.5"
    assert step(low, "proposed target") == "base x multiplier = 1000.00 x 0.5000 = 500.00"


def test_an_invalid_base_target_means_no_proposal() -> None:
    ex = explain(fields(), target="-5")
    assert step(ex, "base target valid").startswith("invalid_target: target_usd '-5'")
    assert ("proposed target", Status.NOT_REACHED) in [(s.check, s.status) for s in ex.steps]
    assert ex.as_json()["proposal"] is None
    assert ex.as_json()["skip"]["reason"] == "invalid_target"


def test_governor_downsize_hint_with_numbers_substituted() -> None:
    ex = explain(fields(score="0.2"))
    assert step(ex, "downsize factor") == (
        "max(P31_MIN_FACTOR, score / P31_DOWNSIZE_THRESHOLD) = max(0.25, 0.2 / 0.45) = 0.4444"
    )
    assert step(ex, "extra cooldown") == (
        "round((1 - score) x P31_MAX_EXTRA_COOLDOWN_SEC) = round((1 - 0.2) x 120) = 96 s"
    )
    governor = ex.as_json()["governor"]
    assert (governor["eff_action"], governor["extra_cooldown_sec"]) == ("DOWNSIZE", 96)
    assert governor["factor"] == pytest.approx(0.2 / 0.45)


def test_governor_hint_is_neutral_above_the_threshold_and_when_off() -> None:
    assert "NONE, factor 1.0" in step(explain(fields(score="0.9")), "downsize hint (non-reducing plan)")
    off = explain(fields(score="0.2"), governor=GovernorSettings(consumer="test", mode="off"))
    assert step(off, "downsize hint (non-reducing plan)").startswith("disabled (P31_GOV_MODE=off)")


def test_the_governor_judges_staleness_by_its_own_threshold() -> None:
    ex = explain(fields(score="0.2", ts=str(NOW - 700)), governor=GovernorSettings(consumer="t", eff_ttl_sec=900))
    assert ex.reading.reason is EffReason.STALE
    assert ex.governor_reading.reason is EffReason.OK
    assert ex.as_json()["governor"]["eff_action"] == "DOWNSIZE"
