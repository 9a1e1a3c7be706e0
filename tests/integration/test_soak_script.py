"""``scripts/soak.py`` (issue 5 item 6) run with tiny parameters, so that it cannot rot between the long runs; and its
verdict, which judges the long runs, on samples made up to show growth and no growth."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "soak.py"
TINY = [
    "--symbols", "40", "--loops", "12", "--sample-loops", "4", "--interval", "0.1",
    "--plans", "600", "--plan-symbols", "30", "--sample-plans", "150", "--chunk", "50", "--backlog", "200",
]  # fmt: skip
CHECKS = (
    "proposer memory flat", "proposer file descriptors steady",
    "governor memory flat", "governor file descriptors steady",
)  # fmt: skip
MB = 1024 * 1024


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soak", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_runs_both_daemons_samples_them_and_prints_a_verdict_per_check() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY], capture_output=True, text=True, timeout=280, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    loops = [int(n) for n in re.findall(r"^\s+loop\s+(\d+)\s+rss\s+[\d.]+ MB\s+fds\s+\d+", out, re.M)]
    plans = [int(n) for n in re.findall(r"^\s+plan\s+(\d+)\s+rss\s+[\d.]+ MB\s+fds\s+\d+", out, re.M)]
    # samples are taken when a poll of /metrics finds the next step passed, so a fast run may skip some
    assert len(loops) >= 2 and loops == sorted(loops) and loops[-1] >= 12, out
    assert len(plans) >= 2 and plans == sorted(plans) and plans[-1] >= 600, out
    for check in CHECKS:
        assert re.search(rf"^\s+(PASS|MISS) {check}: ", out, re.M), out
    assert re.search(r"^[0-4] of 4 checks PASS$", out, re.M), out


def test_soak_verdict_judges_growth_after_the_warm_up_only() -> None:
    soak = load_soak()
    sample = soak.Sample
    flat = [sample(5, 100 * MB, 5), sample(20, 140 * MB, 6), sample(60, 142 * MB, 6), sample(100, 143 * MB, 6)]
    memory, fds = soak.verdict("x", flat, total=100, warmup=0.1, max_growth_mb=5.0)
    assert memory.passed and fds.passed  # the climb within the first 10 % is warm-up
    assert "+3.00 MB" in memory.detail

    leaking = [sample(5, 90 * MB, 4), sample(20, 100 * MB, 5), sample(60, 104 * MB, 9), sample(100, 106 * MB, 12)]
    memory, fds = soak.verdict("x", leaking, total=100, warmup=0.1, max_growth_mb=5.0)
    assert not memory.passed and not fds.passed
    assert memory.line().startswith("MISS x memory flat: growth +6.00 MB")
    assert fds.line() == "MISS x file descriptors steady: 5 after warm-up -> 12 at the end (max 12), slack 1"


def test_soak_refuses_a_scale_below_one() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--loops", "0"], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert result.returncode == 2 and "--loops must be at least 1" in result.stderr
