"""Stop stress (``make stop-stress``): SIGTERM and SIGINT at uniformly random moments of both daemons' lives, each
checked for exit 0 within 5 s and nothing lost (issue 10; see :mod:`microservices.devtools.stop_stress`).

Prints the seed first (``--seed`` repeats a schedule), each failure as it happens with the end of the daemon's log,
then the figures; exits 1 if any trial failed. ``make test`` runs a bounded version
(``tests/integration/test_stop_stress.py``).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from microservices.devtools.stop_stress import plan_trials, run_trials, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300, help="how many daemon lives to stop (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: a random one)")
    parser.add_argument("--life", type=float, default=2.0, help="signals land in [0, LIFE] s after the handler exists")
    parser.add_argument("--jobs", type=int, default=2, help="trials run at once, each on its own Redis (default 2)")
    args = parser.parse_args(argv)
    seed = random.randrange(10**6) if args.seed is None else args.seed
    print(f"stop stress: seed {seed}, {args.trials} trials, signals in [0, {args.life:g}] s, {args.jobs} at a time",
          flush=True)  # fmt: skip
    trials = plan_trials(random.Random(seed), args.trials, life_sec=args.life)
    with tempfile.TemporaryDirectory(prefix="p31-stop-stress-") as work_dir:
        results = run_trials(trials, Path(work_dir), jobs=args.jobs, echo=True)
    for line in summary(results):
        print(line)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
