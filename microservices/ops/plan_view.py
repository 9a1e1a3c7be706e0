"""``p31ctl plan PLAN_ID``: one plan's fields, outcome, deliveries, events and every decision check, as ``explain``
shows a symbol.

Nothing is decided here a second time. A decided plan's outcome is the one the governor recorded (its outcome marker
``quantum:governor:outcome:{plan_id}``, else its events, else its dead letter); a plan not decided yet is run through
the governor's own batch code (:class:`~microservices.governor.batch.BatchIO`: the same reads and
:func:`~microservices.governor.decision.decide`) to show what it would get now. The trace is derived from the outcome
and the governor's list of checks (:data:`~microservices.governor.decision.CHECKS`): the checks before the deciding
one passed, the deciding one failed, the later ones were not reached; only the values each looked at are gathered
here, and the ones that can change (kill switch, gate, permit) are shown as they are now.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from microservices.core.redis_client import RedisClient
from microservices.governor.batch import BatchIO, Delivery, gate_key
from microservices.governor.decision import CHECKS, Check, KillSwitch, Outcome, Policy, Reason, deciding_check
from microservices.governor.gate import (
    FIVE_MINUTES,
    ONE_HOUR,
    GateState,
    cooldown_left,
    parse_gate,
    permits_within,
)
from microservices.governor.metrics import GovernorMetrics
from microservices.governor.plan import InvalidPlan, Plan, parse_plan
from microservices.governor.records import (
    DEAD_LETTER_ADDED_FIELDS,
    EVENTS_STREAM,
    KILL_SWITCH_KEY,
    OutcomeMarker,
    block_key,
    outcome_key,
    permit_key,
)
from microservices.governor.settings import GovernorSettings
from microservices.ops import streams
from microservices.ops.explain import Status, Step
from microservices.ops.tables import format_table

if TYPE_CHECKING:
    from microservices.ops.cli import Context

SECTION = "decision"


@dataclass(frozen=True)
class Pending:
    """A plan entry still pending in the consumer group: who holds it, for how long, delivered how often."""

    consumer: str
    idle_ms: int
    deliveries: int


@dataclass(frozen=True)
class PlanFacts:
    """Everything read about one plan_id; newest first where there are several."""

    plan_id: str
    now: float
    entries: Sequence[streams.Entry]
    dead_letters: Sequence[streams.Entry]
    events: Sequence[streams.Entry]
    marker: OutcomeMarker | None
    permit: str | None
    permit_ttl: int | None
    block: str | None
    pending: Mapping[str, Pending]
    kill_switch: KillSwitch
    gate: GateState | None
    #: What the governor would decide now, for a plan entry with no recorded outcome.
    would_be: Outcome | None
    stream: str
    searched: int


@dataclass(frozen=True)
class PlanView:
    plan_id: str
    #: ``permit``, ``block``, ``skip``, ``dead_letter``, ``pending`` or ``not delivered``.
    outcome: str
    reason: str | None
    #: Where the outcome comes from: ``outcome marker``, ``event``, ``dead letter``, ``would be now``.
    source: str
    entry_id: str | None
    consumer: str | None
    fields: Mapping[str, str]
    facts: PlanFacts
    steps: tuple[Step, ...]

    def as_json(self) -> dict[str, Any]:
        f = self.facts
        return {
            "plan_id": self.plan_id,
            "outcome": self.outcome,
            "reason": self.reason,
            "source": self.source,
            "entry_id": self.entry_id,
            "consumer": self.consumer,
            "fields": dict(self.fields),
            "entries": [entry_id for entry_id, _ in f.entries],
            "pending": {k: vars(v) for k, v in f.pending.items()},
            "permit": {"key": permit_key(self.plan_id), "value": f.permit, "ttl_sec": f.permit_ttl}
            if f.permit is not None
            else None,
            "block": {"key": block_key(self.plan_id), "value": f.block} if f.block is not None else None,
            "dead_letters": [{"id": i, **fields} for i, fields in f.dead_letters],
            "events": [{"id": i, **fields} for i, fields in f.events],
            "checks": [{"check": s.check, "status": s.status.value, "value": s.value} for s in self.steps],
        }


def _plan_of(fields: Mapping[str, str], entry_id: str) -> Plan | InvalidPlan:
    return parse_plan(entry_id, fields)


def _outcome(facts: PlanFacts) -> tuple[str, str | None, str, str | None, str | None]:
    """(outcome, reason, source, entry_id, consumer) from the records, newest and most specific first."""
    if facts.marker is not None:
        m = facts.marker
        return m.event, m.reason, "outcome marker", m.entry_id, m.consumer
    if facts.events:
        _, event = facts.events[0]
        return event.get("event", "?"), event.get("reason"), "event", event.get("source_id"), None
    if facts.dead_letters:
        _, dead = facts.dead_letters[0]
        return "dead_letter", dead.get("reason"), "dead letter", dead.get("source_id"), None
    if facts.entries:
        entry_id = facts.entries[0][0]
        held = facts.pending.get(entry_id)
        shown = "pending" if held is not None else "not delivered"
        reason = facts.would_be.reason.value if facts.would_be is not None else None
        return shown, reason, "would be now", entry_id, held.consumer if held else None
    raise LookupError(facts.plan_id)


def _fields_of(facts: PlanFacts, entry_id: str | None) -> dict[str, str]:
    """The plan's own fields: its stream entry, else its dead letter without the fields the dead letter added."""
    for found_id, fields in facts.entries:
        if found_id == entry_id or entry_id is None:
            return dict(fields)
    for _, fields in facts.dead_letters:
        if entry_id is None or fields.get("source_id") == entry_id:
            return {k: v for k, v in fields.items() if k not in DEAD_LETTER_ADDED_FIELDS}
    return dict(facts.entries[0][1]) if facts.entries else {}


