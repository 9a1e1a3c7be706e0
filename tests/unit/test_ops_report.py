"""``p31ctl report``: the aggregation of shadow proposals, as a pure function of the stream entries."""

from __future__ import annotations

import math

import pytest

from microservices.ops.report import (
    MAX_BUCKETS,
    Bucket,
    ProposalEntry,
    build_report,
    collect,
    histogram,
    parse_entry,
    percentiles,
    render_report,
)

STREAM = "quantum:stream:allocation.target.proposed"


def entry(n: int, symbol: str, base: float, mult: float, reason: str = "ok") -> ProposalEntry:
    return ProposalEntry(f"{n}-0", symbol, base, round(base * mult, 2), mult, reason)


#: A's second proposal is its latest; multipliers sorted: 0.5, 0.8, 1.0, 1.0, 1.2, 1.4.
ENTRIES = [
    entry(1, "A", 1000, 1.4),
    entry(2, "B", 500, 0.8),
    entry(3, "C", 200, 1.0, "stale_eff"),
    entry(4, "D", 100, 1.0, "missing_eff"),
    entry(5, "A", 1000, 1.2),
    entry(6, "E", 300, 0.5),
]


def test_counts_shares_and_percentiles() -> None:
    report = build_report(ENTRIES, stream=STREAM, since_sec=3600, now=10_000.0)
    assert (report.proposals, report.symbols, report.start, report.end) == (6, 5, 6400.0, 10_000.0)
    assert report.reasons == (("ok", 4), ("missing_eff", 1), ("stale_eff", 1))
    assert report.share(4) == pytest.approx(66.6667, abs=1e-4)
    dist = report.multipliers
    assert dist is not None
    # inclusive linear interpolation: p10 at rank 0.5 (0.5..0.8), p50 at 2.5 (1.0..1.0), p90 at 4.5 (1.2..1.4)
    assert (dist.min, dist.max) == (0.5, 1.4)
    assert (dist.p10, dist.p50, dist.p90) == pytest.approx((0.65, 1.0, 1.3))


def test_usd_change_is_over_the_latest_proposal_of_each_symbol() -> None:
    report = build_report(ENTRIES, stream=STREAM, since_sec=3600, now=10_000.0)
    # latest: A 1000->1200, B 500->400, C 200->200, D 100->100, E 300->150
    assert report.base_total == 2100.0
    assert report.proposed_total == 2050.0
    assert report.change_total == -50.0
    assert report.change_pct == pytest.approx(-50 / 2100 * 100)
    assert [(m.symbol, m.change) for m in report.up] == [("A", 200.0)]
    assert [(m.symbol, m.change) for m in report.down] == [("E", -150.0), ("B", -100.0)]


def test_movers_are_the_top_five_each_way() -> None:
    entries = [entry(i, f"S{i}", 100, 1 + i / 100) for i in range(1, 9)]
    report = build_report(entries, stream=STREAM, since_sec=60, now=0.0)
    assert [m.symbol for m in report.up] == ["S8", "S7", "S6", "S5", "S4"]
    assert report.down == ()


def test_histogram_buckets_are_a_tenth_wide_and_contiguous() -> None:
    assert histogram([0.5, 0.8, 1.0, 1.0, 1.2, 1.4]) == (
        Bucket(0.5, 0.6, 1), Bucket(0.6, 0.7, 0), Bucket(0.7, 0.8, 0), Bucket(0.8, 0.9, 1), Bucket(0.9, 1.0, 0),
        Bucket(1.0, 1.1, 2), Bucket(1.1, 1.2, 0), Bucket(1.2, 1.3, 1), Bucket(1.3, 1.4, 0), Bucket(1.4, 1.5, 1),
    )  # fmt: skip
    # 0.3 / 0.1 is 2.9999999999999996 in floating point: still the [0.3, 0.4) bucket
    assert histogram([0.3]) == (Bucket(0.3, 0.4, 1),)


def test_percentiles_of_one_value_are_that_value() -> None:
    assert percentiles([1.25]) == (1.25, 1.25, 1.25)


def test_an_empty_window_is_a_report_of_nothing() -> None:
    report = build_report([], stream=STREAM, since_sec=3600, now=10_000.0)
    assert (report.proposals, report.symbols, report.multipliers, report.change_pct) == (0, 0, None, None)
    assert report.as_json()["reasons"] == []
    assert "no proposals in this window" in render_report(report, "1h")


def test_unreadable_entries_are_counted_not_guessed() -> None:
    good = {"symbol": "A", "base_target": "10.00", "proposed_target": "14.00", "multiplier": "1.4000", "reason": "ok"}
    entries, unreadable = collect(
        [("1-0", good), ("2-0", {**good, "multiplier": "abc"}), ("3-0", {**good, "symbol": ""}),
         ("4-0", {"symbol": "B"})]
    )  # fmt: skip
    assert unreadable == 3
    assert entries == [ProposalEntry("1-0", "A", 10.0, 14.0, 1.4, "ok")]
    assert parse_entry("5-0", {**good, "reason": ""}) == ProposalEntry("5-0", "A", 10.0, 14.0, 1.4, "?")


def test_rendered_report_shows_the_figures() -> None:
    text = render_report(build_report(ENTRIES, stream=STREAM, since_sec=3600, now=10_000.0), "1h")
    assert "6 proposals over 5 symbols" in text
    assert "ok                   4  66.7%" in text
    assert "0.5000  0.6500  1.0000  1.3000  1.4000" in text
    assert "2,100.00            2,050.00      -50.00  -2.38%" in text
    assert "[1.0, 1.1)          2  ########################################" in text


def test_a_stream_trimmed_inside_the_window_makes_the_report_say_it_is_partial() -> None:
    """The stream is trimmed to about PROPOSE_STREAM_MAXLEN entries: with many symbols it may hold minutes, not the
    hour asked for. The report must say so rather than present a few minutes as "last 1h"."""
    trimmed = build_report(ENTRIES, stream=STREAM, since_sec=3600, now=10_000.0, trimmed_before=9_400.0)
    assert trimmed.partial and trimmed.covered_from == 9_400.0
    document = trimmed.as_json()
    assert (document["partial"], document["covered_from"]) == (True, 9_400.0)
    assert "now starts at 1970-01-01 02:36:40 UTC: only the last 10.0 min are counted" in render_report(trimmed, "1h")
    whole = build_report(ENTRIES, stream=STREAM, since_sec=3600, now=10_000.0, trimmed_before=6_000.0)
    assert not whole.partial and whole.covered_from == 6_400.0
    assert "PARTIAL" not in render_report(whole, "1h")
    assert not build_report([], stream=STREAM, since_sec=3600, now=10_000.0).partial


def test_a_stray_huge_multiplier_cannot_make_the_histogram_huge() -> None:
    """One entry with multiplier 1e300 (any finite number parses) made a row per tenth up to it: the command hung."""
    buckets = histogram([0.8, 1.0, 1.0, 1e300])
    assert len(buckets) == MAX_BUCKETS
    assert (buckets[0].low, buckets[0].count) == (0.8, 1)
    assert (buckets[-1].high, buckets[-1].count) == (math.inf, 1)
    assert sum(b.count for b in buckets) == 4
    assert histogram([1.0, 1.4])[-1].high == 1.5  # no open end where nothing lies beyond the rows
