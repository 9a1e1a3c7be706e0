"""The chaos run's checks that must read the daemons and Redis once the faults are over: how fast each daemon recovers,
and whether its metrics equal what Redis holds. Each gathers evidence and hands it to a pure check of
:mod:`microservices.devtools.invariants`, returning that check's violations.

They rely on the quiet: no fault, no load, no process restarting (the caller checks that last one), so a counter
that moves can only move for what the check itself does.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis

from microservices.allocation_target.proposal import LIVE_TARGET_PREFIX, PROPOSED_PREFIX, TARGET_FIELD, parse_target
from microservices.devtools.daemon_process import http_get
from microservices.devtools.invariants import (
    OutcomeTally,
    Recovery,
    pending_violations,
    proposer_metric_violations,
    tally_violations,
)
from microservices.devtools.plans import DLQ, EVENTS, PLANS, publish, settled
from microservices.devtools.scrape import metric_samples, metric_total
from microservices.devtools.supervisor import Slot


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    """Whether ``predicate`` held within ``timeout``; a Redis or HTTP failure counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if predicate():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


def metrics(slot: Slot) -> str:
    """The daemon's ``/metrics`` page now ("" when it is down)."""
    life = slot.running()
    if life is None:
        return ""
    try:
        return http_get(life.process.url("/metrics"))[1]
    except OSError:
        return ""


# --- recovery ---------------------------------------------------------------------------------------------------------


def recovered(slot: Slot, since: float) -> bool:
    """Whether the daemon's ``/healthz`` is 200 for a successful loop that ended after ``since`` (epoch seconds): a
    200 alone could be an old success, still younger than the health window."""
    life = slot.running()
    if life is None:
        return False
    try:
        status, body = http_get(life.process.url("/healthz"), timeout=1)
    except OSError:
        return False
    last = json.loads(body).get("last_success_ts") if status == 200 else None
    return last is not None and float(last) >= since


def measure_recovery(slots: list[Slot], bound: Callable[[Slot, bool], float]) -> list[Recovery]:
    """From now (the last fault just cleared), how long each daemon takes to report a new successful loop.
    ``bound(slot, restarting)`` is its limit; a daemon is *restarting* when it has no process up for a second."""
    cleared, cleared_mono = time.time(), time.monotonic()
    restarting: dict[str, bool] = {}
    for slot in slots:
        life = slot.life
        restarting[slot.name] = life is None or not life.process.running or cleared_mono - life.started < 1.0
    bounds = {slot.name: bound(slot, restarting[slot.name]) for slot in slots}
    took: dict[str, float | None] = dict.fromkeys(bounds)
    deadline = cleared_mono + max(bounds.values()) + 10
    while time.monotonic() < deadline and any(t is None for t in took.values()):
        for slot in slots:
            if took[slot.name] is None and recovered(slot, cleared):
                took[slot.name] = time.time() - cleared
        time.sleep(0.05)
    return [Recovery(name, took[name], bounds[name], restarting[name]) for name in bounds]


# --- the governors' metrics -------------------------------------------------------------------------------------------


def governor_tally(slots: list[Slot]) -> OutcomeTally:
    """The governors' outcome counters, summed over the replicas."""
    pages = [metrics(slot) for slot in slots]
    return OutcomeTally(
        outcomes=round(sum(metric_total(p, "quantum_govern_outcomes_total") for p in pages)),
        permits=round(sum(metric_total(p, "p32_eff_apply_total") for p in pages)),
        dead_letters=round(sum(metric_total(p, "quantum_govern_dead_letter_total") for p in pages)),
        already_decided=round(sum(metric_total(p, "quantum_govern_already_decided_total") for p in pages)),
    )


def steady(read: Callable[[], OutcomeTally], every: float = 1.0, timeout: float = 10.0) -> OutcomeTally:
    """``read()`` once two readings ``every`` seconds apart agree (or after ``timeout``): the counters have caught up
    with everything decided before."""
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        time.sleep(every)
        again = read()
        if again == value:
            return value
        value = again
    return value


