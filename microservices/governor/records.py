"""What the governor writes for an outcome (SPEC §3), built as plain values: key names, permit and block JSON, the
event entry, the dead-letter entry and the outcome marker."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from microservices.governor.decision import Event, Outcome
from microservices.governor.downsize import DownsizeHint
from microservices.governor.plan import EXECUTE, InvalidPlan, Plan

PERMIT_KEY_PREFIX = "quantum:permit:"
BLOCK_KEY_PREFIX = "quantum:governor:block:"
#: ``{plan_id}`` -> the last outcome recorded for that plan_id and its stream entry. It makes a re-delivered entry an
#: acknowledgement only, whatever its outcome was (a skip leaves no key of its own), and a plan_id that was permitted
#: once never permitted again, even after its permit key expired or was consumed.
OUTCOME_KEY_PREFIX = "quantum:governor:outcome:"
#: ``{entry_id}`` -> the outcome recorded for an entry that has no usable plan_id (a dead letter), for the same reason;
#: and for an entry of a plan_id permitted before that still gets an event (a HOLD: a skip), whose plan_id marker
#: must keep naming the permit.
ENTRY_OUTCOME_KEY_PREFIX = "quantum:governor:entry-outcome:"
KILL_SWITCH_KEY = "quantum:kill"
EVENTS_STREAM = "quantum:stream:governor.events"
BLOCK_TTL_SEC = 3600
#: Compact JSON, text kept as UTF-8; one encoder for every record (``json.dumps`` with options builds one per call).
JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
OUTCOME_TTL_SEC = 3600


def permit_key(plan_id: str) -> str:
    return PERMIT_KEY_PREFIX + plan_id


def block_key(plan_id: str) -> str:
    return BLOCK_KEY_PREFIX + plan_id


def outcome_key(plan_id: str) -> str:
    return OUTCOME_KEY_PREFIX + plan_id


def entry_outcome_key(entry_id: str) -> str:
    return ENTRY_OUTCOME_KEY_PREFIX + entry_id


def marker_key(plan: Plan | InvalidPlan) -> str:
    """Where the outcome of ``plan`` is recorded: by plan_id, or by stream entry when it has no usable plan_id."""
    if isinstance(plan, Plan):
        return outcome_key(plan.plan_id)
    return entry_outcome_key(plan.entry_id)


def hint_fields(hint: DownsizeHint) -> dict[str, str]:
    """The P3.1 fields of a permit, all strings."""
    reading = hint.reading
    score = reading.score if reading is not None else None
    confidence = reading.confidence if reading is not None else None
    factor = f"{hint.factor:.4f}"
    return {
        "eff_score": f"{score:.4f}" if score is not None else "",
        "eff_confidence": f"{confidence:.3f}" if confidence is not None else "",
        "eff_stale": reading.stale_flag if reading is not None else "0",
        "eff_factor": factor,
        "eff_action": hint.action.value,
        "eff_reason": hint.reason,
        "downsize_factor": factor,
        "extra_cooldown_sec": str(hint.extra_cooldown_sec),
    }


def permit_json(plan: Plan, outcome: Outcome, now: float) -> str:
    if outcome.event is not Event.PERMIT or outcome.hint is None:
        raise ValueError(f"not a permit: {outcome}")
    permit: dict[str, Any] = {
        "granted": True,
        "plan_id": plan.plan_id,
        "symbol": plan.symbol,
        "decision": EXECUTE,
        "action": plan.action,
        "computed_qty": outcome.computed_qty,
        "computed_notional": outcome.computed_notional,
        "created_at": now,
        "consumed": False,
        **hint_fields(outcome.hint),
    }
    return JSON.encode(permit)


def block_json(plan: Plan, outcome: Outcome, now: float) -> str:
    record = {"reason": outcome.reason.value, "timestamp": now, "symbol": plan.symbol, "plan_id": plan.plan_id}
    return JSON.encode(record)


def event_args(plan: Plan | InvalidPlan, outcome: Outcome, now: float) -> list[str]:
    """SPEC §3's event fields as XADD's ``field value ...`` arguments, plus ``source_id``: the plan's stream entry,
    which ties an event to its entry even when the plan has no plan_id (a dead letter) or its plan_id was published
    twice."""
    if outcome.event is None:
        raise ValueError("an acknowledgement only has no event")
    return [
        "event", outcome.event.value,
        "plan_id", plan.plan_id,
        "symbol", plan.symbol,
        "reason", outcome.reason.value,
        "ts", f"{now:.3f}",
        "source_id", plan.entry_id,
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class OutcomeMarker:
    """The outcome recorded for a plan_id (or an entry without one): which event, why, for which stream entry and
    by which consumer; for a permit also its ``eff_action`` and ``eff_reason``, so that a permit whose write was
    never confirmed to its writer can be counted when the entry comes back. Stored as space-separated text (none of
    the parts holds a space: consumer names are checked for it at start-up)."""

    event: str
    reason: str
    entry_id: str
    consumer: str
    eff_action: str = ""
    eff_reason: str = ""

    def encode(self) -> str:
        parts = [self.event, self.reason, self.entry_id, self.consumer]
        if self.eff_action:
            parts += [self.eff_action, self.eff_reason]
        return " ".join(parts)

    @classmethod
    def of(cls, plan: Plan | InvalidPlan, outcome: Outcome, consumer: str) -> OutcomeMarker:
        if outcome.event is None:
            raise ValueError("an acknowledgement only records nothing")
        hint = outcome.hint
        return cls(
            outcome.event.value,
            outcome.reason.value,
            plan.entry_id,
            consumer,
            hint.action.value if hint is not None else "",
            hint.reason if hint is not None else "",
        )

    @classmethod
    def parse(cls, raw: object) -> OutcomeMarker | None:
        """None when absent, or when not a marker this code wrote (treated as absent: the plan is decided)."""
        if not isinstance(raw, bytes | str):
            return None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        parts = text.split(" ")
        return cls(*parts) if len(parts) in (4, 6) else None


#: The fields a dead-letter entry adds to the plan's own: what ``p31ctl dlq requeue`` leaves out to publish the plan
#: again.
DEAD_LETTER_ADDED_FIELDS = ("reason", "source_id", "deliveries")


def dead_letter_fields(
    original: Mapping[bytes, bytes], outcome: Outcome, source_id: str, deliveries: int
) -> dict[bytes, bytes]:
    """The plan's original fields, byte for byte, plus ``reason``, ``source_id`` and ``deliveries`` (which win over
    original fields of the same names; the entry must say why it is here)."""
    fields = dict(original)
    added = (outcome.reason.value, source_id, str(deliveries))
    for name, value in zip(DEAD_LETTER_ADDED_FIELDS, added, strict=True):
        fields[name.encode()] = value.encode()
    return fields
