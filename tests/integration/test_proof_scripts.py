"""The P3.1 proof scripts run for real: ``scripts/proof_p31_step1_allocation_shadow.sh`` and
``scripts/proof_p31_step2_governor_downsize.sh`` with ``--spawn``, each against a Redis of its own.

Each run must pass every case, leave no key behind and leave every key it did not create exactly as it was: the
Redis is seeded with foreign keys of every type and with the streams the proofs share with production (the proposals,
plans, events and dead-letter streams, the plans stream with a consumer group, a consumer of its own and a plan not
yet delivered to it), and a ``SCAN`` of every key with its value, TTL, stream entries and groups (their consumers,
pending count and last delivered id) is compared before and after. A proof must also be able to fail: with
``P31_MAX_MULT=1.2`` exported to the spawned proposer, step 1 reports the 0.9 score's multiplier as 1.2000, not
1.4000, and exits non-zero (and still cleans up).

The connection comes from ``--env-file`` alone in the passing runs (no ``REDIS_URL`` in the environment): step 1's
Redis wants a password, which only the env file gives, and that a shell would mangle (``$`` and a backtick).
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
#: A password a shell would mangle if the env file were sourced: ``$USER`` expands, the backticks run ``true``.
PASSWORD = "s3cret$USER`true`z"
#: A run takes some 10 s on a quiet machine; this is only the bound of a hung one.
RUN_TIMEOUT_SEC = 100


@pytest.fixture(scope="module")
def proof_redis() -> Iterator[RedisServer]:
    """A Redis for these tests alone: the key-set comparison must see every key there is."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def password_redis() -> Iterator[RedisServer]:
    """A Redis that refuses every command until AUTH with :data:`PASSWORD`. Set once it answers: started with
    ``--requirepass``, its readiness probe spends seconds in redis-py's retries of the refused HELLO."""
    with RedisServer() as server:
        with server.client() as client:
            client.config_set("requirepass", PASSWORD)
        yield server


def seed(client: redis.Redis) -> None:
    """The Redis emptied, then seeded with keys that are not the proofs': each must come out exactly as it went in."""
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
    # ... and one published since, not yet delivered: a governor in group governor would take it up.
    client.xadd(PLANS, {"plan_id": "foreign-plan-2", "symbol": "ETHUSDT", "decision": "EXECUTE"})


@pytest.fixture
def seeded(proof_redis: RedisServer) -> Iterator[redis.Redis]:
    client = proof_redis.client()
    seed(client)
    yield client
    client.close()


@pytest.fixture
def seeded_with_password(password_redis: RedisServer) -> Iterator[redis.Redis]:
    client = password_redis.client(password=PASSWORD)
    seed(client)
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
                (
                    g["name"], g["pending"], g["last-delivered-id"],
                    sorted(c["name"] for c in client.xinfo_consumers(key, g["name"])),
                )
                for g in client.xinfo_groups(key)
            ]  # fmt: skip
            value = (client.xrange(key), groups)
        else:
            value = kind
        state[key] = (kind, value, client.ttl(key) > 0)
    return state


def run_proof(script: Path, tmp_path: Path, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The proof with ``--spawn`` and ``args``, in an environment of only ``env`` and what it needs to run."""
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp_path),
        **env,
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


def write_env_file(tmp_path: Path, lines: str) -> Path:
    """An env file as the service's: the shipped files' layout, with REDIS_URL commented out."""
    path = tmp_path / "service.env"
    path.write_text("# REDIS_URL=redis://localhost:6379/0\n" + lines, encoding="utf-8")
    return path


def plans_group(client: redis.Redis) -> tuple[str, int, list[str]]:
    """Production's group on the plans stream: last delivered id, pending count, consumers."""
    group = next(g for g in client.xinfo_groups(PLANS) if g["name"] == b"governor")
    consumers = sorted(c["name"].decode() for c in client.xinfo_consumers(PLANS, "governor"))
    return group["last-delivered-id"].decode(), int(group["pending"]), consumers


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_step1_passes_every_case_with_the_connection_from_the_env_file_alone(
    password_redis: RedisServer, seeded_with_password: redis.Redis, tmp_path: Path
) -> None:
    """No REDIS_URL anywhere: host, port and password come from the env file, to the helpers and the proposer."""
    env_file = write_env_file(
        tmp_path, f"REDIS_HOST=127.0.0.1\nREDIS_PORT={password_redis.port}\nREDIS_PASSWORD={PASSWORD}\n"
    )
    before = snapshot(seeded_with_password)
    result = run_proof(STEP1, tmp_path, {}, "--env-file", str(env_file))
    assert_all_passed(result, STEP1_CASES)
    assert snapshot(seeded_with_password) == before
    assert_run_dir_removed(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_step2_passes_every_case_on_a_private_plans_stream_and_leaves_redis_as_it_was(
    proof_redis: RedisServer, seeded: redis.Redis, tmp_path: Path
) -> None:
    """The env file names production's plans stream and group, as the shipped governor.env does; the spawned
    governor must still use the run's own, so that production's undelivered plan stays undelivered."""
    env_file = write_env_file(
        tmp_path,
        f"REDIS_HOST=127.0.0.1\nREDIS_PORT={proof_redis.port}\nSTREAM_PLANS={PLANS}\nGOV_GROUP=governor\n",
    )
    before = snapshot(seeded)
    group_before = plans_group(seeded)
    result = run_proof(STEP2, tmp_path, {}, "--env-file", str(env_file))
    assert_all_passed(result, STEP2_CASES)
    assert plans_group(seeded) == group_before == (group_before[0], 0, ["prod-host"])
    private = re.search(r"published 9 step 2 plans on (\S+):", result.stderr)
    assert private is not None, result.stderr
    assert re.fullmatch(re.escape(PLANS) + r"\.proof-[0-9a-f]{8}", private[1]), private[1]
    assert seeded.xrange(PLANS, min=f"({group_before[0]}")  # the undelivered plan is still there, after the id
    assert snapshot(seeded) == before  # the private stream and its .dlq are gone
    assert_run_dir_removed(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_step1_fails_when_the_proposer_does_not_behave_as_specified(
    proof_redis: RedisServer, seeded: redis.Redis, tmp_path: Path
) -> None:
    """P31_MAX_MULT=1.2 reaches the spawned proposer: 0.9 gives 1.2, which the proof must report, and still clean up."""
    before = snapshot(seeded)
    result = run_proof(STEP1, tmp_path, {"REDIS_URL": proof_redis.url, "P31_MAX_MULT": "1.2"})
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
    result = run_proof(STEP1, tmp_path, {"REDIS_URL": proof_redis.url})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refusing --spawn: 1 live allocation target(s) exist (e.g. ETHUSDT)" in result.stderr
    assert "spawned microservices" not in result.stderr  # refused before any daemon started
    assert snapshot(seeded) == before
    assert_run_dir_removed(tmp_path)


def test_an_env_file_that_cannot_be_read_is_a_usage_error_before_anything_starts(tmp_path: Path) -> None:
    # A closed port: should the option be ignored, the run fails at once instead of reaching some Redis.
    result = run_proof(STEP2, tmp_path, {"REDIS_URL": "redis://127.0.0.1:1/0"}, "--env-file", str(tmp_path / "x.env"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--env-file {tmp_path / 'x.env'}: not a readable file" in result.stderr
    assert result.stdout == ""  # no run began: no title, no summary
    assert_run_dir_removed(tmp_path)
