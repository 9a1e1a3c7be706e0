"""The outcome check every delivery test, the stop stress and the chaos run judge by
(:func:`microservices.devtools.plans.outcome_violations`), fed stream states that keep and that break SPEC §3."""

from __future__ import annotations

import json

import redis

from microservices.devtools.plans import EVENTS, GROUP, PLANS, outcome_violations, stream_plan_set


def _entry(r: redis.Redis, plan_id: str) -> str:
    entry_id: bytes = r.xadd(PLANS, {"plan_id": plan_id, "symbol": "S"})  # type: ignore[assignment]
    return entry_id.decode()


def _decide_all(r: redis.Redis, *events: tuple[str, str, str]) -> None:
    """Deliver and acknowledge every entry; record ``(event, plan_id, entry)`` outcomes as the governor would."""
    r.xgroup_create(PLANS, GROUP, id="0")
    delivered: list[tuple[bytes, list[tuple[bytes, object]]]] = r.xreadgroup(GROUP, "g", {PLANS: ">"})  # type: ignore[assignment]
    r.xack(PLANS, GROUP, *[entry_id for entry_id, _ in delivered[0][1]])
    for event, plan_id, entry in events:
        r.xadd(EVENTS, {"event": event, "plan_id": plan_id, "symbol": "S", "reason": "r", "source_id": entry})
        if event == "permit":
            r.set("quantum:permit:" + plan_id, json.dumps({"plan_id": plan_id}))
        else:
            r.set("quantum:governor:block:" + plan_id, "{}")


def test_a_plan_id_published_twice_and_permitted_through_the_later_entry_is_one_outcome(r: redis.Redis) -> None:
    """A replica may decide the later entry while the earlier one waits in a dead replica's pending list: the earlier
    one is then only acknowledged (a permit exists), and that is right whichever came first in the stream."""
    first, later = _entry(r, "p1"), _entry(r, "p1")
    _decide_all(r, ("permit", "p1", later))
    problems, kinds = outcome_violations(r, stream_plan_set(r))
    assert (problems, kinds["permit"]) == ([], 1)
    assert first in stream_plan_set(r).entries


def test_an_entry_without_outcome_is_reported_unless_its_plan_was_permitted_through_another(r: redis.Redis) -> None:
    blocked_first, blocked_later, alone = _entry(r, "p1"), _entry(r, "p1"), _entry(r, "p2")
    _decide_all(r, ("block", "p1", blocked_later))  # a block does not make the other entry's silence right
    problems, _ = outcome_violations(r, stream_plan_set(r))
    assert problems == [f"2 entries with no outcome: {sorted([blocked_first, alone])}"]


def test_a_stream_the_group_was_not_delivered_in_full_has_not_settled(r: redis.Redis) -> None:
    only = _entry(r, "p1")
    _decide_all(r, ("permit", "p1", only))
    late = _entry(r, "p2")
    r.xadd(EVENTS, {"event": "block", "plan_id": "p2", "symbol": "S", "reason": "r", "source_id": late})
    r.set("quantum:governor:block:p2", "{}")
    problems, _ = outcome_violations(r, stream_plan_set(r))
    assert problems == ["the group has not settled: (pending, delivered the last entry) = (0, False)"]
