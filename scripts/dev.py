"""``make dev``: a local walkthrough stack — a throwaway Redis, both daemons on it, and ``.dev/p31.env`` pointing
``p31ctl`` at it — running until Ctrl-C. Nothing touches the shared Redis on 6379. A thin CLI over
:mod:`microservices.devtools.dev_stack`."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from microservices.devtools.dev_stack import dev_stack

GUIDE = """\
Redis:      {url}   (throwaway: gone when this stops)
proposer:   {proposer}/metrics  /healthz
governor:   {governor}/metrics  /healthz
env file:   {env}   (logs: {logs})

In another shell (the env file points p31ctl at this Redis, never at 6379):

  export P31ENV={env}
  .venv/bin/p31ctl --env-file $P31ENV inject-efficiency P31TESTBTCUSDT --score 0.9 --confidence 0.9 --target-usd 1000
  .venv/bin/p31ctl --env-file $P31ENV inject-efficiency P31TESTSOLUSDT --score 0.2 --confidence 0.9 --target-usd 200
  .venv/bin/p31ctl --env-file $P31ENV status
  .venv/bin/p31ctl --env-file $P31ENV inject-plan --plan-id dev-1 --symbol P31TESTSOLUSDT
  .venv/bin/p31ctl --env-file $P31ENV plan dev-1
  .venv/bin/p31ctl --env-file $P31ENV governor

Seed only test symbols (P31TEST*), and run the proof scripts against these daemons rather than with --spawn, which
refuses once live targets exist (a spawned proposer would write proposals for them):

  REDIS_URL={url} scripts/proof_p31_step1_allocation_shadow.sh --proposer-url {proposer}
  REDIS_URL={url} scripts/proof_p31_step2_governor_downsize.sh --governor-url {governor}

Ctrl-C stops both daemons and Redis.
"""


def main() -> int:
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with dev_stack() as stack:
        proposer, governor = (d.url("").rstrip("/") for d in stack.daemons)
        print(GUIDE.format(url=stack.redis_url, proposer=proposer, governor=governor, env=stack.env_file,
                           logs=stack.env_file.parent), flush=True)  # fmt: skip
        while not stop.wait(1.0):
            for daemon in stack.daemons:
                if not daemon.running:
                    print(f"{daemon.module} exited: see {daemon.log_path}", file=sys.stderr)
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
