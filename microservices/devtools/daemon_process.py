"""A daemon run as a real process, for the tests and the demo: its HTTP endpoints, metrics, log and shutdown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The line the daemons log once their HTTP server listens (SPEC §5); the port is read from it.
_SERVING = re.compile(r"serving /metrics and /healthz on http://([\d.:\[\]a-f]+):(\d+)")


def daemon_env(redis_url: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for a daemon run from this checkout: nothing of the caller's shell leaks into its settings;
    its metrics on a free port."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "METRICS_PORT": "0"}
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(extra or {})
    return env


class DaemonFailedError(RuntimeError):
    """The daemon exited, or did not reach a wanted state in time."""


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body; an HTTP error status is returned, not raised. Connection failures raise OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def metric_value(metrics_text: str, name: str, labels: str = "") -> float | None:
    """The value of one series in a /metrics page, e.g. ``("p29_shadow_proposed_total", 'reason="ok"')``."""
    wanted = (f"{name}{{{labels}}}" if labels else name) + " "
    for line in metrics_text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return None


class DaemonProcess:
    """``python -m module`` in the background, its output in ``log_path``; started when constructed."""

    def __init__(
        self, module: str, env: Mapping[str, str], log_path: Path, *args: str, start_timeout: float = 15
    ) -> None:
        self.module = module
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            cwd=ROOT,
        )
        try:
            self.port = self._wait_for_port(start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _SERVING.search(self.log())
            if found:
                return int(found.group(2))
            if self.process.poll() is not None:
                raise DaemonFailedError(f"{self.module} exited {self.process.returncode}: {self.log()}")
            time.sleep(0.05)
        raise DaemonFailedError(f"{self.module} never served metrics: {self.log()}")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.url(path))

    def metric(self, name: str, labels: str = "") -> float | None:
        return metric_value(self.get("/metrics")[1], name, labels)

    def wait_for(self, predicate: Callable[[], object], timeout: float = 15, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if not self.running:
                raise DaemonFailedError(f"{self.module} exited {self.process.returncode} waiting for {what}")
            time.sleep(0.05)
        raise DaemonFailedError(f"{self.module} did not reach {what} within {timeout:g}s: {self.log()[-3000:]}")

    def terminate(self, timeout: float = 5) -> tuple[int, float]:
        """SIGTERM; the exit status and how long the exit took (``subprocess.TimeoutExpired`` past ``timeout``)."""
        started = time.monotonic()
        self.process.terminate()
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.running:
            self.process.kill()
            self.process.wait()
        self._log.close()
