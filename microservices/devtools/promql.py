"""PromQL of the alert rules and the Grafana dashboard, checked against what the daemons really export.

A rule or panel that names a metric nobody exports evaluates to nothing, silently: it never fires, it draws an
empty graph. The tests therefore take every metric name out of every expression (:func:`metric_names`) and compare
them with the names the daemons' metric classes register (:func:`exported_metric_names`); the end-to-end test also
sends each expression, with Grafana's variables filled in (:func:`fill_grafana_variables`), to a real Prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.devtools.daemon_process import ROOT
from microservices.governor.metrics import GovernorMetrics

ALERT_RULES = ROOT / "deploy" / "prometheus" / "p31-alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "p31-alerts.test.yml"
EXAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.example.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "p31-dashboard.json"

#: Series Prometheus makes itself rather than scrapes; the only one the rules or dashboard may name.
PROMETHEUS_SERIES = frozenset({"up"})

#: Words of PromQL that look like a metric name but are operators or modifiers.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "inf",
     "nan", "start", "end"}
)  # fmt: skip
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'" r"|`[^`]*`")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
#: An identifier, whole, not part of a number or a ``$variable``, and not a function call.
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
#: Grafana's ``label_values(metric, label)`` template query.
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$")
#: Grafana's variable references: ``$name``, ``${name}``, ``${name:format}``.
_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w]+)?\}|\$(\w+)")


def metric_names(expr: str) -> frozenset[str]:
    """The metric names an expression selects: its identifiers once strings, label matchers, ranges and label
    lists are taken out, minus function calls and keywords."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    return frozenset(name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS)


def exported_metric_names() -> frozenset[str]:
    """Every series name the two daemons can export, as Prometheus stores it (``_total`` for counters; ``_bucket``,
    ``_sum`` and ``_count`` for histograms), read from their metric classes' registries."""
    registries = (
        ProposerMetrics(CollectorRegistry(), max_symbols=1).registry,
        GovernorMetrics(CollectorRegistry(), mode="hint", max_symbols=1).registry,
    )
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            if family.type not in suffixes:
                raise ValueError(f"{family.name}: metric type {family.type} has no known series names")
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return frozenset(names)


# --- alert rules ------------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return loaded


def alert_rules(path: Path = ALERT_RULES) -> list[dict[str, Any]]:
    """The alerting rules of a rules file, in order (recording rules left out)."""
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"] if "alert" in rule]


# --- Grafana dashboard ----------------------------------------------------------------------------------------------


def dashboard_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, also those folded inside a collapsed row."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs(dashboard: Mapping[str, Any]) -> list[str]:
    """The PromQL of every panel target and of every query template variable (``label_values(m, l)`` gives ``m``)."""
    exprs = [
        str(target["expr"]) for panel in dashboard_panels(dashboard) for target in panel.get("targets", [])
        if "expr" in target
    ]  # fmt: skip
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found = _LABEL_VALUES.match(text)
            exprs.append(found.group(1) if found else text)
    return exprs


def fill_grafana_variables(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with each Grafana variable replaced by ``values[name]``; an unknown variable raises KeyError."""
    return _VARIABLE.sub(lambda found: values[found.group(1) or found.group(2)], expr)