def _deliveries(facts: PlanFacts, entry_id: str | None) -> str:
    held = facts.pending.get(entry_id or "")
    if held is not None:
        return f"{held.deliveries} so far (pending in {held.consumer}, idle {held.idle_ms / 1000:.0f}s)"
    for _, fields in facts.dead_letters:
        if fields.get("source_id") == entry_id and "deliveries" in fields:
            return f"{fields['deliveries']} (dead letter)"
    return "acknowledged (no longer pending)" if facts.marker is not None or facts.events else "not delivered yet"


def _decided_at(facts: PlanFacts, entry_id: str | None) -> float:
    for _, event in facts.events:
        if event.get("source_id") == entry_id:
            stamp = event.get("ts")
            if stamp:
                return float(stamp)
    return facts.now


def _looked_at(
    check: Check, plan: Plan | InvalidPlan, facts: PlanFacts, entry_id: str | None, s: GovernorSettings
) -> str:
    """What ``check`` looks at for ``plan``. State that can change since the decision (permit, kill switch, gate)
    is shown as it is now, and said to be: for a decided plan, that is after its own outcome."""
    policy = Policy.from_settings(s)
    now = "now" if facts.would_be is not None else "now, after its outcome"
    if check is CHECKS[0]:
        return f"deliveries: {_deliveries(facts, entry_id)}; GOV_MAX_DELIVERIES={s.max_deliveries}"
    if isinstance(plan, InvalidPlan):
        return plan.detail if check is CHECKS[1] else ""
    if check is CHECKS[1]:
        return f"plan_id={plan.plan_id} symbol={plan.symbol}"
    if check is CHECKS[2]:
        return f"decision={plan.decision!r}"
    if check is CHECKS[3]:
        return f"{now}: {permit_key(plan.plan_id)} {'exists' if facts.permit else 'absent'}"
    if check is CHECKS[4]:
        return plan.quantity_problem or f"qty={plan.qty:g} notional={plan.notional:g}"
    if check is CHECKS[5]:
        age = _decided_at(facts, entry_id) - plan.published_at
        return f"published {age:.1f}s before it was decided; GOV_PLAN_MAX_AGE_SEC={s.plan_max_age_sec:g}"
    if check.non_reducing_only and plan.reducing:
        return "reducing plan: not checked"
    if check is CHECKS[6]:
        return f"{now}: {KILL_SWITCH_KEY} {facts.kill_switch.value}; reducing={plan.reducing}"
    if check is CHECKS[7]:
        shown = plan.kill_score_problem or (f"{plan.kill_score:g}" if plan.kill_score is not None else "absent")
        return f"kill_score={shown}; GOV_KILL_SCORE_CRITICAL={s.kill_score_critical:g}"
    gate = facts.gate or GateState()
    if check is CHECKS[8]:
        left = cooldown_left(gate, policy.gate, facts.now)
        return f"{now}: {left:.0f}s of cooldown left; GOV_SYMBOL_COOLDOWN_SECONDS={s.symbol_cooldown_sec:g}"
    return (
        f"{now}: {permits_within(gate, FIVE_MINUTES, facts.now)} permits in 5 min (max {s.max_exec_per_5min}), "
        f"{permits_within(gate, ONE_HOUR, facts.now)} in an hour (max {s.max_exec_per_hour})"
    )


