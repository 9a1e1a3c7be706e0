"""SPEC §4: a bad value stops the daemon before it touches Redis, with one line naming the variable, and exit 78."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from microservices.devtools.daemon_process import ROOT
from microservices.devtools.redis_server import RedisServer
from tests.daemons import run_once

MODULE = "microservices.allocation_target"

# One bad value of each kind of check, and each kind of malformed text.
BAD = [
    ("P31_MIN_CONF", "abc"), ("P31_MIN_CONF", "1.01"), ("P31_MIN_CONF", "0.65 # note"), ("P31_MIN_CONF", ""),
    ("P31_STALE_SEC", "0"), ("P31_MIN_MULT", "2"), ("P31_MAX_MULT", "nan"), ("P31_SCALE", "1e999"),
    ("P31_BASE", "one"), ("PROPOSE_STREAM_MAXLEN", "-1"), ("PROPOSE_KEY_TTL", "10.5"), ("LOOP_INTERVAL_SEC", "-3"),
    ("METRICS_PORT", "99999"), ("METRICS_MAX_SYMBOLS", "0"), ("P31_MAX_FUTURE_SEC", "-0.5"),
    ("REDIS_BACKOFF_MAX_SEC", "0"), ("REDIS_PORT", "port"), ("REDIS_DB", "-2"), ("REDIS_CLUSTER", "2"),
    ("REDIS_URL", "http://localhost:6379"), ("PROPOSE_STREAM_NAME", ""),
    ("PROPOSE_KEY_TTL", "9223372036854775"), ("PROPOSE_STREAM_MAXLEN", "100000000000000000000"),
    ("LOOP_INTERVAL_SEC", "1e10"), ("REDIS_BACKOFF_MAX_SEC", "1e12"), ("METRICS_ADDR", "nohost.invalid"),
    ("REDIS_URL", "redis://127.0.0.1:6399/0?bogus_opt=1"), ("REDIS_URL", "rediss://127.0.0.1:6399/0?ssl_cert_reqs=bogus"),
    ("REDIS_DB", "99999999999"), ("REDIS_SENTINELS", "127.0.0.1"), ("REDIS_SENTINELS", "10.0.0.1:1, 10.0.0.2:1"),
    ("REDIS_SENTINELS", "[::1:26379"), ("REDIS_SENTINELS", "10.0.0.1:0"), ("REDIS_SENTINEL_MASTER", "my master"),
    # well-formed, but beside the REDIS_URL that run_once sets: the sentinels would be ignored
    ("REDIS_SENTINELS", "127.0.0.1:26379"),
]  # fmt: skip


GOVERNOR = "microservices.governor"
# The governor's own variables (SPEC §4), one bad value of each kind of check.
GOVERNOR_BAD = [
    ("P31_DOWNSIZE_THRESHOLD", "0"), ("P31_DOWNSIZE_THRESHOLD", "1.5"), ("P31_MIN_FACTOR", "0"),
    ("P31_MIN_FACTOR", "1.01"), ("P31_MAX_EXTRA_COOLDOWN_SEC", "-1"), ("P31_MAX_EXTRA_COOLDOWN_SEC", "1.5"),
    ("P31_EFF_TTL_SEC", "0"), ("P31_GOV_MODE", "shadow"), ("P31_GOV_MODE", "HINT"), ("PERMIT_TTL_SEC", "0"),
    ("STREAM_PLANS", ""), ("STREAM_PLANS", "two words"), ("GOV_GROUP", " governor"), ("GOV_CONSUMER", ""),
    ("GOV_BLOCK_MS", "0"), ("GOV_BLOCK_MS", "5001"), ("GOV_CLAIM_IDLE_MS", "0"), ("GOV_MAX_DELIVERIES", "0"),
    ("GOV_PLAN_MAX_AGE_SEC", "-1"), ("GOV_EVENTS_MAXLEN", "0"), ("GOV_KILL_SCORE_CRITICAL", "1.2"),
    ("GOV_SYMBOL_COOLDOWN_SECONDS", "-1"), ("GOV_MAX_EXEC_PER_5MIN", "0"), ("GOV_MAX_EXEC_PER_HOUR", "0"),
    ("METRICS_PORT", "65536"), ("P31_MIN_CONF", "0.65 # note"), ("P31_EFF_TTL_SEC", "ten"),
]  # fmt: skip


def _connections(r: redis.Redis) -> int:
    return int(r.info("stats")["total_connections_received"])


@pytest.mark.parametrize(
    ("module", "variable", "value"),
    [(MODULE, *bad) for bad in BAD] + [(GOVERNOR, *bad) for bad in GOVERNOR_BAD],
)
def test_bad_value_exits_78_naming_it_without_touching_redis(
    r: redis.Redis, redis_server: RedisServer, module: str, variable: str, value: str
) -> None:
    before = _connections(r)
    result = run_once(module, redis_server.url, {variable: value})
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"invalid configuration: {variable}=" in lines[0]
    assert _connections(r) == before


@pytest.mark.parametrize("module", [MODULE, GOVERNOR])
def test_sentinels_with_a_cluster_exit_78_naming_them(module: str) -> None:
    """SPEC §9: REDIS_SENTINELS with REDIS_CLUSTER=1 is a contradiction, refused before any connection."""
    env = {"REDIS_SENTINELS": "127.0.0.1:1", "REDIS_CLUSTER": "1", "GOV_CONSUMER": "c"}
    result = run_once(module, None, env)
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "invalid configuration: REDIS_SENTINELS='127.0.0.1:1': cannot be used with REDIS_CLUSTER=1" in lines[0]


def test_bad_value_in_env_file_exits_78(r: redis.Redis, redis_server: RedisServer, tmp_path: Path) -> None:
    env_file = tmp_path / "allocation-target.env"
    env_file.write_text("LOOP_INTERVAL_SEC=10\nP31_MIN_CONF=0.65 # note\n")
    before = _connections(r)
    result = run_once(MODULE, redis_server.url, {}, "--env-file", str(env_file))
    assert result.returncode == 78
    assert "P31_MIN_CONF" in result.stderr and "inline comment" in result.stderr
    assert _connections(r) == before


def test_password_in_an_env_file_is_not_echoed_by_a_config_error(tmp_path: Path) -> None:
    env_file = tmp_path / "allocation-target.env"
    env_file.write_text("REDIS_PASSWORD=hunter2 # prod\n")
    result = run_once(MODULE, None, {}, "--env-file", str(env_file))
    assert result.returncode == 78
    assert "REDIS_PASSWORD" in result.stderr and "inline comment" in result.stderr
    assert "hunter2" not in result.stderr


def test_password_is_not_echoed_by_a_config_error(redis_server: RedisServer) -> None:
    result = run_once(MODULE, "redis://:s3cret-pw@127.0.0.1:1/0", {"REDIS_PASSWORD": "s3cret-pw", "P31_BASE": "x"})
    assert result.returncode == 78
    assert "s3cret-pw" not in result.stderr


def test_start_up_names_the_redis_target_but_never_the_password() -> None:
    with RedisServer(extra_args=["--requirepass", "s3cret-pw"]) as server:
        result = run_once(MODULE, f"redis://:s3cret-pw@127.0.0.1:{server.port}/0")
        assert result.returncode == 0, result.stderr
        assert f"Redis at redis://127.0.0.1:{server.port}/0" in result.stderr
        assert "s3cret-pw" not in result.stderr


@pytest.mark.parametrize("module", [MODULE, GOVERNOR])
def test_a_metrics_port_already_taken_exits_70_without_touching_redis(
    r: redis.Redis, redis_server: RedisServer, module: str
) -> None:
    """The metrics server starts before anything touches Redis: a port another process holds is a start-up failure
    a restart may cure (70, EX_SOFTWARE, not 78), said in one line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        before = _connections(r)
        result = run_once(module, redis_server.url, {"METRICS_PORT": str(taken.getsockname()[1])})
    assert result.returncode == 70, result.stderr
    assert "cannot serve metrics on 127.0.0.1:" in result.stderr
    assert _connections(r) == before


