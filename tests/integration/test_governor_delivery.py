"""SPEC §3's delivery guarantee, with the governor as real processes: SIGKILL at any instant, restarts, two replicas
sharing the group, and a Redis restart with its data. Every plan ends in exactly one outcome; none gets two permits."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.typing import EncodableT

from microservices.devtools.redis_server import RedisServer, free_port
from tests.daemons import Daemon, daemon_env, run_once
from tests.redis_util import stream_entries

MODULE = "microservices.governor"
PLANS = "quantum:stream:apply.plan"
EVENTS = "quantum:stream:governor.events"
DLQ = PLANS + ".dlq"
EFF = "quantum:capital:efficiency:"


@dataclass
class PlanSet:
    """What was published: each entry's id and plan_id ("" for none), and which entries republish a plan_id."""

    entries: dict[str, str] = field(default_factory=dict)
    republished: set[str] = field(default_factory=set)

    def __add__(self, other: PlanSet) -> PlanSet:
        return PlanSet({**self.entries, **other.entries}, self.republished | other.republished)


def publish(
    client: redis.Redis, count: int, *, symbols: int, seed: int, prefix: str = "p", pause: float = 0.0
) -> PlanSet:
    """``count`` entries: mostly EXECUTE plans (a quarter of them closing), some HOLD, some without plan_id, and
    some republished plan_ids; each XADD on its own, as producers do."""
    rng = random.Random(seed)
    now = time.time()
    for i in range(symbols):
        score = f"{rng.choice([0.0, 0.2, 0.44, 0.7, 0.95]):.2f}"
        client.hset(f"{EFF}S{i}", mapping={"efficiency_score": score, "confidence": "0.9", "ts": str(now)})
    published = PlanSet()
    plan_ids: list[str] = []
    for i in range(count):
        if pause:
            time.sleep(pause)
        kind = rng.random()
        fields: dict[EncodableT, EncodableT] = {
            "plan_id": f"{prefix}{i}",
            "symbol": f"S{rng.randrange(symbols)}",
            "action": rng.choice(["OPEN_LONG", "OPEN_SHORT", "OPEN_LONG", "CLOSE_LONG"]),
            "decision": "EXECUTE" if kind > 0.1 else "HOLD",
            "qty": f"{rng.randint(1, 100)}",
        }
        if kind < 0.03:
            del fields["plan_id"]
        elif kind < 0.06 and plan_ids:
            fields["plan_id"] = rng.choice(plan_ids)
        entry_id = _text(client.xadd(PLANS, fields))
        published.entries[entry_id] = str(fields.get("plan_id", ""))
        if kind < 0.03:
            continue
        if kind < 0.06 and plan_ids:
            published.republished.add(entry_id)
        else:
            plan_ids.append(str(fields["plan_id"]))
    return published


def assert_exactly_one_outcome_each(client: redis.Redis, published: PlanSet) -> Counter[str]:
    """Every entry has exactly one event, except a republished plan_id whose plan was permitted before (acknowledged
    only); no plan_id has two permits; permits and blocks have their records; nothing is pending. Returns the events
    by kind."""
    events = stream_entries(client, EVENTS)
    per_entry = Counter(e["source_id"] for e in events)
    twice = {entry: n for entry, n in per_entry.items() if n > 1}
    assert not twice, f"entries with more than one outcome: {twice}"
    missing = set(published.entries) - set(per_entry) - published.republished
    assert not missing, f"entries with no outcome: {sorted(missing)[:10]}"
    assert set(per_entry) <= set(published.entries)
    permits = Counter(e["plan_id"] for e in events if e["event"] == "permit")
    assert max(permits.values(), default=0) <= 1, "plans with two permits: " + str(
        [p for p, n in permits.items() if n > 1]
    )
    for entry in published.republished - set(per_entry):  # acknowledged only: its plan_id was permitted
        assert permits[published.entries[entry]] == 1, entry
    for e in events:
        if e["event"] == "permit":
            permit = json.loads(client.get("quantum:permit:" + e["plan_id"]) or "null")
            assert permit is not None and permit["plan_id"] == e["plan_id"]
        elif e["event"] == "block":
            assert client.exists("quantum:governor:block:" + e["plan_id"])
    invalid = {entry for entry, plan_id in published.entries.items() if not plan_id}
    dead = stream_entries(client, DLQ)
    assert sorted(d["source_id"] for d in dead) == sorted(invalid)  # each dead-lettered once
    kinds = Counter(e["event"] for e in events)
    assert kinds["dead_letter"] == len(invalid)
    group = next(g for g in client.xinfo_groups(PLANS) if g["name"] == b"governor")
    assert (group["pending"], group["lag"]) == (0, 0)
    return kinds


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _events(client: redis.Redis) -> int:
    return int(client.xlen(EVENTS)) if client.exists(EVENTS) else 0


