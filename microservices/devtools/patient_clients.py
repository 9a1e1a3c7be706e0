"""Producers' clients: every command sent again until Redis accepts it, as a producer that must not drop a plan does,
on one Redis, on the master the sentinels name, or on a Redis Cluster; and how to get one (:data:`Connect`).

One retry loop (:class:`Patient`) is mixed into redis-py's client classes: :class:`PatientRedis` (one Redis, or the
master a ``connection_pool`` leads to) and :class:`PatientCluster`, which differ only in what they are refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster as ClusterClient
from redis.exceptions import ClusterDownError, MasterDownError, RedisClusterException, TryAgainError
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from microservices.devtools.plans import text
from microservices.devtools.redis_sentinel import MASTER_NAME, Address, sentinel_manager

#: How long a refused producer command waits before it is sent again: short, so that plans land as soon as Redis
#: accepts writes again, ahead of a governor still in its reconnect backoff.
RETRY_SEC = 0.01
#: What a refused write looks like to a producer: Redis down or paused past the timeout, out of memory, a replica.
REFUSED: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError, redis.ReadOnlyError,
)  # fmt: skip
#: What a cluster refuses while a master is down or being replaced, and how long a command waits then.
CLUSTER_REFUSED: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, ClusterDownError, MasterDownError,
    TryAgainError, RedisClusterException,
)  # fmt: skip
CLUSTER_RETRY_SEC = 0.02
#: No retries inside redis-py: their backoff would delay the plans' landing.
NO_RETRY: dict[str, Any] = {"protocol": 2, "socket_connect_timeout": 1, "retry": Retry(NoBackoff(), 0)}


class ProducerStoppedError(Exception):
    """The producer was asked to stop; raised out of its next command."""


class Patient:
    """Mixed in before a redis-py client class: every command is sent again, every :attr:`retry_sec`, while it is
    refused with one of :attr:`refusals`, until ``stop`` is set (then :class:`ProducerStoppedError`)."""

    refusals: tuple[type[Exception], ...] = REFUSED
    retry_sec: float = RETRY_SEC

    def _be_patient(self, stop: threading.Event) -> None:
        """Set before the client class's own start-up commands (a cluster's) come through :meth:`execute_command`."""
        self._stop = stop
        self.refused = 0
        #: The id of every XADD Redis acknowledged: what it must still hold after any fault.
        self.accepted: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        while True:
            if self._stop.is_set():
                raise ProducerStoppedError
            try:
                reply = super().execute_command(*args, **options)  # type: ignore[misc]  # the client class's
            except self.refusals:
                self.refused += 1
                time.sleep(self.retry_sec)
                continue
            if args and args[0] == "XADD":
                self.accepted.append(text(reply))
            return reply


class PatientRedis(Patient, redis.Redis):
    """A patient client of one Redis (``127.0.0.1`` unless ``host``), or of the master ``connection_pool`` leads to.
    It has no socket timeout, so a paused Redis is waited for rather than written to twice."""

    def __init__(self, stop: threading.Event, **options: Any) -> None:
        self._be_patient(stop)
        if "connection_pool" not in options:
            options = {"host": "127.0.0.1", **NO_RETRY, **options}
        redis.Redis.__init__(self, **options)


class PatientCluster(Patient, ClusterClient):
    """A patient cluster client: a master being failed over refuses, or does not answer, for a few seconds."""

    refusals = CLUSTER_REFUSED
    retry_sec = CLUSTER_RETRY_SEC

    def __init__(self, stop: threading.Event, **options: Any) -> None:
        self._be_patient(stop)
        ClusterClient.__init__(self, **options)


PatientClient = PatientRedis | PatientCluster
#: How a producer gets its client of the current master, given the event that stops it.
Connect = Callable[[threading.Event], PatientClient]


def on_port(port: int, **options: Any) -> Connect:
    """One Redis at ``port``."""
    return lambda stop: PatientRedis(stop, port=port, **options)


def through_sentinels(sentinels: Sequence[Address], master_name: str = MASTER_NAME) -> Connect:
    """The master the sentinels name, asked again on each new connection: across a failover it writes to the new
    master once they name it."""

    def connect(stop: threading.Event) -> PatientClient:
        pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]  # untyped upstream
            master_name, sentinel_manager(sentinels), **NO_RETRY
        )
        return PatientRedis(stop, connection_pool=pool)

    return connect


def on_cluster(host: str, port: int) -> Connect:
    """The Redis Cluster a node at ``host:port`` belongs to."""
    return lambda stop: PatientCluster(
        stop, host=host, port=port, protocol=2, socket_timeout=2, socket_connect_timeout=1
    )
