"""The chaos run's checks (``microservices/devtools/invariants.py``) fed evidence that breaks each guarantee: each must
say so, and stay silent on evidence that keeps it. A check that cannot fail would make the run's "violations: 0"
worthless."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microservices.allocation_target.multiplier import MultiplierParams
from microservices.allocation_target.proposal import Proposal, decide
from microservices.core.efficiency import EfficiencyReading, EffReason
from microservices.devtools.invariants import (
    LifeRecord,
    MultiplierBounds,
    OutcomeTally,
    Recovery,
    ResourcePolicy,
    StopRecord,
    UnexpectedExit,
    double_permit_violations,
    exit_violations,
    growth_violations,
    live_target_violations,
    lost_write_violations,
    pending_violations,
    proposal_violations,
    proposer_metric_violations,
    recovery_violations,
    resource_checks,
    stop_violations,
    tally_violations,
)
from microservices.devtools.permit_observer import PermitObserver
from microservices.devtools.procstats import MB, Sample
from microservices.governor.records import PERMIT_KEY_PREFIX

BOUNDS = MultiplierBounds(min_mult=0.6, max_mult=1.4, base=1.0, scale=1.6)
PARAMS = MultiplierParams(base=BOUNDS.base, scale=BOUNDS.scale, min_mult=BOUNDS.min_mult, max_mult=BOUNDS.max_mult)
NOW = 1_800_000_000.0


def test_a_sigterm_is_judged_by_its_exit_status_and_time() -> None:
    stops = [
        StopRecord("governor-1", 1, "sigterm fault", 0, 0.4),
        StopRecord("governor-2", 3, "sigterm fault", None, 5.0),
        StopRecord("proposer", 2, "final shutdown", 1, 0.2),
        StopRecord("governor-3", 1, "final shutdown", 0, 5.3),
    ]
    problems = stop_violations(stops)
    assert len(problems) == 3
    assert "governor-2 life 3 (sigterm fault): still running" in problems[0]
    assert "exit status 1" in problems[1]
    assert "took 5.3 s, over 5 s" in problems[2]
    assert stop_violations(stops[:1]) == []


def test_a_daemon_that_exits_by_itself_is_a_violation() -> None:
    problems = exit_violations([UnexpectedExit("governor-1", 4, 1, "Traceback ... KeyError")])
    assert problems and "governor-1 life 4 exited by itself with status 1" in problems[0]
    assert exit_violations([]) == []


def life(name: str, seconds: float, rss_mb: list[float], fds: list[int]) -> LifeRecord:
    step = seconds / (len(rss_mb) - 1)
    samples = tuple(Sample(i * step, int(mb * MB), n) for i, (mb, n) in enumerate(zip(rss_mb, fds, strict=True)))
    return LifeRecord(name, 1, seconds, samples)


POLICY = ResourcePolicy(min_life_sec=30, warmup_sec=10, max_growth_mb=20, fd_slack=4)


def test_memory_and_descriptors_are_judged_over_long_lives_after_their_warm_up() -> None:
    flat = life("governor-1", 60, [20, 34, 34.5, 34.6, 35], [5, 9, 9, 10, 9])  # the climb is the warm-up
    leaking = life("governor-2", 60, [20, 34, 45, 55, 60], [5, 9, 12, 15, 20])
    short = life("proposer", 20, [20, 80, 200], [5, 50, 500])  # too short to judge, however it looks
    checks = resource_checks([flat, leaking, short], POLICY)
    assert [(c.name, c.passed) for c in checks] == [
        ("governor-1 life 1 (60 s) memory flat", True),
        ("governor-1 life 1 (60 s) file descriptors steady", True),
        ("governor-2 life 1 (60 s) memory flat", False),
        ("governor-2 life 1 (60 s) file descriptors steady", False),
    ]


def test_recovery_is_judged_against_each_daemons_bound() -> None:
    recoveries = [
        Recovery("proposer", 1.2, 3.0, restarting=False),
        Recovery("governor-1", 3.1, 2.7, restarting=False),
        Recovery("governor-2", None, 2.7, restarting=True),
    ]
    problems = recovery_violations(recoveries)
    assert problems == [
        "governor-1: healthy again after 3.1 s, over 2.7 s",
        "governor-2 (restarting): no successful loop after the last fault cleared",
    ]


def written(score: float, target: bytes = b"1000.00", reason: EffReason = EffReason.OK) -> dict[str, str]:
    """A proposal's stream fields as the daemon's own code writes them."""
    reading = EfficiencyReading(reason, score=score, confidence=0.9, ts=NOW - 5, age_sec=5)
    proposal = decide("BTC", target, reading, PARAMS, NOW)
    assert isinstance(proposal, Proposal)
    return proposal.stream_fields()


@given(score=st.floats(0, 1), cents=st.integers(0, 10**9), reason=st.sampled_from(EffReason))
def test_what_the_proposer_writes_passes_the_proposal_check(score: float, cents: int, reason: EffReason) -> None:
    fields = written(score, f"{cents / 100:.2f}".encode(), reason)
    assert proposal_violations("p", fields, BOUNDS) == []


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"multiplier": "1.4500", "proposed_target": "1450.00"}, "outside [0.6, 1.4]"),
        ({"multiplier": "0.5000", "proposed_target": "500.00"}, "outside [0.6, 1.4]"),
        ({"reason": "low_conf"}, "with reason low_conf, not 1.0"),
        ({"reason": "redis_error"}, "with reason redis_error, not 1.0"),
        ({"multiplier": "1.2000", "proposed_target": "1200.00"}, "for score 0.7, expected 1.3200"),
        ({"eff_score": ""}, "reason ok without a score"),
        ({"proposed_target": "1320.10"}, "is not base_target 1000.0 x multiplier 1.32"),  # 0.06 is rounding
        ({"eff_stale": "1"}, "eff_stale '1' with reason ok"),
        ({"multiplier": "abc"}, "unreadable proposal"),
    ],
)
def test_a_proposal_that_breaks_spec_2_is_reported(change: dict[str, str], complaint: str) -> None:
    fields = written(0.7)
    assert (fields["multiplier"], fields["proposed_target"]) == ("1.3200", "1320.00")
    problems = proposal_violations("proposal BTC", {**fields, **change}, BOUNDS)
    assert any(complaint in p for p in problems), problems


def test_a_stale_reading_with_a_neutral_multiplier_passes_and_with_another_fails() -> None:
    fields = written(0.95, reason=EffReason.STALE)
    assert (fields["reason"], fields["multiplier"], fields["eff_stale"]) == ("stale_eff", "1.0000", "1")
    assert proposal_violations("p", fields, BOUNDS) == []
    bad = {**fields, "multiplier": "1.4000", "proposed_target": "1400.00"}
    assert proposal_violations("p", bad, BOUNDS) == ["p: multiplier 1.4 with reason stale_eff, not 1.0"]


class FakePermits:
    """Permit keys in a dict, read through the one pipeline :class:`PermitObserver` uses: GETs only."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self._queued: list[str] = []

    def set(self, **permits: str) -> None:
        self.keys = {PERMIT_KEY_PREFIX + plan_id: permit.encode() for plan_id, permit in permits.items()}

    def pipeline(self, transaction: bool = True) -> FakePermits:
        self._queued = []
        return self

    def get(self, key: str) -> None:
        self._queued.append(key)

    def execute(self, raise_on_error: bool = True) -> list[bytes | None]:
        return [self.keys.get(key) for key in self._queued]


