"""The governor's Redis side (SPEC §3): consume plans through the consumer group, read what the decisions need in one
pipelined round trip per batch, and write each batch's outcomes in one ``MULTI``/``EXEC`` under ``WATCH``.

The delivery guarantee rests on three things:

* a plan is acknowledged only by the transaction that records its outcome (permit or block record, gate state,
  outcome marker, event, ``XACK``), so a governor killed at any instant leaves each plan either fully decided or still
  pending, and a pending plan is re-read on start (same consumer name) or claimed by another consumer;
* every key a decision reads and another writer could change (the permit and outcome marker of each plan, each
  symbol's gate, the kill switch) is ``WATCH``-ed before it is read, so if a replica decides the same plan or passes
  the same symbol's cooldown first, ``EXEC`` does nothing and the batch is read and decided again;
* a plan whose outcome marker or permit exists is only acknowledged: nothing is rewritten and no event is added.

Under Redis Cluster a transaction cannot span slots: the outcome's writes go first in a plain pipeline, the ``XACK``
after them, and the permit's ``SET NX`` keeps the permit unique (an event may then repeat after a crash).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.client import Pipeline
from redis.cluster import ClusterPipeline
from redis.exceptions import ResponseError, WatchError

from microservices.core.efficiency import EfficiencyReading
from microservices.core.efficiency_reads import efficiency_readings, queue_efficiency_read
from microservices.core.logs import LogThrottle
from microservices.core.redis_client import RedisClient
from microservices.governor.decision import (
    Event,
    Facts,
    KillSwitch,
    Outcome,
    Policy,
    decide,
)
from microservices.governor.gate import (
    EMPTY_GATE,
    GATE_KEY_PREFIX,
    GateState,
    parse_gate,
)
from microservices.governor.metrics import BatchTally, GovernorMetrics
from microservices.governor.plan import EXECUTE, InvalidPlan, Plan, entry_time, parse_plan
from microservices.governor.records import (
    BLOCK_TTL_SEC,
    EVENTS_STREAM,
    KILL_SWITCH_KEY,
    OUTCOME_TTL_SEC,
    OutcomeMarker,
    block_json,
    block_key,
    dead_letter_fields,
    event_args,
    outcome_key,
    outcome_marker,
    permit_json,
    permit_key,
)
from microservices.governor.settings import GovernorSettings

log = logging.getLogger(__name__)

#: Plans per read, and so per transaction.
BATCH_SIZE = 200
#: A batch whose watched keys keep changing under it is read and decided again at most this often in a row; after
#: that its plans stay pending and are re-read with the next pass over the pending list.
MAX_ATTEMPTS = 5
#: How often other consumers' idle plans are looked for with XAUTOCLAIM, seconds: this often, or twice per
#: ``GOV_CLAIM_IDLE_MS`` when that is shorter.
CLAIM_EVERY_SEC = 5.0
#: How often the pending and lag gauges are refreshed, seconds.
GAUGES_EVERY_SEC = 1.0
#: How often a summary of the outcomes is logged, seconds.
SUMMARY_EVERY_SEC = 60.0
FIRST_ID = "0"
PERMIT_LABEL = "permit"
AnyPipeline = Pipeline | ClusterPipeline


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry as delivered to this consumer: ``fields`` is empty when the entry was deleted from the stream
    while pending; ``deliveries`` is Redis's delivery counter, this delivery included."""

    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1

    def parse(self) -> Plan | InvalidPlan:
        if not self.fields:
            return InvalidPlan(self.entry_id, {}, "entry deleted from the stream while pending")
        return parse_plan(self.entry_id, self.fields)


