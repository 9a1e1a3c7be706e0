"""Step 1 proof, injection: one test symbol per case, its efficiency hash and its live allocation target.

Every case is one row of :data:`CASES`: what is injected and what the proposer must make of it with its default
settings (SPEC §1, §2). The rows are the original deployment's checklist, made exact: the expected values are written
out literally, as the checklist states them, so that the proof checks the daemon's arithmetic rather than repeating
it. They are stored in the run's ledger for ``proof_p31_step1_check.py``.

The writes go through ``microservices/ops/inject.py`` (the one way test data is written). Efficiency hashes are
written before live targets: the proposer discovers a symbol by its live target, so it never sees a symbol whose
efficiency hash is still to come. Every key is recorded in the ledger before it is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from proof_p31_lib import (
    PROPOSALS,
    RunState,
    add_env_file_option,
    connect_from_env,
    hex_hash,
    mark_stream,
    proof_symbol,
)

from microservices.core.settings import environment
from microservices.ops.inject import inject_efficiency, inject_live_target

#: A fresh score's age, seconds: well inside P31_STALE_SEC (600).
FRESH_AGE_SEC = 5.0


@dataclass(frozen=True)
class Step1Case:
    """One symbol of the proof: its inputs and the shadow proposal expected for it."""

    name: str
    #: Part of the symbol: ``P31PROOF1<tag>USDT-<run>``.
    tag: str
    target_usd: str
    #: ``None`` for both: no efficiency hash at all.
    score: str | None
    confidence: str | None
    #: Age of ``ts`` in seconds (negative: in the future); written in milliseconds when ``millis``.
    age_sec: float = FRESH_AGE_SEC
    millis: bool = False
    # expected shadow fields
    base_target: str = ""
    proposed_target: str = ""
    multiplier: str = ""
    reason: str = ""
    eff_score: str = ""
    eff_confidence: str = ""
    eff_stale: str = "0"

    def ts(self, now: float) -> str:
        moment = now - self.age_sec
        return str(int(moment * 1000)) if self.millis else f"{moment:.3f}"

    def expected(self, symbol: str) -> dict[str, str]:
        return {
            "symbol": symbol,
            "base_target": self.base_target,
            "proposed_target": self.proposed_target,
            "multiplier": self.multiplier,
            "eff_score": self.eff_score,
            "eff_confidence": self.eff_confidence,
            "eff_stale": self.eff_stale,
            "reason": self.reason,
            "mode": "shadow",
        }


CASES: tuple[Step1Case, ...] = (
    Step1Case("high-score", "HIGH", "250.50", "0.9", "0.9",
              base_target="250.50", proposed_target="350.70", multiplier="1.4000", reason="ok",
              eff_score="0.9000", eff_confidence="0.900"),
    Step1Case("low-score", "LOW", "1000", "0.3", "0.9",
              base_target="1000.00", proposed_target="800.00", multiplier="0.8000", reason="ok",
              eff_score="0.3000", eff_confidence="0.900"),
    Step1Case("missing-efficiency", "MISSING", "123.45", None, None,
              base_target="123.45", proposed_target="123.45", multiplier="1.0000", reason="missing_eff"),
    Step1Case("low-confidence", "LOWCONF", "100", "0.9", "0.5",
              base_target="100.00", proposed_target="100.00", multiplier="1.0000", reason="low_conf",
              eff_score="0.9000", eff_confidence="0.500"),
    Step1Case("stale-efficiency", "STALE", "100", "0.9", "0.9", age_sec=700.0,
              base_target="100.00", proposed_target="100.00", multiplier="1.0000", reason="stale_eff",
              eff_score="0.9000", eff_confidence="0.900", eff_stale="1"),
    Step1Case("invalid-text-score", "TEXT", "100", "abc", "0.9",
              base_target="100.00", proposed_target="100.00", multiplier="1.0000", reason="invalid_eff",
              eff_confidence="0.900"),
    Step1Case("invalid-nan-score", "NAN", "100", "NaN", "0.9",
              base_target="100.00", proposed_target="100.00", multiplier="1.0000", reason="invalid_eff",
              eff_confidence="0.900"),
    Step1Case("invalid-out-of-range", "RANGE", "100", "1.5", "0.9",
              base_target="100.00", proposed_target="100.00", multiplier="1.0000", reason="invalid_eff",
              eff_score="1.5000", eff_confidence="0.900"),
    Step1Case("millisecond-ts", "MILLIS", "10", "0.9", "0.9", millis=True,
              base_target="10.00", proposed_target="14.00", multiplier="1.4000", reason="ok",
              eff_score="0.9000", eff_confidence="0.900"),
    Step1Case("future-ts", "FUTURE", "100", "0.9", "0.9", age_sec=-3600.0,
              base_target="100.00", proposed_target="100.00", multiplier="1.0000", reason="invalid_eff",
              eff_score="0.9000", eff_confidence="0.900"),
)  # fmt: skip


def inject(state_path: Path, env: Mapping[str, str]) -> None:
    state = RunState.load(state_path)
    client = connect_from_env(env)
    symbols = {case.name: proof_symbol(1, case.tag, state.run) for case in CASES}
    state.symbols = list(symbols.values())
    state.injected_at = time.time()
    state.cases = [{"case": case.name, "symbol": symbols[case.name], "expect": case.expected(symbols[case.name])}
                   for case in CASES]  # fmt: skip
    state.save(state_path)  # the ledger first: a crash from here on still leaves every key to the cleanup

    now = time.time()
    for case in CASES:
        ts = case.ts(now) if case.score is not None or case.confidence is not None else None
        inject_efficiency(client, symbols[case.name], score=case.score, confidence=case.confidence, ts=ts)
    for case in CASES:
        key = inject_live_target(client, symbols[case.name], case.target_usd)
        state.live_snapshot[symbols[case.name]] = hex_hash(client, key)
        state.live_expiry[symbols[case.name]] = time.time() + int(client.pttl(key)) / 1000
    proposals = state.streams[PROPOSALS].name
    state.after_inject_ids[PROPOSALS] = mark_stream(client, proposals).last_id
    state.save(state_path)
    print(f"injected {len(CASES)} step 1 cases: {', '.join(state.symbols)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_env_file_option(parser)
    parser.add_argument("--state", required=True, help="the run's ledger, made by proof_p31_run.py prepare")
    args = parser.parse_args(argv)
    inject(Path(args.state), environment(args.env_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
