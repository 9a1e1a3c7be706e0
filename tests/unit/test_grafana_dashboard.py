"""The Grafana dashboard's JSON model: its structure, its variables, and that every query reads metrics the daemons
really export (the end-to-end test also runs each query against a real Prometheus)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from microservices.devtools.promql import (
    DASHBOARD,
    PROMETHEUS_SERIES,
    dashboard_exprs,
    dashboard_panels,
    exported_metric_names,
    fill_grafana_variables,
    metric_names,
)

GRID_WIDTH = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana's built-in interval variables, with the values the end-to-end test gives them.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def family(name: str) -> str:
    """The metric a series name belongs to (``x_total`` -> ``x``; histogram series -> the histogram)."""
    return re.sub(r"_(total|bucket|sum|count)$", "", name)


def test_metric_names_reads_selectors_not_functions_labels_ranges_or_variables() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, instance) "
        '(rate(a_bucket{symbol=~"$symbol", x="rate(b)"}[$__rate_interval])))'
        " / on(instance) group_left(job) c:recorded offset 5m > bool 1e3 or time() - d_seconds unless vector(1)"
    )
    assert metric_names(expr) == {"a_bucket", "c:recorded", "d_seconds"}


def test_dashboard_identity_and_schema(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "p31-efficiency-daemons"
    assert dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None  # importable into any Grafana without clashing with an existing dashboard


def test_datasource_and_symbol_variables(dashboard: dict[str, Any]) -> None:
    found = variables(dashboard)
    assert set(found) == {"datasource", "symbol"}
    assert (found["datasource"]["type"], found["datasource"]["query"]) == ("datasource", "prometheus")
    symbol = found["symbol"]
    assert symbol["type"] == "query"
    assert symbol["datasource"] == DATASOURCE
    assert symbol["query"]["query"] == "label_values(p29_shadow_multiplier, symbol)"
    assert (symbol["includeAll"], symbol["multi"], symbol["allValue"]) == (True, True, ".*")


def test_panels_have_unique_ids_grid_positions_that_do_not_overlap_and_queries(dashboard: dict[str, Any]) -> None:
    panels = list(dashboard_panels(dashboard))
    assert len(panels) >= 15
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), ids
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title, grid = panel["title"], panel["gridPos"]
        assert title, panel["id"]
        assert {"h", "w", "x", "y"} <= set(grid), title
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_WIDTH, title
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{title} overlaps {cells[(x, y)]}"
                cells[(x, y)] = title
        if panel["type"] == "row":  # a heading across the grid; its panels follow it at the top level
            assert (grid["w"], grid["h"], panel["collapsed"], panel["panels"]) == (GRID_WIDTH, 1, False, []), title
            assert "targets" not in panel, title
            continue
        assert panel["datasource"] == DATASOURCE, title
        targets = panel["targets"]
        assert targets and all(target["expr"].strip() for target in targets), title
        assert all(target["datasource"] == DATASOURCE for target in targets), title
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), title


def test_every_query_names_only_metrics_the_daemons_export(dashboard: dict[str, Any]) -> None:
    exported = exported_metric_names() | PROMETHEUS_SERIES
    for expr in dashboard_exprs(dashboard):
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, sorted(names - exported))


def test_every_metric_the_daemons_export_has_a_panel(dashboard: dict[str, Any]) -> None:
    """A metric added to a daemon without a panel shows up here."""
    shown = {family(name) for expr in dashboard_exprs(dashboard) for name in metric_names(expr)}
    missing = {family(name) for name in exported_metric_names()} - shown
    assert missing == set()


def test_every_variable_a_query_uses_is_defined(dashboard: dict[str, Any]) -> None:
    values = {name: "x" for name in variables(dashboard)} | BUILTIN_VARIABLES
    for expr in dashboard_exprs(dashboard):
        filled = fill_grafana_variables(expr, values)  # KeyError for a variable nobody defines
        assert "$" not in filled, expr
    with pytest.raises(KeyError):
        fill_grafana_variables('p32_eff_factor{symbol=~"$undefined"}', values)


def test_if_enforced_rows_show_what_switching_would_change_for_both_steps(dashboard: dict[str, Any]) -> None:
    """Issue 13: a row per step, each followed by panels reading that step's "if enforced" metrics."""
    panels = list(dashboard_panels(dashboard))
    rows = [i for i, panel in enumerate(panels) if panel["type"] == "row"]
    titles = [panels[i]["title"] for i in rows]
    assert titles == ["If enforced: proposer (Step 1)", "If enforced: governor (Step 2)"]
    steps = [panels[rows[0] + 1 : rows[1]], panels[rows[1] + 1 :]]
    read = [{family(n) for p in step for t in p["targets"] for n in metric_names(t["expr"])} for step in steps]
    assert {"p29_shadow_live_usd", "p29_shadow_proposed_usd", "p29_shadow_proposal_multiplier"} <= read[0]
    assert {"p32_eff_requested_size", "p32_eff_enforce_size", "p32_eff_enforce_downsized",
            "p32_eff_extra_cooldown_blocks", "p32_eff_permit_factor"} <= read[1]  # fmt: skip