@dataclass(frozen=True, slots=True)
class PlanReads:
    """What was read about one plan: ``gate`` is None when the decision cannot use it (not read)."""

    permit_exists: bool
    marker: OutcomeMarker | None
    reading: EfficiencyReading | None
    gate: GateState | None

    def redelivered(self, entry_id: str) -> str | None:
        """Why this very entry counts as decided already (a re-delivery after its outcome was written), or None."""
        if self.marker is not None and self.marker.entry_id == entry_id:
            return f"this entry was decided already ({self.marker.event} {self.marker.reason})"
        return None

    @property
    def permitted(self) -> str | None:
        """Why the plan_id counts as permitted already (SPEC §3 step 3), or None: its permit exists, or it was
        granted before (the permit key alone expires after PERMIT_TTL_SEC, or is consumed)."""
        if self.permit_exists:
            return "a permit for this plan_id exists"
        if self.marker is not None and self.marker.event == Event.PERMIT.value:
            return f"this plan_id was permitted (entry {self.marker.entry_id})"
        return None


@dataclass(frozen=True, slots=True)
class Decided:
    delivery: Delivery
    plan: Plan | InvalidPlan
    outcome: Outcome


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _deliveries(entries: Any, counts: dict[str, int] | None = None) -> list[Delivery]:
    """Deliveries from the ``[(id, fields), ...]`` part of an XREADGROUP or XAUTOCLAIM reply."""
    counts = counts or {}
    return [Delivery(_text(i), f or {}, counts.get(_text(i), 1)) for i, f in entries]


def _flat(fields: Mapping[Any, Any]) -> list[Any]:
    """``{field: value, ...}`` as the ``field value field value ...`` arguments of HSET and XADD."""
    return [part for pair in fields.items() for part in pair]


def _gate_key(symbol: str) -> str:
    return GATE_KEY_PREFIX + symbol


