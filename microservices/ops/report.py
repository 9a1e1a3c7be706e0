"""``p31ctl report --since 1h``: the shadow what-if, read back from the proposals stream.

Every proposal the proposer appended to ``PROPOSE_STREAM_NAME`` in the window is counted: how many, over how many
symbols, the share of each reason, and the distribution of multipliers. What enforcing the proposals would change
is taken over the latest proposal of each symbol (the target it would hold now): the sum of ``proposed - base`` in
USD and as a share of the sum of base targets, and the symbols that would move most each way. The aggregation is a
pure function of the entries (:func:`build_report`); the stream is read in pages of ``XRANGE`` (:func:`read_window`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from microservices.allocation_target.settings import ProposerSettings
from microservices.core.numbers import parse_float
from microservices.core.redis_client import RedisClient
from microservices.ops.durations import parse_duration
from microservices.ops.tables import fmt, fmt_usd, format_table

if TYPE_CHECKING:
    from microservices.ops.cli import Context

PAGE_SIZE = 1000
TOP_MOVERS = 5
#: Width of a multiplier histogram bucket.
BUCKET_WIDTH = 0.1
HISTOGRAM_BAR = 40
#: Most histogram rows; values beyond the last row's start fall into it.
MAX_BUCKETS = 30


@dataclass(frozen=True, slots=True)
class ProposalEntry:
    """One stream entry as the report uses it."""

    entry_id: str
    symbol: str
    base_target: float
    proposed_target: float
    multiplier: float
    reason: str

    @property
    def change(self) -> float:
        return self.proposed_target - self.base_target


def parse_entry(entry_id: str, fields: Mapping[str, str]) -> ProposalEntry | None:
    """The entry, or None when a field the report needs is absent or not a number (counted as unreadable)."""
    base = parse_float(fields.get("base_target"))
    proposed = parse_float(fields.get("proposed_target"))
    multiplier = parse_float(fields.get("multiplier"))
    symbol = fields.get("symbol")
    if base is None or proposed is None or multiplier is None or not symbol:
        return None
    return ProposalEntry(entry_id, symbol, base, proposed, multiplier, fields.get("reason") or "?")


@dataclass(frozen=True)
class Bucket:
    low: float
    high: float
    count: int


@dataclass(frozen=True)
class Distribution:
    min: float
    p10: float
    p50: float
    p90: float
    max: float
    buckets: tuple[Bucket, ...]


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """p10, p50 and p90 by linear interpolation between the closest ranks (``statistics.quantiles``, inclusive: the
    method of numpy's default and of spreadsheets' PERCENTILE)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return deciles[0], deciles[4], deciles[8]


def _bucket_index(value: float) -> int:
    # round() first: 0.3 / 0.1 is 2.9999999999999996, and a multiplier written as %.4f is exact to 1e-4
    return math.floor(min(round(value / BUCKET_WIDTH, 6), 1e15))


def histogram(values: Sequence[float]) -> tuple[Bucket, ...]:
    """Counts in buckets ``[k * 0.1, (k + 1) * 0.1)`` from the lowest value's bucket up, empty ones included so that
    the shape reads right; at most :data:`MAX_BUCKETS`, the last one open-ended (a stray multiplier of 1e300 must not
    make a bucket per tenth up to it)."""
    low = min(_bucket_index(v) for v in values)
    last = low + MAX_BUCKETS - 1
    counts = Counter(min(_bucket_index(v), last) for v in values)
    high = max(counts)
    return tuple(
        Bucket(
            round(k * BUCKET_WIDTH, 6),
            math.inf if k == last and max(values) >= (last + 1) * BUCKET_WIDTH else round((k + 1) * BUCKET_WIDTH, 6),
            counts.get(k, 0),
        )
        for k in range(low, high + 1)
    )


def distribution(values: Sequence[float]) -> Distribution:
    p10, p50, p90 = percentiles(values)
    return Distribution(min(values), p10, p50, p90, max(values), histogram(values))


@dataclass(frozen=True)
class Mover:
    symbol: str
    base_target: float
    proposed_target: float
    multiplier: float
    reason: str
    change: float


@dataclass(frozen=True)
class Report:
    stream: str
    since_sec: float
    start: float
    end: float
    proposals: int
    unreadable: int
    symbols: int
    #: Count of each reason, most frequent first (ties by name).
    reasons: tuple[tuple[str, int], ...]
    multipliers: Distribution | None
    base_total: float
    proposed_total: float
    change_total: float
    #: ``change_total`` as a percentage of ``base_total``; None when the base total is 0.
    change_pct: float | None
    up: tuple[Mover, ...]
    down: tuple[Mover, ...]
    #: When the stream has lost entries (it is trimmed to about PROPOSE_STREAM_MAXLEN, so with many symbols it may
    #: hold minutes, not the hour asked for): the time of its oldest remaining entry. None when it never lost one.
    trimmed_before: float | None = None

    @property
    def partial(self) -> bool:
        """The stream was trimmed after the window's start: what came before its oldest entry is not counted."""
        return self.trimmed_before is not None and self.trimmed_before > self.start

    @property
    def covered_from(self) -> float:
        return max(self.start, self.trimmed_before) if self.trimmed_before is not None else self.start

    def share(self, count: int) -> float:
        """A reason's share of the proposals, in percent."""
        return 100.0 * count / self.proposals if self.proposals else 0.0

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["partial"] = self.partial
        document["covered_from"] = self.covered_from
        document["reasons"] = [
            {"reason": reason, "count": count, "share_pct": self.share(count)} for reason, count in self.reasons
        ]
        return document


