"""The alert rules, their promtool unit tests and the example scrape config, checked with the real ``promtool``.

A missing ``promtool`` fails these tests (it is installed in CI with the ``prometheus`` package), it never skips them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from microservices.allocation_target.service import make_metrics
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.settings import load_settings
from microservices.devtools.promql import (
    ALERT_RULES,
    ALERT_TESTS,
    EXAMPLE_CONFIG,
    PROMETHEUS_SERIES,
    alert_rules,
    exported_metric_names,
    load_yaml,
    metric_names,
)
from microservices.governor.settings import HEALTH_MAX_AGE_SEC, GovernorSettings

#: Fixed by the deployment layout: the docs' runbook sections and the on-call's routing use these names.
ALERTS = (
    "P31DaemonDown", "P31ProposerNoSuccessfulLoop", "P31GovernorNoSuccessfulLoop", "P31ProposerFailOpenHigh",
    "P31GovernorFailOpenHigh", "P31GovernorDeadLetter", "P31GovernorPendingGrowing", "P31ProposerLoopSlow",
    "P31RedisErrors", "P31NoProposerLeader", "P31GovernorReplicationUnconfirmed",
)  # fmt: skip
RUNBOOK = "docs/P3.1_STEP1_STEP2_INTEGRATION.md#{anchor}"
ANNOTATIONS = {"summary", "description", "runbook"}
SEVERITIES = {"warning", "critical"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = os.environ.get("PROMTOOL_BIN") or shutil.which("promtool")
    assert binary, "promtool is not installed (Debian: apt-get install prometheus); these checks need the real tool"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


def rule_tests() -> list[dict[str, Any]]:
    """Every ``alert_rule_test`` case of the promtool test file, across its test groups."""
    return [case for group in load_yaml(ALERT_TESTS)["tests"] for case in group.get("alert_rule_test", [])]


def test_rules_file_passes_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_example_config_passes_promtool_check_config_with_the_rules_it_loads() -> None:
    result = promtool("check", "config", str(EXAMPLE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout  # it found and checked p31-alerts.yml itself


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_fail_when_a_rule_drifts(tmp_path: Path) -> None:
    """The unit tests are strict enough to catch a changed threshold (here 50 % lowered to 20 %)."""
    rules = ALERT_RULES.read_text()
    assert rules.count("> 0.5\n") == 2  # the two fail-open shares
    (tmp_path / ALERT_RULES.name).write_text(rules.replace("> 0.5\n", "> 0.2\n"))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = promtool("test", "rules", str(tmp_path / ALERT_TESTS.name))
    assert result.returncode != 0
    assert "P31ProposerFailOpenHigh" in result.stderr + result.stdout
    assert "P31GovernorFailOpenHigh" in result.stderr + result.stdout


def test_alerts_are_the_fixed_set_each_with_severity_summary_description_and_runbook() -> None:
    rules = alert_rules()
    assert [rule["alert"] for rule in rules] == list(ALERTS)
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert set(rule["annotations"]) == ANNOTATIONS, name
        assert rule["annotations"]["runbook"] == RUNBOOK.format(anchor=name.lower()), name
        assert all(rule["annotations"][key].strip() for key in ANNOTATIONS), name


def test_every_alert_has_a_firing_case_and_a_quiet_case_in_the_promtool_tests() -> None:
    """A new alert without both kinds of unit test fails here, not in production."""
    assert load_yaml(ALERT_TESTS)["rule_files"] == [ALERT_RULES.name]
    rules = {rule["alert"]: rule for rule in alert_rules()}
    firing: dict[str, int] = dict.fromkeys(rules, 0)
    quiet: dict[str, int] = dict.fromkeys(rules, 0)
    for case in rule_tests():
        name = case["alertname"]
        assert name in rules, f"a promtool case tests {name}, which is no rule"
        expected = case.get("exp_alerts") or []
        if not expected:
            quiet[name] += 1
            continue
        firing[name] += 1
        for alert in expected:
            assert alert["exp_labels"]["severity"] == rules[name]["labels"]["severity"], name
            assert set(alert["exp_annotations"]) == ANNOTATIONS, name
    assert [name for name, n in firing.items() if n == 0] == []
    assert [name for name, n in quiet.items() if n == 0] == []


def test_rule_expressions_name_only_metrics_the_daemons_export() -> None:
    exported = exported_metric_names() | PROMETHEUS_SERIES
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, (rule["alert"], sorted(names - exported))


def test_daemon_down_watches_the_jobs_the_example_config_scrapes_on_the_default_ports() -> None:
    """The rules match on job names: the example config must use exactly those, with the daemons' default ports."""
    jobs = {
        job["job_name"]: [target for static in job["static_configs"] for target in static["targets"]]
        for job in load_yaml(EXAMPLE_CONFIG)["scrape_configs"]
    }
    assert jobs == {
        "p31-allocation-target": [f"127.0.0.1:{ProposerSettings().metrics_port}"],
        "p31-governor": [f"127.0.0.1:{GovernorSettings().metrics_port}"],
    }
    assert load_yaml(EXAMPLE_CONFIG)["rule_files"] == [ALERT_RULES.name]  # next to it, as promtool resolves it
    daemon_down = next(rule for rule in alert_rules() if rule["alert"] == "P31DaemonDown")
    for job in jobs:
        assert f'absent(up{{job="{job}"}})' in daemon_down["expr"]
    down = re.search(r'up\{job=~"([^"]+)"\} == 0', daemon_down["expr"])
    assert down is not None
    assert down.group(1).split("|") == list(jobs)


def test_governor_loop_threshold_is_three_health_windows() -> None:
    rule = next(rule for rule in alert_rules() if rule["alert"] == "P31GovernorNoSuccessfulLoop")
    threshold = re.fullmatch(r"time\(\) - quantum_govern_last_success_timestamp_seconds > (\d+)\s*", rule["expr"])
    assert threshold is not None, rule["expr"]
    assert float(threshold.group(1)) == 3 * HEALTH_MAX_AGE_SEC


@pytest.mark.parametrize("interval", ["7.5", "60"])
def test_proposer_exports_its_configured_loop_interval(interval: str) -> None:
    """The loop alerts divide by ``p29_shadow_loop_interval_seconds``: it must carry LOOP_INTERVAL_SEC from the
    start, before Redis has answered."""
    settings = load_settings(ProposerSettings, {"LOOP_INTERVAL_SEC": interval})
    metrics = make_metrics(settings)
    assert metrics.registry.get_sample_value("p29_shadow_loop_interval_seconds") == float(interval)
