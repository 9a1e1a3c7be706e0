"""End to end with a real Prometheus: both daemons run as processes against a real Redis, Prometheus scrapes them
every second with the example config's job names and loads the alert rules; then the metrics, the rules, an alert
and every dashboard query are checked through Prometheus's own HTTP API.

A missing ``prometheus`` binary fails this module (it is installed in CI), it never skips it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import yaml

from microservices.allocation_target.multiplier import multiplier_for
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import classify_efficiency, efficiency_key
from microservices.devtools.prometheus_server import PrometheusServer
from microservices.devtools.promql import (
    ALERT_RULES,
    DASHBOARD,
    EXAMPLE_CONFIG,
    alert_rules,
    dashboard_exprs,
    dashboard_panels,
    fill_grafana_variables,
    load_yaml,
    metric_names,
)
from microservices.devtools.redis_server import RedisServer
from microservices.governor.downsize import DownsizeParams, EffAction, downsize_hint
from microservices.governor.metrics import eff_apply_labels
from microservices.governor.settings import GovernorSettings
from tests.daemons import Daemon, daemon_env
from tests.redis_util import hset_text

pytestmark = pytest.mark.slow

SYMBOL = "P31E2E"
PLANS = "quantum:stream:apply.plan"
EFFICIENCY = {"efficiency_score": "0.3", "confidence": "0.9"}
#: What the dashboard's variables stand for in the queries sent to Prometheus.
GRAFANA_VALUES = {
    "datasource": "unused",
    "symbol": SYMBOL,
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
PROPOSER_JOB, GOVERNOR_JOB = "p31-allocation-target", "p31-governor"


@dataclass
class Stack:
    redis: redis.Redis
    proposer: Daemon
    governor: Daemon
    prometheus: PrometheusServer

    def value(self, expr: str) -> float:
        """The value of an instant query that must answer exactly one sample."""
        result = self.prometheus.query_vector(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:g}s: {what}")
        time.sleep(0.2)


def scrape_config(ports: dict[str, int]) -> str:
    """The example config with its job names, scraping the test's daemons every second and loading the rules."""
    config = load_yaml(EXAMPLE_CONFIG)
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ALERT_RULES)]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    return yaml.safe_dump(config)


def publish(r: redis.Redis, **fields: str) -> None:
    r.xadd(PLANS, dict(fields))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("prometheus-e2e")
    r = redis_server.client()
    r.flushall()
    r.hset(f"quantum:allocation:target:{SYMBOL}", "target_usd", "1000")
    hset_text(r, efficiency_key(SYMBOL), EFFICIENCY | {"ts": str(time.time())})
    # a close (permit, never downsized), an open (permit, downsized), the same open again (blocked: cooldown), a HOLD
    publish(r, plan_id="e2e-close", symbol=SYMBOL, action="CLOSE_LONG", decision="EXECUTE", qty="1")
    publish(r, plan_id="e2e-open", symbol=SYMBOL, action="OPEN_LONG", decision="EXECUTE", qty="1")
    publish(r, plan_id="e2e-again", symbol=SYMBOL, action="OPEN_LONG", decision="EXECUTE", qty="1")
    publish(r, plan_id="e2e-hold", symbol=SYMBOL, action="OPEN_LONG", decision="HOLD")
    proposer = Daemon("microservices.allocation_target", daemon_env(redis_server.url, {"LOOP_INTERVAL_SEC": "1"}),
                      logs / "proposer.log")  # fmt: skip
    try:
        governor = Daemon("microservices.governor", daemon_env(redis_server.url, {"GOV_CONSUMER": "e2e"}),
                          logs / "governor.log")  # fmt: skip
        try:
            proposed = f'symbol="{SYMBOL}"'
            proposer.wait_for(lambda: proposer.metric("p29_shadow_multiplier", proposed) is not None, what="a proposal")
            skipped = 'event="skip",reason="not_execute"'  # the last of the four plans
            governor.wait_for(lambda: governor.metric("quantum_govern_outcomes_total", skipped) == 1, what="decisions")
            config = scrape_config({PROPOSER_JOB: proposer.port, GOVERNOR_JOB: governor.port})
            with PrometheusServer(config) as prometheus:
                yield Stack(r, proposer, governor, prometheus)
        finally:
            governor.close()
    finally:
        proposer.close()
        r.close()


