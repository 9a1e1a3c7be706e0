"""``scripts/chaos.py`` for one minute, as ``make test`` runs it: every kind of fault lands, plans flow and are
decided, and not one guarantee breaks (the run's own checks are ``microservices/devtools/invariants.py``, each
unit-tested with data that breaks it in ``tests/unit/test_chaos_invariants.py``).

The seed is ``$CHAOS_SEED`` if set, else random; it is printed, so a failure is replayed with
``make chaos CHAOS_ARGS="--seed N"`` (the timing of what the daemons are doing when each fault lands still varies)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from microservices.devtools.daemon_process import ROOT
from microservices.devtools.faults import FaultKind

SCRIPT = ROOT / "scripts" / "chaos.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_minute_of_chaos_breaks_no_guarantee() -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(10**9))
    print(f"chaos seed {seed}")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--seed", str(seed), "--minutes", "1"],
        capture_output=True, text=True, timeout=280, cwd=ROOT, check=False,
    )  # fmt: skip
    out = result.stdout
    tail = f"seed {seed}\n{out[-6000:]}\n{result.stderr[-3000:]}"
    lines = [line for line in out.splitlines() if line.startswith("summary-json: ")]
    assert lines, tail
    summary = json.loads(lines[-1].removeprefix("summary-json: "))
    assert summary["seed"] == seed
    assert summary["violations"] == [], tail
    assert result.returncode == 0, tail
    never = [kind.value for kind in FaultKind if summary["faults"].get(kind.value, 0) < 1]
    assert not never, f"faults that never landed: {never}\n{tail}"
    assert summary["plans"] > 0 and summary["outcomes"]["permit"] > 0, tail
    assert summary["proposals"] > 0, tail