def _last_id(client: redis.Redis, stream: str) -> str:
    newest: Any = client.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else "0-0"


def final_batch_violations(
    client: redis.Redis, governors: list[Slot], *, plans: int, symbols: int, seed: int, timeout: float
) -> list[str]:
    """A last batch of ``plans`` plans in the quiet: the governors' counters, summed, move by exactly what Redis
    holds for it — its events, permit events, dead letters, and entries only acknowledged (a republished plan_id
    already permitted). Exact, because nothing else moves them meanwhile: every earlier plan is decided and counted
    (the counters are read until they stop moving), and no fault can lose an EXEC reply."""
    before = steady(lambda: governor_tally(governors))
    marks = {name: _last_id(client, name) for name in (PLANS, EVENTS)}
    dead_before = int(client.xlen(DLQ)) if client.exists(DLQ) else 0
    publish(client, plans, symbols=symbols, seed=seed, prefix="final-")
    if not wait_until(lambda: settled(client), timeout):
        return ["the final batch was not decided"]
    entries: Any = client.xrange(PLANS, min=f"({marks[PLANS]}")
    events: Any = client.xrange(EVENTS, min=f"({marks[EVENTS]}")
    decided = {fields[b"source_id"] for _, fields in events}
    written = OutcomeTally(
        outcomes=len(events),
        permits=sum(fields[b"event"] == b"permit" for _, fields in events),
        dead_letters=int(client.xlen(DLQ)) - dead_before,
        already_decided=sum(entry_id not in decided for entry_id, _ in entries),
    )
    wait_until(lambda: governor_tally(governors) - before == written, 10)
    return [f"final batch: {p}" for p in tally_violations(governor_tally(governors) - before, written)]


def pending_gauge_violations(governors: list[Slot]) -> list[str]:
    """Every plan decided: each governor's ``quantum_govern_pending`` says 0 (within the second it refreshes in)."""

    def pending() -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for slot in governors:
            found = metric_samples(metrics(slot), "quantum_govern_pending")
            values[slot.name] = found[0][1] if found else None
        return values

    wait_until(lambda: not pending_violations(pending()), 5)
    return pending_violations(pending())


# --- the proposer's metrics -------------------------------------------------------------------------------------------


def _proposer_view(client: redis.Redis, page: str) -> list[str]:
    names = [
        symbol
        for key in client.scan_iter(match=LIVE_TARGET_PREFIX + "*", _type="hash")
        if ":" not in (symbol := key.decode()[len(LIVE_TARGET_PREFIX) :])
    ]
    live = {name: parse_target(client.hget(LIVE_TARGET_PREFIX + name, TARGET_FIELD)) for name in names}
    shadow: dict[str, float | None] = {}
    for name in names:
        raw = client.hget(PROPOSED_PREFIX + name, "multiplier")
        shadow[name] = None if raw is None else float(raw)
    gauges: Mapping[str, float] = {
        labels["symbol"]: value for labels, value in metric_samples(page, "p29_shadow_multiplier")
    }
    symbols = metric_samples(page, "p29_shadow_symbols")
    return proposer_metric_violations(live, shadow, symbols[0][1] if symbols else None, gauges)


def proposer_gauge_violations(client: redis.Redis, proposer: Slot, loop_interval: float) -> list[str]:
    """After two loops of the quiet (nothing changes targets or scores any more), the proposer's gauges equal Redis:
    ``p29_shadow_symbols`` the live target hashes, each multiplier series its shadow hash. A scrape may fall between
    a loop's writes and its gauges, so they are compared again until they agree, for a few loops at most."""

    def loops() -> float:
        return metric_total(metrics(proposer), "p29_shadow_loops_total")

    start = loops()
    wait_until(lambda: loops() >= start + 2, 10 * loop_interval + 2)
    problems: list[str] = []

    def agree() -> bool:
        nonlocal problems
        problems = _proposer_view(client, metrics(proposer))
        return not problems

    wait_until(agree, 5 * loop_interval, every=0.2)
    return [f"proposer metrics: {p}" for p in problems]