@pytest.fixture(scope="module")
def scraped(stack: Stack) -> Stack:
    """The stack once Prometheus has scraped both daemons successfully."""

    def both_up() -> bool:
        targets = stack.prometheus.api("targets")["data"]["activeTargets"]
        return {(t["labels"]["job"], t["health"]) for t in targets} == {(PROPOSER_JOB, "up"), (GOVERNOR_JOB, "up")}

    wait_until(both_up, "both targets up")
    wait_until(lambda: stack.prometheus.query_vector(f'p29_shadow_multiplier{{symbol="{SYMBOL}"}}'), "a sample")
    return stack


def test_both_daemons_are_scraped_under_the_example_config_job_names(scraped: Stack) -> None:
    up = {sample["metric"]["job"]: sample["value"][1] for sample in scraped.prometheus.query_vector("up")}
    assert up == {PROPOSER_JOB: "1", GOVERNOR_JOB: "1"}


def test_proposer_metrics_reach_prometheus_with_the_expected_multiplier(scraped: Stack) -> None:
    settings = ProposerSettings()
    reading = classify_efficiency(EFFICIENCY | {"ts": str(time.time())}, time.time(), settings.efficiency_policy)
    expected = multiplier_for(reading, settings.multiplier_params)
    assert expected != 1.0  # the score acts: the check below would pass on a fail-open reading otherwise
    assert scraped.value(f'p29_shadow_multiplier{{symbol="{SYMBOL}"}}') == pytest.approx(expected)
    assert scraped.value(f'p29_shadow_eff_score{{symbol="{SYMBOL}"}}') == pytest.approx(0.3)
    assert scraped.value("p29_shadow_loop_interval_seconds") == 1.0  # LOOP_INTERVAL_SEC as configured
    assert scraped.value("p29_shadow_symbols") == 1.0
    assert scraped.value('p29_shadow_proposed_total{reason="ok"}') >= 1


def test_governor_permit_series_reach_prometheus(scraped: Stack) -> None:
    settings = GovernorSettings()
    reading = classify_efficiency(EFFICIENCY | {"ts": str(time.time())}, time.time(), settings.efficiency_policy)
    params = DownsizeParams(settings.downsize_threshold, settings.min_factor, settings.max_extra_cooldown_sec)
    hint = downsize_hint(reading, params)
    assert hint.action is EffAction.DOWNSIZE
    applied = {
        (s["metric"]["action"], s["metric"]["reason"]): float(s["value"][1])
        for s in scraped.prometheus.query_vector("p32_eff_apply_total")
    }
    expected = dict.fromkeys(eff_apply_labels("hint"), 0.0) | {("DOWNSIZE", "ok"): 1.0, ("NONE", "reduce_only"): 1.0}
    assert applied == expected
    assert scraped.value(f'p32_eff_factor{{symbol="{SYMBOL}"}}') == pytest.approx(hint.factor)  # the open came last
    assert scraped.value(f'quantum_govern_allow_total{{symbol="{SYMBOL}"}}') == 2.0
    assert scraped.value(f'quantum_govern_block_total{{symbol="{SYMBOL}",reason="cooldown"}}') == 1.0
    assert scraped.value("quantum_govern_plan_latency_seconds_count") == 4.0


def test_every_alert_rule_is_loaded_and_evaluates_without_error(scraped: Stack) -> None:
    expected = [rule["alert"] for rule in alert_rules()]

    def rules() -> list[dict[str, Any]]:
        groups = scraped.prometheus.api("rules", type="alert")["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    assert [rule["name"] for rule in rules()] == expected
    before = {rule["name"]: rule["lastEvaluation"] for rule in rules()}  # maybe from before the first scrape
    wait_until(lambda: all(rule["lastEvaluation"] != before[rule["name"]] for rule in rules()), "rules evaluated again")
    for rule in rules():
        assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), rule


