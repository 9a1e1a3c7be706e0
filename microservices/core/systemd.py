"""systemd's notification protocol (``Type=notify``): a datagram per state change to ``$NOTIFY_SOCKET``.

A notification must never hold the loop up. The kernel queues only so many datagrams on the receiving socket —
systemd's one socket for every unit — (a receive buffer's worth, about 500 small ones here; ``net.unix.max_dgram_qlen``
on some kernels), and a blocking ``sendto`` to a full queue waits until the receiver reads, for ever if it never does.
A governor that pinged after each of its reads (hundreds a second under a trickle of plans) stalled there, deciding
nothing and deaf to SIGTERM, whose handler ran but whose ``sendto`` was then simply restarted (issue 10). So every
datagram is sent without blocking; ``WATCHDOG=1`` at most once per ``WATCHDOG_EVERY_SEC`` (systemd asks for one per
half ``WatchdogSec=``, 15 s here at the least), and dropped when the queue is full, since the next loop sends another;
``READY=1`` and ``STOPPING=1`` wait a moment for room.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

#: WATCHDOG=1 is sent at most this often, however fast the loop goes.
WATCHDOG_EVERY_SEC = 1.0
#: How long READY=1 and STOPPING=1 wait for room in a full queue before they are given up (and logged).
STATE_PATIENCE_SEC = 1.0
_RETRY_SEC = 0.01


class Notifier(Protocol):
    """What the loop runner tells its supervisor."""

    def ready(self) -> None: ...

    def watchdog(self) -> None: ...

    def stopping(self) -> None: ...


class SystemdNotifier:
    """Sends ``READY=1``, ``WATCHDOG=1`` and ``STOPPING=1``; does nothing when not run by systemd."""

    def __init__(self, socket_path: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        path = os.environ.get("NOTIFY_SOCKET") if socket_path is None else socket_path
        if path and path.startswith("@"):
            path = "\0" + path[1:]  # abstract namespace
        self._address = path or None
        self._clock = clock
        self._next_watchdog = float("-inf")
        #: Datagrams given up because the receiver's queue stayed full (WATCHDOG=1 included).
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str, patience_sec: float = 0.0) -> bool:
        """Send ``state`` without blocking; while the receiver's queue is full, try again for up to ``patience_sec``.
        Whether it was sent."""
        if self._address is None:
            return False
        deadline = self._clock() + patience_sec
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                while True:
                    try:
                        sock.sendto(state.encode(), socket.MSG_DONTWAIT, self._address)
                        return True
                    except BlockingIOError:
                        if self._clock() >= deadline:
                            break
                        time.sleep(_RETRY_SEC)
        except OSError as exc:
            log.warning("systemd notification %r failed: %s", state, exc)
            return False
        self.dropped += 1
        if patience_sec > 0:
            log.warning("systemd notification %r dropped: the notify socket's queue stayed full", state)
        else:
            log.debug("systemd notification %r dropped: the notify socket's queue is full", state)
        return False

    def ready(self) -> None:
        self.notify("READY=1", STATE_PATIENCE_SEC)

    def watchdog(self) -> None:
        now = self._clock()
        if now < self._next_watchdog:
            return
        self._next_watchdog = now + WATCHDOG_EVERY_SEC
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1", STATE_PATIENCE_SEC)
