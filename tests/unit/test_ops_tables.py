"""Readable tables: numbers right-aligned, text left, a rule under the header."""

from __future__ import annotations

import pytest

from microservices.ops.tables import fmt, fmt_usd, format_table


def test_numeric_columns_align_right_and_text_left() -> None:
    table = format_table(
        ("symbol", "mult", "USD", "share"),
        [["BTC", "1.4000", "1,400.00", "40.0%"], ["DOGEUSDT", "-", "-12.50", "5.5%"]],
    )
    assert table.splitlines() == [
        "symbol      mult       USD  share",
        "--------  ------  --------  -----",
        "BTC       1.4000  1,400.00  40.0%",
        "DOGEUSDT       -    -12.50   5.5%",
    ]


def test_a_column_with_any_text_cell_is_left_aligned() -> None:
    table = format_table(("reason", "n"), [["ok", "10"], ["stale_eff", "2"]])
    assert table.splitlines()[2:] == ["ok         10", "stale_eff   2"]


def test_empty_table_prints_the_header_and_rule() -> None:
    assert format_table(("a", "bb"), []) == "a  bb\n-  --\n"


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="2 cells under 3 headers"):
        format_table(("a", "b", "c"), [["1", "2"]])


def test_number_formats() -> None:
    assert fmt(1.4) == "1.4000"
    assert fmt(None) == "-"
    assert fmt(0.123456, ".3f") == "0.123"
    assert fmt_usd(1234567.891) == "1,234,567.89"
    assert fmt_usd(-50, signed=True) == "-50.00"
    assert fmt_usd(200, signed=True) == "+200.00"
    assert fmt_usd(None) == "-"
