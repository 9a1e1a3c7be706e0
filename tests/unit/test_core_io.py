"""The shared edges: log throttle, systemd notification, the /metrics + /healthz server, per-symbol series."""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from microservices.core import http_server
from microservices.core.http_server import HealthState, MetricsServer
from microservices.core.logs import JsonFormatter, LogThrottle
from microservices.core.symbol_metrics import SymbolSeries, label_text
from microservices.core.systemd import WATCHDOG_EVERY_SEC, SystemdNotifier


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_throttle_lets_one_message_through_per_interval_and_counts_the_rest() -> None:
    clock = FakeClock()
    throttle = LogThrottle(60.0, clock)
    assert throttle.admit("invalid_target") == 0
    assert throttle.admit("invalid_target") is None
    assert throttle.admit("invalid_target") is None
    assert throttle.admit("other") == 0
    clock.now += 60
    assert throttle.admit("invalid_target") == 2


def test_json_log_lines_are_one_object_each() -> None:
    record = logging.makeLogRecord({"msg": "loop %s", "args": ("done",), "levelname": "INFO", "name": "x", "sym": "B"})
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["msg"], entry["level"], entry["logger"], entry["sym"]) == ("loop done", "info", "x", "B")


def test_notifier_sends_each_state_to_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(1)
        notifier = SystemdNotifier(str(path))
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
        assert [sock.recv(100) for _ in range(3)] == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]


def test_notifier_supports_the_abstract_namespace() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0p31-test-notify")
        sock.settimeout(1)
        SystemdNotifier("@p31-test-notify").ready()
        assert sock.recv(100) == b"READY=1"


class SteppingClock:
    """A monotonic clock that moves ``step`` seconds at every reading."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def _received(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    got = []
    while True:
        try:
            got.append(sock.recv(100))
        except BlockingIOError:
            return got


def test_a_notify_socket_nobody_reads_never_blocks_the_loop(tmp_path: Path) -> None:
    """Issue 10: the kernel queues a few hundred datagrams; a blocking sendto to a full queue waited for ever, and the
    governor with it, deaf to SIGTERM."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))  # bound, never read while the notifier sends: a stalled PID 1, or a test's socket
        notifier = SystemdNotifier(str(path), clock=SteppingClock(step=2.0))

        def ping_until_one_is_dropped() -> None:
            for _ in range(100_000):
                notifier.watchdog()
                if notifier.dropped:
                    return

        sender = threading.Thread(target=ping_until_one_is_dropped, daemon=True)
        sender.start()
        sender.join(timeout=30)
        assert not sender.is_alive(), "WATCHDOG=1 blocked on a full notify queue"
        assert notifier.dropped == 1
        received = _received(sock)
        assert len(received) > 5 and set(received) == {b"WATCHDOG=1"}


def test_ready_waits_a_moment_for_room_then_gives_up_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = SystemdNotifier(str(path), clock=SteppingClock(step=0.3))
        while notifier.notify("WATCHDOG=1"):  # fill the queue
            pass
        notifier.ready()
        assert notifier.dropped == 2
        assert "'READY=1' dropped" in caplog.text
        assert b"READY=1" not in _received(sock)


