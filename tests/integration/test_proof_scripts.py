"""The P3.1 proof scripts run for real: ``scripts/proof_p31_step1_allocation_shadow.sh`` and
``scripts/proof_p31_step2_governor_downsize.sh`` with ``--spawn``, each against a Redis of its own.

Each run must pass every case, leave no key behind and leave every key it did not create exactly as it was: the
Redis is seeded with foreign keys of every type and with the streams the proofs share with production (the proposals,
plans, events and dead-letter streams, the plans stream with a consumer group and a consumer of its own), and a
``SCAN`` of every key with its value, TTL, stream entries and groups is compared before and after. A proof must also
be able to fail: with ``P31_MAX_MULT=1.2`` exported to the spawned proposer, step 1 reports the 0.9 score's multiplier
as 1.2000, not 1.4000, and exits non-zero (and still cleans up).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from microservices.devtools.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
STEP1 = ROOT / "scripts" / "proof_p31_step1_allocation_shadow.sh"
STEP2 = ROOT / "scripts" / "proof_p31_step2_governor_downsize.sh"
STEP1_CASES = (
    "proposer-healthz", "proposer-loops", "high-score", "low-score", "missing-efficiency", "low-confidence",
    "stale-efficiency", "invalid-text-score", "invalid-nan-score", "invalid-out-of-range", "millisecond-ts",
    "future-ts", "shadow-ttl", "live-target-unchanged", "stream-entries", "stream-one-per-loop", "metrics-multiplier",
    "metrics-proposed-total", "proposer-sigterm", "cleanup",
)  # fmt: skip
STEP2_CASES = (
    "governor-healthz", "governor-decided", "downsize", "no-downsize", "missing-efficiency", "low-confidence",
    "reduce-close", "reduce-only-flag", "invalid-no-plan-id", "invalid-plan-id-whitespace", "not-execute",
    "permit-schema", "permit-ttl", "metrics-eff-apply", "metrics-eff-factor", "governor-sigterm", "cleanup",
)  # fmt: skip
PLANS = "quantum:stream:apply.plan"
#: A run takes some 10 s on a quiet machine; this is only the bound of a hung one.
RUN_TIMEOUT_SEC = 100


@pytest.fixture(scope="module")
def proof_redis() -> Iterator[RedisServer]:
    """A Redis for these tests alone: the key-set comparison must see every key there is."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def seeded(proof_redis: RedisServer) -> Iterator[redis.Redis]:
    """The Redis emptied, then seeded with keys that are not the proofs': each must come out exactly as it went in."""
    client = proof_redis.client()
    client.flushall()
    client.set("foreign:string", "keep me", ex=3600)
    client.hset("foreign:hash", mapping={"a": "1", "b": "\xff text"})
    client.rpush("foreign:list", "x", "y")
    client.sadd("foreign:set", "m")
    client.zadd("foreign:zset", {"z": 1.5})
    client.hset("quantum:capital:efficiency:BTCUSDT", mapping={"efficiency_score": "0.2", "confidence": "0.9"})
    client.set("quantum:permit:foreign-plan", '{"granted":true}', ex=600)
    client.set("quantum:governor:gate:BTCUSDT", '{"last_permit_ts":1.0}', ex=600)
    client.set("quantum:governor:outcome:foreign-plan", "permit permitted 1-0 prod")
    client.xadd("quantum:stream:allocation.target.proposed", {"symbol": "BTCUSDT", "multiplier": "1.0000"})
    client.xadd("quantum:stream:governor.events", {"event": "permit", "plan_id": "foreign-plan"})
    client.xadd(PLANS + ".dlq", {"plan_id": "old", "reason": "invalid_plan"})
    # Production's plans stream: a plan already decided by the group's own consumer.
    client.xadd(PLANS, {"plan_id": "foreign-plan", "symbol": "BTCUSDT", "decision": "EXECUTE"})
    client.xgroup_create(PLANS, "governor", id="$")
    client.xgroup_createconsumer(PLANS, "governor", "prod-host")
    yield client
    client.close()