def test_a_permit_read_again_and_found_different_is_reported() -> None:
    permits = FakePermits()
    observer = PermitObserver(cast(Any, permits))
    first, second = '{"plan_id": "p1", "created_at": 1.0}', '{"plan_id": "p1", "created_at": 2.0}'
    permits.set(p1=first, p2="{}")
    observer.look(["p1", "p2", "p3"])
    permits.set(p1=second, p2="{}")
    observer.look(["p1", "p2", "p3"])
    assert double_permit_violations(observer.doubles) == [
        f"plan p1 seen with two different permits: {first} then {second}"
    ]
    assert observer.permitted == {"p1", "p2"}
    permits.set(p2="{}")
    observer.look(["p1", "p2"])  # expired: no second permit, but gone
    assert list(observer.doubles) == ["p1"] and observer.vanished == {"p1"} and observer.rewritten == set()
    permits.set(p1=second)
    observer.look(["p1"])  # the same bytes again: written again
    assert observer.rewritten == {"p1"} and observer.doubles == {"p1": [first, second]}


def test_a_stream_that_shrinks_lost_writes() -> None:
    assert growth_violations("quantum:stream:apply.plan", [10, 12, 12, 30]) == []
    assert growth_violations("quantum:stream:apply.plan", [10, 12, 7]) == [
        "quantum:stream:apply.plan shrank from 12 to 7 entries"
    ]


