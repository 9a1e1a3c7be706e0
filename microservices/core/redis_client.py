"""The Redis connection both daemons use: one place for timeouts, protocol, command retry and reconnect backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.client import Pipeline
from redis.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from microservices.core.settings import CommonSettings

log = logging.getLogger(__name__)

#: A single Redis or a Redis Cluster; both expose the commands and pipelines the daemons use.
RedisClient = redis.Redis | RedisCluster
AnyPipeline = Pipeline | ClusterPipeline

#: Explicit, whatever the redis-py version's defaults are. A call to a Redis that accepts connections but never
#: answers gives up after this long, so a SIGTERM is honoured, and --once gives up, within the times SPEC §5 sets.
SOCKET_TIMEOUT_SEC = 2.0
CONNECT_TIMEOUT_SEC = 2.0
#: RESP2: the reply shapes the code is written against, explicit rather than the library's default of the day.
PROTOCOL = 2
#: No retry inside redis-py: its connection and command retries nest (each multiplying the socket timeout), which
#: turned one hung call into 45 s. The loop runner alone retries, with jittered backoff, and counts every failure.
COMMAND_RETRIES = 0
#: First step of the reconnect backoff; it doubles (with full jitter) up to ``REDIS_BACKOFF_MAX_SEC``.
BACKOFF_BASE_SEC = 0.1

#: What a failed Redis call raises: the loop runner catches these, counts them and backs off. redis-py's cluster client
#: raises RedisClusterException (not a RedisError) when no node of the cluster answers.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException, OSError)


def reconnect_backoff(settings: CommonSettings) -> ExponentialWithJitterBackoff:
    """Jittered exponential backoff capped at ``REDIS_BACKOFF_MAX_SEC``, for the loop runner's retries."""
    return ExponentialWithJitterBackoff(cap=settings.redis_backoff_max_sec, base=BACKOFF_BASE_SEC)


def connect(settings: CommonSettings, *, client_name: str, socket_timeout: float = SOCKET_TIMEOUT_SEC) -> RedisClient:
    """A client for the configured Redis. Nothing is sent until the first command.

    With ``REDIS_SENTINELS``, redis-py's :class:`~redis.sentinel.Sentinel` finds the master: each new connection asks
    the sentinels where it is, and a connection to a master that was demoted (its write refused as READONLY) is
    dropped, so the loop runner's next retry reaches the new master by itself."""
    command_retry = Retry(NoBackoff(), COMMAND_RETRIES)
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": CONNECT_TIMEOUT_SEC,
        "protocol": PROTOCOL,
        "retry": command_retry,
        "decode_responses": False,
        "health_check_interval": 30,
    }
    if not settings.redis_cluster:
        options["client_name"] = client_name
    if settings.redis_sentinels is not None:
        return _sentinel_master(settings, options)
    cls: type[redis.Redis] | type[RedisCluster] = RedisCluster if settings.redis_cluster else redis.Redis
    if settings.redis_url:
        return cls.from_url(settings.redis_url, **options)
    options.update(host=settings.redis_host, port=settings.redis_port, password=settings.redis_password)
    if not settings.redis_cluster:
        options["db"] = settings.redis_db
    return cls(**options)


def _sentinel_master(settings: CommonSettings, options: dict[str, Any]) -> redis.Redis:
    """The master named ``REDIS_SENTINEL_MASTER``, found through the sentinels; the sentinels are asked with the
    same timeouts and no retry of their own (the loop runner retries), with their own password."""
    sentinel_options = {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": CONNECT_TIMEOUT_SEC,
        "protocol": PROTOCOL,
        "retry": Retry(NoBackoff(), COMMAND_RETRIES),
        "password": settings.redis_sentinel_password,
    }
    sentinel = Sentinel(list(settings.sentinel_addresses), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]  # untyped upstream
    master = sentinel.master_for(  # type: ignore[no-untyped-call]  # untyped upstream
        settings.redis_sentinel_master, password=settings.redis_password, db=settings.redis_db, **options
    )
    return cast(redis.Redis, master)


def describe_target(settings: CommonSettings) -> str:
    """Where the client connects, for logs: never the password."""
    if settings.redis_sentinels is not None:
        return f"sentinel master {settings.redis_sentinel_master} via {settings.redis_sentinels} db {settings.redis_db}"
    kind = "cluster " if settings.redis_cluster else ""
    if settings.redis_url:
        parts = urlsplit(settings.redis_url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return kind + urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return f"{kind}redis://{settings.redis_host}:{settings.redis_port}/{settings.redis_db}"


def scan_pages(client: RedisClient, *, match: bytes, count: int, type_: str) -> Iterator[list[bytes]]:
    """``SCAN`` one page (one round trip) at a time, every primary of a cluster in turn, so that a caller can stop
    between two round trips: over a keyspace of millions, or a slow link, a whole scan can outlast the 5 s a SIGTERM
    allows (SPEC §5). redis-py's ``scan_iter`` hides its pages, and skips silently over the many that match nothing."""
    if isinstance(client, RedisCluster):
        for node in client.get_primaries():  # type: ignore[no-untyped-call]  # untyped upstream
            node_cursor = 0
            while True:
                # the cluster client answers a node's SCAN with its cursor in a dict by node name (typed as a plain one)
                reply: Any = client.scan(cursor=node_cursor, match=match, count=count, _type=type_, target_nodes=node)
                cursors, keys = reply
                yield cast(list[bytes], keys)
                node_cursor = int(cursors[node.name])
                if node_cursor == 0:
                    break
        return
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor=cursor, match=match, count=count, _type=type_)
        yield cast(list[bytes], keys)  # decode_responses=False: bytes
        if cursor == 0:
            return


def queue_script(pipe: AnyPipeline, command: str, script: str, keys: Sequence[object], args: Sequence[object]) -> None:
    """Queue ``EVAL``/``EVALSHA`` of ``script`` (its body or SHA) on ``keys`` with ``args``.

    On a cluster pipeline the node is named here, from the first key: redis-py's cluster pipeline otherwise asks
    the server for a script's keys (``COMMAND GETKEYS``: a script's keys are "movable"), one round trip per script
    call, which made a proposer loop on a cluster three to four times as long as on one Redis."""
    execute = cast(Callable[..., object], pipe.execute_command)  # untyped on the cluster pipeline
    if isinstance(pipe, ClusterPipeline) and keys:
        node = pipe.get_node_from_key(keys[0])  # type: ignore[no-untyped-call]  # untyped upstream
        execute(command, script, len(keys), *keys, *args, target_nodes=node)
    else:
        execute(command, script, len(keys), *keys, *args)
