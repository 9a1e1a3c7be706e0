"""The throwaway redis-server the tests, demo and benchmark rely on: it never leaves a process behind."""

from __future__ import annotations

import pytest

from microservices.devtools.redis_server import RedisServer


def test_a_server_that_cannot_start_leaves_nothing_running() -> None:
    server = RedisServer(extra_args=["--no-such-option", "1"])  # refused by redis-server, which exits at once
    with pytest.raises(RuntimeError, match="exited"), server:
        pass
    assert server._process is None
    assert not server._dir.exists()
