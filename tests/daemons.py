"""Running the daemons as real processes from the tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from microservices.devtools.daemon_process import ROOT, DaemonProcess, daemon_env


def run_once(
    module: str, redis_url: str | None, extra: Mapping[str, str] | None = None, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "--once", *args],
        env=daemon_env(redis_url, extra),
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


#: The daemon-as-a-process helper and its clean environment are shared with the demo and the scripts.
Daemon = DaemonProcess
__all__ = ["Daemon", "NotifySocket", "assert_systemd_lifecycle", "daemon_env", "run_once", "wait_until"]


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"not reached within {timeout:g}s: {what}")


class NotifySocket:
    """A stand-in for systemd's notification socket: collects the datagrams a daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def close(self) -> None:
        self.sock.close()


def assert_systemd_lifecycle(notify: NotifySocket) -> None:
    """READY first, WATCHDOG after progress, STOPPING last: what ``Type=notify`` and ``WatchdogSec=`` rely on."""
    messages = notify.collect()
    assert messages[0] == "READY=1", messages
    assert "WATCHDOG=1" in messages
    assert messages[-1] == "STOPPING=1", messages
