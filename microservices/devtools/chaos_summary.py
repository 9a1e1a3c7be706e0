"""What a chaos run prints at its end: the seed, the faults by kind, the load, the figures of every check, and every
violation; also as one JSON line (``summary-json: {...}``) for the test that runs it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    seed: int
    minutes: float
    faults: Mapping[str, int]
    faults_given_up: Mapping[str, int]
    plans: int
    outcomes: Mapping[str, int]
    proposals: int
    lives: int
    sigterms: int
    #: Which lives the memory and descriptor checks judged, and their lines.
    resource_rule: str
    resource_lines: tuple[str, ...]
    recovery_lines: tuple[str, ...]
    violations: tuple[str, ...]
    log_dir: str

    def lines(self) -> list[str]:
        faults = " ".join(f"{kind}={n}" for kind, n in sorted(self.faults.items())) or "none"
        given_up = " ".join(f"{kind}={n}" for kind, n in sorted(self.faults_given_up.items()))
        out = [
            "chaos summary",
            f"  seed: {self.seed}",
            f"  minutes: {self.minutes:g}",
            f"  faults injected ({sum(self.faults.values())}): {faults}",
        ]
        if given_up:
            out.append(f"  faults given up (daemon never up in time): {given_up}")
        out += [
            f"  plans published: {self.plans}",
            f"  permits: {self.outcomes.get('permit', 0)}  blocks: {self.outcomes.get('block', 0)}  "
            f"skips: {self.outcomes.get('skip', 0)}  dead letters: {self.outcomes.get('dead_letter', 0)}",
            f"  proposals: {self.proposals}",
            f"  daemon processes: {self.lives}, SIGTERMs checked: {self.sigterms}",
            "  recovery after the last fault:",
            *(f"    {line}" for line in self.recovery_lines),
            f"  memory and descriptors ({self.resource_rule}):",
            *(f"    {line}" for line in self.resource_lines or ("no life long enough to judge",)),
            f"  violations: {len(self.violations)}",
            *(f"    - {v}" for v in self.violations),
        ]
        if self.violations:
            out.append(f"  logs kept in {self.log_dir}")
        return out

    def as_json(self) -> str:
        fields = {
            k: v for k, v in self.__dict__.items() if k not in ("resource_rule", "resource_lines", "recovery_lines")
        }
        return json.dumps({k: dict(v) if isinstance(v, Mapping) else v for k, v in fields.items()}, sort_keys=True)
