"""The chaos run's fault schedule (``microservices/devtools/faults.py``): reproducible from its seed, every kind in
every run, faults overlapping, and a Redis outage that ends exactly when the chaos does."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from microservices.devtools.faults import FINALE, PROCESS_FAULTS, SHAPES, Fault, FaultKind, plan_faults

DAEMONS = ["proposer", "governor-1", "governor-2", "governor-3"]


def schedule(seed: int, end: float = 60.0, per_minute: float = 20.0) -> tuple[Fault, ...]:
    return plan_faults(
        random.Random(seed), start=3.0, end=end, daemons=DAEMONS, kinds=list(FaultKind), per_minute=per_minute
    )


def test_the_same_seed_gives_the_same_faults_and_another_seed_others() -> None:
    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


@given(seed=st.integers(0, 2**32), minutes=st.floats(0.5, 30))
def test_every_kind_is_in_every_run_and_every_fault_is_within_the_window(seed: int, minutes: float) -> None:
    end = minutes * 60
    faults = schedule(seed, end)
    assert {f.kind for f in faults} == set(FaultKind)
    assert [f.at for f in faults] == sorted(f.at for f in faults)
    assert all(3.0 <= f.at <= end for f in faults)
    for fault in faults:
        shape = SHAPES[fault.kind]
        assert shape.seconds[0] <= fault.seconds <= shape.seconds[1]
        assert (fault.target in DAEMONS) == (fault.kind in PROCESS_FAULTS)
        assert (len(fault.password) == 24) == (fault.kind is FaultKind.PASSWORD_ROTATION)
    assert len(faults) >= round(20 * (end - 3) / 60)


def test_the_last_fault_to_end_is_a_redis_outage_ending_with_the_window() -> None:
    for seed in range(50):
        faults = schedule(seed)
        last = max(faults, key=lambda f: f.at + f.seconds)
        assert last.kind in FINALE
        assert abs(last.at + last.seconds - 60.0) < 0.01


def test_a_minute_of_chaos_has_faults_that_overlap() -> None:
    overlapping = 0
    for seed in range(20):
        faults = sorted(schedule(seed), key=lambda f: f.at)
        overlapping += any(b.at < a.at + a.seconds for a, b in itertools.pairwise(faults))
    assert overlapping >= 15
