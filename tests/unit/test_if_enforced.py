"""What ``enforce`` would change, counted in ``hint`` mode (issue 13): the extra-cooldown judgement over the gate, the
per-plan effect, and the exact values the metrics export for a batch and a proposer loop."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.core.efficiency import EffReason
from microservices.governor.decision import Event, Outcome, Reason, decide
from microservices.governor.enforce_effect import NO_SIZE, EnforceEffect, SizeUnit, enforce_effect
from microservices.governor.gate import GateLimits, GateState, held_by_extra_cooldown
from microservices.governor.metrics import BatchTally, GovernorMetrics
from tests.unit.test_governor_decision import NOW, facts, ok, plan, policy

HINT = GateLimits(60, 2, 3, apply_extra_cooldown=False)
ENFORCE = GateLimits(60, 2, 3, apply_extra_cooldown=True)
#: The last permit 100 s ago with 96 s of extra cooldown: the base 60 s are over, 60 + 96 are not.
IN_EXTRA = GateState(NOW - 100, 96, (NOW - 100,))


@pytest.mark.parametrize("limits", [HINT, ENFORCE])
def test_extra_cooldown_alone_holds_between_the_base_and_the_extended_end_whatever_the_mode(
    limits: GateLimits,
) -> None:
    assert held_by_extra_cooldown(IN_EXTRA, limits, NOW)
    assert not held_by_extra_cooldown(GateState(NOW - 30, 96, (NOW - 30,)), limits, NOW)  # base cooldown holds
    assert not held_by_extra_cooldown(GateState(NOW - 156, 96, (NOW - 156,)), limits, NOW)  # 60 + 96: over
    assert not held_by_extra_cooldown(GateState(NOW - 100, 0, (NOW - 100,)), limits, NOW)  # no extra cooldown
    assert not held_by_extra_cooldown(GateState(), limits, NOW)


def test_hint_permits_what_enforce_blocks_and_both_flag_it() -> None:
    hint = decide(plan(), facts(gate=IN_EXTRA), policy())
    assert (hint.event, hint.extra_cooldown_held) == (Event.PERMIT, True)
    enforced = decide(plan(), facts(gate=IN_EXTRA), policy(P31_GOV_MODE="enforce"))
    assert (enforced.event, enforced.reason, enforced.extra_cooldown_held) == (Event.BLOCK, Reason.COOLDOWN, True)
    base = decide(plan(), facts(gate=GateState(NOW - 30, 96, (NOW - 30,))), policy(P31_GOV_MODE="enforce"))
    assert (base.reason, base.extra_cooldown_held) == (Reason.COOLDOWN, False)  # the base cooldown blocks anyway
    rate_limited = GateState(NOW - 100, 96, (NOW - 200, NOW - 100))
    limited = decide(plan(), facts(gate=rate_limited), policy())
    assert (limited.reason, limited.extra_cooldown_held) == (Reason.RATE_LIMIT_5MIN, False)
    closing = decide(plan(action="CLOSE_LONG"), facts(gate=IN_EXTRA), policy(P31_GOV_MODE="enforce"))
    assert (closing.event, closing.extra_cooldown_held) == (Event.PERMIT, False)  # reducing: no gate at all


def test_effect_of_a_downsized_permit_a_neutral_one_an_extra_cooldown_block_and_other_outcomes() -> None:
    opened = plan(notional="1000")
    downsized = enforce_effect(opened, decide(opened, facts(reading=ok(0.2)), policy()))
    assert downsized is not None
    assert (downsized.downsized, downsized.extra_cooldown_block) == (True, False)
    assert downsized.requested == {SizeUnit.QTY: 10.0, SizeUnit.NOTIONAL: 1000.0}
    assert downsized.enforced == pytest.approx({SizeUnit.QTY: 10 * 0.2 / 0.45, SizeUnit.NOTIONAL: 1000 * 0.2 / 0.45})
    neutral = enforce_effect(opened, decide(opened, facts(reading=ok(0.9)), policy()))
    assert neutral == EnforceEffect(
        {SizeUnit.QTY: 10.0, SizeUnit.NOTIONAL: 1000.0}, {SizeUnit.QTY: 10.0, SizeUnit.NOTIONAL: 1000.0}, False, False
    )
    blocked = decide(opened, facts(gate=IN_EXTRA), policy(P31_GOV_MODE="enforce"))
    assert enforce_effect(opened, blocked) == EnforceEffect(NO_SIZE, NO_SIZE, False, True)
    assert enforce_effect(opened, Outcome(Event.BLOCK, Reason.KILL_SWITCH)) is None
    assert enforce_effect(opened, Outcome(Event.SKIP, Reason.NOT_EXECUTE)) is None


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(sample.labels.values()): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_a_batch_moves_the_governor_counters_by_exactly_its_effects() -> None:
    """Three plans: downsized to 4/9 (qty 9, notional 900), neutral (qty 5), permitted inside an extra cooldown."""
    metrics = GovernorMetrics(CollectorRegistry(), mode="hint", max_symbols=10)
    registry = metrics.registry
    assert samples(registry, "p32_eff_requested_size_total") == {("qty",): 0.0, ("notional",): 0.0}  # pre-created
    tally = BatchTally()
    first = plan(plan_id="a", qty="9", notional="900")
    tally.add_outcome(first, decide(first, facts(reading=ok(0.2)), policy()), 0.01)
    second = plan(plan_id="b", symbol="ETH", qty="5")
    tally.add_outcome(second, decide(second, facts(reading=ok(0.9)), policy()), 0.01)
    third = plan(plan_id="c", symbol="SOL", qty="2")
    tally.add_outcome(third, decide(third, facts(reading=ok(0.9), gate=IN_EXTRA), policy()), 0.01)
    metrics.record(tally, NOW)
    assert samples(registry, "p32_eff_requested_size_total") == {("qty",): 16.0, ("notional",): 900.0}
    enforced = samples(registry, "p32_eff_enforce_size_total")
    assert enforced == {("qty",): pytest.approx(9 * 0.2 / 0.45 + 5 + 2), ("notional",): pytest.approx(400.0)}
    assert samples(registry, "p32_eff_enforce_downsized_total") == {(): 1.0}
    assert samples(registry, "p32_eff_extra_cooldown_blocks_total") == {(): 1.0}
    factors = samples(registry, "p32_eff_permit_factor_bucket")
    assert (factors[("0.4",)], factors[("0.5",)], factors[("0.99",)], factors[("1.0",)]) == (0, 1, 1, 3)


def test_proposer_usd_totals_cover_every_reason_and_a_reason_gone_from_a_loop_goes_to_0() -> None:
    metrics = ProposerMetrics(CollectorRegistry(), max_symbols=10)
    registry = metrics.registry
    assert samples(registry, "p29_shadow_live_usd") == {(reason.value,): 0.0 for reason in EffReason}  # pre-created
    metrics.publish_usd_totals({"ok": 1500.0, "stale_eff": 200.0}, {"ok": 1800.0, "stale_eff": 200.0})
    live = samples(registry, "p29_shadow_live_usd")
    assert live == {(r.value,): 0.0 for r in EffReason} | {("ok",): 1500.0, ("stale_eff",): 200.0}
    metrics.publish_usd_totals({}, {})
    assert set(samples(registry, "p29_shadow_proposed_usd").values()) == {0.0}
