"""Step 2 proof, injection: per case one test symbol, its efficiency hash, and one execution plan.

Every case is one row of :data:`CASES`: the efficiency score, the plan, and what the governor must make of it with
its default settings (SPEC §3): the event and reason, and for a permit its P3.1 fields. The expected values are
written out literally, as the original checklist states them (score 0.2 gives 0.4444 and 96 s), so that the proof
checks the governor's arithmetic rather than repeating it. Each case has a symbol of its own: an opening plan starts
its symbol's cooldown, which must not hold back another case.

The writes go through ``microservices/ops/inject.py`` (the one way test data is written): all efficiency hashes first,
then the plans. Every symbol and plan_id is in the run's ledger before anything is written, and each plan's stream
entry id right after it is. The value of ``p32_eff_apply_total`` before the plans is read from the governor's
/metrics, for the check to compare with.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proof_p31_lib import (
    PLANS,
    RunState,
    add_env_file_option,
    connect_from_env,
    proof_symbol,
    scrape,
    series,
    series_key,
)

from microservices.core.settings import environment
from microservices.ops.inject import PlanSpec, inject_efficiency, inject_plan

#: The series whose growth the check compares with the number of downsized permits.
EFF_APPLY = ("p32_eff_apply_total", {"action": "DOWNSIZE", "reason": "ok"})

NEUTRAL = {"eff_action": "NONE", "eff_factor": "1.0000", "downsize_factor": "1.0000", "extra_cooldown_sec": "0"}


@dataclass(frozen=True)
class Step2Case:
    """One plan of the proof: its symbol's efficiency reading, the plan, and the outcome expected."""

    name: str
    #: Part of the symbol: ``P31PROOF2<tag>USDT-<run>``.
    tag: str
    #: ``None`` for both: no efficiency hash at all.
    score: str | None
    confidence: str | None
    action: str = "OPEN_LONG"
    decision: str = "EXECUTE"
    reduce_only: str | None = None
    #: ``ok``: ``p31proof2-<run>-<tag>``; ``absent``: no plan_id field; ``space``: a plan_id with white space.
    plan_id: str = "ok"
    # expected
    event: str = "permit"
    reason: str = "permitted"
    #: The permit's P3.1 fields (None: no permit must exist).
    permit: dict[str, str] | None = None
    #: The dead-letter reason (None: no dead letter must exist).
    dead_letter: str | None = None

    def plan_id_for(self, run: str) -> str | None:
        own = f"p31proof2-{run}-{self.tag.lower()}"
        return {"ok": own, "absent": None, "space": f"{own} bad"}[self.plan_id]


CASES: tuple[Step2Case, ...] = (
    Step2Case("downsize", "DOWN", "0.2", "0.9",
              permit={"eff_action": "DOWNSIZE", "eff_factor": "0.4444", "downsize_factor": "0.4444",
                      "extra_cooldown_sec": "96", "eff_reason": "ok", "eff_score": "0.2000",
                      "eff_confidence": "0.900", "eff_stale": "0"}),
    Step2Case("no-downsize", "HIGH", "0.8", "0.9",
              permit={**NEUTRAL, "eff_reason": "ok", "eff_score": "0.8000", "eff_confidence": "0.900",
                      "eff_stale": "0"}),
    Step2Case("missing-efficiency", "MISSING", None, None,
              permit={**NEUTRAL, "eff_reason": "missing_eff", "eff_score": "", "eff_confidence": "",
                      "eff_stale": "0"}),
    Step2Case("low-confidence", "LOWCONF", "0.2", "0.5",
              permit={**NEUTRAL, "eff_reason": "low_conf", "eff_score": "0.2000", "eff_confidence": "0.500",
                      "eff_stale": "0"}),
    Step2Case("reduce-close", "CLOSE", "0.2", "0.9", action="CLOSE_LONG",
              permit={**NEUTRAL, "eff_reason": "reduce_only", "eff_score": "0.2000", "eff_confidence": "0.900",
                      "eff_stale": "0"}),
    Step2Case("reduce-only-flag", "REDUCE", "0.2", "0.9", reduce_only="true",
              permit={**NEUTRAL, "eff_reason": "reduce_only", "eff_score": "0.2000", "eff_confidence": "0.900",
                      "eff_stale": "0"}),
    Step2Case("invalid-no-plan-id", "NOID", "0.2", "0.9", plan_id="absent",
              event="dead_letter", reason="invalid_plan", dead_letter="invalid_plan"),
    Step2Case("invalid-plan-id-whitespace", "SPACE", "0.2", "0.9", plan_id="space",
              event="dead_letter", reason="invalid_plan", dead_letter="invalid_plan"),
    Step2Case("not-execute", "SKIP", "0.2", "0.9", decision="SKIP", event="skip", reason="not_execute"),
)  # fmt: skip


def inject(state_path: Path, env: Mapping[str, str], governor_url: str) -> None:
    state = RunState.load(state_path)
    client = connect_from_env(env)
    symbols = {case.name: proof_symbol(2, case.tag, state.run) for case in CASES}
    plan_ids = {case.name: case.plan_id_for(state.run) for case in CASES}
    state.symbols = list(symbols.values())
    state.plan_ids = [plan_id for plan_id in plan_ids.values() if plan_id is not None]
    state.injected_at = time.time()
    state.save(state_path)  # the ledger first: a crash from here on still leaves every key to the cleanup

    name, labels = EFF_APPLY
    baseline = scrape(governor_url).get(series(name, **labels))
    if baseline is not None:
        state.baselines[series_key(name, **labels)] = baseline

    for case in CASES:
        inject_efficiency(client, symbols[case.name], score=case.score, confidence=case.confidence)
    plans = state.stream(PLANS)
    cases: list[dict[str, Any]] = []
    for case in CASES:
        spec = PlanSpec(
            plan_id=plan_ids[case.name],
            symbol=symbols[case.name],
            action=case.action,
            decision=case.decision,
            reduce_only=case.reduce_only,
        )
        entry_id = inject_plan(client, plans, spec)
        state.plan_entries.append(entry_id)
        cases.append({
            "case": case.name, "symbol": symbols[case.name], "plan_id": plan_ids[case.name], "entry_id": entry_id,
            "action": case.action, "event": case.event, "reason": case.reason, "permit": case.permit,
            "dead_letter": case.dead_letter,
        })  # fmt: skip
        state.cases = cases
        state.save(state_path)
    print(f"published {len(CASES)} step 2 plans on {plans}: {', '.join(state.plan_entries)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_env_file_option(parser)
    parser.add_argument("--state", required=True, help="the run's ledger, made by proof_p31_run.py prepare")
    parser.add_argument("--governor-url", default="http://127.0.0.1:8044", help="for the metrics baseline")
    args = parser.parse_args(argv)
    inject(Path(args.state), environment(args.env_file), args.governor_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
