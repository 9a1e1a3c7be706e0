"""The HTTP endpoint of both daemons: ``/metrics`` for Prometheus and ``/healthz``; every other path is 404."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from microservices.core.version import build_info

log = logging.getLogger(__name__)


class HealthState:
    """Healthy while the last successful loop is younger than ``max_age_sec`` and nothing holds the daemon back (see
    :meth:`set_blocked`); shared between loop and server."""

    def __init__(self, service: str, max_age_sec: float, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.max_age_sec = max_age_sec
        self._clock = clock
        self._last_success: float | None = None
        self._last_error: str | None = None
        self._blocked: str | None = None
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

    def set_blocked(self, reason: str | None) -> None:
        """Unhealthy, saying ``reason``, until called again with None, however recent the last successful loop: for a
        daemon whose loops succeed but that deliberately holds its work back (the governor waiting for replicas)."""
        with self._lock:
            self._blocked = reason

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        now = self._clock()
        with self._lock:
            last, error, blocked = self._last_success, self._last_error, self._blocked
        age = None if last is None else now - last
        build = build_info()
        healthy = age is not None and age < self.max_age_sec and blocked is None
        body: dict[str, Any] = {
            "status": "ok" if healthy else "unhealthy",
            "service": self.service,
            "last_success_ts": last,
            "last_success_age_sec": None if age is None else round(age, 3),
            "max_age_sec": self.max_age_sec,
            # which build answers: an operator checking an upgrade or a rollback sees it here
            "version": build.version,
            "commit": build.commit,
        }
        if error is not None:
            body["last_error"] = error
        if blocked is not None:
            body["blocked"] = blocked
        return healthy, body


@dataclass(frozen=True)
class _Routes:
    registry: CollectorRegistry
    health: HealthState


#: The only methods answered; any other known method is 405 with ``Allow``, an unknown one the stdlib's 501.
ALLOWED_METHODS = "GET, HEAD"
#: What the ``Server`` header says: no Python or library version for a scanner to match against advisories.
SERVER_BANNER = "p31"
#: A connection that sends nothing for this long is closed: each one holds a thread and a file descriptor, and a
#: scraper that opens connections and forgets them must not exhaust either.
IDLE_TIMEOUT_SEC = 10.0


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_SEC
    #: The stdlib's own error replies (400, 414, 431, 501) as one plain line, never HTML.
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def version_string(self) -> str:
        return SERVER_BANNER

    def _route(self) -> tuple[int, str, bytes]:
        """Status, content type and body for the request's path; the query string is ignored."""
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            return 200, content_type, encoder(self.server.routes.registry)
        if path == "/healthz":
            healthy, body = self.server.routes.health.snapshot()
            return 200 if healthy else 503, "application/json", json.dumps(body).encode()
        return 404, "text/plain; charset=utf-8", b"not found\n"

    def do_GET(self) -> None:
        self._send(*self._route())

    def do_HEAD(self) -> None:
        status, content_type, body = self._route()
        self._send(status, content_type, body, head=True)

    def _not_allowed(self) -> None:
        """405 for a method that would change something: nothing here can be changed over HTTP. The connection is
        closed, since any request body was not read."""
        self.close_connection = True
        self.send_response(405)
        self.send_header("Allow", ALLOWED_METHODS)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(b"method not allowed\n")))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"method not allowed\n")

    # the stdlib dispatches on these names
    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

    def _send(self, status: int, content_type: str, body: bytes, *, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.client_address[0], *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    routes: _Routes

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets or vanishes mid-request: one debug line through logging. The stdlib default prints
        a traceback straight to stderr, which breaks ``--log-format json`` (one JSON object per line)."""
        exc = sys.exc_info()[1]
        log.debug("http client %s: %s: %s", client_address[0], type(exc).__name__, exc)


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

    def serve(self, registry: CollectorRegistry, health: HealthState) -> None:
        """Answer from ``registry`` and ``health`` from now on: a daemon serves while it waits for Redis to be able
        to build its service, then switches to the service's own (one attribute assignment: atomic for readers)."""
        self._server.routes = _Routes(registry, health)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
