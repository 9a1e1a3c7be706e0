"""systemd's notification protocol (``Type=notify``): a datagram per state change to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import logging
import os
import socket
from typing import Protocol

log = logging.getLogger(__name__)


class Notifier(Protocol):
    """What the loop runner tells its supervisor."""

    def ready(self) -> None: ...

    def watchdog(self) -> None: ...

    def stopping(self) -> None: ...


class SystemdNotifier:
    """Sends ``READY=1``, ``WATCHDOG=1`` and ``STOPPING=1``; does nothing when not run by systemd."""

    def __init__(self, socket_path: str | None = None) -> None:
        path = os.environ.get("NOTIFY_SOCKET") if socket_path is None else socket_path
        if path and path.startswith("@"):
            path = "\0" + path[1:]  # abstract namespace
        self._address = path or None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(state.encode(), self._address)
        except OSError as exc:
            log.warning("systemd notification %r failed: %s", state, exc)

    def ready(self) -> None:
        self.notify("READY=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")