def test_daemon_down_resolves_once_both_jobs_are_scraped(scraped: Stack) -> None:
    """Before the first scrape ``absent(up{job=...})`` holds; with the example's job names it then clears."""

    def daemon_down() -> list[dict[str, Any]]:
        alerts = scraped.prometheus.api("alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "P31DaemonDown"]

    wait_until(lambda: not daemon_down(), "no P31DaemonDown alert")
    assert daemon_down() == []


def test_a_dead_letter_fires_its_alert_in_prometheus(scraped: Stack) -> None:
    wanted = f'quantum_govern_dead_letter_total{{job="{GOVERNOR_JOB}",reason="invalid_plan"}}'
    wait_until(lambda: scraped.prometheus.query_vector(wanted), "the dead-letter counter scraped at 0")
    assert scraped.value(wanted) == 0.0
    publish(scraped.redis, symbol=SYMBOL, action="OPEN_LONG", decision="EXECUTE")  # no plan_id: a dead letter

    def firing() -> list[dict[str, Any]]:
        alerts = scraped.prometheus.api("alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "P31GovernorDeadLetter" and a["state"] == "firing"]

    wait_until(firing, "P31GovernorDeadLetter firing")
    (alert,) = firing()
    assert {k: alert["labels"][k] for k in ("job", "reason", "severity")} == {
        "job": GOVERNOR_JOB, "reason": "invalid_plan", "severity": "warning"
    }  # fmt: skip
    assert alert["annotations"]["runbook"] == "docs/P3.1_STEP1_STEP2_INTEGRATION.md#p31governordeadletter"


def test_every_rule_and_dashboard_query_is_accepted_by_prometheus(scraped: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [rule["expr"] for rule in alert_rules()]
    queries += [fill_grafana_variables(expr, GRAFANA_VALUES) for expr in dashboard_exprs(dashboard)]
    failed = {expr: answer for expr in queries if (answer := scraped.prometheus.query(expr))["status"] != "success"}
    assert failed == {}


def test_every_metric_the_rules_and_dashboard_name_has_series_in_prometheus(scraped: Stack) -> None:
    """What the daemons really serve, as scraped: no query reads a metric that never arrives."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs(dashboard)
    names = sorted({name for expr in exprs for name in metric_names(expr)})
    assert len(names) > 20
    missing = [name for name in names if not scraped.prometheus.query_vector(f"count({name})")]
    assert missing == []


def test_prometheus_log_has_no_rule_or_scrape_errors(scraped: Stack) -> None:
    log = scraped.prometheus.log()
    assert "level=error" not in log, log[-3000:]


def test_if_enforced_counters_and_panels_answer_on_the_real_prometheus(scraped: Stack) -> None:
    """The fixture's close (qty 1, never downsized) and open (qty 1, score 0.3: factor 2/3) were permitted; the
    repeated open was blocked by the base cooldown, which owes nothing to the extra one. Every "If enforced" panel
    query answers with samples, not only without an error."""
    wanted = 'p32_eff_requested_size_total{unit="qty"}'
    wait_until(lambda: scraped.prometheus.query_vector(wanted), "the size counters scraped")
    assert scraped.value(wanted) == 2.0
    assert scraped.value('p32_eff_enforce_size_total{unit="qty"}') == pytest.approx(1 + 0.3 / 0.45)
    assert scraped.value("p32_eff_enforce_downsized_total") == 1.0
    assert scraped.value("p32_eff_extra_cooldown_blocks_total") == 0.0
    assert scraped.value('p29_shadow_live_usd{reason="ok"}') == 1000.0
    assert scraped.value('p29_shadow_proposed_usd{reason="ok"}') == pytest.approx(800.0)
    panels = list(dashboard_panels(json.loads(DASHBOARD.read_text())))
    first_row = next(i for i, panel in enumerate(panels) if panel["title"].startswith("If enforced"))
    targets = [target for panel in panels[first_row:] for target in panel.get("targets", [])]
    exprs = [fill_grafana_variables(target["expr"], GRAFANA_VALUES) for target in targets]

    def all_answer() -> bool:
        return all(scraped.prometheus.query_vector(expr) for expr in exprs)

    wait_until(all_answer, "every If enforced query has samples")
