"""A Redis Sentinel topology of real processes on loopback: one master, two replicas, three sentinels (quorum 2), with
timeouts short enough that a SIGKILL of the master is followed by a promotion within a few seconds.

For the tests, the benchmarks and the chaos run (issue 14). ``with SentinelTopology() as topology:`` starts it;
:attr:`~SentinelTopology.sentinels_env` is the daemons' ``REDIS_SENTINELS``; :meth:`~SentinelTopology.kill_master` and
:meth:`~SentinelTopology.wait_for_failover` make and time a failover.

On loopback a failover rarely loses a write: the replicas are a few microseconds behind. To lose some on purpose, the
master is reached through a :class:`~microservices.devtools.latency_proxy.LatencyProxy` (by the replicas, the sentinels
and the clients alike: a replica that replicates from an address other than the master's, as the sentinels know it, is
"fixed" by them after ``failover-timeout``), and :meth:`~SentinelTopology.hold_replication` keeps the master's
replication stream in the proxy: writes then reach the master and not the replicas, ``WAIT`` times out, and
:meth:`~SentinelTopology.kill_master` drops what was held with the master. Once promoted, a replica is reached directly.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self, cast

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry
from redis.sentinel import Sentinel

from microservices.devtools.latency_proxy import LatencyProxy
from microservices.devtools.redis_server import RedisServer
from microservices.devtools.server_process import StartedAndClosed

MASTER_NAME = "mymaster"
QUORUM = 2
#: A master silent this long is subjectively down; ODOWN and the election follow within a second or two.
DOWN_AFTER_MS = 1000
#: Also how long a failed election waits before the next attempt (twice this), so it is kept short.
FAILOVER_TIMEOUT_MS = 3000
#: How long :meth:`SentinelTopology.start` waits for the sentinels to know both replicas and each other.
START_TIMEOUT_SEC = 20.0

Address = tuple[str, int]


def sentinel_manager(sentinels: Sequence[Address]) -> Sentinel:
    """redis-py's view of the sentinels at ``sentinels`` (each asked with a one-second timeout)."""
    return Sentinel(  # type: ignore[no-untyped-call]  # untyped upstream
        list(sentinels), sentinel_kwargs={"socket_timeout": 1, "socket_connect_timeout": 1}
    )


def sentinel_master(sentinels: Sequence[Address], master_name: str = MASTER_NAME, **options: Any) -> redis.Redis:
    """A client of the master the sentinels name, that asks them again on each new connection (redis-py's
    ``Sentinel.master_for``), as the daemons connect; no retries of its own."""
    defaults: dict[str, Any] = {"protocol": 2, "socket_connect_timeout": 1, "retry": Retry(NoBackoff(), 0)}
    manager = sentinel_manager(sentinels)
    return cast(redis.Redis, manager.master_for(master_name, **{**defaults, **options}))  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Failover:
    """A promotion as the sentinels announced it; times are ``time.time()``, comparable with the daemons' timestamps."""

    address: Address
    #: When the master was killed by :meth:`SentinelTopology.kill_master` (None if it died otherwise).
    killed_at: float | None
    #: ``+promoted-slave``: the replica answers as master, and the leading sentinel names it to clients.
    promoted_at: float
    #: ``+switch-master``: the failover is over, the other replica is reconfigured.
    switched_at: float


class RedisSentinel(RedisServer):
    """One ``redis-server sentinel.conf --sentinel`` monitoring ``master_name`` at ``127.0.0.1:master_port``; its
    configuration file is its own (a sentinel rewrites it) in its temporary directory."""

    def __init__(
        self,
        master_port: int,
        master_name: str = MASTER_NAME,
        *,
        quorum: int = QUORUM,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
    ) -> None:
        super().__init__()
        self.config = "\n".join([
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master_name} 1",
            "",
        ])  # fmt: skip

    def start(self, timeout: float = 10.0) -> Self:
        conf = self._dir / "sentinel.conf"
        conf.write_text(self.config)
        args = [
            self.binary, str(conf), "--sentinel", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self._dir), "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip
        return self._launch(
            args, self._dir / "stdout.log", lambda: self._wait_until_up(time.monotonic() + timeout, timeout)
        )