def test_watchdog_pings_at_most_once_a_second_however_fast_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    clock = SteppingClock(step=0.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = SystemdNotifier(str(path), clock=clock)
        for _ in range(5):
            notifier.watchdog()
        clock.now += WATCHDOG_EVERY_SEC
        notifier.watchdog()
        notifier.watchdog()
        assert _received(sock) == [b"WATCHDOG=1", b"WATCHDOG=1"]


def test_notifier_without_socket_is_a_no_op() -> None:
    notifier = SystemdNotifier("")
    assert not notifier.enabled
    notifier.ready()  # nothing to send to, nothing raised


@pytest.fixture
def served() -> Iterator[tuple[MetricsServer, HealthState, FakeClock]]:
    registry = CollectorRegistry()
    Gauge("p31_test_gauge", "a gauge", registry=registry).set(3)
    clock = FakeClock()
    health = HealthState("test", 30.0, clock)
    server = MetricsServer("127.0.0.1", 0, registry, health).start()
    yield server, health, clock
    server.close()


def _get(server: MetricsServer, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.address[1]}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_are_served(served: tuple[MetricsServer, HealthState, FakeClock]) -> None:
    server, _, _ = served
    status, body = _get(server, "/metrics")
    assert status == 200
    assert "p31_test_gauge 3.0" in body


def test_health_follows_the_last_successful_loop(served: tuple[MetricsServer, HealthState, FakeClock]) -> None:
    server, health, clock = served
    status, body = _get(server, "/healthz")
    assert (status, json.loads(body)["status"]) == (503, "unhealthy")
    health.mark_success()
    clock.now += 29.9
    status, body = _get(server, "/healthz")
    assert status == 200
    assert json.loads(body)["last_success_age_sec"] == pytest.approx(29.9)
    clock.now += 0.1
    assert _get(server, "/healthz")[0] == 503
    health.mark_error("ConnectionError")
    assert json.loads(_get(server, "/healthz")[1])["last_error"] == "ConnectionError"


def test_health_is_503_while_blocked_whatever_the_loops(served: tuple[MetricsServer, HealthState, FakeClock]) -> None:
    server, health, _ = served
    health.mark_success()
    health.set_blocked("waiting for replicas")
    status, body = _get(server, "/healthz")
    assert (status, json.loads(body)["blocked"]) == (503, "waiting for replicas")
    health.mark_success()
    assert _get(server, "/healthz")[0] == 503
    health.set_blocked(None)
    status, body = _get(server, "/healthz")
    assert status == 200 and "blocked" not in json.loads(body)


@pytest.mark.parametrize("path", ["/", "/metrics/x", "/health", "/favicon.ico", "/../etc/passwd"])
def test_other_paths_are_not_found(served: tuple[MetricsServer, HealthState, FakeClock], path: str) -> None:
    assert _get(served[0], path)[0] == 404


def test_an_idle_connection_is_closed_after_the_idle_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle keep-alive connection (or one that never sends a request) holds a thread and a descriptor: it is
    closed after IDLE_TIMEOUT_SEC, shortened here, while a fresh request is still answered."""
    assert http_server._Handler.timeout == http_server.IDLE_TIMEOUT_SEC == 10.0
    monkeypatch.setattr(http_server._Handler, "timeout", 0.3)
    server = MetricsServer("127.0.0.1", 0, CollectorRegistry(), HealthState("test", 30.0)).start()
    try:
        with socket.create_connection(("127.0.0.1", server.address[1]), timeout=5) as idle:
            assert idle.recv(1) == b""  # closed by the server, not by our 5 s timeout
        assert _get(server, "/healthz")[0] == 503
    finally:
        server.close()


def test_per_symbol_series_are_capped_and_removed_when_the_symbol_goes_away() -> None:
    registry = CollectorRegistry()
    a = Gauge("a", "a", ["symbol"], registry=registry)
    b = Gauge("b", "b", ["symbol"], registry=registry)
    series = SymbolSeries((a, b), max_symbols=2)
    series.publish({"C": (3.0, 30.0), "A": (1.0, None), "B": (2.0, 20.0)})
    assert series.exported == {"A", "B"}
    assert registry.get_sample_value("a", {"symbol": "A"}) == 1.0
    assert registry.get_sample_value("b", {"symbol": "A"}) is None
    assert registry.get_sample_value("a", {"symbol": "C"}) is None
    series.publish({"B": (5.0, 50.0), "C": (3.0, 30.0)})
    assert registry.get_sample_value("a", {"symbol": "A"}) is None
    assert registry.get_sample_value("a", {"symbol": "C"}) == 3.0
    assert registry.get_sample_value("b", {"symbol": "B"}) == 50.0


def test_label_text_replaces_bytes_that_are_not_utf8() -> None:
    assert label_text("BTC") == "BTC"
    assert label_text("\udcff") == "\ufffd"