def build_plan_view(facts: PlanFacts, settings: GovernorSettings) -> PlanView:
    """The plan's outcome and the trace of SPEC §3's checks, from what was read (pure)."""
    outcome, reason, source, entry_id, consumer = _outcome(facts)
    fields = _fields_of(facts, entry_id)
    plan = _plan_of(fields, entry_id or "0-0")
    known = reason in {r.value for r in Reason}
    decider = deciding_check(plan, Reason(reason)) if known and reason is not None else None
    steps: list[Step] = []
    reached = reason is not None
    for check in CHECKS:
        looked = _looked_at(check, plan, facts, entry_id, settings)
        if not reached:
            steps.append(Step(SECTION, check.name, Status.NOT_REACHED, ""))
        elif check.non_reducing_only and isinstance(plan, Plan) and plan.reducing:
            steps.append(Step(SECTION, check.name, Status.INFO, looked))
        elif check is decider:
            steps.append(Step(SECTION, check.name, Status.FAIL, f"{looked} -> {reason}"))
            reached = False
        else:
            steps.append(Step(SECTION, check.name, Status.PASS, looked))
    return PlanView(facts.plan_id, outcome, reason, source, entry_id, consumer, fields, facts, tuple(steps))


def render_plan_view(view: PlanView) -> str:
    f = view.facts
    by = f" by {view.consumer}" if view.consumer else ""
    lines = [
        f"plan {view.plan_id}: {view.outcome} {view.reason or ''} ({view.source}{by}; entry {view.entry_id})".replace(
            "  ", " "
        ),
        "fields: " + " ".join(f"{k}={v}" for k, v in view.fields.items()),
    ]
    if len(f.entries) > 1:
        lines.append(f"published {len(f.entries)} times: entries " + ", ".join(i for i, _ in f.entries))
    if f.permit is not None:
        lines.append(f"permit {permit_key(view.plan_id)} (TTL {f.permit_ttl}s): {f.permit}")
    if f.block is not None:
        lines.append(f"block {block_key(view.plan_id)}: {f.block}")
    for dead_id, dead in f.dead_letters:
        lines.append(f"dead letter {dead_id}: reason={dead.get('reason')} deliveries={dead.get('deliveries')}")
    for event_id, event in f.events:
        lines.append(f"event {event_id}: {event.get('event')} {event.get('reason')} (entry {event.get('source_id')})")
    table = format_table(("check", "result", "looked at"), [[s.check, s.status.value, s.value] for s in view.steps])
    return "\n".join(lines) + "\n" + table


# --- reading -------------------------------------------------------------------------------------------------------


def _pending(client: RedisClient, s: GovernorSettings, entry_ids: Sequence[str]) -> dict[str, Pending]:
    pipe = client.pipeline(transaction=False)
    for entry_id in entry_ids:
        pipe.xpending_range(s.plans_stream, s.group, entry_id, entry_id, 1)
    found: dict[str, Pending] = {}
    for entry_id, reply in zip(entry_ids, pipe.execute(raise_on_error=False), strict=True):
        if isinstance(reply, list) and reply:
            row = reply[0]
            found[entry_id] = Pending(
                streams.text(row["consumer"]), int(row["time_since_delivered"]), int(row["times_delivered"])
            )
    return found


