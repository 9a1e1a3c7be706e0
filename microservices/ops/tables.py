"""Readable aligned tables and the number formats every ``p31ctl`` view shares."""

from __future__ import annotations

from collections.abc import Sequence

from microservices.core.numbers import parse_float

#: What a cell shows when there is no value.
NONE = "-"


def fmt(value: float | None, spec: str = ".4f") -> str:
    """``value`` formatted with ``spec``, or :data:`NONE`."""
    return NONE if value is None else format(value, spec)


def fmt_usd(value: float | None, *, signed: bool = False) -> str:
    """Dollars with thousands separators and cents: ``12,345.60`` (``+12,345.60`` when ``signed``)."""
    return NONE if value is None else format(value, "+,.2f" if signed else ",.2f")


def _numeric(cell: str) -> bool:
    return parse_float(cell.replace(",", "").rstrip("%s").lstrip("+")) is not None


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table with a header, a rule and one line per row. A column whose cells are all numbers (or empty) is aligned
    right, others left; trailing spaces are trimmed. An empty ``rows`` still prints the header."""
    widths = [len(h) for h in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row of {len(row)} cells under {len(headers)} headers: {row!r}")
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    right = [
        bool(rows) and all(cell in ("", NONE) or _numeric(cell) for cell in column)
        for column in zip(*rows, strict=True)
    ] if rows else [False] * len(headers)  # fmt: skip

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)]) + "\n"
