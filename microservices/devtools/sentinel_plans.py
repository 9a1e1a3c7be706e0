"""Plans on a Sentinel-managed Redis, as producers and the apply layer see them across a failover, for the topology
tests, the benchmark and a chaos run: a producer that follows the master the sentinels name and never gives up a plan,
and an observer that reads each plan's permit key as the apply layer would and remembers every distinct value.

The plans are :func:`~microservices.devtools.plans.plan_fields`'s mix (3 % without a plan_id), so
:func:`~microservices.devtools.plans.outcome_violations` judges their outcomes on the master that survived.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from microservices.devtools.plans import (
    PLANS,
    REFUSED,
    PatientRedis,
    ProducerStoppedError,
    plan_fields,
    seed_efficiency,
    text,
)
from microservices.devtools.redis_sentinel import MASTER_NAME, Address
from microservices.governor.records import PERMIT_KEY_PREFIX

#: What a client of a master being failed over meets besides :data:`~microservices.devtools.plans.REFUSED`: no sentinel
#: names a master that answers yet (MasterNotFoundError is a ConnectionError), or a demoted one answers READONLY.
FAILOVER_ERRORS: tuple[type[Exception], ...] = (*REFUSED, redis.ResponseError, OSError)


def sentinel_master(sentinels: Sequence[Address], master_name: str = MASTER_NAME, **options: Any) -> redis.Redis:
    """A client of the master the sentinels name, that asks them again on each new connection (redis-py's
    ``Sentinel.master_for``), as the daemons connect; no retries of its own."""
    manager = Sentinel(  # type: ignore[no-untyped-call]  # untyped upstream
        list(sentinels), sentinel_kwargs={"socket_timeout": 1, "socket_connect_timeout": 1}
    )
    defaults: dict[str, Any] = {"protocol": 2, "socket_connect_timeout": 1, "retry": Retry(NoBackoff(), 0)}
    return cast(redis.Redis, manager.master_for(master_name, **{**defaults, **options}))  # type: ignore[no-untyped-call]


class PatientSentinelRedis(PatientRedis):
    """:class:`~microservices.devtools.plans.PatientRedis` (every command sent again until a master takes it) on the
    master the sentinels name: across a failover it writes to the new master once they name it."""

    def __init__(self, sentinels: Sequence[Address], stop: threading.Event, master_name: str = MASTER_NAME) -> None:
        manager = Sentinel(  # type: ignore[no-untyped-call]  # untyped upstream
            list(sentinels), sentinel_kwargs={"socket_timeout": 1, "socket_connect_timeout": 1}
        )
        pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]  # untyped upstream
            master_name, manager, protocol=2, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        # PatientRedis's own __init__ connects to one address: its state is set here, the connection is the pool's
        redis.Redis.__init__(self, connection_pool=pool)
        self._stop = stop
        self.refused = 0
        self.accepted = []


@dataclass(frozen=True)
class Published:
    """One plan as its producer sent it: the entry id the master gave it, its plan_id ("" for none), when (epoch s)."""

    entry_id: str
    plan_id: str
    at: float


class SentinelPlanProducer:
    """A thread publishing the plan mix over ``symbols`` symbols at ``rate`` plans a second (an absolute schedule, so
    a failover's stall is followed by a catch-up burst, as producers with a backlog do), until :meth:`stop`."""

    def __init__(
        self, sentinels: Sequence[Address], *, symbols: int, seed: int, rate: float, prefix: str = "p"
    ) -> None:
        self._stop = threading.Event()
        self.client = PatientSentinelRedis(sentinels, self._stop)
        self._symbols, self._seed, self._pause, self._prefix = symbols, seed, 1.0 / rate, prefix
        self.published: list[Published] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sentinel-plan-producer", daemon=True)

    def _run(self) -> None:
        rng = random.Random(self._seed)
        try:
            seed_efficiency(self.client, self._symbols, rng)
            started = time.monotonic()
            i = 0
            while not self._stop.is_set():
                wait = started + i * self._pause - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                kind = rng.random()
                fields = plan_fields(rng, i, kind, symbols=self._symbols, prefix=self._prefix)
                if kind < 0.03:
                    del fields["plan_id"]
                at = time.time()
                entry_id = text(self.client.xadd(PLANS, fields))
                self.published.append(Published(entry_id, str(fields.get("plan_id", "")), at))
                i += 1
        except ProducerStoppedError:
            pass
        except BaseException as exc:  # reported by stop(): a producer that died would make the test vacuous
            self.error = exc

    def plan_ids(self) -> list[str]:
        """Every plan_id published so far, once each, in order."""
        return [plan_id for plan_id in dict.fromkeys(p.plan_id for p in list(self.published)) if plan_id]

    def start(self) -> SentinelPlanProducer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.close()
        if self.error is not None:
            raise RuntimeError(f"the producer failed: {self.error!r}") from self.error
        if self._thread.is_alive():
            raise RuntimeError("the producer did not stop")


@dataclass
class PermitObserver:
    """The apply layer's view of permits: ``GET quantum:permit:{plan_id}`` of each plan_id, round after round, keeping
    every distinct value seen per plan_id in order. A plan_id with two values had two different permits; one seen and
    later found missing vanished (a failover lost it); one seen again after that was written again (the same bytes,
    or it would have two values).

    :meth:`look` reads once through a given client (the old master, say); :meth:`start` polls in a thread through
    ``client`` (one that follows failovers) every ``every`` seconds, over the plan_ids ``plan_ids()`` returns."""

    client: redis.Redis | None = None
    plan_ids: Callable[[], list[str]] = list
    every: float = 0.05
    seen: dict[str, list[str]] = field(default_factory=dict)
    vanished: set[str] = field(default_factory=set)
    rewritten: set[str] = field(default_factory=set)
    #: Rounds that failed (no master answering during a failover), and rounds read.
    errors: int = 0
    rounds: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="permit-observer", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> PermitObserver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        assert self.client is not None
        while not self._stop.wait(self.every):
            try:
                self.look(self.client, self.plan_ids())
            except FAILOVER_ERRORS:
                self.errors += 1

    def look(self, client: redis.Redis, plan_ids: Iterable[str], chunk: int = 2000) -> None:
        """One round: each plan_id's permit key read (pipelined, ``chunk`` at a time), compared with what was seen."""
        ids = list(plan_ids)
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            pipe = client.pipeline(transaction=False)
            for plan_id in part:
                pipe.get(PERMIT_KEY_PREFIX + plan_id)
            replies: list[bytes | None] = pipe.execute()
            with self._lock:
                for plan_id, raw in zip(part, replies, strict=True):
                    self._record(plan_id, raw)
        self.rounds += 1

    def _record(self, plan_id: str, raw: bytes | None) -> None:
        values = self.seen.get(plan_id)
        if raw is None:
            if values:
                self.vanished.add(plan_id)
            return
        permit = raw.decode()
        if values is None:
            self.seen[plan_id] = [permit]
        elif permit not in values:
            values.append(permit)
        elif plan_id in self.vanished:
            self.rewritten.add(plan_id)

    @property
    def doubles(self) -> dict[str, list[str]]:
        """The plan_ids seen with more than one permit, and their values in the order seen."""
        with self._lock:
            return {plan_id: list(values) for plan_id, values in self.seen.items() if len(values) > 1}

    @property
    def permitted(self) -> set[str]:
        with self._lock:
            return set(self.seen)
