"""``python -m microservices.governor``: the plan governor daemon."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from microservices.core.stop_signal import StopSignal


def main(argv: Sequence[str] | None = None) -> int:
    # First, before the daemon's modules load (a fifth of a second): a SIGTERM or SIGINT from here on stops it with
    # exit 0 instead of killing it (issue 10).
    stop = StopSignal().install()
    from microservices.governor.service import run

    return run(argv, stop)


if __name__ == "__main__":
    sys.exit(main())