def kill_mid_batch(daemon: Daemon, client: redis.Redis, after_events: int, timeout: float = 60) -> None:
    """SIGKILL once ``after_events`` outcomes exist and a batch is in the governor's hands (read, not yet
    acknowledged), polling as fast as Redis answers so the kill lands inside that window."""
    deadline = time.monotonic() + timeout
    while _events(client) < after_events or client.xpending(PLANS, "governor")["pending"] == 0:
        assert time.monotonic() < deadline, "never caught the governor with plans in hand"
        assert daemon.running, daemon.log()[-2000:]
    daemon.process.kill()


def _settled(client: redis.Redis) -> bool:
    """Every entry of the stream delivered to the group and acknowledged."""
    groups = client.xinfo_groups(PLANS) if client.exists(PLANS) else []
    return bool(groups and groups[0]["pending"] == 0 and groups[0]["lag"] == 0)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as srv:
        yield srv


def _env(server: RedisServer, consumer: str, **extra: str) -> dict[str, str]:
    return daemon_env(server.url, {"GOV_CONSUMER": consumer, "GOV_BLOCK_MS": "200", **extra})


@pytest.mark.slow
def test_sigkill_at_random_instants_loses_no_plan_and_grants_no_second_permit(
    server: RedisServer, tmp_path: Path
) -> None:
    client = server.client()
    published: list[PlanSet] = []
    producer = threading.Thread(
        target=lambda: published.append(publish(client, 600, symbols=400, seed=random.randrange(10**6), pause=0.004))
    )
    producer.start()
    kills = 0
    for round_ in range(4):  # killed three times while plans flow in, then left to finish
        daemon = Daemon(MODULE, _env(server, "gov-1"), tmp_path / f"governor-{round_}.log")
        try:
            if round_ == 3:
                producer.join()
                daemon.wait_for(lambda: _settled(client), timeout=60, what="nothing pending")
                assert daemon.terminate()[0] == 0
                break
            kill_mid_batch(daemon, client, after_events=_events(client) + random.randint(1, 120))
            daemon.process.wait()
            kills += 1
        finally:
            daemon.close()
    assert kills == 3
    kinds = assert_exactly_one_outcome_each(client, published[0])
    assert kinds["permit"] > 100
    assert "re-reading pending plans" in "".join(p.read_text() for p in tmp_path.glob("governor-*.log"))


@pytest.mark.slow
def test_two_governors_share_the_group_and_never_both_pass_a_cooldown(server: RedisServer, tmp_path: Path) -> None:
    client = server.client()
    first = Daemon(MODULE, _env(server, "gov-a"), tmp_path / "a.log")
    second = Daemon(MODULE, _env(server, "gov-b"), tmp_path / "b.log")
    try:
        published = publish(client, 800, symbols=20, seed=7)  # 20 symbols: the replicas contend for every gate
        first.wait_for(lambda: _settled(client), timeout=60, what="nothing pending")
        assert first.terminate()[0] == 0
        assert second.terminate()[0] == 0
    finally:
        first.close()
        second.close()
    assert_exactly_one_outcome_each(client, published)
    # within the 60 s cooldown, at most one non-reducing permit per symbol, whichever replica wrote it
    opened: Counter[str] = Counter()
    for key in client.scan_iter("quantum:permit:*"):
        permit = json.loads(client.get(key) or "{}")
        if not permit["action"].startswith("CLOSE"):
            opened[permit["symbol"]] += 1
    assert opened and max(opened.values()) == 1, opened
    consumers = {c["name"] for c in client.xinfo_consumers(PLANS, "governor")}
    assert consumers == {b"gov-a", b"gov-b"}