class Governor:
    """Consumes plans for one consumer name; all decisions are delegated to :func:`decide`."""

    def __init__(
        self,
        client: RedisClient,
        settings: GovernorSettings,
        metrics: GovernorMetrics,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._client = client
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._batch = batch_size
        self._policy = Policy.from_settings(settings)
        self._efficiency = settings.efficiency_policy
        self._stream = settings.plans_stream
        self._group = settings.group
        self._consumer = settings.consumer
        self._transactional = not settings.redis_cluster
        self._group_ready = False
        #: Where the pass over this consumer's own pending plans stands; None when no pass is due.
        self._pending_cursor: str | None = FIRST_ID
        self._pending_left_behind = False
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._claim_every = min(CLAIM_EVERY_SEC, settings.claim_idle_ms / 2000)
        self._next_gauges = 0.0
        self._next_summary = monotonic() + SUMMARY_EVERY_SEC
        self._summary: Counter[str] = Counter()
        self._throttle = LogThrottle(60.0)

    # --- the runner's step ----------------------------------------------------------------------------------------

    def poll(self, stop: threading.Event) -> int:
        """One round: a batch of own pending plans, else of claimed ones, else of new ones (blocking at most
        ``GOV_BLOCK_MS``). Returns how many plans were delivered."""
        del stop  # one batch per call: the runner checks for shutdown between calls
        try:
            self._ensure_group()
            deliveries = self._next_pending() or self._next_claimed()
            if not deliveries:
                deliveries = self._read_new(self._settings.read_block_ms)
            self._process(deliveries)
            self._refresh_gauges()
            return len(deliveries)
        except BaseException as exc:
            self._after_failure(exc)
            raise

    def drain(self, stop: threading.Event) -> int:
        """``--once``: decide every plan the stream holds for this group now (own pending, claimable, new), then
        return. Returns how many plans were delivered."""
        total = 0
        try:
            self._ensure_group()
            while not stop.is_set() and (deliveries := self._next_pending()):
                self._process(deliveries)
                total += len(deliveries)
            cursor = "0-0"
            while not stop.is_set():
                deliveries, cursor = self._claim_page(cursor)
                self._process(deliveries)
                total += len(deliveries)
                if cursor == "0-0":
                    break
            while not stop.is_set() and (deliveries := self._read_new(None)):
                self._process(deliveries)
                total += len(deliveries)
            self._refresh_gauges(force=True)
            return total
        except BaseException as exc:
            self._after_failure(exc)
            raise

    def _after_failure(self, exc: BaseException) -> None:
        """Whatever the batch in hand was, its plans are pending: read them again, from the start of the list."""
        self._pending_cursor = FIRST_ID
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            log.warning(
                "consumer group %s on %s is gone (Redis lost its data?): creating it again", self._group, self._stream
            )
            self._group_ready = False

    # --- reading ----------------------------------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        """Create the group at 0 when it is missing, so that no plan published before the first start is missed."""
        if self._group_ready:
            return
        try:
            self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
            log.info("created consumer group %s on %s at 0", self._group, self._stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _next_pending(self) -> list[Delivery]:
        """The next batch of this consumer's own pending plans, while a pass over them is due (on start, and after
        any failure). Each is re-delivered, so Redis counts the delivery."""
        if self._pending_cursor is None:
            return []
        cursor = self._pending_cursor
        pipe = self._client.pipeline(transaction=False)
        pipe.xreadgroup(self._group, self._consumer, {self._stream: cursor}, count=self._batch)
        start = "-" if cursor == FIRST_ID else "(" + cursor
        pipe.xpending_range(self._stream, self._group, start, "+", self._batch, consumername=self._consumer)
        read, pending = pipe.execute()
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        deliveries = _deliveries(read[0][1] if read else [], counts)
        if not deliveries:
            if self._pending_left_behind:  # some plans of the pass could not be written: another pass
                self._pending_left_behind = False
                self._pending_cursor = FIRST_ID
            else:
                self._pending_cursor = None
            return []
        self._pending_cursor = deliveries[-1].entry_id
        if cursor == FIRST_ID:
            log.info("re-reading pending plans of consumer %s (from %s)", self._consumer, deliveries[0].entry_id)
        return deliveries

    def _next_claimed(self) -> list[Delivery]:
        """Every few seconds, a batch of plans idle longer than ``GOV_CLAIM_IDLE_MS`` in other consumers."""
        now = self._monotonic()
        if now < self._next_claim:
            return []
        deliveries, self._claim_cursor = self._claim_page(self._claim_cursor)
        if self._claim_cursor == "0-0":  # the whole pending list was scanned
            self._next_claim = now + self._claim_every
        return deliveries

    def _claim_page(self, cursor: str) -> tuple[list[Delivery], str]:
        """One XAUTOCLAIM page from ``cursor`` (a claim counts as a delivery) and the cursor to go on from."""
        reply = self._client.xautoclaim(
            self._stream, self._group, self._consumer, self._settings.claim_idle_ms, cursor, count=self._batch
        )
        next_cursor, entries = _text(reply[0]), reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            log.warning(
                "%d pending plan(s) were deleted from %s before a decision: %s",
                len(deleted),
                self._stream,
                ", ".join(_text(d) for d in deleted[:5]),
            )
        if not entries:
            return [], next_cursor
        pipe = self._client.pipeline(transaction=False)
        for entry_id, _fields in entries:
            pipe.xpending_range(self._stream, self._group, entry_id, entry_id, 1)
        counts: dict[str, int] = {}
        for rows in pipe.execute():
            for row in rows:
                counts[_text(row["message_id"])] = int(row["times_delivered"])
        deliveries = _deliveries(entries, counts)
        log.info("claimed %d plan(s) idle over %d ms in other consumers", len(deliveries), self._settings.claim_idle_ms)
        return deliveries, next_cursor

    def _read_new(self, block_ms: int | None) -> list[Delivery]:
        reply = self._client.xreadgroup(
            self._group, self._consumer, {self._stream: ">"}, count=self._batch, block=block_ms
        )
        return _deliveries(cast(Any, reply)[0][1]) if reply else []

    # --- deciding and writing -------------------------------------------------------------------------------------

    def _process(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        parsed = [(delivery, delivery.parse()) for delivery in deliveries]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                decided, finished = self._decide_and_write(parsed)
            except WatchError:
                self._metrics.conflicts.inc()
                log.debug("batch of %d plans: a watched key changed, deciding again (attempt %d)", len(parsed), attempt)
                continue
            self._account(decided, finished)
            return
        self._pending_left_behind = True
        if self._pending_cursor is None:
            self._pending_cursor = FIRST_ID
        log.warning(
            "batch of %d plans left pending: other writers changed its keys %d times in a row",
            len(parsed),
            MAX_ATTEMPTS,
        )

    def _watched_keys(self, plans: Sequence[Plan]) -> list[str]:
        """The keys whose change by another writer would make the batch's decisions wrong: each plan's outcome
        marker (a replica deciding the same entry writes it), each symbol's gate (a replica passing its cooldown),
        the kill switch. A permit key is not watched: only a decision writes it, together with its marker, and its
        ``SET NX`` never overwrites one. (Fewer keys matter: WATCH costs Redis more than linear time in them.)"""
        keys = {KILL_SWITCH_KEY}
        for plan in plans:
            keys.add(outcome_key(plan.plan_id))
            if plan.decision == EXECUTE and not plan.reducing:
                keys.add(_gate_key(plan.symbol))
        return list(keys)

    def _decide_and_write(self, parsed: Sequence[tuple[Delivery, Plan | InvalidPlan]]) -> tuple[list[Decided], float]:
        plans = [plan for _, plan in parsed if isinstance(plan, Plan)]
        tx: Pipeline | None = None
        if self._transactional:
            tx = cast(Pipeline, self._client.pipeline(transaction=True))
            tx.watch(*self._watched_keys(plans))  # type: ignore[no-untyped-call]  # untyped upstream
        try:
            now = self._clock()
            decided = self._hold_unwritable_dead_letters(self._decide(parsed, now))
            writes: AnyPipeline = tx if tx is not None else self._client.pipeline(transaction=False)
            if tx is not None:
                tx.multi()
            labels = self._queue_writes(writes, decided, now)
            if tx is None:  # cluster: the outcomes first, then (only then) the acknowledgements
                results = list(writes.execute(raise_on_error=False))
                acks = self._client.pipeline(transaction=False)
                if decided:
                    acks.xack(self._stream, self._group, *[d.delivery.entry_id for d in decided])
                results += acks.execute(raise_on_error=False)
            else:
                results = writes.execute(raise_on_error=False)
        finally:
            if tx is not None:
                tx.reset()
        finished = self._clock()
        self._report_write_errors(results, labels)
        return decided, finished

    def _read(self, plans: Sequence[Plan], now: float) -> tuple[KillSwitch, list[PlanReads]]:
        """What the decisions need, in one pipelined round trip (plus one only if some efficiency hash holds none
        of the fields): the kill switch, and per plan its permit, its outcome marker and, where the decision can use
        them, its symbol's gate and efficiency reading. On a single Redis one MGET per plan reads the three strings;
        under a cluster, where they may live in different slots, one command each."""
        mode_off = self._policy.mode == "off"
        pipe = self._client.pipeline(transaction=False)
        command = cast(Callable[..., object], pipe.execute_command)  # untyped on the cluster pipeline
        command("GET", KILL_SWITCH_KEY)
        for plan in plans:
            keys = [permit_key(plan.plan_id), outcome_key(plan.plan_id)]
            if plan.decision == EXECUTE and not plan.reducing:
                keys.append(_gate_key(plan.symbol))
            if self._transactional:
                command("MGET", *keys)
            else:
                command("EXISTS", keys[0])
                for key in keys[1:]:
                    command("GET", key)
            if plan.decision == EXECUTE and not mode_off:
                queue_efficiency_read(pipe, plan.symbol.encode())
        replies = iter(pipe.execute(raise_on_error=False))
        kill = self._kill_switch(next(replies))
        records: list[tuple[object, object, GateState | None]] = []
        eff_symbols: list[bytes] = []
        eff_replies: list[object] = []
        for plan in plans:
            wants_gate = plan.decision == EXECUTE and not plan.reducing
            if self._transactional:
                values = next(replies)
                if isinstance(values, Exception):  # MGET fails only with the connection: retry the batch
                    raise values
            else:
                values = [next(replies) for _ in range(3 if wants_gate else 2)]
            permit, marker = values[0], values[1]
            for reply in (permit, marker):
                if isinstance(reply, Exception):  # EXISTS fails only with the connection; GET of our own marker too
                    raise reply
            records.append((permit, marker, self._gate_state(plan.symbol, values[2]) if wants_gate else None))
            if plan.decision == EXECUTE and not mode_off:
                eff_symbols.append(plan.symbol.encode())
                eff_replies.append(next(replies))
        readings = iter(efficiency_readings(self._client, eff_symbols, eff_replies, now, self._efficiency))
        reads = [
            PlanReads(
                bool(permit),
                OutcomeMarker.parse(marker),
                next(readings) if plan.decision == EXECUTE and not mode_off else None,
                gate,
            )
            for plan, (permit, marker, gate) in zip(plans, records, strict=True)
        ]
        return kill, reads

    def _decide(self, parsed: Sequence[tuple[Delivery, Plan | InvalidPlan]], now: float) -> list[Decided]:
        """Decide the batch's plans in order, each seeing the gate state the plans before it leave."""
        plans = [plan for _, plan in parsed if isinstance(plan, Plan)]
        kill, reads = self._read(plans, now)
        reads_of = dict(zip((id(plan) for plan in plans), reads, strict=True))
        gates: dict[str, GateState] = {}
        permitted_in_batch: dict[str, str] = {}  # plan_id -> why a later entry of it is acknowledged only
        decided: list[Decided] = []
        for delivery, plan in parsed:
            if not isinstance(plan, Plan):
                decided.append(Decided(delivery, plan, decide(plan, Facts(now, delivery.deliveries), self._policy)))
                continue
            read = reads_of[id(plan)]
            if read.gate is not None:
                gates.setdefault(plan.symbol, read.gate)
            facts = Facts(
                now=now,
                deliveries=delivery.deliveries,
                redelivered=read.redelivered(delivery.entry_id),
                permitted=read.permitted or permitted_in_batch.get(plan.plan_id),
                kill_switch=kill,
                reading=read.reading,
                gate=gates.get(plan.symbol, EMPTY_GATE),
            )
            outcome = decide(plan, facts, self._policy)
            if outcome.gate_after is not None:
                gates[plan.symbol] = outcome.gate_after
            if outcome.event is Event.PERMIT:
                permitted_in_batch[plan.plan_id] = f"permitted earlier in this batch (entry {delivery.entry_id})"
            decided.append(Decided(delivery, plan, outcome))
        return decided

    def _hold_unwritable_dead_letters(self, decided: list[Decided]) -> list[Decided]:
        """The batch without its dead letters when the dead-letter stream cannot take them (a key of another type
        under its name): inside MULTI/EXEC their XADD would fail while their XACK succeeded, losing the plan. They
        stay pending, are reported, and are read again with the next pass over the pending list (a restart)."""
        if not any(d.outcome.event is Event.DEAD_LETTER for d in decided):
            return decided
        kind = _text(self._client.type(self._settings.dead_letter_stream))
        if kind in ("stream", "none"):
            return decided
        held = [d for d in decided if d.outcome.event is Event.DEAD_LETTER]
        self._metrics.redis_errors.inc(len(held))
        first = held[0]
        log.error("%d dead letter(s) left pending: %s is a %s, not a stream; e.g. entry %s (%s)", len(held),
                  self._settings.dead_letter_stream, kind, first.delivery.entry_id, first.outcome.detail)  # fmt: skip
        return [d for d in decided if d.outcome.event is not Event.DEAD_LETTER]

    def _kill_switch(self, reply: object) -> KillSwitch:
        if isinstance(reply, Exception):
            self._metrics.unreadable_state.labels("kill_switch").inc()
            self._throttle.log(
                log,
                logging.WARNING,
                "kill_switch",
                "kill switch %s cannot be read (%s): treated as disengaged",
                KILL_SWITCH_KEY,
                reply,
            )
            return KillSwitch.OFF
        return KillSwitch.from_value(reply)  # type: ignore[arg-type]

    def _gate_state(self, symbol: str, reply: object) -> GateState:
        """The gate as read. One that cannot be read (a key of another type) or parsed holds nothing back: counted,
        logged, and written anew by the symbol's next permit."""
        problem: str | None
        if isinstance(reply, Exception):
            state, problem = EMPTY_GATE, str(reply)
        else:
            state, problem = parse_gate(cast(bytes | None, reply))
        if problem is not None:
            self._metrics.unreadable_state.labels("gate").inc()
            message = "gate of %s cannot be used (%s): no cooldown or limit applied; rewritten by its next permit"
            self._throttle.log(log, logging.WARNING, "gate:" + symbol, message, symbol, problem)
        return state

    def _queue_writes(self, pipe: AnyPipeline, decided: Sequence[Decided], now: float) -> list[tuple[str, str]]:
        """Queue every outcome's writes and, on a single Redis, the batch's ``XACK``; returns a label per command
        for error reports."""
        s = self._settings
        labels: list[tuple[str, str]] = []
        command = cast(Callable[..., object], pipe.execute_command)  # untyped on the cluster pipeline
        for item in decided:
            plan, outcome = item.plan, item.outcome
            event = outcome.event
            if event is None:
                continue
            # execute_command with the arguments spelled out: the typed helpers cost more than the rest of a plan
            if event is Event.PERMIT and isinstance(plan, Plan):
                command("SET", permit_key(plan.plan_id), permit_json(plan, outcome, now), "NX", "EX", s.permit_ttl_sec)
                labels.append((PERMIT_LABEL, plan.plan_id))
                gate = outcome.gate_after
                if gate is not None:
                    ttl = gate.ttl_sec(self._policy.gate)
                    command("SET", _gate_key(plan.symbol), gate.encode(plan.plan_id), "EX", ttl)
                    labels.append(("gate", plan.symbol))
            elif event is Event.BLOCK and isinstance(plan, Plan):
                command("SET", block_key(plan.plan_id), block_json(plan, outcome, now), "EX", BLOCK_TTL_SEC)
                labels.append(("block", plan.plan_id))
            elif event is Event.DEAD_LETTER:
                fields = dead_letter_fields(item.delivery.fields, outcome, item.delivery.entry_id,
                                            item.delivery.deliveries)  # fmt: skip
                command("XADD", s.dead_letter_stream, "*", *_flat(fields))
                labels.append(("dead letter", item.delivery.entry_id))
            if isinstance(plan, Plan):
                command("SET", outcome_key(plan.plan_id), outcome_marker(plan, outcome), "EX", OUTCOME_TTL_SEC)
                labels.append(("outcome marker", plan.plan_id))
            command("XADD", EVENTS_STREAM, "MAXLEN", "~", s.events_maxlen, "*", *event_args(plan, outcome, now))
            labels.append(("event", item.delivery.entry_id))
        if self._transactional and decided:
            pipe.xack(self._stream, self._group, *[d.delivery.entry_id for d in decided])
        labels.append(("xack", f"{len(decided)} entries"))
        return labels

    def _report_write_errors(self, results: Sequence[object], labels: Sequence[tuple[str, str]]) -> None:
        """Log and count the writes of a decided batch that failed. A permit whose ``SET NX`` wrote nothing (a key of
        another type under its name, or a permit some other writer made since the read) is reported too: the
        existing key is left as it is, never overwritten."""
        failed: list[tuple[str, object]] = []
        for (kind, ident), result in zip(labels, results, strict=False):
            if isinstance(result, Exception):
                failed.append((f"{kind} {ident}", result))
            elif kind == PERMIT_LABEL and not result:
                failed.append((f"{kind} {ident}", "the key exists already, not written"))
        if not failed:
            return
        self._metrics.redis_errors.inc(len(failed))
        log.error(
            "%d write(s) of a decided batch failed (the rest were written): %s",
            len(failed),
            "; ".join(f"{label}: {exc}" for label, exc in failed[:5]),
        )

    # --- accounting -------------------------------------------------------------------------------------------------

    def _account(self, decided: Sequence[Decided], finished: float) -> None:
        """Metrics and logs of a written batch: every block and dead letter is logged; permits and skips at DEBUG (the
        events stream explains each), with a summary of all outcomes every minute."""
        tally = BatchTally()
        for item in decided:
            plan, outcome = item.plan, item.outcome
            if outcome.event is None:
                tally.already_decided += 1
                log.info("plan %s (entry %s): %s; acknowledged only", plan.plan_id, item.delivery.entry_id,
                         outcome.detail)  # fmt: skip
                continue
            event, reason = outcome.event.value, outcome.reason.value
            tally.outcomes[event, reason] += 1
            tally.latencies.append(max(0.0, finished - entry_time(item.delivery.entry_id)))
            if outcome.event is Event.PERMIT and outcome.hint is not None:
                hint = outcome.hint
                tally.eff_apply[hint.action.value, hint.reason] += 1
                tally.permits[plan.symbol] = (tally.permits.get(plan.symbol, (0, 0.0))[0] + 1, hint.factor)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("permit %s %s: eff_action %s factor %.4f extra cooldown %ds (%s)", plan.plan_id,
                              plan.symbol, hint.action.value, hint.factor, hint.extra_cooldown_sec,
                              hint.reason)  # fmt: skip
            elif outcome.event is Event.BLOCK:
                tally.blocks[plan.symbol, reason] += 1
                log.info("block %s %s: %s (%s)", plan.plan_id, plan.symbol, reason, outcome.detail)
            elif outcome.event is Event.DEAD_LETTER:
                tally.dead_letters[reason] += 1
                log.warning("dead letter: entry %s (plan_id %r) to %s: %s (%s)", item.delivery.entry_id,
                            plan.plan_id, self._settings.dead_letter_stream, reason, outcome.detail)  # fmt: skip
            else:
                log.debug("skip %s %s: %s", plan.plan_id, plan.symbol, outcome.detail)
        self._metrics.record(tally, finished)
        for (event, reason), n in tally.outcomes.items():
            self._summary[f"{event}:{reason}"] += n
        self._log_summary()

    def _log_summary(self) -> None:
        now = self._monotonic()
        if now < self._next_summary:
            return
        self._next_summary = now + SUMMARY_EVERY_SEC
        if self._summary:
            log.info("outcomes in the last %.0fs: %s", SUMMARY_EVERY_SEC, dict(sorted(self._summary.items())))
            self._summary.clear()

    def _refresh_gauges(self, *, force: bool = False) -> None:
        now = self._monotonic()
        if not force and now < self._next_gauges:
            return
        self._next_gauges = now + GAUGES_EVERY_SEC
        for group in self._client.xinfo_groups(self._stream):
            if _text(group["name"]) == self._group:
                self._metrics.pending.set(int(group["pending"]))
                lag = group.get("lag")
                if lag is not None:
                    self._metrics.lag.set(int(lag))
        self._metrics.last_success.set(self._clock())
