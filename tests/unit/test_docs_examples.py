"""The worked examples of the integration doc are computed again with the daemons' own code, so a formula, a default
or a format that changes cannot leave the doc showing old numbers."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from microservices.allocation_target.multiplier import multiplier_for
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import EfficiencyPolicy, EfficiencyReading, classify_efficiency
from microservices.core.settings import load_settings
from microservices.governor.decision import Policy
from microservices.governor.downsize import downsize_hint
from microservices.governor.settings import GovernorSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "P3.1_STEP1_STEP2_INTEGRATION.md"
NOW = time.time()


def table_after(heading: str) -> list[list[str]]:
    """The rows (cells without backticks) of the first table under ``heading``."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().replace("`", "") for cell in line.strip("|").split("|")])
    return rows


def reading(score: str, confidence: str, policy: EfficiencyPolicy) -> EfficiencyReading:
    """A fresh reading of ``score`` and ``confidence``, classified by the shared code."""
    fields = {"efficiency_score": score, "confidence": confidence, "ts": str(NOW - 10)}
    return classify_efficiency(fields, NOW, policy)


MULTIPLIER_ROWS = table_after("### Multiplier (proposer)")
DOWNSIZE_ROWS = table_after("### Downsize hint (governor)")


def test_the_tables_are_found() -> None:
    assert len(MULTIPLIER_ROWS) >= 6 and len(DOWNSIZE_ROWS) >= 6


@pytest.mark.parametrize("row", MULTIPLIER_ROWS, ids=lambda row: f"{row[0]}|{row[1]}")
def test_each_multiplier_example_is_what_the_proposer_computes(row: list[str]) -> None:
    score_cell, settings_cell, _, multiplier, proposed = row  # proposed: from a base target of 1000.00
    score, _, rest = score_cell.partition(",")
    confidence = re.search(r"confidence ([0-9.]+)", rest)
    env = {} if settings_cell == "defaults" else dict([settings_cell.split("=", 1)])
    settings = load_settings(ProposerSettings, env)
    shown = reading(score.strip(), confidence.group(1) if confidence else "0.9", settings.efficiency_policy)
    value = multiplier_for(shown, settings.multiplier_params)
    assert (f"{value:.4f}", f"{1000.0 * value:.2f}") == (multiplier, proposed)


@pytest.mark.parametrize("row", DOWNSIZE_ROWS, ids=lambda row: row[0])
def test_each_downsize_example_is_what_the_governor_computes(row: list[str]) -> None:
    score, _, action, factor, extra = row
    settings = load_settings(GovernorSettings, {"GOV_CONSUMER": "doc"})
    hint = downsize_hint(reading(score, "0.9", settings.efficiency_policy), Policy.from_settings(settings).downsize)
    assert (hint.action.value, f"{hint.factor:.4f}", str(hint.extra_cooldown_sec)) == (action, factor, extra)
