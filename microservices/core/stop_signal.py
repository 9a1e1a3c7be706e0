"""SIGTERM/SIGINT as a stop request the loop obeys between batches: safe whenever the signal lands.

Kept free of heavy imports: each daemon's ``main`` installs it before it loads the rest of its modules, so a stop
during start-up is kept too (issue 10).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType


class StopSignal:
    """SIGTERM/SIGINT turned into an event the loop checks between batches. Installed once, as the process starts, so
    that a signal during start-up (a Redis Cluster client can take a while to be built) is kept, not lost.

    The event is set by a thread of its own, never by a Python signal handler. A handler runs in the main thread
    between any two bytecodes, and ``threading.Event.set`` takes the event's lock: when the signal lands while the main
    thread holds that same lock (inside ``Event.wait``, which the loop calls between every two reads), the handler
    waits for a lock its own thread holds, forever — the process hangs with no further log line until SIGKILL. So the C
    level writes the signal's number to a pipe (``signal.set_wakeup_fd``, async-signal-safe), and a watcher thread
    reading that pipe records the signal and sets the event. The Python handler only has to exist (so that SIGTERM
    does not kill and SIGINT does not raise ``KeyboardInterrupt``); it does nothing.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.event = threading.Event()
        #: The name of the signal that asked to stop, if one did.
        self.stopped_by: str | None = None
        self._pipe: tuple[int, int] | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._previous_wakeup_fd = -1
        self._watcher: threading.Thread | None = None

    def install(self) -> StopSignal:
        """Take over SIGTERM and SIGINT (from the main thread, as Python requires); :meth:`uninstall` undoes it."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_fd, False)  # the C-level handler must never block; a full pipe drops the byte
        self._pipe = (read_fd, write_fd)
        self._watcher = threading.Thread(target=self._watch, args=(read_fd,), name="stop-signal", daemon=True)
        self._watcher.start()
        self._previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}
        for sig in self.SIGNALS:
            signal.signal(sig, _ignore)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        return self

    def _watch(self, read_fd: int) -> None:
        wanted = {int(sig) for sig in self.SIGNALS}
        while chunk := os.read(read_fd, 64):  # b"" once uninstall closes the write end
            stopping = [signum for signum in chunk if signum in wanted]  # other signals' bytes are not ours
            if stopping and not self.event.is_set():
                self.stopped_by = signal.Signals(stopping[0]).name
                self.event.set()
        os.close(read_fd)

    def uninstall(self) -> None:
        """Give the signals and the wakeup descriptor back as they were, and end the watcher (for tests)."""
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # what getsignal returned
        os.close(self._pipe[1])
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self._pipe = None


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler of SIGTERM/SIGINT: the watcher thread of :class:`StopSignal` does the work."""
