"""``p31ctl report proposer|governor --since 7d --prometheus URL`` against a real Prometheus holding a week of
history, backfilled with ``promtool`` from samples the daemons' own code computed over simulated time; and the
governor's stream fallback saying how far back the events stream reaches.

The history: 160 hourly rounds ending an hour ago. Each round the governor decides, with its own ``decide`` and
accounting, an open of SYM (score 0.3: factor 2/3, extra cooldown 84 s), the same open 70 s later (the base 60 s
cooldown is over, the extra one is not: permitted in hint mode, blocked by enforce), a close (never downsized) and a
plan with a critical kill_score; the proposer runs a real loop at that time over three symbols.
"""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.allocation_target.proposer import Proposer
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import classify_efficiency, efficiency_key
from microservices.core.settings import load_settings
from microservices.devtools.metrics_backfill import OpenMetricsHistory, create_blocks
from microservices.devtools.prometheus_server import PrometheusServer
from microservices.governor.decision import Facts, Policy, decide
from microservices.governor.gate import EMPTY_GATE, GateState
from microservices.governor.metrics import BatchTally, GovernorMetrics
from microservices.governor.plan import Plan, parse_plan
from microservices.governor.records import EVENTS_STREAM
from microservices.governor.settings import GovernorSettings
from microservices.ops.cli import main
from tests.redis_util import hset_text

pytestmark = pytest.mark.slow

ROUNDS = 160
EFFICIENCY = {"efficiency_score": "0.3", "confidence": "0.9"}
#: (seconds into the round, plan fields)
ROUND_PLANS = (
    (0, {"symbol": "SYM", "action": "OPEN_LONG", "qty": "3", "notional": "300"}),
    (70, {"symbol": "SYM", "action": "OPEN_LONG", "qty": "3", "notional": "300"}),
    (80, {"symbol": "CLS", "action": "CLOSE_LONG", "qty": "1", "notional": "100"}),
    (90, {"symbol": "RISKY", "action": "OPEN_LONG", "qty": "2", "notional": "200", "kill_score": "0.9"}),
)
PROPOSER_TARGETS = (("AUSDT", "1000", "0.9"), ("BUSDT", "500", "0.3"), ("CUSDT", "200", None))


def governor_history(history: OpenMetricsHistory, start: float) -> None:
    settings = load_settings(GovernorSettings, {"GOV_CONSUMER": "backfill"})
    policy = Policy.from_settings(settings)
    metrics = GovernorMetrics(CollectorRegistry(), settings.mode, settings.metrics_max_symbols)
    history.snapshot(metrics.registry, start, {"job": "p31-governor"})
    gates: dict[str, GateState] = {}
    for n in range(ROUNDS):
        round_start, tally = start + 3600 * (n + 1), BatchTally()
        for offset, fields in ROUND_PLANS:
            now = round_start + offset
            plan = parse_plan(f"{int(now * 1000)}-0", {"plan_id": f"r{n}-{offset}", "decision": "EXECUTE", **fields})
            assert isinstance(plan, Plan)
            reading = classify_efficiency(EFFICIENCY | {"ts": str(now)}, now, settings.efficiency_policy)
            facts = Facts(now=now, reading=reading, gate=gates.get(plan.symbol, EMPTY_GATE))
            outcome = decide(plan, facts, policy)
            if outcome.gate_after is not None:
                gates[plan.symbol] = outcome.gate_after
            tally.add_outcome(plan, outcome, 0.01)
        metrics.record(tally, round_start + 100)
        history.snapshot(metrics.registry, round_start + 100, {"job": "p31-governor"})


def proposer_history(history: OpenMetricsHistory, r: redis.Redis, start: float) -> None:
    """No snapshot before the first loop: the report counts what a series first shows inside the window as growth."""
    metrics = ProposerMetrics(CollectorRegistry(), 10)
    for symbol, target, _ in PROPOSER_TARGETS:
        hset_text(r, f"quantum:allocation:target:{symbol}", {"target_usd": target})
    for n in range(ROUNDS):
        now = start + 3600 * (n + 1)
        for symbol, _, score in PROPOSER_TARGETS:
            if score is not None:
                hset_text(r, efficiency_key(symbol), {"efficiency_score": score, "confidence": "0.9", "ts": str(now)})
        Proposer(r, load_settings(ProposerSettings, {}), metrics, clock=lambda: now).run_loop(threading.Event())  # noqa: B023
        history.snapshot(metrics.registry, now + 1, {"job": "p31-allocation-target"})


