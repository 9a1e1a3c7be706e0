"""Fixtures shared by every test: a private redis-server for the whole session (never the shared one on 6379)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
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