class SentinelTopology(StartedAndClosed):
    """``with SentinelTopology() as topology:`` — a master (behind a proxy, see the module's doc), two replicas and
    three sentinels, every one a real process on a free loopback port; :meth:`close` leaves none of them, nor their
    directories.

    ``extra_args`` go to the master and the replicas alike (a replica may become master). With ``proxied=False`` the
    master is reached directly, as in production (a benchmark's latencies without the proxy's), and cannot be held."""

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        master_name: str = MASTER_NAME,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
        proxied: bool = True,
    ) -> None:
        self.master_name = master_name
        self.proxied = proxied
        # no 5 s wait for more replicas before a diskless full sync (Redis 7's default): they come up in a moment
        self._extra_args = ["--repl-diskless-sync-delay", "0", *extra_args]
        self._timeouts = (down_after_ms, failover_timeout_ms)
        self.master = RedisServer(self._extra_args)
        self.replicas: list[RedisServer] = []
        self.sentinels: list[RedisSentinel] = []
        self.proxy: LatencyProxy | None = None
        self._events: list[tuple[float, str, str]] = []
        self._events_lock = threading.Condition()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._killed_at: float | None = None

    # --- life ------------------------------------------------------------------------------------------------------

    def start(self) -> Self:
        self.master.start()
        master_port = self.master.port
        if self.proxied:
            self.proxy = LatencyProxy(self.master.port).start()
            master_port = self.proxy.port
        replica_args = ["--replicaof", "127.0.0.1", str(master_port), "--replica-announce-ip", "127.0.0.1"]
        for _ in range(2):
            self.replicas.append(RedisServer([*self._extra_args, *replica_args]))
            self.replicas[-1].start()
        down_after_ms, failover_timeout_ms = self._timeouts
        for _ in range(3):
            sentinel = RedisSentinel(
                master_port, self.master_name, down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms
            )
            self.sentinels.append(sentinel)
            sentinel.start()
        self._wait_until_known(time.monotonic() + START_TIMEOUT_SEC)
        self._listener = threading.Thread(target=self._listen, name="sentinel-events", daemon=True)
        self._listener.start()
        return self

    def _wait_until_known(self, deadline: float) -> None:
        """Until both replicas have synced and every sentinel sees the master, both replicas (linked, not down) and
        the other two sentinels: only then can they agree on a failover."""
        while True:
            states = [self._replica_linked(replica) for replica in self.replicas]
            states += [self._sentinel_view(sentinel) for sentinel in self.sentinels]
            if all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sentinels did not all see 2 replicas and 2 other sentinels: {states}")
            time.sleep(0.1)

    @staticmethod
    def _replica_linked(replica: RedisServer) -> bool:
        with replica.client(decode_responses=True) as client:
            info: dict[str, Any] = client.info("replication")
        return info.get("master_link_status") == "up"

    def _sentinel_view(self, sentinel: RedisSentinel) -> bool:
        with sentinel.client(decode_responses=True) as client:
            master: dict[str, Any] = client.sentinel_master(self.master_name)
            replicas: list[dict[str, Any]] = client.sentinel_slaves(self.master_name)
        healthy = [r for r in replicas if r.get("is_slave") and not r.get("is_disconnected") and not r.get("is_sdown")]
        return int(master["num-other-sentinels"]) == 2 and len(healthy) == 2

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        # the sentinels first: none may fail over a master that is merely being stopped
        for server in [*self.sentinels, *self.replicas, self.master]:
            server.close()
        if self.proxy is not None:
            self.proxy.close()

    # --- addresses and clients -------------------------------------------------------------------------------------

    @property
    def sentinels_env(self) -> str:
        """The daemons' ``REDIS_SENTINELS``: ``127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3``."""
        return ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [("127.0.0.1", sentinel.port) for sentinel in self.sentinels]

    def master_address(self) -> Address:
        """The master as the first sentinel that answers names it (``SENTINEL get-master-addr-by-name``)."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client(decode_responses=True, socket_timeout=2) as client:
                    host, port = client.sentinel_get_master_addr_by_name(self.master_name)
                return str(host), int(port)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
        raise RuntimeError("no sentinel answers")

    def server_at(self, address: Address) -> RedisServer:
        """The process that serves ``address`` (the proxy's address is the master's)."""
        port = address[1]
        if self.proxy is not None and port == self.proxy.port:
            return self.master
        for server in [self.master, *self.replicas]:
            if server.port == port:
                return server
        raise KeyError(f"no server of this topology at {address}")

    @staticmethod
    def client(address: Address, **options: Any) -> redis.Redis:
        """A plain client of one address (it follows no failover: to read the old master, say)."""
        return redis.Redis(host=address[0], port=address[1], protocol=2, **options)

    def master_client(self, **options: Any) -> redis.Redis:
        """A client of the current master, as the sentinels name it now."""
        return self.client(self.master_address(), **options)

    # --- faults ----------------------------------------------------------------------------------------------------

    def sync_replicas(self, timeout_ms: int = 5000) -> int:
        """``WAIT`` for both replicas to have every write made so far; how many did (2 unless held or down)."""
        with self.master_client() as client:
            return int(client.wait(len(self.replicas), timeout_ms))

    def hold_replication(self) -> None:
        """From now on what the master writes reaches neither replica (it stays in the proxy) until
        :meth:`release_replication`; a master killed meanwhile takes it with it. The replicas still acknowledge what
        they had, so ``WAIT`` times out."""
        if self.proxy is None or not self.master.running:
            raise RuntimeError("only the first master of a proxied topology can be held back")
        with self.master.client(decode_responses=True) as client:
            links: list[dict[str, str]] = client.client_list(_type="replica")
        ports = {int(link["addr"].rsplit(":", 1)[1]) for link in links}
        held = self.proxy.hold(ports)
        if held != len(self.replicas):
            self.proxy.release()
            raise RuntimeError(f"held {held} replication links, not {len(self.replicas)}: {links}")

    def release_replication(self) -> None:
        if self.proxy is not None:
            self.proxy.release()

    def kill_master(self) -> Address:
        """SIGKILL the current master (the sentinels notice after ``down-after-milliseconds``); its address. Whatever
        :meth:`hold_replication` kept back is dropped: the replicas never see it."""
        address = self.master_address()
        server = self.server_at(address)
        server.kill()
        self._killed_at = time.time()
        if server is self.master and self.proxy is not None:
            self.proxy.close()  # after the kill: the held bytes go nowhere, and a replica reconnecting is refused
        return address

    def wait_for_failover(self, timeout: float = 30.0) -> Failover:
        """Block until a sentinel announces ``+switch-master`` after the last :meth:`kill_master`; the new master and
        when it was promoted."""
        deadline = time.monotonic() + timeout
        since = self._killed_at if self._killed_at is not None else 0.0
        with self._events_lock:
            while True:
                events = [event for event in self._events if event[0] >= since]
                switched = [event for event in events if event[1] == "+switch-master"]
                if switched:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no +switch-master within {timeout}s of the kill; events: {events}")
                self._events_lock.wait(left)
        switched_at, _, data = switched[0]
        # "<name> <old-ip> <old-port> <new-ip> <new-port>"
        _, _, _, host, port = data.split()
        promoted = [event[0] for event in events if event[1] == "+promoted-slave"]
        return Failover(
            address=(host, int(port)), killed_at=self._killed_at,
            promoted_at=min(promoted, default=switched_at), switched_at=switched_at,
        )  # fmt: skip

    def _listen(self) -> None:
        """Record when each sentinel announces a promotion and a switch; the earliest is the leader's (the others
        learn it from its hello messages, up to two seconds later)."""
        pubsubs: list[PubSub] = []
        try:
            for sentinel in self.sentinels:
                pubsub: PubSub = sentinel.client(decode_responses=True).pubsub(  # type: ignore[no-untyped-call]
                    ignore_subscribe_messages=True
                )
                pubsub.subscribe("+promoted-slave", "+switch-master")
                pubsubs.append(pubsub)
            while not self._stop.is_set():
                for pubsub in pubsubs:
                    message = pubsub.get_message(timeout=0.01)
                    if message is not None:
                        with self._events_lock:
                            self._events.append((time.time(), str(message["channel"]), str(message["data"])))
                            self._events_lock.notify_all()
        except (redis.ConnectionError, OSError):
            pass  # a sentinel stopped: the topology is closing
        finally:
            for pubsub in pubsubs:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()
