"""A throwaway ``prometheus`` on a free loopback port, for the end-to-end tests of the alert rules and dashboard.

The binary is ``$PROMETHEUS_BIN`` if set, else ``prometheus`` on the PATH; there is no fall-back, so a machine
without it fails the tests that need it instead of skipping them. The configuration and the TSDB live in a temporary
directory that :meth:`PrometheusServer.close` removes; a Prometheus running elsewhere (e.g. on 9090) is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Self

from microservices.devtools.redis_server import free_port
from microservices.devtools.server_process import ServerProcess


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its HTTP API answered with an error."""


def find_prometheus() -> str:
    override = os.environ.get("PROMETHEUS_BIN")
    if override:
        return override
    found = shutil.which("prometheus")
    if not found:
        raise PrometheusError(
            "no prometheus binary: install it (Debian: apt-get install prometheus) or set PROMETHEUS_BIN"
        )
    return found


class PrometheusServer(ServerProcess):
    """``with PrometheusServer(config_yaml) as prom: prom.query("up")`` — a private Prometheus for the duration.

    ``config_yaml`` is the text of a ``prometheus.yml``; a relative ``rule_files`` entry is resolved against the
    temporary directory it is written to, so pass absolute paths.
    """

    def __init__(self, config_yaml: str, port: int | None = None) -> None:
        self.binary = find_prometheus()
        self.port = port or free_port()
        super().__init__(dir_prefix="p31-prometheus-")
        self.config_path = self._dir / "prometheus.yml"
        self.config_path.write_text(config_yaml)
        self.log_path = self._dir / "prometheus.log"

    @property
    def data_dir(self) -> Path:
        """The TSDB directory: blocks written there before :meth:`start` (a backfill) are served."""
        return self._dir / "data"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Self:
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        return self._launch(
            args,
            self.log_path,
            lambda: self._wait_until_ready(time.monotonic() + timeout, timeout),
            stdin=subprocess.DEVNULL,
            cwd=self._dir,
        )

    def _wait_until_ready(self, deadline: float, timeout: float) -> Self:
        assert self._process is not None
        while True:
            if self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._process.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while the TSDB opens
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"prometheus on port {self.port} not ready within {timeout}s: {self.log()[-2000:]}"
                )
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """The decoded JSON of ``GET /api/v1/<path>``; an error answer (HTTP 400/422) is returned, not raised."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:  # a bad query: the body still says why
            body = exc.read()
        answer: dict[str, Any] = json.loads(body)
        return answer

    def query(self, expr: str) -> dict[str, Any]:
        """The answer of an instant query: ``status`` and ``data`` (or ``errorType`` and ``error``)."""
        return self.api("query", query=expr)

    def query_vector(self, expr: str) -> list[dict[str, Any]]:
        """The samples of an instant query that must succeed."""
        answer = self.query(expr)
        if answer.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result
