"""SPEC §1: every row of the classification, its order and its boundaries, on the pure function."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microservices.core.efficiency import (
    EFFICIENCY_FIELDS,
    MISSING_READING,
    EfficiencyFields,
    EfficiencyPolicy,
    EfficiencyReading,
    EffReason,
    classify_efficiency,
    classify_values,
)

NOW = 1_800_000_000.0
POLICY = EfficiencyPolicy(min_conf=0.65, stale_sec=600.0, max_future_sec=60.0)


def eff(score: object = "0.7", conf: object = "0.9", ts: object = NOW - 10, **extra: object) -> dict[str, str]:
    fields = {"efficiency_score": score, "confidence": conf, "ts": ts, **extra}
    return {k: str(v) for k, v in fields.items() if v is not None}


def classify(fields: EfficiencyFields | None, now: float = NOW) -> EfficiencyReading:
    return classify_efficiency(fields, now, POLICY)


def test_a_fresh_confident_reading_is_ok_with_its_values() -> None:
    reading = classify(eff("0.9", "0.8", NOW - 30))
    assert reading == EfficiencyReading(EffReason.OK, score=0.9, confidence=0.8, ts=NOW - 30, age_sec=30.0)
    assert reading.usable_score == 0.9
    assert reading.stale_flag == "0"


def test_redis_error_is_neutral_with_no_values() -> None:
    reading = EfficiencyReading.redis_error("WRONGTYPE")
    assert (reading.reason, reading.score, reading.confidence, reading.usable_score) == (
        EffReason.REDIS_ERROR, None, None, None,
    )  # fmt: skip


def test_absent_hash_is_missing() -> None:
    assert classify(None).reason is EffReason.MISSING
    assert classify(None).usable_score is None


def test_hmget_values_classify_like_the_mapping() -> None:
    assert classify_values(None, NOW, POLICY) is MISSING_READING
    assert classify_values([None] * len(EFFICIENCY_FIELDS), NOW, POLICY).reason is EffReason.INVALID
    assert classify(eff("0.5", "0.9", None, timestamp=str(NOW))) == classify_values(
        [b"0.5", b"0.9", None, str(NOW).encode()], NOW, POLICY
    )


@pytest.mark.parametrize(
    "fields",
    [
        eff(score=None), eff(conf=None), eff(ts=None), eff(score="nan"), eff(score="inf"), eff(score="-inf"),
        eff(score="abc"), eff(score=""), eff(score="1.0001"), eff(score="-0.0001"), eff(conf="1.5"), eff(conf="x"),
        eff(score="1e309"), eff(score=" 0.5"), eff(score="\u0660.\u0665"), eff(ts="yesterday"), eff(ts="nan"),
        eff(ts="0"), eff(ts="-5"), eff(ts="2026-01-01T00:00:00"), eff(ts=NOW + 61), eff(ts=(NOW + 61) * 1000),
        {"efficiency_score": "0.5", "confidence": "0.9", "timestamp": "garbage"},
        {"unrelated": "1"},
    ],
)  # fmt: skip
def test_malformed_readings_are_invalid(fields: dict[str, str]) -> None:
    assert classify(fields).reason is EffReason.INVALID
    assert classify(fields).usable_score is None


def test_invalid_keeps_finite_values_even_out_of_range() -> None:
    reading = classify(eff(score="1.5", conf="0.95"))
    assert (reading.reason, reading.score, reading.confidence) == (EffReason.INVALID, 1.5, 0.95)
    assert classify(eff(score="nan")).score is None


def test_a_present_but_unusable_ts_does_not_fall_back_to_timestamp() -> None:
    assert classify(eff(ts="bad", timestamp=str(NOW))).reason is EffReason.INVALID


@pytest.mark.parametrize(
    ("timestamp", "expected_ts"),
    [
        (str(NOW - 5), NOW - 5),
        (str((NOW - 5) * 1000), NOW - 5),
        ("2027-01-15T08:00:00", 1_800_000_000.0 - 5),
        ("2027-01-15T08:00:00Z", 1_800_000_000.0 - 5),
        ("2027-01-15T09:00:00+01:00", 1_800_000_000.0 - 5),
        ("2027-01-15 08:00:00.000", 1_800_000_000.0 - 5),
    ],
)
def test_timestamp_field_is_accepted_when_ts_is_absent(timestamp: str, expected_ts: float) -> None:
    reading = classify(eff(ts=None, timestamp=timestamp), now=1_800_000_000.0 - 5 + 1)
    assert reading.reason is EffReason.OK
    assert reading.ts == pytest.approx(expected_ts)


def test_millisecond_ts_is_converted() -> None:
    reading = classify(eff(ts=int((NOW - 20) * 1000)))
    assert reading.reason is EffReason.OK
    assert reading.age_sec == pytest.approx(20.0)
    assert classify(eff(ts=int((NOW - 700) * 1000))).reason is EffReason.STALE


@pytest.mark.parametrize(
    ("age", "expected"), [(600.0, EffReason.OK), (600.001, EffReason.STALE), (5000, EffReason.STALE)]
)
def test_stale_is_strictly_older_than_the_threshold(age: float, expected: EffReason) -> None:
    reading = classify(eff(ts=NOW - age))
    assert reading.reason is expected
    assert reading.stale_flag == ("1" if expected is EffReason.STALE else "0")


@pytest.mark.parametrize(("ahead", "expected"), [(60.0, EffReason.OK), (60.01, EffReason.INVALID)])
def test_future_timestamps_beyond_the_allowance_are_invalid(ahead: float, expected: EffReason) -> None:
    assert classify(eff(ts=NOW + ahead)).reason is expected


@pytest.mark.parametrize(("conf", "expected"), [("0.65", EffReason.OK), ("0.6499", EffReason.LOW_CONF)])
def test_low_confidence_is_strictly_below_the_minimum(conf: str, expected: EffReason) -> None:
    assert classify(eff(conf=conf)).reason is expected


@pytest.mark.parametrize("score", ["0", "1", "0.0", "1.0"])
def test_score_bounds_are_inclusive(score: str) -> None:
    assert classify(eff(score=score)).reason is EffReason.OK


def test_stale_wins_over_low_confidence_and_invalid_over_both() -> None:
    assert classify(eff(conf="0.1", ts=NOW - 9999)).reason is EffReason.STALE
    assert classify(eff(score="2", conf="0.1", ts=NOW - 9999)).reason is EffReason.INVALID


@given(
    valid=st.booleans(),
    stale=st.booleans(),
    low=st.booleans(),
    score=st.floats(0, 1),
)
def test_the_first_matching_row_is_the_reason(valid: bool, stale: bool, low: bool, score: float) -> None:
    fields = eff(
        score=repr(score) if valid else "not-a-number",
        conf="0.1" if low else "0.9",
        ts=NOW - (10_000 if stale else 10),
    )
    expected = (
        EffReason.INVALID if not valid else EffReason.STALE if stale else EffReason.LOW_CONF if low else EffReason.OK
    )
    assert classify(fields).reason is expected


_raw_values = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers().map(str),
)


@given(st.dictionaries(st.sampled_from([*EFFICIENCY_FIELDS, "other", ""]), _raw_values))
def test_any_hash_classifies_without_error_within_bounds(fields: dict[str, str | bytes]) -> None:
    reading = classify_efficiency(fields, NOW, POLICY)
    assert reading.reason in set(EffReason) - {EffReason.REDIS_ERROR}
    for value in (reading.score, reading.confidence):
        assert value is None or math.isfinite(value)
    if reading.ok:
        assert reading.score is not None and 0 <= reading.score <= 1
        assert reading.confidence is not None and POLICY.min_conf <= reading.confidence <= 1


def _not_a_unit_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return True
    return not (text == text.strip() and text.isascii() and "_" not in text and 0 <= value <= 1)


@given(st.text(max_size=30).filter(_not_a_unit_number))
def test_any_unparseable_or_out_of_range_score_is_invalid(score: str) -> None:
    assert classify(eff(score=score)).reason is EffReason.INVALID
