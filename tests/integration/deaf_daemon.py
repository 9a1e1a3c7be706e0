"""A stand-in daemon for the chaos supervisor's tests: it says it serves, as the daemons do, then ignores SIGTERM."""

import signal
import sys
import time

signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
print("serving /metrics and /healthz on http://127.0.0.1:1", file=sys.stderr, flush=True)


def wait_forever() -> None:
    while True:
        time.sleep(0.1)


wait_forever()
