"""Running the daemons as real processes from the tests."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SERVING = re.compile(r"serving /metrics and /healthz on http://([\d.]+):(\d+)")


def daemon_env(redis_url: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: nothing of the developer's shell leaks into the daemon's settings."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "METRICS_PORT": "0"}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(extra or {})
    return env


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


class Daemon:
    """A daemon running in the background; its stderr goes to a file the test can read."""

    def __init__(self, module: str, env: Mapping[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=dict(env), stdout=self._log, stderr=self._log, cwd=ROOT
        )
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _SERVING.search(self.log())
            if found:
                return int(found.group(2))
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode}: {self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"daemon never served metrics: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, labels: str = "") -> float | None:
        """The value of one series on /metrics, e.g. ``metric("p29_shadow_proposed_total", 'reason="ok"')``."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait_for(self, predicate: Callable[[], object], timeout: float = 15, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited {self.process.returncode} waiting for {what}: {self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.log()[-3000:]}")

    def terminate(self, timeout: float = 5) -> tuple[int, float]:
        """SIGTERM; the exit status and how long the exit took."""
        started = time.monotonic()
        self.process.terminate()
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


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
