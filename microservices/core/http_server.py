"""The HTTP endpoint of both daemons: ``/metrics`` for Prometheus and ``/healthz``; every other path is 404."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger(__name__)


class HealthState:
    """Healthy while the last successful loop is younger than ``max_age_sec``; shared between loop and server."""

    def __init__(self, service: str, max_age_sec: float, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.max_age_sec = max_age_sec
        self._clock = clock
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._lock = threading.Lock()

    def mark_success(self) -> float:
        now = self._clock()
        with self._lock:
            self._last_success = now
            self._last_error = None
        return now

    def mark_error(self, kind: str) -> None:
        with self._lock:
            self._last_error = kind

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        now = self._clock()
        with self._lock:
            last, error = self._last_success, self._last_error
        age = None if last is None else now - last
        healthy = age is not None and age < self.max_age_sec
        body: dict[str, Any] = {
            "status": "ok" if healthy else "unhealthy",
            "service": self.service,
            "last_success_ts": last,
            "last_success_age_sec": None if age is None else round(age, 3),
            "max_age_sec": self.max_age_sec,
        }
        if error is not None:
            body["last_error"] = error
        return healthy, body


@dataclass(frozen=True)
class _Routes:
    registry: CollectorRegistry
    health: HealthState


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, content_type, encoder(self.server.routes.registry))
        elif path == "/healthz":
            healthy, body = self.server.routes.health.snapshot()
            self._send(200 if healthy else 503, "application/json", json.dumps(body).encode())
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.client_address[0], *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: _Routes


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` from a background thread until :meth:`close`."""

    def __init__(self, addr: str, port: int, registry: CollectorRegistry, health: HealthState) -> None:
        server_class = _Server6 if ":" in addr else _Server
        self._server = server_class((addr, port), _Handler)
        self._server.routes = _Routes(registry, health)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="metrics-http", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
