"""Plans as the fault tests, the topology tests, the stop stress and the chaos run see them: a mix of plans published
the way producers do (on one Redis or a Redis Cluster), the plan stream as ground truth, and the check that every entry
ended in exactly one outcome.

:func:`outcome_violations` returns what is wrong as sentences instead of asserting, so a long run can report every
violation it found; the tests assert that the list is empty.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

import redis
from redis.cluster import RedisCluster
from redis.typing import EncodableT

from microservices.core.efficiency import EFFICIENCY_KEY_PREFIX
from microservices.governor.records import BLOCK_KEY_PREFIX, EVENTS_STREAM, PERMIT_KEY_PREFIX

PLANS = "quantum:stream:apply.plan"
GROUP = "governor"
EVENTS = EVENTS_STREAM
DLQ = PLANS + ".dlq"
#: What the plan tools write with: every command they send exists on both.
AnyRedis = redis.Redis | RedisCluster


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_entries(client: redis.Redis, name: str) -> list[dict[str, str]]:
    """Every entry of a stream, its fields as text."""
    raw: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(name)  # type: ignore[assignment]
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]


def entry_ms(entry_id: bytes | str) -> int:
    """The time part of a stream entry id, in epoch milliseconds."""
    return int(text(entry_id).split("-", 1)[0])


@dataclass
class PlanSet:
    """What was published: each entry's id and its plan_id ("" for none). Which entries share a plan_id is not kept:
    which of them is only acknowledged depends on the order they were decided in, which the outcomes tell."""

    entries: dict[str, str] = field(default_factory=dict)

    def __add__(self, other: PlanSet) -> PlanSet:
        return PlanSet({**self.entries, **other.entries})


def seed_efficiency(client: AnyRedis, symbols: int, rng: random.Random, now: float | None = None) -> None:
    """An efficiency reading for symbols ``S0``..: scores across the downsize threshold, all fresh and confident."""
    now = time.time() if now is None else now
    for i in range(symbols):
        score = f"{rng.choice([0.0, 0.2, 0.44, 0.7, 0.95]):.2f}"
        client.hset(
            f"{EFFICIENCY_KEY_PREFIX}S{i}", mapping={"efficiency_score": score, "confidence": "0.9", "ts": str(now)}
        )


def plan_fields(
    rng: random.Random, index: int, kind: float, *, symbols: int, prefix: str
) -> dict[EncodableT, EncodableT]:
    """One plan of the mix: a quarter of the actions close; ``kind`` (uniform in [0, 1)) below 0.1 makes it a HOLD."""
    return {
        "plan_id": f"{prefix}{index}",
        "symbol": f"S{rng.randrange(symbols)}",
        "action": rng.choice(["OPEN_LONG", "OPEN_SHORT", "OPEN_LONG", "CLOSE_LONG"]),
        "decision": "EXECUTE" if kind > 0.1 else "HOLD",
        "qty": f"{rng.randint(1, 100)}",
    }


@dataclass(frozen=True)
class Published:
    """One plan as its producer sent it: the entry id Redis gave it, its plan_id ("" for none), when (epoch s)."""

    entry_id: str
    plan_id: str
    at: float


def plan_mix(
    rng: random.Random, *, symbols: int, prefix: str, republish: bool = True
) -> Iterator[dict[EncodableT, EncodableT]]:
    """Plans over symbols ``S0``.., endlessly: mostly EXECUTE plans (a quarter of them closing), some HOLD, some without
    plan_id (3 %) and, if ``republish``, some republished plan_ids (3 %)."""
    plan_ids: list[str] = []
    for i in itertools.count():
        kind = rng.random()
        fields = plan_fields(rng, i, kind, symbols=symbols, prefix=prefix)
        if kind < 0.03:
            del fields["plan_id"]
        elif republish and kind < 0.06 and plan_ids:
            fields["plan_id"] = rng.choice(plan_ids)
        yield fields
        if republish and (kind >= 0.06 or (kind >= 0.03 and not plan_ids)):
            plan_ids.append(str(fields["plan_id"]))


def publish(
    client: AnyRedis,
    count: int | None,
    *,
    symbols: int,
    seed: int,
    prefix: str = "p",
    pause: float | None = 0.0,
    rate: float | None = None,
    republish: bool = True,
    stop: threading.Event | None = None,
    into: list[Published] | None = None,
) -> PlanSet:
    """``count`` entries (None: until ``stop``) of :func:`plan_mix` after :func:`seed_efficiency`, each XADD on its
    own, as producers do. ``pause`` is the wait before each XADD; ``rate`` (instead) an absolute schedule of that many
    a second, so that a stall is followed by a catch-up burst, as producers with a backlog do. Each entry is appended
    to ``into`` once Redis acknowledged it (to read while it runs); ``stop`` ends the run early."""
    rng = random.Random(seed)
    seed_efficiency(client, symbols, rng)
    published = [] if into is None else into
    started = time.monotonic()
    mix = plan_mix(rng, symbols=symbols, prefix=prefix, republish=republish)
    for i, fields in enumerate(itertools.islice(mix, count)):
        if stop is not None and stop.is_set():
            break
        wait = (started + i / rate - time.monotonic()) if rate else pause
        if wait is not None and wait > 0:
            time.sleep(wait)
        at = time.time()
        entry_id = text(client.xadd(PLANS, fields))
        published.append(Published(entry_id, str(fields.get("plan_id", "")), at))
    return PlanSet({p.entry_id: p.plan_id for p in published})


def events_count(client: redis.Redis) -> int:
    return int(client.xlen(EVENTS)) if client.exists(EVENTS) else 0


def group_state(client: redis.Redis) -> tuple[int, bool] | None:
    """The group's pending count and whether it was delivered the stream's last entry; None without stream or group.
    Judged from the last-delivered-id, not from XINFO GROUPS' ``lag``: that is Redis's estimate from its
    ``entries-read`` counter, which Redis 7.0 replays stale from an AOF rewritten before a restart, so that the lag
    stays above 0 for good with every entry delivered."""
    if not client.exists(PLANS):
        return None
    group = next((g for g in client.xinfo_groups(PLANS) if g["name"] == GROUP.encode()), None)
    if group is None:
        return None
    last = client.xinfo_stream(PLANS)["last-generated-id"]
    return int(group["pending"]), group["last-delivered-id"] == last


def settled(client: redis.Redis) -> bool:
    """Every entry of the stream delivered to the group and acknowledged."""
    return group_state(client) == (0, True)


def stream_plan_set(client: redis.Redis) -> PlanSet:
    """What the plan stream holds, entry by entry: the set every outcome is judged against. Built from the stream, not
    from what a producer meant to send, because a retried XADD whose first reply was lost lands twice (the second
    copy is then a republished plan_id, which the governor must handle as such)."""
    raw: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(PLANS)  # type: ignore[assignment]
    return PlanSet({entry_id.decode(): fields.get(b"plan_id", b"").decode() for entry_id, fields in raw})


def repeated_events(events: list[dict[str, str]]) -> list[dict[str, str]]:
    """The events that repeat an earlier one of the same entry exactly (same event, reason and plan_id): what SPEC §3
    allows under a Redis Cluster, where an outcome's writes cannot share one transaction."""
    seen: set[tuple[str, str, str, str]] = set()
    repeats = []
    for e in events:
        key = (e["source_id"], e["event"], e["reason"], e["plan_id"])
        if key in seen:
            repeats.append(e)
        seen.add(key)
    return repeats