@pytest.mark.parametrize("module", ["microservices.allocation_target", "microservices.governor"])
def test_a_usage_error_exits_64_like_p31ctl(module: str) -> None:
    """Issue 12: the daemons exited 2 on a usage error and p31ctl 64; one convention, EX_USAGE, for all."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--log-format", "yaml"], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 64
    assert "error: argument --log-format: invalid choice: 'yaml'" in done.stderr


def test_a_misspelt_variable_is_warned_about_once_naming_the_closest_known_one(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    """Issue 12: ``P31_GOV_MOD=enforce`` was ignored without a word; the governor ran in hint mode."""
    done = run_once(
        GOVERNOR, redis_server.url,
        {"P31_GOV_MOD": "enforce", "P31_DOWNSIZE_TRESHOLD": "0.3", "PROPOSE_KEY_TTL": "5", "GOV_CONSUMER": "t"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warnings = [line.split(": ", 1)[1] for line in done.stderr.splitlines() if " WARNING " in line]
    assert warnings == [
        "P31_DOWNSIZE_TRESHOLD is set but governor does not read it; did you mean P31_DOWNSIZE_THRESHOLD?",
        "P31_GOV_MOD is set but governor does not read it; did you mean P31_GOV_MODE?",
        "PROPOSE_KEY_TTL is set but governor does not read it",
    ]


def test_json_logs_give_the_start_up_settings_as_an_object_with_secrets_redacted(redis_server: RedisServer) -> None:
    """Issue 12: ``--log-format json`` put the settings inside ``msg`` as a Python dict repr, useless to ``jq``."""
    url = redis_server.url.replace("redis://", "redis://default:s3cr3t-pw@")
    done = run_once(GOVERNOR, url, {"GOV_CONSUMER": "t", "P31_GOV_MODE": "enforce"}, "--log-format", "json")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]
    [start] = [r for r in records if "settings" in r]
    assert start["settings"]["P31_GOV_MODE"] == "enforce"
    assert (start["settings"]["GOV_CONSUMER"], start["settings"]["PERMIT_TTL_SEC"]) == ("t", 60)
    assert start["settings"]["REDIS_URL"] == "<redacted>"
    assert "{" not in start["msg"] and "P31_GOV_MODE=enforce" in start["msg"]
    assert "s3cr3t-pw" not in done.stderr
