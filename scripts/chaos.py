"""The chaos run (issue 10): both daemons under load while seeded faults land together; exit 1 on any violation.

    python scripts/chaos.py [--seed N] [--minutes M] [--governors 3] [--symbols 12] [--no-network-faults]

What it does and checks is :mod:`microservices.devtools.chaos`. As root it re-executes itself in a private network
namespace (``unshare --net``), where its packet-loss rules (nftables) touch nothing else; ``tc netem`` is not
available on this kernel, so latency comes from a userspace proxy. Without root (or ``unshare``/``ip``/``nft``) the
run says so and fails, unless ``--no-network-faults`` is given: then it runs without the namespace and without packet
loss (latency still runs: it needs no privilege).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from microservices.devtools import private_network
from microservices.devtools.chaos import MAX_MINUTES, ChaosConfig, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=None, help="seed of every random choice (default: random)")
    parser.add_argument("--minutes", type=float, default=1.0, help="length of the chaos, before the checks (1; <= 50)")
    parser.add_argument("--governors", type=int, default=3, help="governor replicas (3)")
    parser.add_argument("--symbols", type=int, default=12, help="symbols of the plans and live targets (12)")
    parser.add_argument("--faults-per-minute", type=float, default=20.0, help="faults a minute, all kinds (20)")
    parser.add_argument(
        "--no-network-faults", action="store_true", help="run without the private namespace and packet loss"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the daemons' logs also when all holds")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be above 0 and at most {MAX_MINUTES:g} (block records expire after an hour)")
    if args.governors < 1 or args.symbols < 2:
        parser.error("--governors must be at least 1 and --symbols at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seed is None:
        # chosen before the re-execution, so both halves agree, and printed by the run
        args.seed = random.randrange(10**9)
    why = None if args.no_network_faults else private_network.why_unavailable()
    if not args.no_network_faults and why is None and not private_network.inside():
        private_network.reexec_inside([str(Path(__file__).resolve()), *_argv(args)])
    if private_network.inside():
        try:
            private_network.set_up()
        except (OSError, private_network.NamespaceUnavailableError) as exc:
            why = f"the private namespace could not be set up: {exc}"
    elif not args.no_network_faults and why is None:
        why = "not inside the private namespace"
    config = ChaosConfig(
        seed=args.seed,
        minutes=args.minutes,
        governors=args.governors,
        symbols=args.symbols,
        faults_per_minute=args.faults_per_minute,
        no_loss_because="--no-network-faults" if args.no_network_faults else why,
        loss_required=not args.no_network_faults,
        keep_logs=args.keep_logs,
    )
    summary = run(config)
    return 1 if summary.violations else 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The arguments again, with the seed fixed."""
    out = ["--seed", str(args.seed), "--minutes", repr(args.minutes), "--governors", str(args.governors)]
    out += ["--symbols", str(args.symbols), "--faults-per-minute", repr(args.faults_per_minute)]
    return out + (["--keep-logs"] if args.keep_logs else [])


if __name__ == "__main__":
    sys.exit(main())