@pytest.fixture(scope="module")
def prometheus(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    r = redis_server.client()
    r.flushall()
    start = time.time() - 3600 * (ROUNDS + 1)
    governor, proposer = OpenMetricsHistory(), OpenMetricsHistory()
    governor_history(governor, start)
    proposer_history(proposer, r, start)
    server = PrometheusServer("global: {}\n")
    create_blocks(governor, server.data_dir)
    create_blocks(proposer, server.data_dir)
    with server:
        yield server
    r.close()


def report(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(["report", *args], out=out, err=out)
    return status, out.getvalue()


def test_governor_report_answers_a_week_from_prometheus_with_exact_totals(prometheus: PrometheusServer) -> None:
    status, text = report("governor", "--since", "7d", "--prometheus", prometheus.url, "--json")
    assert status == 0, text
    document = json.loads(text)
    outcomes = {(o["event"], o["reason"]): o["count"] for o in document["outcomes"]}
    assert outcomes == {("permit", "permitted"): 3 * ROUNDS, ("block", "kill_score"): ROUNDS}
    hints = {(h["action"], h["reason"]): h["count"] for h in document["permits_by_hint"]}
    assert hints == {("DOWNSIZE", "ok"): 2 * ROUNDS, ("NONE", "reduce_only"): ROUNDS}
    assert document["sizes"]["requested"] == {"qty": 7.0 * ROUNDS, "notional": 700.0 * ROUNDS}
    assert document["sizes"]["enforced"] == pytest.approx({"qty": 5.0 * ROUNDS, "notional": 500.0 * ROUNDS})
    assert (document["would_downsize"], document["extra_cooldown_blocks"]) == (2 * ROUNDS, ROUNDS)
    assert document["blocked_symbols"] == [{"symbol": "RISKY", "blocks": ROUNDS}]
    factors = {b["le"]: b["count"] for b in document["factor_buckets"]}
    assert (factors["0.6"], factors["0.7"], factors["0.99"], factors["1.0"]) == (0, 2 * ROUNDS, 2 * ROUNDS, 3 * ROUNDS)
    assert document["most_downsized"] == [{"symbol": "SYM", "mean_factor": pytest.approx(0.3 / 0.45)}]
    assert document["partial"] is False
    status, table = report("governor", "--since", "7d", "--prometheus", prometheus.url)
    assert status == 0 and "plans the extra cooldown would block: 160" in table
    print(table)


def test_proposer_report_answers_a_week_from_prometheus_with_exact_totals(prometheus: PrometheusServer) -> None:
    status, text = report("proposer", "--since", "7d", "--prometheus", prometheus.url, "--json")
    assert status == 0, text
    document = json.loads(text)
    assert (document["loops"], document["proposals"]) == (ROUNDS, 3 * ROUNDS)
    assert {r["reason"]: r["count"] for r in document["reasons"]} == {"ok": 2 * ROUNDS, "missing_eff": ROUNDS}
    buckets = {b["le"]: b["count"] for b in document["multiplier_buckets"]}
    assert (buckets["0.7"], buckets["0.8"], buckets["1.0"], buckets["1.4"], buckets["+Inf"]) == (
        0, ROUNDS, 2 * ROUNDS, 3 * ROUNDS, 3 * ROUNDS
    )  # fmt: skip
    assert document["latest"] == pytest.approx({"live": 1700.0, "proposed": 2000.0, "change": 300.0})
    assert document["mean"] == pytest.approx({"live": 1700.0, "proposed": 2000.0, "change": 300.0})
    status, table = report("proposer", "--since", "7d", "--prometheus", prometheus.url)
    assert status == 0 and f"{3 * ROUNDS} proposals in {ROUNDS} loops" in table
    print(table)


def test_governor_stream_fallback_says_how_far_back_the_events_reach(
    r: redis.Redis, redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    for n in range(5):
        r.xadd(EVENTS_STREAM, {"event": "block", "plan_id": f"p{n}", "symbol": "SYM", "reason": "cooldown"},
               id=f"{int((now - 7200 + n) * 1000)}-0")  # fmt: skip
    r.xtrim(EVENTS_STREAM, maxlen=3, approximate=False)  # as GOV_EVENTS_MAXLEN does: the two oldest are gone
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    status, text = report("governor", "--since", "7d", "--json")
    assert status == 0, text
    document = json.loads(text)
    assert document["partial"] is True, document
    assert document["covered_from"] == pytest.approx(now - 7200 + 2, abs=0.01)
    assert document["outcomes"] == [{"event": "block", "reason": "cooldown", "count": 3}]
    status, table = report("governor", "--since", "7d")
    assert "PARTIAL: the events stream is trimmed" in table and "reaches back to" in table
