"""One batch of plans between its read from the stream and its acknowledgement: what is watched and read for it, how
each plan is decided in order, and which writes record each outcome (SPEC §3).

:class:`BatchIO` does the batch's Redis I/O; every decision is :func:`~microservices.governor.decision.decide`'s.
The :class:`~microservices.governor.consumer.Governor` drives it: ``WATCH`` (:meth:`BatchIO.watched_keys`), one
pipelined read (:meth:`BatchIO.read`), the decisions (:meth:`BatchIO.decide`), then the writes
(:meth:`BatchIO.queue_records`, and the ``XACK``) in one ``MULTI``/``EXEC``; under a cluster each symbol's gate first,
by compare-and-set (:func:`gate_updates`, :meth:`BatchIO.compare_and_set_gates`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from redis.exceptions import NoScriptError

from microservices.core.efficiency import EfficiencyPolicy, EfficiencyReading
from microservices.core.efficiency_reads import efficiency_readings, queue_efficiency_read
from microservices.core.logs import LogThrottle
from microservices.core.redis_client import AnyPipeline, RedisClient, queue_script
from microservices.governor.decision import Event, Facts, KillSwitch, Outcome, Policy, decide
from microservices.governor.gate import EMPTY_GATE, GATE_KEY_PREFIX, GateState, parse_gate
from microservices.governor.metrics import GovernorMetrics
from microservices.governor.plan import EXECUTE, InvalidPlan, Plan, parse_plan
from microservices.governor.records import (
    BLOCK_TTL_SEC,
    EVENTS_STREAM,
    KILL_SWITCH_KEY,
    OUTCOME_TTL_SEC,
    OutcomeMarker,
    block_json,
    block_key,
    dead_letter_fields,
    entry_outcome_key,
    event_args,
    marker_key,
    permit_json,
    permit_key,
)
from microservices.governor.replication import PermitWrite
from microservices.governor.settings import GovernorSettings

log = logging.getLogger(__name__)

#: The kinds of record a command writes, for reports of failed writes.
PERMIT, GATE, BLOCK, DEAD_LETTER, MARKER, EVENT = "permit", "gate", "block", "dead letter", "outcome marker", "event"


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


#: A delivery and what parsing made of it.
Parsed = tuple[Delivery, Plan | InvalidPlan]
#: What :meth:`BatchIO.read` found for a plan: its marker, whether its permit exists, its gate and the gate's value.
_Found = tuple[OutcomeMarker | None, bool, GateState | None, bytes | None]


@dataclass(frozen=True, slots=True)
class PlanReads:
    """What was read about one plan: the outcome recorded for it before, if any; for a valid plan whether its permit
    exists, and, where its decision can use them, its symbol's gate and its efficiency reading."""

    marker: OutcomeMarker | None
    permit_exists: bool = False
    reading: EfficiencyReading | None = None
    gate: GateState | None = None
    #: The entry was acknowledged since it was delivered here: another consumer holding it too decided it.
    acknowledged: bool = False
    #: The gate key's value as read (None: no key, or a key of another type): what a compare-and-set expects.
    gate_raw: bytes | None = None

    def redelivered(self, entry_id: str) -> str | None:
        """Why this very entry counts as decided already (a re-delivery after its outcome was written, or an entry
        another consumer decided while this one held it too), or None."""
        if self.marker is not None and self.marker.entry_id == entry_id:
            return f"this entry was decided already ({self.marker.event} {self.marker.reason})"
        if self.acknowledged:
            return "this entry was decided already, by another consumer that held it too"
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
    """A plan, its outcome, and the outcome recorded for it before (which a new marker never replaces when it was a
    permit, so that a plan_id once permitted is never permitted again)."""

    delivery: Delivery
    plan: Plan | InvalidPlan
    outcome: Outcome
    prior: OutcomeMarker | None = None
    #: The plan_id was permitted before (in Redis, or earlier in this batch): its marker says so and stays.
    permitted_before: bool = False
    #: The value of its symbol's gate key this batch's decisions of that symbol were made from (None: no key).
    gate_read: bytes | None = None

    @property
    def gate_symbol(self) -> str | None:
        """The symbol whose gate this outcome was decided by, if any: a written outcome of a non-reducing EXECUTE
        plan (its gate was read for it, and a stale gate makes its decision stale)."""
        plan = self.plan
        if self.outcome.event is None or not isinstance(plan, Plan) or not _uses_gate(plan):
            return None
        return plan.symbol

    @property
    def writes_marker(self) -> bool:
        return self.outcome.event is not None and not self.permitted_before

    @property
    def record_key(self) -> str | None:
        """The marker key its outcome's transaction writes, naming its entry: the plan_id's, or, when that must keep
        naming the permit granted before, the entry's own; None for an acknowledgement only. Every transaction that
        records an event so changes a key that another consumer deciding the same entry has watched."""
        if self.outcome.event is None:
            return None
        if self.writes_marker:
            return marker_key(self.plan)
        return entry_outcome_key(self.delivery.entry_id)