def snapshot(client: redis.Redis) -> dict[bytes, Any]:
    """Every key with its type, value, whether it expires, and for a stream its entries and groups."""
    state: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = cast(bytes, client.type(key)).decode()
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(cast(set[bytes], client.smembers(key)))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            groups = [
                (g["name"], g["pending"], sorted(c["name"] for c in client.xinfo_consumers(key, g["name"])))
                for g in client.xinfo_groups(key)
            ]
            value = (client.xrange(key), groups)
        else:
            value = kind
        state[key] = (kind, value, client.ttl(key) > 0)
    return state


def run_proof(
    script: Path, server: RedisServer, tmp_path: Path, env: Mapping[str, str] | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "REDIS_URL": server.url,
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp_path),
        **(env or {}),
    }
    return subprocess.run(
        ["bash", str(script), "--spawn", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SEC,
        check=False,
        cwd=tmp_path,
    )


def assert_all_passed(result: subprocess.CompletedProcess[str], cases: tuple[str, ...]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = result.stdout.splitlines()
    for case in cases:
        assert any(re.match(rf"PASS {re.escape(case)}( |$)", line) for line in lines), f"no PASS {case}:\n{output}"
    assert not [line for line in lines if line.startswith("FAIL")], output
    assert f"SUMMARY P3.1 step {'1' if 'proposer-loops' in cases else '2'}" in result.stdout
    assert f": {len(cases)} passed, 0 failed" in result.stdout, output
    assert lines[-1] == "RESULT PASS", output


def assert_run_dir_removed(tmp_path: Path) -> None:
    assert not list(tmp_path.glob("p31-proof.*")), "the run directory was left behind"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_step1_passes_every_case_and_leaves_redis_as_it_was(
    proof_redis: RedisServer, seeded: redis.Redis, tmp_path: Path
) -> None:
    before = snapshot(seeded)
    result = run_proof(STEP1, proof_redis, tmp_path)
    assert_all_passed(result, STEP1_CASES)
    assert snapshot(seeded) == before
    assert_run_dir_removed(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_step2_passes_every_case_and_leaves_redis_as_it_was(
    proof_redis: RedisServer, seeded: redis.Redis, tmp_path: Path
) -> None:
    before = snapshot(seeded)
    result = run_proof(STEP2, proof_redis, tmp_path)
    assert_all_passed(result, STEP2_CASES)
    assert snapshot(seeded) == before
    assert_run_dir_removed(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_step1_fails_when_the_proposer_does_not_behave_as_specified(
    proof_redis: RedisServer, seeded: redis.Redis, tmp_path: Path
) -> None:
    """P31_MAX_MULT=1.2 reaches the spawned proposer: 0.9 gives 1.2, which the proof must report, and still clean up."""
    before = snapshot(seeded)
    result = run_proof(STEP1, proof_redis, tmp_path, {"P31_MAX_MULT": "1.2"})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("FAIL high-score: expected multiplier='1.4000', proposed_target='350.70' got")
        and "multiplier='1.2000'" in line
        for line in lines
    ), output
    assert any(line.startswith("PASS low-score") for line in lines), output  # 0.8 is within the clamp
    assert any(line.startswith("PASS cleanup") for line in lines), output
    assert lines[-1] == "RESULT FAIL", output
    assert snapshot(seeded) == before
    assert_run_dir_removed(tmp_path)


@pytest.mark.slow
def test_spawn_is_refused_where_the_spawned_proposer_would_touch_live_targets(
    proof_redis: RedisServer, seeded: redis.Redis, tmp_path: Path
) -> None:
    seeded.hset("quantum:allocation:target:ETHUSDT", mapping={"target_usd": "1000"})
    before = snapshot(seeded)
    result = run_proof(STEP1, proof_redis, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refusing --spawn: 1 live allocation target(s) exist (e.g. ETHUSDT)" in result.stderr
    assert "spawned microservices" not in result.stderr  # refused before any daemon started
    assert snapshot(seeded) == before
    assert_run_dir_removed(tmp_path)