def test_an_acknowledged_write_missing_at_the_end_is_lost() -> None:
    assert lost_write_violations("plans", ["1-0", "2-0"], {"1-0", "2-0", "3-0"}) == []
    assert lost_write_violations("plans", ["1-0", "2-0"], {"1-0"}) == [
        "1 plans acknowledged by Redis and lost: ['2-0']"
    ]


def test_counters_that_moved_by_more_or_less_than_redis_holds_are_reported() -> None:
    redis_side = OutcomeTally(outcomes=200, permits=60, dead_letters=6, already_decided=5)
    assert tally_violations(redis_side, redis_side) == []
    counted = OutcomeTally(outcomes=201, permits=59, dead_letters=6, already_decided=5)
    assert tally_violations(counted, redis_side) == [
        "governors counted 201 outcomes (quantum_govern_outcomes_total) where Redis holds 200",
        "governors counted 59 permits (p32_eff_apply_total) where Redis holds 60",
    ]
    before = OutcomeTally(10, 4, 1, 0)
    assert OutcomeTally(20, 6, 1, 2) - before == OutcomeTally(10, 2, 0, 2)


def test_a_governor_reporting_pending_plans_or_no_gauge_is_reported() -> None:
    assert pending_violations({"governor-1": 0.0, "governor-2": 0}) == []
    assert pending_violations({"governor-1": 3.0, "governor-2": None}) == [
        "governor-1: quantum_govern_pending is 3.0, not 0",
        "governor-2: quantum_govern_pending is None, not 0",
    ]


def test_proposer_gauges_are_judged_against_the_live_targets_and_shadow_hashes() -> None:
    live = {"A": 100.0, "B": None, "C": 50.0}  # B's target is unusable: no proposal, no series
    shadow: dict[str, float | None] = {"A": 1.32, "B": None, "C": 1.0}
    assert proposer_metric_violations(live, shadow, 3, {"A": 1.32, "C": 1.0}) == []
    problems = proposer_metric_violations(live, shadow, 2, {"A": 1.3, "B": 1.0, "D": 1.0})
    assert problems == [
        "p29_shadow_symbols is 2, Redis holds 3 live target hashes",
        "p29_shadow_multiplier series: extra ['B', 'D'], missing ['C']",
        "p29_shadow_multiplier{symbol='A'} is 1.3, its shadow hash says 1.32",
    ]


def test_a_live_target_changed_by_someone_else_is_reported() -> None:
    written_last = {"A": {"target_usd": "100.00"}, "B": None}
    assert live_target_violations(written_last, {"A": {"target_usd": "100.00"}, "B": {}}) == []
    held = {"A": {"target_usd": "100.00", "multiplier": "1.2"}, "B": {"target_usd": "5"}}
    assert live_target_violations(written_last, held) == [
        "live target of A is {'target_usd': '100.00', 'multiplier': '1.2'}, its writer left {'target_usd': '100.00'}",
        "live target of B is {'target_usd': '5'}, its writer left None",
    ]
