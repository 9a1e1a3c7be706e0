"""``p31ctl report proposer --since 7d --prometheus URL``: the shadow what-if over a window the stream cannot hold.

The proposals stream keeps ``PROPOSE_STREAM_MAXLEN`` entries, one loop at 10,000 symbols; Prometheus keeps the
proposer's own counts: proposals by reason, the multiplier histogram, and each loop's live and proposed USD totals
(gauges: the report gives their latest value and their mean over the window).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from microservices.ops.prometheus_history import Fetch, RangeSeries, increases_by, last_value, mean_value, step_for
from microservices.ops.tables import fmt, fmt_usd, format_table


@dataclass(frozen=True)
class UsdTotals:
    live: float | None
    proposed: float | None

    @property
    def change(self) -> float | None:
        return None if self.live is None or self.proposed is None else self.proposed - self.live


@dataclass(frozen=True)
class ProposerHistory:
    source: str
    start: float
    end: float
    loops: int
    proposals: int
    #: Proposals by reason, most first (ties by name).
    reasons: tuple[tuple[str, int], ...]
    #: Proposals whose multiplier is at most each histogram bound (``le``), cumulative as Prometheus keeps them.
    multiplier_buckets: tuple[tuple[str, int], ...]
    latest: UsdTotals
    mean: UsdTotals

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["reasons"] = [{"reason": r, "count": n} for r, n in self.reasons]
        document["multiplier_buckets"] = [{"le": le, "count": n} for le, n in self.multiplier_buckets]
        document["latest"]["change"] = self.latest.change
        document["mean"]["change"] = self.mean.change
        return document


def _summed(series: list[RangeSeries], pick: Callable[[tuple[tuple[float, float], ...]], float | None]) -> float | None:
    """``pick`` of each series (one per reason and instance), summed; None when no series has a sample."""
    values = [value for one in series if (value := pick(one.points)) is not None]
    return math.fsum(values) if values else None


def from_prometheus(fetch: Fetch, url: str, start: float, end: float) -> ProposerHistory:
    step = step_for(end - start)
    reasons = increases_by(fetch("p29_shadow_proposed_total", start, end, step), start, "reason")
    buckets = increases_by(fetch("p29_shadow_proposal_multiplier_bucket", start, end, step), start, "le")
    loops = sum(increases_by(fetch("p29_shadow_loops_total", start, end, step), start).values())
    live = fetch("p29_shadow_live_usd", start, end, step)
    proposed = fetch("p29_shadow_proposed_usd", start, end, step)
    return ProposerHistory(
        source=f"prometheus {url}",
        start=start,
        end=end,
        loops=round(loops),
        proposals=round(sum(reasons.values())),
        reasons=tuple(sorted(((k[0], round(n)) for k, n in reasons.items() if round(n)), key=lambda r: (-r[1], r[0]))),
        multiplier_buckets=tuple(sorted(((k[0], round(n)) for k, n in buckets.items()), key=lambda b: float(b[0]))),
        latest=UsdTotals(_summed(live, last_value), _summed(proposed, last_value)),
        mean=UsdTotals(_summed(live, mean_value), _summed(proposed, mean_value)),
    )


def render(report: ProposerHistory, since_text: str, utc: Callable[[float], str]) -> str:
    out = [f"Shadow proposals over the last {since_text} ({utc(report.start)} .. {utc(report.end)}), "
           f"from {report.source}\n"]  # fmt: skip
    out.append(f"{report.proposals} proposals in {report.loops} loops\n\n")
    rows = [[r, str(n), f"{100.0 * n / report.proposals:.1f}%"] for r, n in report.reasons]
    out.append(format_table(("reason", "proposals", "share"), rows))
    out.append("\nmultiplier (proposals at most each bound)\n")
    out.append(format_table(("le", "proposals"), [[le, str(n)] for le, n in report.multiplier_buckets]))
    out.append("\nif enforced (sum over symbols of one loop)\n")
    usd_rows = [
        [label, fmt_usd(totals.live), fmt_usd(totals.proposed), fmt_usd(totals.change, signed=True),
         "n/a" if not totals.live or totals.change is None else f"{100.0 * totals.change / totals.live:+.2f}%"]
        for label, totals in (("latest loop", report.latest), ("mean over window", report.mean))
    ]  # fmt: skip
    out.append(format_table(("", "live USD", "proposed USD", "change USD", "change"), usd_rows))
    return "".join(out) + ("" if report.proposals else f"(no proposals counted; loops: {fmt(report.loops, 'd')})\n")