def gate_key(symbol: str) -> str:
    return GATE_KEY_PREFIX + symbol


@dataclass(frozen=True, slots=True)
class GateUpdate:
    """One symbol's gate after a batch's permits: set to ``state`` only if the key still holds ``expected``, the
    value its decisions were made from (None: no key, or a key of another type)."""

    symbol: str
    expected: bytes | None
    state: GateState
    #: The last permit of the symbol in the batch, which the gate names.
    plan_id: str


def gate_updates(decided: Sequence[Decided]) -> list[GateUpdate]:
    """One update per symbol whose gate the batch's permits changed: the gate after its last permit, expecting the
    value the batch read. The plans are decided in order, each from the gate the previous ones leave, so the last
    permit's gate holds every earlier one of the batch."""
    last: dict[str, Decided] = {}
    for item in decided:
        if item.outcome.event is Event.PERMIT and item.outcome.gate_after is not None:
            last[item.plan.symbol] = item
    return [
        GateUpdate(symbol, item.gate_read, cast(GateState, item.outcome.gate_after), item.plan.plan_id)
        for symbol, item in last.items()
    ]


#: Compare-and-set of one gate key (SPEC §9 "Cluster"): KEYS[1] the gate; ARGV[1] "1" if a value is expected, "0" if
#: none (no key, or a key of another type, which the governor reads as absent); ARGV[2] the expected value; ARGV[3]
#: the new value; ARGV[4] its TTL, seconds. Returns 1 when set, 0 when the key no longer holds what was read.
GATE_CAS_SCRIPT = """
local current = redis.pcall('GET', KEYS[1])
if type(current) == 'table' then current = false end
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
return 1
"""
GATE_CAS_SHA = hashlib.sha1(GATE_CAS_SCRIPT.encode()).hexdigest()  # the script's name in Redis


def _uses_gate(plan: Plan) -> bool:
    return plan.decision == EXECUTE and not plan.reducing


