"""Durations as an operator types them: ``90``, ``90s``, ``30m``, ``1h``, ``2d`` (also combined: ``1h30m``)."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; ValueError naming the text when it is not a positive duration."""
    spec = text.strip().lower()
    seconds: float | None = None
    if re.fullmatch(r"\d+(?:\.\d+)?", spec):
        seconds = float(spec)
    elif spec and re.fullmatch(f"(?:{_PART.pattern})+", spec):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(spec))
    if seconds is None or seconds <= 0:
        raise ValueError(f"{text!r} is not a duration such as 90, 90s, 30m, 1h or 2d")
    return seconds
