"""Fixtures shared by every test: a private redis-server for the whole session (never the shared one on 6379); and the
last lines of a run, which say whether the deployment was shown under a real systemd (issue 11): a machine that
cannot boot one skips ``test_deploy_systemd.py``, and that must never pass unnoticed. That hook lives here, not beside
the deployment tests: with pytest-xdist (``make test``) the process that reports loads only this top conftest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _pytest.terminal import TerminalReporter
from hypothesis import HealthCheck, settings

from microservices.devtools.redis_server import RedisServer
from tests.daemons import NotifySocket


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session's Redis, emptied before each test."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """A stand-in for systemd's notification socket, for a daemon's ``NOTIFY_SOCKET``."""
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


# These machines are shared and noisy: judge properties by their outcome, never by how fast examples are generated.
settings.register_profile("p31", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("p31")


SYSTEMD_TESTS = "test_deploy_systemd.py"


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if SYSTEMD_TESTS in r.nodeid]
    ran = [
        r
        for kind in ("passed", "failed", "error")
        for r in terminalreporter.stats.get(kind, [])
        if SYSTEMD_TESTS in getattr(r, "nodeid", "") and getattr(r, "when", "call") == "call"
    ]
    if skipped and not ran:
        reason = skipped[0].longrepr[2] if isinstance(skipped[0].longrepr, tuple) else str(skipped[0].longrepr)
        terminalreporter.write_sep("!", "DEPLOYMENT NOT SHOWN UNDER A REAL SYSTEMD", red=True)
        terminalreporter.write_line(f"{len(skipped)} tests of {SYSTEMD_TESTS} were skipped: {reason}")
        terminalreporter.write_line("run make test as root on a machine with overlayfs (.ci/run does) to show them")
    elif ran:
        passed = sum(1 for r in ran if r.outcome == "passed")
        terminalreporter.write_line(f"under a real systemd: {passed} of {len(ran)} deployment tests passed")
