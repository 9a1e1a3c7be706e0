"""Plans on a Redis Cluster, as producers and the apply layer see them, for the topology tests, the benchmark and a
chaos run: a producer that never gives up a plan (its commands are sent again until the cluster takes them, across a
failover), and an observer that polls each plan's permit key as the apply layer would.

The plans are :func:`~microservices.devtools.plans.plan_fields`'s mix, so :func:`~microservices.devtools.plans.
outcome_violations` judges their outcomes (given the cluster client).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import RedisCluster as ClusterClient
from redis.exceptions import ClusterDownError, MasterDownError, RedisClusterException, TryAgainError

from microservices.devtools.plans import PLANS, ProducerStoppedError, plan_fields, seed_efficiency, text
from microservices.governor.records import PERMIT_KEY_PREFIX

#: What a cluster refuses while a master is down or being replaced: sent again after :data:`RETRY_SEC`.
REFUSED: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, ClusterDownError, MasterDownError,
    TryAgainError, RedisClusterException,
)  # fmt: skip
RETRY_SEC = 0.02


class PatientCluster(ClusterClient):
    """A producer's cluster client: every command is sent again until the cluster accepts it (a master being failed
    over refuses, or does not answer, for a few seconds), every :data:`RETRY_SEC`, until ``stop`` is set."""

    def __init__(self, stop: threading.Event, **kwargs: Any) -> None:
        # set before the base class's own start-up commands (COMMAND, CLUSTER SLOTS) come through execute_command
        self._stop = stop
        self.refused = 0
        #: The id of every XADD the cluster acknowledged: what it should still hold after any fault.
        self.accepted: list[str] = []
        super().__init__(**kwargs)

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        while True:
            if self._stop.is_set():
                raise ProducerStoppedError
            try:
                reply = super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]  # untyped upstream
            except REFUSED:
                self.refused += 1
                time.sleep(RETRY_SEC)
                continue
            if args and args[0] == "XADD":
                self.accepted.append(text(reply))
            return reply


@dataclass
class Published:
    """One plan as its producer sent it: the entry id the cluster gave it, its plan_id, and when (epoch seconds)."""

    entry_id: str
    plan_id: str
    at: float


class ClusterPlanProducer:
    """A thread publishing :func:`~microservices.devtools.plans.plan_fields`'s mix over ``symbols`` symbols (3 % of the
    entries without a plan_id), one XADD every ``pause`` seconds on an absolute schedule, until :meth:`stop`."""

    def __init__(self, host: str, port: int, *, symbols: int, seed: int, pause: float, prefix: str = "p") -> None:
        self._stop = threading.Event()
        self.client = PatientCluster(self._stop, host=host, port=port, protocol=2, socket_timeout=2,
                                     socket_connect_timeout=1)  # fmt: skip
        self._symbols, self._seed, self._pause, self._prefix = symbols, seed, pause, prefix
        self.published: list[Published] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cluster-plan-producer", daemon=True)

    def _run(self) -> None:
        rng = random.Random(self._seed)
        try:
            seed_efficiency(self.client, self._symbols, rng)  # type: ignore[arg-type]  # the commands it uses exist
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

    def start(self) -> ClusterPlanProducer:
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
class PermitPoller:
    """The apply layer's view: every plan_id just published is polled (``GET quantum:permit:{plan_id}``) for
    ``window`` seconds after it was published, every ``every`` seconds; each permit JSON seen is kept. A plan_id seen
    with two different permits is a double permit; one whose permit was seen and later found missing (before its
    TTL) vanished (a failover lost it); one seen again, byte for byte, after it vanished was rewritten."""

    client: ClusterClient
    plans: Callable[[], list[Published]]
    window: float = 5.0
    every: float = 0.05
    first_seen: dict[str, tuple[float, str]] = field(default_factory=dict)
    doubles: dict[str, list[str]] = field(default_factory=dict)
    vanished: set[str] = field(default_factory=set)
    rewritten: set[str] = field(default_factory=set)
    errors: int = 0
    rounds: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="permit-poller", daemon=True)

    def start(self) -> PermitPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            cutoff = time.time() - self.window
            recent: list[str] = []
            for plan in reversed(self.plans()):  # newest first; stop at the first older than the window
                if plan.at < cutoff:
                    break
                recent.append(plan.plan_id)
            try:
                self.look([plan_id for plan_id in dict.fromkeys(recent) if plan_id])
            except REFUSED:
                self.errors += 1

    def look(self, plan_ids: list[str]) -> None:
        """One round: read the permit key of each plan_id and compare with what was seen before."""
        if not plan_ids:
            return
        pipe = self.client.pipeline(transaction=False)  # type: ignore[no-untyped-call]  # untyped upstream
        for plan_id in plan_ids:
            pipe.get(PERMIT_KEY_PREFIX + plan_id)
        replies = pipe.execute(raise_on_error=False)
        now = time.time()
        self.rounds += 1
        for plan_id, raw in zip(plan_ids, replies, strict=True):
            if isinstance(raw, Exception):
                self.errors += 1
                continue
            seen = self.first_seen.get(plan_id)
            if raw is None:
                if seen is not None:
                    self.vanished.add(plan_id)
                continue
            permit = text(raw)
            if seen is None:
                self.first_seen[plan_id] = (now, permit)
            elif permit != seen[1]:
                self.doubles.setdefault(plan_id, [seen[1]]).append(permit)
            elif plan_id in self.vanished:
                self.rewritten.add(plan_id)

    def final_pass(self, plan_ids: list[str], chunk: int = 1000) -> None:
        """Read every plan_id's permit once more (after the run), in chunks."""
        for start in range(0, len(plan_ids), chunk):
            self.look(plan_ids[start : start + chunk])

    @property
    def double_permits(self) -> int:
        return len(self.doubles)

    def created_at(self) -> dict[str, float]:
        """Each observed permit's ``created_at``, by plan_id."""
        return {plan_id: float(json.loads(raw)["created_at"]) for plan_id, (_, raw) in self.first_seen.items()}
