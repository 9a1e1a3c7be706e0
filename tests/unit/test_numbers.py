from __future__ import annotations

import pytest

from microservices.core.numbers import MAX_NUMBER_LENGTH, parse_float, parse_int


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0.5", 0.5), (b"0.5", 0.5), ("1", 1.0), ("+1", 1.0), ("-2.5", -2.5), (".5", 0.5), ("5.", 5.0), ("1e-3", 0.001),
     ("1E+2", 100.0), ("0", 0.0), ("1e308", 1e308)],
)  # fmt: skip
def test_plain_decimal_notation_parses(raw: str | bytes, expected: float) -> None:
    assert parse_float(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [None, "", " 0.5", "0.5 ", "0.5\n", "1_0", "nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1e309", "0x10",
     "\u0661", "\uff11", "0.65 # note", "1,5", "1.2.3", ".", "e5", "+", b"\xff\xfe", "abc",
     "1" * (MAX_NUMBER_LENGTH + 1)],
)  # fmt: skip
def test_anything_else_is_not_a_number(raw: str | bytes | None) -> None:
    assert parse_float(raw) is None


def test_negative_zero_is_zero() -> None:
    value = parse_float("-0")
    assert value == 0.0 and f"{value:.2f}" == "0.00"


def test_longest_accepted_number_is_bounded() -> None:
    assert parse_float("1" * MAX_NUMBER_LENGTH) == float("1" * MAX_NUMBER_LENGTH)


@pytest.mark.parametrize(("raw", "expected"), [("0", 0), ("6379", 6379), ("-1", -1), ("+7", 7)])
def test_integers_parse(raw: str, expected: int) -> None:
    assert parse_int(raw) == expected


@pytest.mark.parametrize("raw", ["", "1.0", "1e3", " 1", "1 ", "\u0661", "0x1", "10 # port", None])
def test_non_integers_are_refused(raw: str | None) -> None:
    assert parse_int(raw) is None