class BatchIO:
    """The Redis side of deciding one batch, for one consumer."""

    def __init__(
        self,
        client: RedisClient,
        settings: GovernorSettings,
        metrics: GovernorMetrics,
        *,
        transactional: bool,
    ) -> None:
        self._client = client
        self._settings = settings
        self._metrics = metrics
        self._policy = Policy.from_settings(settings)
        self._efficiency: EfficiencyPolicy = settings.efficiency_policy
        self._transactional = transactional
        self._consumer = settings.consumer
        self._throttle = LogThrottle(60.0)

    @staticmethod
    def watched_keys(parsed: Sequence[Parsed]) -> list[str]:
        """The keys whose change by another writer would make the batch's decisions wrong: each outcome marker (a
        replica deciding the same entry writes it), each symbol's gate (a replica passing its cooldown), the kill
        switch. Permit keys are not watched: only a decision writes one, with its marker, and ``SET NX`` never
        overwrites one. (Fewer keys matter: WATCH costs Redis more than linear time in them.)"""
        keys = {KILL_SWITCH_KEY}
        for _, plan in parsed:
            keys.add(marker_key(plan))
            if isinstance(plan, Plan) and _uses_gate(plan):
                keys.add(gate_key(plan.symbol))
        return list(keys)

    # --- reading ----------------------------------------------------------------------------------------------------

    def read(self, parsed: Sequence[Parsed], now: float) -> tuple[KillSwitch, list[PlanReads]]:
        """What the decisions need, in one pipelined round trip (plus one only if some efficiency hash holds none
        of the fields, or some permit key holds another type): the kill switch, and per plan its recorded outcome,
        whether its permit exists, and where the decision can use them its symbol's gate and efficiency reading.

        On a single Redis one MGET per plan reads its permit, marker and gate, and one EXISTS of every permit key
        checks that no permit key holds another type (MGET reads such a key as absent; SPEC §3 step 3 counts it as
        a permit). Under a cluster, where the keys may live in different slots, one command per key."""
        mode_off = self._policy.mode == "off"
        plans = [plan for _, plan in parsed if isinstance(plan, Plan)]
        pipe = self._client.pipeline(transaction=False)
        command = cast(Callable[..., object], pipe.execute_command)  # untyped on the cluster pipeline
        command("GET", KILL_SWITCH_KEY)
        for _, plan in parsed:
            if not isinstance(plan, Plan):
                command("GET", marker_key(plan))
                continue
            keys = [permit_key(plan.plan_id), marker_key(plan)]
            if _uses_gate(plan):
                keys.append(gate_key(plan.symbol))
            if self._transactional:
                command("MGET", *keys)
            else:
                command("EXISTS", keys[0])
                for key in keys[1:]:
                    command("GET", key)
            if plan.decision == EXECUTE and not mode_off:
                queue_efficiency_read(pipe, plan.symbol.encode())
        if self._transactional and plans:
            command("EXISTS", *[permit_key(plan.plan_id) for plan in plans])
        replies = iter(pipe.execute(raise_on_error=False))
        kill = self._kill_switch(next(replies))
        found: list[_Found] = []
        eff_at: list[int] = []
        eff_symbols: list[bytes] = []
        eff_replies: list[object] = []
        for _, plan in parsed:
            if not isinstance(plan, Plan):
                found.append((OutcomeMarker.parse(_string(next(replies))), False, None, None))
                continue
            width = 3 if _uses_gate(plan) else 2
            if self._transactional:
                values = cast(list[object], _ok(next(replies)))
            else:
                values = [next(replies) for _ in range(width)]
            permit_raw, marker_raw = values[0], values[1]
            gate = self._gate_state(plan.symbol, values[2]) if width == 3 else None
            if plan.decision == EXECUTE and not mode_off:
                eff_at.append(len(found))
                eff_symbols.append(plan.symbol.encode())
                eff_replies.append(next(replies))
            permit_exists = permit_raw is not None if self._transactional else bool(_ok(permit_raw))
            raw_gate = _string(values[2]) if width == 3 else None
            found.append((OutcomeMarker.parse(_string(marker_raw)), permit_exists, gate, raw_gate))
        if self._transactional and plans and cast(int, _ok(next(replies))) > sum(f[1] for f in found):
            found = self._permits_of_any_type(parsed, found)
        readings: list[EfficiencyReading | None] = [None] * len(found)
        classified = efficiency_readings(self._client, eff_symbols, eff_replies, now, self._efficiency)
        for i, reading in zip(eff_at, classified, strict=True):
            readings[i] = reading
        return kill, [PlanReads(m, p, r, g, gate_raw=raw) for (m, p, g, raw), r in zip(found, readings, strict=True)]

    def _permits_of_any_type(self, parsed: Sequence[Parsed], found: list[_Found]) -> list[_Found]:
        """Some permit key MGET read as absent exists: find which, one EXISTS each (rare: a key of another type)."""
        unknown = [i for i, (_, plan) in enumerate(parsed) if isinstance(plan, Plan) and not found[i][1]]
        pipe = self._client.pipeline(transaction=False)
        for i in unknown:
            pipe.exists(permit_key(cast(Plan, parsed[i][1]).plan_id))
        for i, exists in zip(unknown, pipe.execute(), strict=True):
            if exists:
                marker, _, gate, raw = found[i]
                found[i] = (marker, True, gate, raw)
        return found

    def settle_shared_entries(
        self, parsed: Sequence[Parsed], reads: Sequence[PlanReads], watch: Callable[..., object]
    ) -> list[PlanReads]:
        """Whether entries whose plan_id's marker names another entry were decided meanwhile, with their entry
        markers watched from now on (single Redis only; ``watch`` is the transaction's ``WATCH``).

        Two consumers can hold one entry: one claimed it from the other, which was slow but not dead. Whichever
        decides second must find it decided. The plan_id's marker tells, unless it names another entry: the plan_id
        was published again and a later entry's outcome replaced it, or it keeps naming the permit of an earlier one.
        For those entries (rare: a plan_id published twice) one more round trip asks Redis whether each is still
        pending: one no longer pending was acknowledged, by a transaction that recorded its outcome. A transaction
        that lands after this read changes a watched key (the plan_id's marker, or the entry's own, which it writes
        when the plan_id's must keep naming a permit: :attr:`Decided.record_key`), so this batch's EXEC does nothing
        and it is decided again."""
        shared = [
            i
            for i, ((delivery, plan), read) in enumerate(zip(parsed, reads, strict=True))
            if isinstance(plan, Plan) and read.marker is not None and read.marker.entry_id != delivery.entry_id
        ]
        if not shared:
            return list(reads)
        entry_ids = [parsed[i][0].entry_id for i in shared]
        watch(*[entry_outcome_key(entry_id) for entry_id in entry_ids])
        pipe = self._client.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(self._settings.plans_stream, self._settings.group, entry_id, entry_id, 1)
        settled = list(reads)
        for i, pending in zip(shared, pipe.execute(), strict=True):
            if not pending:
                settled[i] = replace(settled[i], acknowledged=True)
        return settled

    def _kill_switch(self, reply: object) -> KillSwitch:
        if isinstance(reply, Exception):
            self._metrics.unreadable_state.labels("kill_switch").inc()
            message = "kill switch %s cannot be read (%s): treated as disengaged"
            self._throttle.log(log, logging.WARNING, "kill_switch", message, KILL_SWITCH_KEY, reply)
            return KillSwitch.OFF
        return KillSwitch.from_value(cast(bytes | None, reply))

    def _gate_state(self, symbol: str, reply: object) -> GateState:
        """The gate as read. One that cannot be read (under a cluster, a key of another type) or parsed holds
        nothing back: counted, logged, and written anew by the symbol's next permit."""
        problem: str | None
        if isinstance(reply, Exception):
            state, problem = EMPTY_GATE, str(reply)
        else:
            state, problem = parse_gate(cast(bytes | None, reply))
        if problem is not None:
            self._metrics.unreadable_state.labels("gate").inc()
            message = "gate of %s cannot be used (%s): no cooldown or limit applied; rewritten by its next permit"
            self._throttle.log(log, logging.WARNING, "gate", message, symbol, problem)
        return state

    # --- deciding ---------------------------------------------------------------------------------------------------

    def decide(
        self, parsed: Sequence[Parsed], kill: KillSwitch, reads: Sequence[PlanReads], now: float
    ) -> list[Decided]:
        """Decide the batch's plans in order, each seeing the gate state the plans before it leave, and a plan_id
        permitted earlier in the batch as permitted."""
        gates: dict[str, GateState] = {}
        gates_read: dict[str, bytes | None] = {}
        permitted_in_batch: dict[str, str] = {}
        decided: list[Decided] = []
        for (delivery, plan), read in zip(parsed, reads, strict=True):
            if not isinstance(plan, Plan):
                facts = Facts(now, delivery.deliveries, redelivered=read.redelivered(delivery.entry_id))
                decided.append(Decided(delivery, plan, decide(plan, facts, self._policy), read.marker))
                continue
            if read.gate is not None and plan.symbol not in gates:
                gates[plan.symbol], gates_read[plan.symbol] = read.gate, read.gate_raw
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
            permitted_before = read.permitted is not None or plan.plan_id in permitted_in_batch
            if outcome.event is Event.PERMIT:
                permitted_in_batch[plan.plan_id] = f"permitted earlier in this batch (entry {delivery.entry_id})"
            decided.append(Decided(delivery, plan, outcome, read.marker, permitted_before, gates_read.get(plan.symbol)))
        return decided

    def dead_letter_stream_type_if_unusable(self) -> str | None:
        """The type of the key under the dead-letter stream's name when it cannot take entries; None when it can (a
        stream, or no key)."""
        kind = _text(self._client.type(self._settings.dead_letter_stream))
        return None if kind in ("stream", "none") else kind

    # --- writing ----------------------------------------------------------------------------------------------------

    def compare_and_set_gates(self, updates: Sequence[GateUpdate]) -> list[bool | Exception]:
        """Under a cluster, before any permit of their symbols: set each symbol's gate only if it still holds what
        the batch read (one script on its one key: atomic), in one pipelined round trip. Per update: True when set,
        False when another writer changed the gate since (the symbol's plans are decided again), or the error."""
        args = [self._gate_cas_args(update) for update in updates]
        pipe = self._client.pipeline(transaction=False)
        for key, *rest in args:
            queue_script(pipe, "EVALSHA", GATE_CAS_SHA, [key], rest)
        results: list[object] = list(pipe.execute(raise_on_error=False)) if args else []
        unknown = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if unknown:  # a node that has not cached the script yet (new, restarted, or flushed): EVAL loads it
            pipe = self._client.pipeline(transaction=False)
            for i in unknown:
                key, *rest = args[i]
                queue_script(pipe, "EVAL", GATE_CAS_SCRIPT, [key], rest)
            for i, result in zip(unknown, pipe.execute(raise_on_error=False), strict=True):
                results[i] = result
        return [result if isinstance(result, Exception) else result == 1 for result in results]

    def _gate_cas_args(self, update: GateUpdate) -> tuple[str | bytes | int, ...]:
        expected = update.expected
        value = update.state.encode(update.plan_id)
        ttl = update.state.ttl_sec(self._policy.gate)
        return gate_key(update.symbol), "0" if expected is None else "1", expected or b"", value, ttl

    def permit_write(self, item: Decided, now: float) -> PermitWrite | None:
        """``item``'s permit as it is to be written, built once (``GOV_MIN_REPLICAS`` > 0 writes it later, after
        the batch's decisions are confirmed); None when its outcome is no permit."""
        plan, outcome = item.plan, item.outcome
        if outcome.event is not Event.PERMIT or not isinstance(plan, Plan):
            return None
        value = permit_json(plan, outcome, now)
        key = item.record_key or marker_key(plan)
        return PermitWrite(plan.plan_id, item.delivery.entry_id, permit_key(plan.plan_id), value,
                           self._settings.permit_ttl_sec, key, now)  # fmt: skip

    def queue_records(
        self,
        pipe: AnyPipeline,
        item: Decided,
        now: float,
        *,
        primary: bool,
        secondary: bool,
        permit: bool = True,
        gate: bool = True,
        keys: set[str] | None = None,
    ) -> list[str]:
        """Queue the writes that record ``item``'s outcome and return the kind of each command. The *primary*
        records are the outcome itself (permit and gate, block record, dead-letter entry); the *secondary* ones say
        it was decided (outcome marker, event). A single Redis queues both in one transaction; a cluster writes the
        secondary ones only once the primary ones succeeded. Without ``permit`` the permit key is left out (it is
        written once the decisions are confirmed by replicas), without ``gate`` the gate key (a cluster sets it by
        compare-and-set first: :meth:`compare_and_set_gates`); ``keys`` collects the keys written."""
        plan, outcome, s = item.plan, item.outcome, self._settings
        event = outcome.event
        kinds: list[str] = []
        if event is None:
            return kinds
        command = cast(Callable[..., object], pipe.execute_command)  # untyped on the cluster pipeline
        if keys is not None:
            command = _recording(command, keys)
        # execute_command with the arguments spelled out: the typed helpers cost more than the rest of a plan
        if primary:
            if event is Event.PERMIT and isinstance(plan, Plan):
                if permit:
                    value = permit_json(plan, outcome, now)
                    command("SET", permit_key(plan.plan_id), value, "NX", "EX", s.permit_ttl_sec)
                    kinds.append(PERMIT)
                after = outcome.gate_after
                if gate and after is not None:
                    command(
                        "SET", gate_key(plan.symbol), after.encode(plan.plan_id), "EX", after.ttl_sec(self._policy.gate)
                    )
                    kinds.append(GATE)
            elif event is Event.BLOCK and isinstance(plan, Plan):
                command("SET", block_key(plan.plan_id), block_json(plan, outcome, now), "EX", BLOCK_TTL_SEC)
                kinds.append(BLOCK)
            elif event is Event.DEAD_LETTER:
                delivery = item.delivery
                fields = dead_letter_fields(delivery.fields, outcome, delivery.entry_id, delivery.deliveries)
                command("XADD", s.dead_letter_stream, "*", *[part for pair in fields.items() for part in pair])
                kinds.append(DEAD_LETTER)
        if secondary:
            key = item.record_key
            if key is not None:
                marker = OutcomeMarker.of(plan, outcome, self._consumer).encode()
                command("SET", key, marker, "EX", OUTCOME_TTL_SEC)
                kinds.append(MARKER)
            command("XADD", EVENTS_STREAM, "MAXLEN", "~", s.events_maxlen, "*", *event_args(plan, outcome, now))
            kinds.append(EVENT)
        return kinds


def _recording(command: Callable[..., object], keys: set[str]) -> Callable[..., object]:
    """``command``, adding the key of each command it queues (every command here names its key first) to ``keys``."""

    def recorded(*args: object) -> object:
        keys.add(cast(str, args[1]))
        return command(*args)

    return recorded


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _string(reply: object) -> bytes | None:
    """A GET reply of a key the governor owns: a key of another type (WRONGTYPE) reads as absent."""
    return reply if isinstance(reply, bytes) else None


def _ok(reply: object) -> object:
    """A reply that can only fail with the connection (EXISTS, MGET): raise it, so the batch is retried."""
    if isinstance(reply, Exception):
        raise reply
    return reply
