"""``p31ctl governor``: the governor as an operator of a job queue sees it, in one screen.

The consumer group on ``STREAM_PLANS`` (its consumers, what each holds pending and for how long, the oldest pending
plan's age, the lag of plans not delivered yet), the kill switch, the dead-letter stream's size and newest entries,
the outcomes by event and reason over a window of the events stream, and per symbol its gate: cooldown left and
permits in the last 5 minutes and hour. The gate numbers come from the governor's own gate code
(:func:`~microservices.governor.gate.cooldown_left`, :func:`~microservices.governor.gate.permits_within`) with its
own limits (:class:`~microservices.governor.decision.Policy`): the same numbers the next plan would be judged by.

Each part is a pure function of what was read (:func:`outcome_counts`, :func:`gate_rows`, :func:`group_view`);
:func:`read_governor` does the reads: a few round trips, plus one ``SCAN`` over the gate keys and ``XRANGE`` pages
over the window.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from microservices.core.redis_client import RedisClient
from microservices.governor.decision import KillSwitch, Policy
from microservices.governor.gate import (
    FIVE_MINUTES,
    GATE_KEY_PREFIX,
    ONE_HOUR,
    GateLimits,
    cooldown_left,
    parse_gate,
    permits_within,
)
from microservices.governor.plan import entry_time
from microservices.governor.records import EVENTS_STREAM, KILL_SWITCH_KEY
from microservices.governor.settings import GovernorSettings
from microservices.ops import streams
from microservices.ops.durations import parse_duration
from microservices.ops.report import read_window, trimmed_before
from microservices.ops.tables import NONE, fmt, format_table

if TYPE_CHECKING:
    from microservices.ops.cli import Context

#: Dead letters shown by default.
NEWEST_DEAD_LETTERS = 5
SCAN_COUNT = 1000


@dataclass(frozen=True)
class ConsumerRow:
    name: str
    pending: int
    idle_sec: float


@dataclass(frozen=True)
class GroupView:
    """The consumer group, or why there is none (``missing``)."""

    name: str
    missing: str | None
    consumers: tuple[ConsumerRow, ...] = ()
    pending: int = 0
    oldest_pending_age_sec: float | None = None
    #: Entries not delivered to the group yet (Redis 7's ``lag``; None when Redis cannot tell).
    lag: int | None = None
    last_delivered_id: str | None = None


@dataclass(frozen=True)
class OutcomeCount:
    event: str
    reason: str
    count: int


@dataclass(frozen=True)
class GateRow:
    symbol: str
    cooldown_left_sec: float
    permits_5min: int
    permits_hour: int
    #: What is malformed in the gate (it then holds nothing back), or None.
    problem: str | None


@dataclass(frozen=True)
class GovernorView:
    now: float
    stream: str
    stream_length: int
    group: GroupView
    kill_switch: KillSwitch
    kill_raw: str | None
    dead_letter_stream: str
    dead_letters: int
    newest_dead_letters: tuple[streams.Entry, ...]
    since_sec: float
    outcomes: tuple[OutcomeCount, ...]
    #: The events stream no longer reaches back to the window's start (trimmed to about GOV_EVENTS_MAXLEN).
    partial: bool
    gates: tuple[GateRow, ...]
    limits: GateLimits

    def as_json(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "stream": self.stream,
            "stream_length": self.stream_length,
            "group": asdict(self.group),
            "kill_switch": {"key": KILL_SWITCH_KEY, "value": self.kill_raw, "state": self.kill_switch.name.lower()},
            "dead_letter_stream": self.dead_letter_stream,
            "dead_letters": self.dead_letters,
            "newest_dead_letters": [{"id": i, **fields} for i, fields in self.newest_dead_letters],
            "since_sec": self.since_sec,
            "outcomes": [asdict(o) for o in self.outcomes],
            "partial": self.partial,
            "gates": [asdict(g) for g in self.gates],
        }


def outcome_counts(events: Iterable[Mapping[str, str]]) -> tuple[OutcomeCount, ...]:
    """Events counted by (event, reason), most frequent first."""
    counts = Counter((e.get("event", "?"), e.get("reason", "?")) for e in events)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(OutcomeCount(event, reason, n) for (event, reason), n in ordered)


def gate_rows(raw_gates: Mapping[str, bytes | None], limits: GateLimits, now: float) -> tuple[GateRow, ...]:
    """Each symbol's gate as the governor would judge its next non-reducing plan now, by symbol."""
    rows = []
    for symbol in sorted(raw_gates):
        state, problem = parse_gate(raw_gates[symbol])
        rows.append(
            GateRow(
                symbol,
                cooldown_left(state, limits, now),
                permits_within(state, FIVE_MINUTES, now),
                permits_within(state, ONE_HOUR, now),
                problem,
            )
        )
    return tuple(rows)


def group_view(
    name: str,
    groups: Sequence[Mapping[str, Any]] | None,
    consumers: Sequence[Mapping[str, Any]],
    oldest_pending_id: str | None,
    now: float,
) -> GroupView:
    """The group ``name`` from ``XINFO GROUPS`` and ``XINFO CONSUMERS`` (None: the stream does not exist)."""
    if groups is None:
        return GroupView(name, "the plans stream does not exist yet")
    info = next((g for g in groups if streams.text(g["name"]) == name), None)
    if info is None:
        return GroupView(name, "no such consumer group on the plans stream (the governor creates it on start)")
    lag = info.get("lag")
    last = info.get("last-delivered-id")
    return GroupView(
        name=name,
        missing=None,
        consumers=tuple(
            ConsumerRow(streams.text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000) for c in consumers
        ),
        pending=int(info.get("pending", 0)),
        oldest_pending_age_sec=None if oldest_pending_id is None else now - entry_time(oldest_pending_id),
        lag=None if lag is None else int(lag),
        last_delivered_id=None if last is None else streams.text(last),
    )


