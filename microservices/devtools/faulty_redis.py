"""The chaos run's Redis and every fault done to it: stopped and started again on its AOF, paused, out of memory, a
read-only replica, its password rotated; and the restoration of a healthy, writable server with the current password.

One redis-server with ``--appendonly yes --appendfsync always`` (so a restart keeps every write it acknowledged) and
``--requirepass``. Faults overlap in time, but their commands are serialised by one lock that a restart holds while
Redis is down: a command is never sent to a server that is not there, and a rotation never races a restart (the
password a restarted server comes back with is always the current one).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from microservices.devtools.redis_server import RedisServer
from microservices.devtools.rotating_password import RotatingPassword, client

T = TypeVar("T")
AOF = ("--appendonly", "yes", "--appendfsync", "always")
#: How long a fault's command is retried (Redis paused, or still loading its AOF) before the fault gives up.
ADMIN_PATIENCE_SEC = 30.0
#: Above every pause a fault makes (a command may wait out a CLIENT PAUSE ALL).
ADMIN_SOCKET_TIMEOUT_SEC = 15.0
#: What maxmemory is set below the memory in use, for an OOM burst.
OOM_MARGIN_BYTES = 128 * 1024


class FaultyRedis:
    """``with FaultyRedis(port, password, closed_port) as r:`` — the server, its admin client and its faults.

    ``closed_port`` is a port nothing will ever listen on (the caller holds it bound): a replica of it can never
    sync, so a READONLY burst never replaces the data."""

    def __init__(self, port: int, password: RotatingPassword, closed_port: int) -> None:
        self.password = password
        self.closed_port = closed_port
        self.server = RedisServer(extra_args=[*AOF, "--requirepass", password.current], port=port)
        self.port = port
        self._lock = threading.Lock()
        self._admin: redis.Redis | None = None

    def __enter__(self) -> FaultyRedis:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._admin is not None:
            self._admin.close()
        self.server.close()

    def client(self, **options: object) -> redis.Redis:
        return client(self.port, self.password, **options)  # type: ignore[arg-type]

    def _run(self, command: Callable[[redis.Redis], T]) -> T:
        """``command`` on the admin client, under the lock, sent again until Redis takes it."""
        deadline = time.monotonic() + ADMIN_PATIENCE_SEC
        with self._lock:
            while True:
                if self._admin is None:
                    self._admin = self.client(socket_timeout=ADMIN_SOCKET_TIMEOUT_SEC)
                try:
                    return command(self._admin)
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    # --- faults ----------------------------------------------------------------------------------------------------

    def restart(self, down_sec: float) -> None:
        """SIGTERM (Redis writes its AOF and exits), ``down_sec`` with nothing on the port, start on the same port and
        directory: back with every write it acknowledged."""
        with self._lock:
            self.server.stop()
            time.sleep(down_sec)
            self.server.start(timeout=60)

    def pause(self, seconds: float, *, writes_only: bool) -> None:
        """``CLIENT PAUSE`` for ``seconds``: ``WRITE`` holds writes (and blocking reads), ``ALL`` every command."""
        self._run(lambda r: r.client_pause(int(seconds * 1000), all=not writes_only))

    def refuse_writes_for_memory(self) -> int:
        """``maxmemory`` just below the memory in use (with ``noeviction``): every write that needs memory is refused
        with OOM. Returns the limit set."""

        def squeeze(r: redis.Redis) -> int:
            used = int(r.info("memory")["used_memory"])
            limit = max(1, used - OOM_MARGIN_BYTES)
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", str(limit))
            return limit

        return self._run(squeeze)

    def accept_writes_for_memory(self) -> None:
        self._run(lambda r: r.config_set("maxmemory", "0"))

    def make_replica(self) -> None:
        """``REPLICAOF`` a port nobody listens on: writes get READONLY; the data stays (no sync ever happens)."""
        self._run(lambda r: r.replicaof("127.0.0.1", self.closed_port))

    def make_primary(self) -> None:
        self._run(lambda r: r.replicaof("NO", "ONE"))

    def rotate_password(self, new: str) -> None:
        """``CONFIG SET requirepass``, then ``CLIENT KILL TYPE normal``: every connection must authenticate again, and
        only those that know the new password can. A restart from now on starts with it too."""

        def rotate(r: redis.Redis) -> None:
            self.server.extra_args[-1] = new  # --requirepass's value, for the next restart
            r.config_set("requirepass", new)
            self.password.rotate(new)
            r.client_kill_filter(_type="normal")  # not this client: SKIPME is the default

        self._run(rotate)

    def restore(self) -> None:
        """A writable primary with no memory limit and the current password, whatever faults were cut short."""

        def heal(r: redis.Redis) -> None:
            r.config_set("maxmemory", "0")
            r.replicaof("NO", "ONE")
            r.config_set("requirepass", self.password.current)
            r.client_unpause()

        self._run(heal)


def reserve_closed_port(port: int = 0) -> socket.socket:
    """A socket bound to a loopback port and never listening: connections to it are refused, and no other process can
    take the port while the socket is held."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    return sock
