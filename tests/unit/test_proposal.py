"""SPEC §2: one symbol's decision and the exact fields it is written with."""

from __future__ import annotations

import pytest

from microservices.allocation_target.multiplier import MultiplierParams
from microservices.allocation_target.proposal import (
    Proposal,
    Skip,
    SkipReason,
    decide,
    encode,
    parse_target,
    symbols_from_live_keys,
)
from microservices.core.efficiency import EfficiencyReading, EffReason

NOW = 1_800_000_000.7
OK = EfficiencyReading(EffReason.OK, score=0.9, confidence=0.8, ts=NOW - 5, age_sec=5)


@pytest.mark.parametrize(
    ("key", "symbol"),
    [
        (b"quantum:allocation:target:BTCUSDT", "BTCUSDT"),
        (b"quantum:allocation:target:proposed:BTCUSDT", None),
        (b"quantum:allocation:target:", None),
        (b"quantum:allocation:target:a:b", None),
        (b"quantum:allocation:targets", None),
        (b"other:BTC", None),
        (b"quantum:allocation:target:\xff\xfe", "\udcff\udcfe"),
    ],
)
def test_only_live_target_keys_name_a_symbol(key: bytes, symbol: str | None) -> None:
    assert symbols_from_live_keys([key]) == ({symbol} if symbol is not None else set())
    if symbol is not None:
        assert b"quantum:allocation:target:" + encode(symbol) == key


def test_keys_seen_twice_by_scan_give_one_symbol() -> None:
    keys = [
        b"quantum:allocation:target:BTC",
        b"quantum:allocation:target:proposed:BTC",
        b"quantum:allocation:target:BTC",
    ]
    assert symbols_from_live_keys(keys) == {"BTC"}


@pytest.mark.parametrize(("raw", "value"), [(b"100", 100.0), (b"0", 0.0), (b"12.5", 12.5), ("1e6", 1e6)])
def test_valid_targets(raw: bytes, value: float) -> None:
    assert parse_target(raw) == value


@pytest.mark.parametrize("raw", [None, b"", b"abc", b"-1", b"-0.01", b"nan", b"inf", b"1e309", b" 5", b"5 USD"])
def test_invalid_target_is_skipped_with_its_reason(raw: bytes | None) -> None:
    decision = decide("BTC", raw, OK, MultiplierParams(), NOW)
    assert isinstance(decision, Skip)
    assert decision.reason is SkipReason.INVALID_TARGET
    assert decision.symbol == "BTC"


def test_a_target_that_overflows_when_scaled_is_skipped() -> None:
    decision = decide("BTC", b"1.7e308", OK, MultiplierParams(), NOW)
    assert isinstance(decision, Skip) and decision.reason is SkipReason.INVALID_TARGET


def test_ok_proposal_fields_are_exact() -> None:
    decision = decide("BTCUSDT", b"1000", OK, MultiplierParams(), NOW)
    assert isinstance(decision, Proposal)
    assert decision.hash_fields() == {
        "ts_epoch": "1800000000",
        "symbol": "BTCUSDT",
        "base_target": "1000.00",
        "proposed_target": "1400.00",
        "multiplier": "1.4000",
        "eff_score": "0.9000",
        "eff_confidence": "0.800",
        "eff_stale": "0",
        "reason": "ok",
        "mode": "shadow",
        "last_update_ts_epoch": "1800000000",
    }
    stream = decision.stream_fields()
    assert set(stream) == set(decision.hash_fields()) - {"last_update_ts_epoch"}


def test_neutral_proposal_keeps_finite_values_and_blanks_the_rest() -> None:
    stale = EfficiencyReading(EffReason.STALE, score=0.2, confidence=0.9, ts=NOW - 900, age_sec=900)
    fields = decide("ETH", b"250.555", stale, MultiplierParams(), NOW)
    assert isinstance(fields, Proposal)
    assert {k: fields.hash_fields()[k] for k in ("base_target", "proposed_target", "multiplier")} == {
        "base_target": "250.56", "proposed_target": "250.56", "multiplier": "1.0000",
    }  # fmt: skip
    assert (fields.hash_fields()["eff_score"], fields.hash_fields()["eff_stale"]) == ("0.2000", "1")
    missing = decide("ETH", b"10", EfficiencyReading(EffReason.MISSING), MultiplierParams(), NOW)
    assert isinstance(missing, Proposal)
    assert (missing.hash_fields()["eff_score"], missing.hash_fields()["eff_confidence"]) == ("", "")
    assert missing.hash_fields()["reason"] == "missing_eff"


def test_out_of_range_score_is_shown_though_invalid() -> None:
    invalid = EfficiencyReading(EffReason.INVALID, score=1.7, confidence=None)
    proposal = decide("SOL", b"10", invalid, MultiplierParams(), NOW)
    assert isinstance(proposal, Proposal)
    fields = proposal.hash_fields()
    assert (fields["eff_score"], fields["eff_confidence"], fields["multiplier"]) == ("1.7000", "", "1.0000")
