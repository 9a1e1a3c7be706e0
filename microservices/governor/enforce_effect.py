"""What ``P31_GOV_MODE=enforce`` would change about one decided plan, as a value: the evidence for switching.

In ``hint`` mode the governor permits the full size and ignores the extra cooldown; the operator who must decide
whether to switch needs, over days, how much size ``enforce`` would remove and how many plans its extra cooldown would
hold back. Both are known at decision time from the plan and its :class:`~microservices.governor.decision.Outcome`
(no other read), so this is a pure function the metrics sum. In ``enforce`` mode the same numbers are what was done.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from microservices.governor.decision import Event, Outcome, Reason
from microservices.governor.downsize import EffAction
from microservices.governor.plan import Plan


class SizeUnit(StrEnum):
    """The ``unit`` label of the size counters: ``qty`` and notional (USD, comparable across symbols)."""

    QTY = "qty"
    NOTIONAL = "notional"


@dataclass(frozen=True, slots=True)
class EnforceEffect:
    """One plan's share of the "if enforced" counters.

    ``requested`` is the permit's size as the plan asked; ``enforced`` that size times the downsize factor (what an
    ``enforce`` permit carries). A plan permitted in ``hint`` mode that the extra cooldown would block still counts
    its sizes here (they are the permit's), and is counted apart in ``extra_cooldown_block``: subtracting it would
    guess at what the plans after it would have become.
    """

    requested: Mapping[SizeUnit, float]
    enforced: Mapping[SizeUnit, float]
    downsized: bool
    extra_cooldown_block: bool


NO_SIZE: Mapping[SizeUnit, float] = {SizeUnit.QTY: 0.0, SizeUnit.NOTIONAL: 0.0}


def enforce_effect(plan: Plan, outcome: Outcome) -> EnforceEffect | None:
    """The effect of a permit, or of a ``cooldown`` block owed to the extra cooldown alone; None for anything else
    (other blocks, skips, dead letters hold nothing ``enforce`` would change)."""
    if outcome.event is Event.PERMIT and outcome.hint is not None:
        factor = outcome.hint.factor
        return EnforceEffect(
            requested={SizeUnit.QTY: plan.qty, SizeUnit.NOTIONAL: plan.notional},
            enforced={SizeUnit.QTY: plan.qty * factor, SizeUnit.NOTIONAL: plan.notional * factor},
            downsized=outcome.hint.action is EffAction.DOWNSIZE,
            extra_cooldown_block=outcome.extra_cooldown_held,
        )
    if outcome.event is Event.BLOCK and outcome.reason is Reason.COOLDOWN and outcome.extra_cooldown_held:
        return EnforceEffect(NO_SIZE, NO_SIZE, downsized=False, extra_cooldown_block=True)
    return None