def _would_be(client: RedisClient, s: GovernorSettings, entry: streams.Entry, deliveries: int, now: float) -> Outcome:
    """What the governor's own batch code decides for ``entry`` now (nothing is written)."""
    metrics = GovernorMetrics(CollectorRegistry(), s.mode, s.metrics_max_symbols)
    io = BatchIO(client, s, metrics, transactional=not s.redis_cluster)
    entry_id, fields = entry
    delivery = Delivery(entry_id, {k.encode(): v.encode() for k, v in fields.items()}, deliveries)
    parsed = [(delivery, delivery.parse())]
    kill, reads = io.read(parsed, now)
    return io.decide(parsed, kill, reads, now)[0].outcome


def read_plan_facts(
    client: RedisClient, s: GovernorSettings, plan_id: str, now: float, limit: int = streams.SEARCH_LIMIT
) -> PlanFacts:
    pipe = client.pipeline(transaction=False)
    pipe.get(outcome_key(plan_id))
    pipe.get(permit_key(plan_id))
    pipe.ttl(permit_key(plan_id))
    pipe.get(block_key(plan_id))
    pipe.get(KILL_SWITCH_KEY)
    marker_raw, permit, permit_ttl, block, kill = pipe.execute(raise_on_error=False)
    marker = OutcomeMarker.parse(marker_raw)
    entries = streams.find(client, s.plans_stream, "plan_id", plan_id, limit)
    if marker is not None and all(entry_id != marker.entry_id for entry_id, _ in entries):
        found = streams.entry(client, s.plans_stream, marker.entry_id)
        entries = [*entries, found] if found is not None else entries
    dead = streams.find(client, s.dead_letter_stream, "plan_id", plan_id, limit)
    events = streams.find(client, EVENTS_STREAM, "plan_id", plan_id, limit)
    pending = _pending(client, s, [entry_id for entry_id, _ in entries])
    symbol = next((fields.get("symbol") for _, fields in [*entries, *dead] if fields.get("symbol")), None)
    gate = parse_gate(client.get(gate_key(symbol)))[0] if symbol else None
    would_be = None
    if marker is None and not events and not dead and entries:
        held = pending.get(entries[0][0])
        would_be = _would_be(client, s, entries[0], held.deliveries + 1 if held else 1, now)
    return PlanFacts(
        plan_id=plan_id,
        now=now,
        entries=entries,
        dead_letters=dead,
        events=events,
        marker=marker,
        permit=streams.text(permit) if isinstance(permit, bytes) else None,
        permit_ttl=permit_ttl if isinstance(permit_ttl, int) and permit_ttl >= 0 else None,
        block=streams.text(block) if isinstance(block, bytes) else None,
        pending=pending,
        kill_switch=KillSwitch.from_value(kill if isinstance(kill, bytes) else None),
        gate=gate,
        would_be=would_be,
        stream=s.plans_stream,
        searched=limit,
    )


def run_plan(ctx: Context) -> int:
    from microservices.ops.cli import UsageError

    plan_id: str = ctx.args.plan_id
    settings: GovernorSettings = ctx.settings(GovernorSettings)
    with ctx.connect(settings) as client:
        now = time.time()
        facts = read_plan_facts(client, settings, plan_id, now, ctx.args.search)
    try:
        view = build_plan_view(facts, settings)
    except LookupError:
        raise UsageError(
            f"no plan with plan_id {plan_id!r}: no outcome recorded, and none in the newest {ctx.args.search} "
            f"entries of {settings.plans_stream}, {settings.dead_letter_stream} or {EVENTS_STREAM} "
            "(plan_ids are case-sensitive; --search N looks further back)"
        ) from None
    if ctx.json:
        ctx.emit_json(view.as_json())
    else:
        ctx.out.write(render_plan_view(view))
    return 0
