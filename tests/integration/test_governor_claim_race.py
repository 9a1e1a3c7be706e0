"""SPEC §3 when two replicas hold the same entry at once: one claimed it (``XAUTOCLAIM``, idle past
``GOV_CLAIM_IDLE_MS``) from the other, which was slow — stopped, behind a slow link — but not dead, and both go on to
decide it. Whichever decides second must find it decided, also when its plan_id was published twice and the later
entry's outcome has replaced the plan_id's outcome marker (found by the chaos run, seed 11: entries with two block or
two skip events).

The interleaving is driven step by step on two :class:`~microservices.governor.consumer.Governor` objects: A reads a
batch, B claims it, one decides and acknowledges it, then the other."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from microservices.devtools.plans import EVENTS, PLANS, stream_entries
from microservices.devtools.redis_server import RedisServer
from microservices.governor.metrics import GovernorMetrics
from tests.integration.test_governor_faults import add, governor, total

OPEN_BLOCKED = {"symbol": "S", "action": "OPEN_LONG", "decision": "EXECUTE", "kill_score": "0.9"}
CLOSE = {"symbol": "S", "action": "CLOSE_LONG", "decision": "EXECUTE"}
HOLD = {"symbol": "S", "action": "OPEN_LONG", "decision": "HOLD"}


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


def race(client: redis.Redis, url: str, plans: list[dict[str, str]], *, claimer_first: bool) -> GovernorMetrics:
    """Both replicas hold every entry of ``plans``; one decides them all, then the other, whose metrics are returned."""
    a, a_metrics = governor(url, "gov-a", GOV_CLAIM_IDLE_MS="1")
    b, b_metrics = governor(url, "gov-b", GOV_CLAIM_IDLE_MS="1")
    a._ensure_group()
    for fields in plans:
        add(client, fields)
    held_by_a = a._read_new(None)
    time.sleep(0.01)  # idle past GOV_CLAIM_IDLE_MS
    claimed_by_b = b._next_claimed()
    assert [d.entry_id for d in held_by_a] == [d.entry_id for d in claimed_by_b] != []
    if claimer_first:
        b._process(claimed_by_b)
        a._process(held_by_a)
        return a_metrics
    a._process(held_by_a)
    b._process(claimed_by_b)
    return b_metrics


@pytest.mark.parametrize("claimer_first", [False, True], ids=["holder-first", "claimer-first"])
@pytest.mark.parametrize(
    "plans",
    [
        [{"plan_id": "P", **OPEN_BLOCKED}, {"plan_id": "P", **OPEN_BLOCKED}],  # both blocked: the marker names the 2nd
        [{"plan_id": "P", **CLOSE}, {"plan_id": "P", **HOLD}],  # permitted, then a HOLD: a skip, the permit's marker
        [{"plan_id": "P", **HOLD}, {"plan_id": "P", **HOLD}, {"plan_id": "Q", **OPEN_BLOCKED}],
    ],
    ids=["blocked-twice", "permit-then-hold", "hold-twice"],
)
def test_an_entry_both_replicas_hold_gets_one_outcome(
    server: RedisServer, plans: list[dict[str, str]], claimer_first: bool
) -> None:
    client = server.client()
    second = race(client, server.url, plans, claimer_first=claimer_first)
    per_entry = Counter(e["source_id"] for e in stream_entries(client, EVENTS))
    assert sorted(per_entry.values()) == [1] * len(plans), per_entry
    assert client.xpending(PLANS, "governor")["pending"] == 0
    assert total(second.outcomes) == 0  # the second decider wrote nothing
    assert total(second.already_decided) == len(plans)


@pytest.mark.parametrize(
    ("permitted_first", "plans"),
    [
        (False, [{"plan_id": "P", **OPEN_BLOCKED}, {"plan_id": "P", **OPEN_BLOCKED}]),  # the plan_id's marker
        (True, [{"plan_id": "P", **HOLD}]),  # P permitted before: the entry's own marker
    ],
    ids=["plan-marker", "entry-marker"],
)
def test_the_other_replica_deciding_between_reads_and_exec_makes_the_exec_do_nothing(
    server: RedisServer, permitted_first: bool, plans: list[dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The narrowest window: A's transaction lands after B has read what it decides on and before B's EXEC. A key
    B watches changed, so B's EXEC does nothing, and B decides again, finding the entries decided."""
    client = server.client()
    a, _ = governor(server.url, "gov-a", GOV_CLAIM_IDLE_MS="1")
    b, b_metrics = governor(server.url, "gov-b", GOV_CLAIM_IDLE_MS="1")
    a._ensure_group()
    if permitted_first:
        add(client, {"plan_id": "P", **CLOSE})
        a._process(a._read_new(None))
    for fields in plans:
        add(client, fields)
    held_by_a = a._read_new(None)
    time.sleep(0.01)
    claimed_by_b = b._next_claimed()
    decide = b._io.decide
    landed: list[bool] = []

    def a_lands_first(*args: Any) -> Any:
        decided = decide(*args)
        if not landed:
            landed.append(True)
            a._process(held_by_a)
        return decided

    monkeypatch.setattr(b._io, "decide", a_lands_first)
    b._process(claimed_by_b)
    per_entry = Counter(e["source_id"] for e in stream_entries(client, EVENTS))
    assert sorted(per_entry.values()) == [1] * (permitted_first + len(plans)), per_entry
    assert total(b_metrics.conflicts) == 1 and total(b_metrics.outcomes) == 0
    assert client.xpending(PLANS, "governor")["pending"] == 0