def render_governor(view: GovernorView) -> str:
    g = view.group
    out = [f"plans stream {view.stream}: {view.stream_length} entries"]
    if g.missing is not None:
        out.append(f"consumer group {g.name}: {g.missing}")
    else:
        oldest = NONE if g.oldest_pending_age_sec is None else f"{g.oldest_pending_age_sec:.0f}s"
        lag = NONE if g.lag is None else str(g.lag)
        out.append(f"consumer group {g.name}: {g.pending} pending (oldest {oldest}), lag {lag}")
        rows = [[c.name, str(c.pending), f"{c.idle_sec:.1f}"] for c in g.consumers]
        out.append(format_table(("consumer", "pending", "idle s"), rows).rstrip("\n"))
    state = {KillSwitch.OFF: "disengaged", KillSwitch.ALL: "ENGAGED: every plan blocked",
             KillSwitch.REDUCE_ONLY: "REDUCE ONLY: non-reducing plans blocked"}[view.kill_switch]  # fmt: skip
    shown = "absent" if view.kill_raw is None else repr(view.kill_raw)
    out.append(f"kill switch {KILL_SWITCH_KEY}: {state} (value {shown})")
    out.append(f"dead letters {view.dead_letter_stream}: {view.dead_letters}")
    if view.newest_dead_letters:
        rows = [
            [i, f.get("reason", ""), f.get("plan_id", ""), f.get("symbol", ""), f.get("deliveries", "")]
            for i, f in view.newest_dead_letters
        ]
        out.append(format_table(("id", "reason", "plan_id", "symbol", "deliveries"), rows).rstrip("\n"))
    partial = " PARTIAL: the events stream is trimmed inside the window" if view.partial else ""
    out.append(f"outcomes over the last {view.since_sec:g}s ({EVENTS_STREAM}):{partial}")
    if view.outcomes:
        rows = [[o.event, o.reason, str(o.count)] for o in view.outcomes]
        out.append(format_table(("event", "reason", "count"), rows).rstrip("\n"))
    else:
        out.append("no outcomes in this window")
    limits = view.limits
    out.append(
        f"gates ({len(view.gates)} symbols; limits {limits.max_per_5min} per 5 min, {limits.max_per_hour} per hour):"
    )
    if view.gates:
        rows = [
            [r.symbol, fmt(r.cooldown_left_sec, ".0f"), str(r.permits_5min), str(r.permits_hour), r.problem or ""]
            for r in view.gates
        ]
        out.append(
            format_table(("symbol", "cooldown left s", "permits 5 min", "permits 1 h", "problem"), rows).rstrip()
        )
    return "\n".join(out) + "\n"


# --- reading -------------------------------------------------------------------------------------------------------


def _gates(client: RedisClient) -> dict[str, bytes | None]:
    keys = [streams.text(k) for k in client.scan_iter(match=GATE_KEY_PREFIX + "*", count=SCAN_COUNT)]
    found: dict[str, bytes | None] = {}
    for start in range(0, len(keys), SCAN_COUNT):
        batch = keys[start : start + SCAN_COUNT]
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.get(key)  # one GET each: a cluster spreads them over slots, and a key of another type fails alone
        for key, value in zip(batch, pipe.execute(raise_on_error=False), strict=True):
            found[key[len(GATE_KEY_PREFIX) :]] = value if isinstance(value, bytes) else None
    return found


def read_governor(
    client: RedisClient, s: GovernorSettings, now: float, since_sec: float, newest: int = NEWEST_DEAD_LETTERS
) -> GovernorView:
    groups: list[Mapping[str, Any]] | None
    consumers: list[Mapping[str, Any]] = []
    oldest: str | None = None
    try:
        groups = client.xinfo_groups(s.plans_stream)  # type: ignore[assignment]
    except ResponseError:  # no such stream
        groups = None
    if groups is not None and any(streams.text(g["name"]) == s.group for g in groups):
        consumers = client.xinfo_consumers(s.plans_stream, s.group)  # type: ignore[assignment]
        summary: Mapping[str, Any] = client.xpending(s.plans_stream, s.group)
        oldest = streams.text(summary["min"]) if summary.get("min") else None
    kill = client.get(KILL_SWITCH_KEY)
    kill_raw = streams.text(kill) if isinstance(kill, bytes) else None
    start = now - since_sec
    events = [fields for _, fields in read_window(client, EVENTS_STREAM, start)]
    trimmed = trimmed_before(client, EVENTS_STREAM)
    policy = Policy.from_settings(s)
    return GovernorView(
        now=now,
        stream=s.plans_stream,
        stream_length=int(client.xlen(s.plans_stream)),
        group=group_view(s.group, groups, consumers, oldest, now),
        kill_switch=KillSwitch.from_value(kill_raw),
        kill_raw=kill_raw,
        dead_letter_stream=s.dead_letter_stream,
        dead_letters=int(client.xlen(s.dead_letter_stream)),
        newest_dead_letters=tuple(streams.newest(client, s.dead_letter_stream, newest)),
        since_sec=since_sec,
        outcomes=outcome_counts(events),
        partial=trimmed is not None and trimmed > start,
        gates=gate_rows(_gates(client), policy.gate, now),
        limits=policy.gate,
    )


def run_governor(ctx: Context) -> int:
    from microservices.ops.cli import UsageError

    try:
        since = parse_duration(ctx.args.since)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    settings: GovernorSettings = ctx.settings(GovernorSettings)
    with ctx.connect(settings) as client:
        view = read_governor(client, settings, time.time(), since)
    if ctx.json:
        ctx.emit_json(view.as_json())
    else:
        ctx.out.write(render_governor(view))
    return 0