def build_report(
    entries: Iterable[ProposalEntry],
    *,
    stream: str,
    since_sec: float,
    now: float,
    unreadable: int = 0,
    trimmed_before: float | None = None,
) -> Report:
    """Aggregate ``entries`` (in stream order, so the last of a symbol is its latest proposal)."""
    all_entries = list(entries)
    latest = {entry.symbol: entry for entry in all_entries}
    reasons = Counter(entry.reason for entry in all_entries)
    base_total = math.fsum(e.base_target for e in latest.values())
    proposed_total = math.fsum(e.proposed_target for e in latest.values())
    change_total = math.fsum(e.change for e in latest.values())
    movers = [
        Mover(e.symbol, e.base_target, e.proposed_target, e.multiplier, e.reason, e.change) for e in latest.values()
    ]
    return Report(
        stream=stream,
        since_sec=since_sec,
        start=now - since_sec,
        end=now,
        proposals=len(all_entries),
        unreadable=unreadable,
        symbols=len(latest),
        reasons=tuple(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))),
        multipliers=distribution([e.multiplier for e in all_entries]) if all_entries else None,
        base_total=base_total,
        proposed_total=proposed_total,
        change_total=change_total,
        change_pct=100.0 * change_total / base_total if base_total else None,
        up=tuple(sorted((m for m in movers if m.change > 0), key=lambda m: (-m.change, m.symbol))[:TOP_MOVERS]),
        down=tuple(sorted((m for m in movers if m.change < 0), key=lambda m: (m.change, m.symbol))[:TOP_MOVERS]),
        trimmed_before=trimmed_before,
    )


# --- reading the stream --------------------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def read_window(
    client: RedisClient, stream: str, start: float, page_size: int = PAGE_SIZE
) -> Iterator[tuple[str, dict[str, str]]]:
    """Every entry of ``stream`` from epoch ``start`` on, in order, ``page_size`` entries per ``XRANGE``."""
    low = str(int(start * 1000))
    while True:
        page: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream, min=low, max="+", count=page_size)  # type: ignore[assignment]
        for entry_id, fields in page:
            yield _text(entry_id), {_text(k): _text(v) for k, v in fields.items()}
        if len(page) < page_size:
            return
        low = "(" + _text(page[-1][0])  # exclusive: the next page starts after the last entry read


def trimmed_before(client: RedisClient, stream: str) -> float | None:
    """The time of the stream's oldest entry when it has lost entries (``entries-added`` above ``length``: trimmed
    or deleted), else None. A Redis older than 7.0 does not count the entries added: its oldest entry is taken as
    the limit whenever there is one, which errs toward saying "partial"."""
    try:
        info: dict[str, Any] = client.xinfo_stream(stream)
    except ResponseError:  # no such stream
        return None
    first = info.get("first-entry")
    if not first:
        return None
    added, length = info.get("entries-added"), info.get("length", 0)
    if added is not None and int(added) <= int(length):
        return None
    return int(_text(first[0]).split("-", 1)[0]) / 1000


def collect(raw: Iterable[tuple[str, Mapping[str, str]]]) -> tuple[list[ProposalEntry], int]:
    """The readable entries and how many were not."""
    entries: list[ProposalEntry] = []
    unreadable = 0
    for entry_id, fields in raw:
        entry = parse_entry(entry_id, fields)
        if entry is None:
            unreadable += 1
        else:
            entries.append(entry)
    return entries, unreadable


# --- rendering -----------------------------------------------------------------------------------------------------


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _movers_table(movers: Sequence[Mover]) -> str:
    rows = [
        [m.symbol, fmt_usd(m.base_target), fmt_usd(m.proposed_target), fmt(m.multiplier), m.reason,
         fmt_usd(m.change, signed=True)]
        for m in movers
    ]  # fmt: skip
    return format_table(("symbol", "base USD", "proposed USD", "mult", "reason", "change USD"), rows)


