"""``p31ctl report governor --since 7d``: what the governor did and what ``enforce`` would have changed.

From Prometheus (``--prometheus URL``) for any window it keeps: permits by hint, outcomes and blocks by reason, size
requested against size ``enforce`` permits, permits it would shrink, plans its extra cooldown would block, and the
symbols blocked most. Without it, from the events stream, which holds ``GOV_EVENTS_MAXLEN`` entries: outcomes and
symbols only (events carry no sizes), and the report says how far back the stream reaches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from microservices.ops.prometheus_history import Fetch, RangeSeries, increases_by, mean_value, step_for
from microservices.ops.tables import fmt, format_table

TOP_SYMBOLS = 5


@dataclass(frozen=True)
class SizeTotals:
    """Per unit (``qty``, ``notional``): asked for by the permits, and what ``enforce`` permits of it."""

    requested: dict[str, float]
    enforced: dict[str, float]

    def kept_pct(self, unit: str) -> float | None:
        asked = self.requested.get(unit, 0.0)
        return 100.0 * self.enforced.get(unit, 0.0) / asked if asked else None


@dataclass(frozen=True)
class GovernorReport:
    source: str
    start: float
    end: float
    #: Where the data really begins (the stream's oldest entry when it was trimmed inside the window).
    covered_from: float
    outcomes: tuple[tuple[str, str, int], ...]
    permits_by_hint: tuple[tuple[str, str, int], ...]
    blocked_symbols: tuple[tuple[str, int], ...]
    #: None when read from the stream: the events carry no sizes.
    sizes: SizeTotals | None = None
    would_downsize: int | None = None
    extra_cooldown_blocks: int | None = None
    #: Permits whose factor is at most each bound (``le``), cumulative as Prometheus keeps them.
    factor_buckets: tuple[tuple[str, int], ...] = ()
    #: The symbols whose permits' factor (``p32_eff_factor``) was lowest on average over the window, below 1.0.
    most_downsized: tuple[tuple[str, float], ...] = ()

    @property
    def partial(self) -> bool:
        return self.covered_from > self.start

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["partial"] = self.partial
        document["outcomes"] = [{"event": e, "reason": r, "count": n} for e, r, n in self.outcomes]
        document["permits_by_hint"] = [{"action": a, "reason": r, "count": n} for a, r, n in self.permits_by_hint]
        document["blocked_symbols"] = [{"symbol": s, "blocks": n} for s, n in self.blocked_symbols]
        document["factor_buckets"] = [{"le": le, "count": n} for le, n in self.factor_buckets]
        document["most_downsized"] = [{"symbol": s, "mean_factor": f} for s, f in self.most_downsized]
        return document


def _counts(totals: Mapping[tuple[str, ...], float]) -> tuple[tuple[str, str, int], ...]:
    """Non-zero counts, most first (ties by labels); counters count whole events, so they are rounded."""
    rows = [(key[0], key[1], round(n)) for key, n in totals.items() if round(n)]
    return tuple(sorted(rows, key=lambda row: (-row[2], row[0], row[1])))


def _top(counts: Mapping[str, float]) -> tuple[tuple[str, int], ...]:
    rows = [(symbol, round(n)) for symbol, n in counts.items() if round(n)]
    return tuple(sorted(rows, key=lambda row: (-row[1], row[0]))[:TOP_SYMBOLS])


def from_prometheus(fetch: Fetch, url: str, start: float, end: float) -> GovernorReport:
    step = step_for(end - start)

    def series(expr: str) -> list[RangeSeries]:
        return fetch(expr, start, end, step)

    blocked = increases_by(series("quantum_govern_block_total"), start, "symbol")
    factors = increases_by(series("p32_eff_permit_factor_bucket"), start, "le")
    mean_factors = [(one.labels.get("symbol", ""), mean_value(one.points)) for one in series("p32_eff_factor")]
    downsized = sorted((f, symbol) for symbol, f in mean_factors if f is not None and f < 1.0)
    requested = increases_by(series("p32_eff_requested_size_total"), start, "unit")
    enforced = increases_by(series("p32_eff_enforce_size_total"), start, "unit")
    return GovernorReport(
        source=f"prometheus {url}",
        start=start,
        end=end,
        covered_from=start,
        outcomes=_counts(increases_by(series("quantum_govern_outcomes_total"), start, "event", "reason")),
        permits_by_hint=_counts(increases_by(series("p32_eff_apply_total"), start, "action", "reason")),
        blocked_symbols=_top({key[0]: n for key, n in blocked.items()}),
        sizes=SizeTotals({k[0]: v for k, v in requested.items()}, {k[0]: v for k, v in enforced.items()}),
        would_downsize=round(sum(increases_by(series("p32_eff_enforce_downsized_total"), start).values())),
        extra_cooldown_blocks=round(sum(increases_by(series("p32_eff_extra_cooldown_blocks_total"), start).values())),
        factor_buckets=tuple(sorted(((k[0], round(n)) for k, n in factors.items()), key=lambda b: float(b[0]))),
        most_downsized=tuple((symbol, f) for f, symbol in downsized[:TOP_SYMBOLS]),
    )


def from_events(
    events: Iterable[tuple[str, Mapping[str, str]]], stream: str, start: float, end: float, oldest: float | None
) -> GovernorReport:
    """The events of the window (``oldest``: the stream's oldest entry when it has been trimmed, else None)."""
    outcomes: Counter[tuple[str, ...]] = Counter()
    blocked: Counter[str] = Counter()
    for _, fields in events:
        event, reason = fields.get("event", "?"), fields.get("reason", "?")
        outcomes[event, reason] += 1
        if event == "block":
            blocked[fields.get("symbol", "")] += 1
    return GovernorReport(
        source=f"stream {stream}",
        start=start,
        end=end,
        covered_from=max(start, oldest) if oldest is not None else start,
        outcomes=_counts({key: float(n) for key, n in outcomes.items()}),
        permits_by_hint=(),
        blocked_symbols=_top({symbol: float(n) for symbol, n in blocked.items()}),
    )


def render(report: GovernorReport, since_text: str, utc: Callable[[float], str]) -> str:
    out = [f"Governor over the last {since_text} ({utc(report.start)} .. {utc(report.end)}), from {report.source}\n"]
    if report.partial:
        hours = (report.end - report.covered_from) / 3600
        out.append(
            f"PARTIAL: the events stream is trimmed to about GOV_EVENTS_MAXLEN entries and reaches back to "
            f"{utc(report.covered_from)} only ({hours:.1f} h); pass --prometheus URL for the whole window\n"
        )
    out.append("\noutcomes\n")
    out.append(format_table(("event", "reason", "plans"), [[e, r, str(n)] for e, r, n in report.outcomes]))
    if report.sizes is None:
        out.append("\nif enforced: the events stream carries no sizes or hints; pass --prometheus URL\n")
    else:
        out.append("\npermits by hint\n")
        rows = [[a, r, str(n)] for a, r, n in report.permits_by_hint]
        out.append(format_table(("eff_action", "eff_reason", "permits"), rows))
        out.append("\nif enforced\n")
        size_rows = []
        for unit in sorted(report.sizes.requested):
            kept = report.sizes.kept_pct(unit)
            size_rows.append([unit, fmt(report.sizes.requested[unit]), fmt(report.sizes.enforced.get(unit, 0.0)),
                              "n/a" if kept is None else f"{kept:.2f}%"])  # fmt: skip
        out.append(format_table(("size", "requested", "enforce permits", "kept"), size_rows))
        out.append(f"permits enforce would downsize: {report.would_downsize}\n")
        out.append(f"plans the extra cooldown would block: {report.extra_cooldown_blocks}\n")
        out.append("\ndownsize factor (permits at most each bound)\n")
        out.append(format_table(("le", "permits"), [[le, str(n)] for le, n in report.factor_buckets]))
        out.append("\nsymbols downsized most (mean factor over the window)\n")
        out.append(format_table(("symbol", "mean factor"), [[s, fmt(f)] for s, f in report.most_downsized]))
    out.append("\nsymbols blocked most\n")
    out.append(format_table(("symbol", "blocks"), [[s, str(n)] for s, n in report.blocked_symbols]))
    return "".join(out)