@pytest.mark.slow
def test_a_killed_replicas_plans_are_claimed_by_the_other(server: RedisServer, tmp_path: Path) -> None:
    client = server.client()
    client.xgroup_create(PLANS, "governor", id="0", mkstream=True)
    published = publish(client, 50, symbols=50, seed=3)
    # a replica that read every plan and died before deciding any
    client.xreadgroup("governor", "gov-dead", {PLANS: ">"}, count=1000)
    survivor = Daemon(MODULE, _env(server, "gov-live", GOV_CLAIM_IDLE_MS="300"), tmp_path / "live.log")
    try:
        survivor.wait_for(lambda: _settled(client), timeout=30, what="claimed and decided")
        assert survivor.terminate()[0] == 0
    finally:
        survivor.close()
    assert_exactly_one_outcome_each(client, published)
    assert "claimed 50 plan(s)" in survivor.log()


def test_late_first_start_and_restart_with_the_same_name_reread_pending_plans(server: RedisServer) -> None:
    client = server.client()
    published = publish(client, 40, symbols=40, seed=5)  # before the group exists: created at 0, nothing missed
    client.xgroup_create(PLANS, "governor", id="0")
    client.xreadgroup("governor", "gov-1", {PLANS: ">"}, count=10)  # a crash after reading ten
    result = run_once(MODULE, server.url, {"GOV_CONSUMER": "gov-1"})
    assert result.returncode == 0, result.stderr
    assert "re-reading pending plans of consumer gov-1" in result.stderr
    assert_exactly_one_outcome_each(client, published)


@pytest.mark.slow
def test_redis_restart_with_its_data_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    with RedisServer(port=port, extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as srv:
        client = srv.client()
        daemon = Daemon(MODULE, _env(srv, "gov-1", REDIS_BACKOFF_MAX_SEC="0.5"), tmp_path / "gov.log")
        try:
            first = publish(client, 100, symbols=100, seed=11, prefix="a")
            daemon.wait_for(lambda: _events(client) >= 90, timeout=30, what="first plans decided")
            srv.stop()  # SIGTERM: Redis writes its append-only file and exits
            daemon.wait_for(lambda: (daemon.metric("quantum_govern_redis_errors_total") or 0) >= 1, what="an error")
            srv.start()
            client = srv.client()
            second = publish(client, 100, symbols=100, seed=12, prefix="b")
            daemon.wait_for(lambda: _events(client) >= 190, timeout=30, what="plans decided after the restart")
            daemon.wait_for(lambda: _settled(client), timeout=30, what="none pending")
            assert daemon.terminate()[0] == 0
        finally:
            daemon.close()
        assert_exactly_one_outcome_each(client, first + second)


@pytest.mark.slow
def test_group_lost_with_redis_data_is_created_again(tmp_path: Path) -> None:
    with RedisServer() as srv:
        client = srv.client()
        daemon = Daemon(MODULE, _env(srv, "gov-1", REDIS_BACKOFF_MAX_SEC="0.5"), tmp_path / "gov.log")
        try:
            daemon.wait_for(lambda: client.exists(PLANS) == 1, what="group created")
            client.flushall()  # the stream and its group are gone, as after a restart without persistence
            published = publish(client, 20, symbols=20, seed=13)
            daemon.wait_for(lambda: _settled(client), timeout=30, what="plans decided")
            assert daemon.terminate()[0] == 0
        finally:
            daemon.close()
        assert_exactly_one_outcome_each(client, published)
        assert "creating it again" in daemon.log()
