"""``p31ctl report --since``: durations as an operator types them."""

from __future__ import annotations

import pytest

from microservices.ops.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("1h", 3600), ("2d", 172800), ("1w", 604800), ("1h30m", 5400),
     ("1.5h", 5400), (" 2H ", 7200), ("0.5", 0.5)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0", "0m", "-1h", "1x", "h", "1 h", "1h-5m", "nan", "1e3"])
def test_not_durations_name_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)
