"""The chaos run's network tools: the latency proxy (delay that changes at run time, bytes intact, closes passed on)
and packet loss, which only ever touches a private network namespace."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from microservices.devtools import private_network
from microservices.devtools.daemon_process import ROOT
from microservices.devtools.latency_proxy import LatencyProxy
from microservices.devtools.plans import GROUP, PLANS, settled
from microservices.devtools.redis_server import RedisServer
from microservices.devtools.scrape import metric_samples, metric_total


class EchoServer:
    """Sends back whatever it receives, on a loopback port."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept: a listener closed under it keeps listening
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def round_trip(sock: socket.socket, payload: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "closed mid-reply"
        got += chunk
    return got, time.monotonic() - started


def test_the_proxy_delays_each_way_by_the_delay_in_force_and_keeps_the_bytes(echo: EchoServer) -> None:
    with LatencyProxy(echo.port) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        _, fast = round_trip(sock, b"ping")
        proxy.delay_sec = 0.1
        _, slow = round_trip(sock, b"ping")
        assert fast < 0.05 and 0.2 <= slow < 0.5  # twice the delay: there and back
        proxy.delay_sec = 0.0
        payload = bytes(range(256)) * 8192  # 2 MiB, many chunks
        got, _ = round_trip(sock, payload)
        assert got == payload


def test_a_closed_upstream_closes_the_client_and_the_proxy_keeps_no_connection(echo: EchoServer) -> None:
    with LatencyProxy(echo.port) as proxy:
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        round_trip(sock, b"x")
        sock.close()
        deadline = time.monotonic() + 5
        while proxy._links and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not proxy._links
        echo.close()
        with socket.create_connection(("127.0.0.1", proxy.port)) as refused:
            refused.settimeout(5)
            assert refused.recv(1) == b""  # as a refused connection looks through a middlebox
        assert proxy.refused_upstream == 1


def test_packet_loss_refuses_to_touch_a_namespace_that_is_not_the_runs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(private_network.INSIDE, raising=False)
    with pytest.raises(private_network.NamespaceUnavailableError):
        private_network.PacketLoss(6379).set(10)


LOSS_PROBE = textwrap.dedent(
    """
    import socket, sys, time
    from microservices.devtools import private_network
    private_network.set_up()
    server = socket.create_server(("127.0.0.1", 21000))
    loss = private_network.PacketLoss(21000)
    loss.set(100)
    probe = socket.socket()
    probe.settimeout(1.5)
    try:
        probe.connect(("127.0.0.1", 21000))
        print("connected through 100% loss")
    except OSError:
        print("lost")
    loss.clear()
    socket.create_connection(("127.0.0.1", 21000), timeout=1.5).close()
    print("through after clear")
    """
)


def test_packet_loss_drops_inside_the_private_namespace_and_clears() -> None:
    """Needs root, ``unshare`` and ``nft`` (``.ci/run`` installs them), as the chaos run does."""
    assert private_network.why_unavailable() is None, private_network.why_unavailable()
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", LOSS_PROBE], capture_output=True, text=True, timeout=30,
        cwd=ROOT, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT), private_network.INSIDE: "1"},
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["lost", "through after clear"]


def test_metric_samples_reads_every_series_of_a_metric_with_its_labels() -> None:
    page = (
        "# TYPE quantum_govern_outcomes_total counter\n"
        'quantum_govern_outcomes_total{event="permit",reason="permitted"} 3.0\n'
        'quantum_govern_outcomes_total{event="skip",reason="not_execute"} 2.0\n'
        "# TYPE p29_shadow_multiplier gauge\n"
        'p29_shadow_multiplier{symbol="S1"} 1.32\n'
    )
    assert metric_total(page, "quantum_govern_outcomes_total") == 5.0
    assert metric_total(page, "quantum_govern_outcomes") == 5.0
    assert metric_samples(page, "p29_shadow_multiplier") == [({"symbol": "S1"}, 1.32)]
    assert metric_total("", "p29_shadow_symbols") == 0.0


def test_settled_judges_the_group_exactly_where_redis_lag_estimate_is_stale() -> None:
    """Redis 7.0 replays a consumer group's ``entries-read`` stale from an AOF rewritten before a restart: XINFO GROUPS'
    lag then stays above 0 with every entry delivered and acknowledged. The chaos run restarts Redis often enough for
    its AOF to be rewritten, so :func:`settled` judges the group by the ids."""
    with RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        client = server.client()
        client.xgroup_create(PLANS, GROUP, id="0", mkstream=True)
        for i in range(10):
            client.xadd(PLANS, {"plan_id": f"p{i}"})
        client.xreadgroup(GROUP, "c", {PLANS: ">"}, count=5)
        client.bgrewriteaof()
        wait = time.monotonic() + 10
        while client.info("persistence")["aof_rewrite_in_progress"] and time.monotonic() < wait:
            time.sleep(0.05)
        client.xreadgroup(GROUP, "c", {PLANS: ">"}, count=2)
        server.stop()
        server.start()
        client = server.client()
        delivered: Any = client.xreadgroup(GROUP, "c", {PLANS: ">"})
        client.xack(PLANS, GROUP, *[entry_id for entry_id, _ in delivered[0][1]])
        client.xack(PLANS, GROUP, *[row["message_id"] for row in client.xpending_range(PLANS, GROUP, "-", "+", 100)])
        assert settled(client)  # whatever XINFO GROUPS' lag says (7.0.15: 2)
        client.xadd(PLANS, {"plan_id": "late"})
        assert not settled(client)
