"""``p31ctl plan``, ``governor`` and ``dlq`` against a real Redis on which the real governor decided real plans."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
import redis

from microservices.devtools.redis_server import RedisServer
from microservices.ops.cli import main
from tests.daemons import run_once
from tests.integration.test_p31ctl import p31ctl
from tests.redis_util import hset_text, stream_entries

GOVERNOR = "microservices.governor"
PLANS = "quantum:stream:apply.plan"
DLQ = PLANS + ".dlq"
ACTIONS = DLQ + ".actions"
CONSUMER = "test-gov"
SYMBOL = "P31TESTA"


def ctl(monkeypatch: pytest.MonkeyPatch, url: str, *argv: str) -> tuple[int, str, str]:
    """p31ctl in this process (fast), against ``url``."""
    monkeypatch.setenv("REDIS_URL", url)
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def ctl_json(monkeypatch: pytest.MonkeyPatch, url: str, *argv: str) -> Any:
    status, out, err = ctl(monkeypatch, url, *argv, "--json")
    assert status == 0, err
    return json.loads(out)


def plan(r: redis.Redis, plan_id: str, **fields: str) -> str:
    entry = {"plan_id": plan_id, "symbol": SYMBOL, "action": "OPEN_LONG", "decision": "EXECUTE", "qty": "2"}
    entry.update(fields)
    return r.xadd(PLANS, entry).decode()  # type: ignore[arg-type,union-attr]


def decide_all(url: str) -> None:
    result = run_once(GOVERNOR, url, {"GOV_CONSUMER": CONSUMER})
    assert result.returncode == 0, result.stderr


@pytest.fixture
def decided(r: redis.Redis, redis_server: RedisServer) -> dict[str, str]:
    """A permit (downsized), a kill_score block, a skip and a dead letter decided by the governor, then one more
    plan of the same symbol published after it ran."""
    hset_text(r, f"quantum:capital:efficiency:{SYMBOL}", {"efficiency_score": "0.2", "confidence": "0.9",
                                                         "ts": str(time.time())})  # fmt: skip
    ids = {
        "p-ok": plan(r, "p-ok"),
        "p-kill": plan(r, "p-kill", kill_score="0.9"),
        "p-hold": plan(r, "p-hold", decision="HOLD"),
        "bad": r.xadd(PLANS, {"symbol": SYMBOL, "decision": "EXECUTE"}).decode(),  # type: ignore[union-attr]
    }
    decide_all(redis_server.url)
    ids["p-late"] = plan(r, "p-late")
    return ids


def test_plan_shows_a_permit_with_every_check_passed(
    decided: dict[str, str], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = ctl_json(monkeypatch, redis_server.url, "plan", "p-ok")
    assert (view["outcome"], view["reason"], view["source"]) == ("permit", "permitted", "outcome marker")
    assert (view["entry_id"], view["consumer"]) == (decided["p-ok"], CONSUMER)
    assert {c["status"] for c in view["checks"]} == {"pass"}
    permit = json.loads(view["permit"]["value"])
    assert (permit["eff_action"], permit["downsize_factor"], permit["extra_cooldown_sec"]) == (
        "DOWNSIZE",
        "0.4444",
        "96",
    )
    assert [(e["event"], e["reason"], e["source_id"]) for e in view["events"]] == [
        ("permit", "permitted", decided["p-ok"])
    ]


def test_plan_of_a_block_names_the_deciding_check_and_its_values(
    decided: dict[str, str], redis_server: RedisServer
) -> None:
    result = p31ctl(redis_server.url, "plan", "p-kill")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"plan p-kill: block kill_score (outcome marker by {CONSUMER}; entry {decided['p-kill']})"
    kill = next(line for line in lines if line.startswith("kill_score below"))
    assert kill.split(None, 4)[3:] == ["FAIL", "kill_score=0.9; GOV_KILL_SCORE_CRITICAL=0.8 -> kill_score"]
    assert next(line for line in lines if line.startswith("symbol cooldown")).split() == [
        "symbol",
        "cooldown",
        "not",
        "reached",
    ]
    assert any(line.startswith("block quantum:governor:block:p-kill: ") for line in lines)


def test_plan_not_delivered_yet_shows_what_the_governor_would_decide_now(
    decided: dict[str, str], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = ctl_json(monkeypatch, redis_server.url, "plan", "p-late")
    assert (view["outcome"], view["reason"], view["source"]) == ("not delivered", "cooldown", "would be now")
    cooldown = next(c for c in view["checks"] if c["check"] == "symbol cooldown")
    assert cooldown["status"] == "FAIL"
    assert cooldown["value"].startswith("now: 6") and "GOV_SYMBOL_COOLDOWN_SECONDS=60" in cooldown["value"]
    skip = ctl_json(monkeypatch, redis_server.url, "plan", "p-hold")
    assert (skip["outcome"], skip["reason"]) == ("skip", "not_execute")
    assert [c["status"] for c in skip["checks"][:4]] == ["pass", "pass", "FAIL", "not reached"]


def test_plan_unknown_exits_64_saying_where_it_looked(
    decided: dict[str, str], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, err = ctl(monkeypatch, redis_server.url, "plan", "P-OK")
    assert (status, out) == (64, "")
    assert "no plan with plan_id 'P-OK'" in err and "plan_ids are case-sensitive" in err


def test_governor_shows_group_kill_switch_dead_letters_outcomes_and_gates(
    decided: dict[str, str], r: redis.Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    r.set("quantum:kill", "reduce")
    view = ctl_json(monkeypatch, redis_server.url, "governor", "--since", "10m")
    group = view["group"]
    assert (group["missing"], group["pending"], group["lag"]) == (None, 0, 1)
    assert [(c["name"], c["pending"]) for c in group["consumers"]] == [(CONSUMER, 0)]
    assert view["kill_switch"] == {"key": "quantum:kill", "value": "reduce", "state": "reduce_only"}
    assert view["dead_letters"] == 1
    assert view["newest_dead_letters"][0]["reason"] == "invalid_plan"
    assert {(o["event"], o["reason"]): o["count"] for o in view["outcomes"]} == {
        ("permit", "permitted"): 1, ("block", "kill_score"): 1, ("skip", "not_execute"): 1,
        ("dead_letter", "invalid_plan"): 1,
    }  # fmt: skip
    [gate] = view["gates"]
    assert (gate["symbol"], gate["permits_5min"], gate["permits_hour"], gate["problem"]) == (SYMBOL, 1, 1, None)
    assert 50 < gate["cooldown_left_sec"] <= 60

    table = p31ctl(redis_server.url, "governor")
    assert table.returncode == 0, table.stderr
    assert "consumer group governor: 0 pending (oldest -), lag 1" in table.stdout
    assert "kill switch quantum:kill: REDUCE ONLY: non-reducing plans blocked (value 'reduce')" in table.stdout


def test_governor_without_a_group_says_so(r: redis.Redis, redis_server: RedisServer) -> None:
    result = p31ctl(redis_server.url, "governor")
    assert result.returncode == 0, result.stderr
    assert "consumer group governor: the plans stream does not exist yet" in result.stdout


def dead_letter(r: redis.Redis, plan_id: str) -> str:
    """A dead letter as the governor writes one for a plan delivered too often."""
    fields = {"plan_id": plan_id, "symbol": SYMBOL, "action": "OPEN_LONG", "decision": "EXECUTE", "qty": "1",
              "reason": "max_deliveries", "source_id": "1-1", "deliveries": "6"}  # fmt: skip
    return r.xadd(DLQ, fields).decode()  # type: ignore[arg-type,union-attr]


def test_dlq_requeue_once_then_refuse_and_drop_recording_each_action(
    r: redis.Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    invalid = r.xadd(DLQ, {"symbol": SYMBOL, "reason": "invalid_plan", "source_id": "1-2", "deliveries": "1"}).decode()  # type: ignore[union-attr]
    dead = dead_letter(r, "p-dead")
    listed = ctl_json(monkeypatch, redis_server.url, "dlq", "list")
    assert [e["id"] for e in listed["entries"]] == [dead, invalid] and listed["total"] == 2
    assert listed["entries"][1]["would_be_invalid"] == "plan_id missing"

    status, out, err = ctl(monkeypatch, redis_server.url, "dlq", "requeue", dead)
    assert status == 0, err
    [requeued] = stream_entries(r, PLANS)
    assert requeued == {"plan_id": "p-dead", "symbol": SYMBOL, "action": "OPEN_LONG", "decision": "EXECUTE", "qty": "1"}
    assert out.startswith(f"{dead}: requeued: as entry ")

    again, out, err = ctl(monkeypatch, redis_server.url, "dlq", "requeue", dead, invalid)
    assert (again, out) == (64, "")
    assert err.startswith(f"{dead}: already_requeued: requeued before: ")
    assert f"{invalid}: still_invalid: it would be invalid_plan again (plan_id missing); --force requeues it" in err
    assert r.xlen(PLANS) == 1

    assert ctl(monkeypatch, redis_server.url, "dlq", "drop", invalid)[0] == 0
    assert ctl(monkeypatch, redis_server.url, "dlq", "drop", invalid)[0] == 64
    assert r.xlen(DLQ) == 1
    actions = stream_entries(r, ACTIONS)
    assert [(a["action"], a["dlq_id"], a["plan_id"]) for a in actions] == [
        ("requeue", dead, "p-dead"), ("drop", invalid, ""),
    ]  # fmt: skip

    shown = ctl_json(monkeypatch, redis_server.url, "dlq", "show", dead)
    assert shown["requeued"] is not None and shown["requeued"].endswith(requeued_id(r))

    decide_all(redis_server.url)  # the requeued plan is decided afresh
    assert ctl_json(monkeypatch, redis_server.url, "plan", "p-dead")["outcome"] == "permit"


def requeued_id(r: redis.Redis) -> str:
    entries: list[tuple[bytes, Any]] = r.xrange(PLANS)  # type: ignore[assignment]
    return entries[0][0].decode()


def test_dlq_requeue_races_give_one_new_entry(
    r: redis.Redis, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two operators requeueing the same dead letter at once: the guard lets exactly one through."""
    from concurrent.futures import ThreadPoolExecutor

    from microservices.governor.settings import GovernorSettings
    from microservices.ops.dlq import Result, requeue

    dead = dead_letter(r, "p-race")
    settings = GovernorSettings(redis_url=redis_server.url)

    def attempt(_: int) -> Result:
        client = redis_server.client()
        try:
            return requeue(client, settings, dead, force=False, now=time.time()).result
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert results.count(Result.REQUEUED) == 1
    assert set(results) == {Result.REQUEUED, Result.ALREADY_REQUEUED}
    assert r.xlen(PLANS) == 1