def outcome_violations(
    client: redis.Redis, published: PlanSet, *, events_may_repeat: bool = False, lost_entries: Collection[str] = ()
) -> tuple[list[str], Counter[str]]:
    """What breaks SPEC §3's delivery guarantee, and the events by kind. Every entry has exactly one event, except an
    entry whose plan_id was permitted through another entry (acknowledged only); no plan_id has two permits; permits
    and blocks have their records; each entry without a plan_id is dead-lettered once; nothing is pending.

    ``events_may_repeat`` (a Redis Cluster, SPEC §3): an event that repeats an earlier one of its entry exactly is
    the same outcome recorded twice and counts once; an entry with two different outcomes is still a violation.
    ``lost_entries``: entries a failover took from the stream (unreplicated XADDs): their events, if they were decided
    before the loss, are not judged (nor counted), as they are not in ``published``."""
    problems: list[str] = []
    lost = set(lost_entries)
    events = [e for e in stream_entries(client, EVENTS) if e["source_id"] not in lost]
    if events_may_repeat:
        repeats = {id(e) for e in repeated_events(events)}
        events = [e for e in events if id(e) not in repeats]
    per_entry = Counter(e["source_id"] for e in events)
    twice = {entry: n for entry, n in per_entry.items() if n > 1}
    if twice:
        problems.append(f"entries with more than one outcome: {sorted(twice.items())[:10]}")
    # An entry with no event of its own is right only when its plan_id was permitted through another entry: it was
    # then only acknowledged (SPEC §3, step 3), whichever of the entries sharing the plan_id came first in the stream
    # (a replica may decide a later one while an earlier one waits to be claimed).
    permitted_by = {e["plan_id"]: e["source_id"] for e in events if e["event"] == "permit"}
    missing = {
        entry for entry, plan_id in published.entries.items()
        if entry not in per_entry and permitted_by.get(plan_id, entry) == entry
    }  # fmt: skip
    if missing:
        problems.append(f"{len(missing)} entries with no outcome: {sorted(missing)[:10]}")
    unknown = set(per_entry) - set(published.entries)
    if unknown:
        problems.append(f"{len(unknown)} outcomes of entries never published: {sorted(unknown)[:10]}")
    permits = Counter(e["plan_id"] for e in events if e["event"] == "permit")
    doubled = sorted(p for p, n in permits.items() if n > 1)
    if doubled:
        problems.append(f"plans with two permit events: {doubled[:10]}")
    for e in events:
        if e["event"] == "permit":
            permit = json.loads(client.get(PERMIT_KEY_PREFIX + e["plan_id"]) or "null")
            if permit is None or permit.get("plan_id") != e["plan_id"]:
                problems.append(f"permit event of {e['plan_id']} without its permit")
        elif e["event"] == "block" and not client.exists(BLOCK_KEY_PREFIX + e["plan_id"]):
            problems.append(f"block event of {e['plan_id']} without its block record")
    invalid = sorted(entry for entry, plan_id in published.entries.items() if not plan_id)
    dead_letters = [d["source_id"] for d in stream_entries(client, DLQ) if d["source_id"] not in lost]
    dead = sorted(set(dead_letters) if events_may_repeat else dead_letters)  # a repeated outcome, its record too
    if dead != invalid:
        problems.append(f"dead letters {dead[:10]} are not the {len(invalid)} entries without plan_id {invalid[:10]}")
    kinds = Counter(e["event"] for e in events)
    if kinds["dead_letter"] != len(invalid):
        problems.append(f"{kinds['dead_letter']} dead_letter events for {len(invalid)} entries without plan_id")
    state = group_state(client)
    if state != (0, True):
        problems.append(f"the group has not settled: (pending, delivered the last entry) = {state}")
    return problems, kinds
