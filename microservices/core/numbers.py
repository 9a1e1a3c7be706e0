"""Strict parsing of numbers that arrive as text, from Redis fields or from the environment.

Only plain ASCII decimal notation is a number here: no surrounding whitespace, no underscores, no unicode digits,
no ``nan``/``inf`` spellings, no trailing comment. Python's ``float()`` accepts all of those, which is how a value such
as ``"0.65 # note"`` or ``"\u0661"`` could otherwise slip through as something it is not.
"""

from __future__ import annotations

import math
import re

#: Longer text is not a number we expect from any producer; refusing it keeps parsing cost bounded.
MAX_NUMBER_LENGTH = 64

#: The only bytes a decimal number may hold; ``float()`` then rejects any malformed arrangement of them ("1.2.3",
#: "e5", "+"), and every arrangement it accepts is plain decimal notation. Cheaper than a regular expression.
_DECIMAL_BYTES = b"0123456789.+-eE"
_INTEGER = re.compile(rb"[+-]?[0-9]+")

Raw = bytes | str | None


def _as_bytes(raw: Raw) -> bytes | None:
    """``raw`` as ASCII bytes, or None when absent, not ASCII, or longer than any number: the length is checked
    first, so a 1 MB text is refused without a copy of it."""
    if raw is None or len(raw) > MAX_NUMBER_LENGTH:
        return None
    if isinstance(raw, str):
        try:
            return raw.encode("ascii")
        except UnicodeEncodeError:
            return None
    return raw


def parse_float(raw: Raw) -> float | None:
    """The value of ``raw`` as a finite float, or None when it is absent, not plain decimal notation, or not finite."""
    data = _as_bytes(raw)
    if data is None or data.translate(None, _DECIMAL_BYTES):
        return None
    try:
        value = float(data)
    except ValueError:
        return None
    return value + 0.0 if math.isfinite(value) else None  # + 0.0: "-0" is 0.0, never "-0.00" in an output


def parse_int(raw: Raw) -> int | None:
    """The value of ``raw`` as an int, or None when it is absent or not a plain ASCII integer."""
    data = _as_bytes(raw)
    if data is None or _INTEGER.fullmatch(data) is None:
        return None
    return int(data)


def show_raw(raw: Raw, limit: int = 40) -> str:
    """A raw value for a log line or a reason's detail: decoded leniently, quoted, and cut to ``limit`` characters.

    Only the head of the value is decoded (at most 4 bytes per character in UTF-8), so showing a 1 MB value costs
    what showing a short one does."""
    head_bytes = 4 * limit + 1
    if isinstance(raw, bytes):
        text = raw[:head_bytes].decode("utf-8", "replace")
        cut = len(raw) > head_bytes
    else:
        text = str(raw)
        cut = False
    return repr(text[:limit] + "..." if cut or len(text) > limit else text)
