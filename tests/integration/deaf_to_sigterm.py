"""A process that catches SIGTERM and SIGINT and ignores them, as the hung governor of issue 10 did: the stop stress
must report it, or it proves nothing."""

import signal
import time

signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
signal.signal(signal.SIGINT, lambda _signum, _frame: None)
time.sleep(60)