def render_report(report: Report, since_text: str) -> str:
    head = f"Shadow proposals on {report.stream}, last {since_text} ({_utc(report.start)} .. {_utc(report.end)})\n"
    if report.partial:
        head += (
            f"PARTIAL: the stream is trimmed to about PROPOSE_STREAM_MAXLEN entries and now starts at "
            f"{_utc(report.covered_from)}: only the last {(report.end - report.covered_from) / 60:.1f} min are "
            "counted, and a symbol whose proposals are all older is missing below\n"
        )
    if report.proposals == 0:
        extra = f" ({report.unreadable} unreadable entries)" if report.unreadable else ""
        return head + f"no proposals in this window{extra}\n"
    out = [head, f"{report.proposals} proposals over {report.symbols} symbols"]
    out.append(f" ({report.unreadable} unreadable entries skipped)\n\n" if report.unreadable else "\n\n")
    out.append(
        format_table(
            ("reason", "proposals", "share"),
            [[reason, str(count), f"{report.share(count):.1f}%"] for reason, count in report.reasons],
        )
    )
    dist = report.multipliers
    if dist is not None:
        out.append("\nmultiplier (every proposal in the window)\n")
        out.append(
            format_table(
                ("min", "p10", "p50", "p90", "max"),
                [[fmt(dist.min), fmt(dist.p10), fmt(dist.p50), fmt(dist.p90), fmt(dist.max)]],
            )
        )
        peak = max(b.count for b in dist.buckets)
        rows = [
            [f"[{b.low:.1f}, {b.high:.1f})", str(b.count), "#" * math.ceil(HISTOGRAM_BAR * b.count / peak)]
            for b in dist.buckets
        ]
        out.append("\n" + format_table(("multiplier", "proposals", ""), rows))
    pct = "n/a" if report.change_pct is None else f"{report.change_pct:+.2f}%"
    out.append(f"\nif enforced (latest proposal of each of {report.symbols} symbols)\n")
    out.append(
        format_table(
            ("base total USD", "proposed total USD", "change USD", "change"),
            [
                [
                    fmt_usd(report.base_total),
                    fmt_usd(report.proposed_total),
                    fmt_usd(report.change_total, signed=True),
                    pct,
                ]
            ],
        )
    )
    for title, movers in (("biggest movers up", report.up), ("biggest movers down", report.down)):
        out.append(f"\n{title}\n")
        out.append(_movers_table(movers) if movers else "(none)\n")
    return "".join(out)


def run_report(ctx: Context) -> int:
    """``report [proposer|governor]``: from Prometheus with ``--prometheus``, else from the step's stream."""
    from microservices.ops.cli import UsageError

    try:
        since_sec = parse_duration(ctx.args.since)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from exc
    now = time.time()
    since_sec = min(since_sec, now)  # "--since 100000d" means everything the stream holds
    step = getattr(ctx.args, "step", "proposer")
    url: str | None = getattr(ctx.args, "prometheus", None)
    if url is not None or step == "governor":
        return _run_history_report(ctx, step, url, now - since_sec, now)
    settings: ProposerSettings = ctx.settings(ProposerSettings)
    with ctx.connect(settings) as client:
        trimmed = trimmed_before(client, settings.stream_name)
        entries, unreadable = collect(read_window(client, settings.stream_name, now - since_sec))
    report = build_report(
        entries,
        stream=settings.stream_name,
        since_sec=since_sec,
        now=now,
        unreadable=unreadable,
        trimmed_before=trimmed,
    )
    if ctx.json:
        ctx.emit_json(report.as_json())
    else:
        ctx.out.write(render_report(report, ctx.args.since))
    return 0


def _run_history_report(ctx: Context, step: str, url: str | None, start: float, end: float) -> int:
    """The governor's report (from Prometheus or its events stream), or the proposer's from Prometheus."""
    from microservices.governor.records import EVENTS_STREAM
    from microservices.governor.settings import GovernorSettings
    from microservices.ops import governor_report, proposer_history
    from microservices.ops.cli import EX_UNAVAILABLE
    from microservices.ops.prometheus_history import PrometheusQueryError, http_fetch

    document: governor_report.GovernorReport | proposer_history.ProposerHistory
    try:
        if url is not None and step == "proposer":
            document = proposer_history.from_prometheus(http_fetch(url), url, start, end)
        elif url is not None:
            document = governor_report.from_prometheus(http_fetch(url), url, start, end)
        else:
            with ctx.connect(ctx.settings(GovernorSettings)) as client:
                oldest = trimmed_before(client, EVENTS_STREAM)
                events = list(read_window(client, EVENTS_STREAM, start))
            document = governor_report.from_events(events, EVENTS_STREAM, start, end, oldest)
    except PrometheusQueryError as exc:
        ctx.err.write(f"p31ctl report: {exc}\n")
        return EX_UNAVAILABLE  # as for an unreachable Redis
    if ctx.json:
        ctx.emit_json(document.as_json())
    elif isinstance(document, governor_report.GovernorReport):
        ctx.out.write(governor_report.render(document, ctx.args.since, _utc))
    else:
        ctx.out.write(proposer_history.render(document, ctx.args.since, _utc))
    return 0
