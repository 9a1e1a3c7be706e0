"""SPEC §3's delivery guarantee, with the governor as real processes: SIGKILL at any instant, restarts, two replicas
sharing the group, and a Redis restart with its data. Every plan ends in exactly one outcome; none gets two permits."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from microservices.devtools.plans import PLANS, PlanSet, events_count, outcome_violations, publish, settled
from microservices.devtools.redis_server import RedisServer, free_port
from tests.daemons import Daemon, daemon_env, run_once

MODULE = "microservices.governor"


def assert_exactly_one_outcome_each(client: redis.Redis, published: PlanSet) -> Counter[str]:
    """SPEC §3's guarantee over ``published`` (:func:`~microservices.devtools.plans.outcome_violations`); the events by
    kind."""
    problems, kinds = outcome_violations(client, published)
    assert not problems, problems
    return kinds


def kill_mid_batch(daemon: Daemon, client: redis.Redis, after_events: int, timeout: float = 60) -> None:
    """SIGKILL once ``after_events`` outcomes exist and a batch is in the governor's hands (read, not yet
    acknowledged), polling as fast as Redis answers so the kill lands inside that window."""
    deadline = time.monotonic() + timeout
    while events_count(client) < after_events or client.xpending(PLANS, "governor")["pending"] == 0:
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
                daemon.wait_for(lambda: settled(client), timeout=60, what="nothing pending")
                assert daemon.terminate()[0] == 0
                break
            kill_mid_batch(daemon, client, after_events=events_count(client) + random.randint(1, 120))
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
        first.wait_for(lambda: settled(client), timeout=60, what="nothing pending")
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
        survivor.wait_for(lambda: settled(client), timeout=30, what="claimed and decided")
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
            daemon.wait_for(lambda: events_count(client) >= 90, timeout=30, what="first plans decided")
            srv.stop()  # SIGTERM: Redis writes its append-only file and exits
            daemon.wait_for(lambda: (daemon.metric("quantum_govern_redis_errors_total") or 0) >= 1, what="an error")
            srv.start()
            client = srv.client()
            second = publish(client, 100, symbols=100, seed=12, prefix="b")
            daemon.wait_for(lambda: events_count(client) >= 190, timeout=30, what="plans decided after the restart")
            daemon.wait_for(lambda: settled(client), timeout=30, what="none pending")
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
            daemon.wait_for(lambda: settled(client), timeout=30, what="plans decided")
            assert daemon.terminate()[0] == 0
        finally:
            daemon.close()
        assert_exactly_one_outcome_each(client, published)
        assert "creating it again" in daemon.log()
