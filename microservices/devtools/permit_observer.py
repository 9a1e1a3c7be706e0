"""The apply layer's view of permits across a failover, for the Sentinel and Cluster tests: each plan_id's
``GET quantum:permit:{plan_id}`` read round after round, every distinct value kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from microservices.devtools.background import Background
from microservices.devtools.patient_clients import CLUSTER_REFUSED, REFUSED
from microservices.devtools.plans import AnyRedis, text
from microservices.governor.records import PERMIT_KEY_PREFIX

#: A round that fails: no master answering during a failover (MasterNotFoundError is a ConnectionError), a demoted
#: one answering READONLY, a cluster whose slots are being moved.
ROUND_ERRORS: tuple[type[Exception], ...] = (*REFUSED, *CLUSTER_REFUSED, redis.ResponseError, OSError)


@dataclass
class PermitObserver(Background):
    """Every distinct permit seen per plan_id, in order. A plan_id with two values had two different permits; one
    seen and later found missing vanished (a failover lost it); one seen again after that was written again (the same
    bytes, or it would have two values).

    :meth:`look` reads once (through ``client``, or another: the old master, say); :meth:`start` polls in a thread
    through ``client`` (one that follows failovers) every ``every`` seconds, over the plan_ids ``plan_ids()``
    returns (a producer's, all or the recent ones)."""

    client: AnyRedis | None = None
    plan_ids: Callable[[], Iterable[str]] = list
    every: float = 0.05
    seen: dict[str, list[str]] = field(default_factory=dict)
    #: When (epoch s) each plan_id's permit was first seen.
    first_seen: dict[str, float] = field(default_factory=dict)
    vanished: set[str] = field(default_factory=set)
    rewritten: set[str] = field(default_factory=set)
    #: Rounds or reads that failed, and rounds read.
    errors: int = 0
    rounds: int = 0

    def __post_init__(self) -> None:
        super().__init__("permit-observer")
        self._lock = threading.Lock()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.look(self.plan_ids())
            except ROUND_ERRORS:
                self.errors += 1

    def look(self, plan_ids: Iterable[str], client: AnyRedis | None = None, chunk: int = 2000) -> None:
        """One round: each plan_id's permit key read (pipelined, ``chunk`` at a time), compared with what was seen."""
        client = client if client is not None else self.client
        assert client is not None, "no client to look through"
        ids = list(plan_ids)
        if not ids:
            return
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            pipe = cast(Any, client).pipeline(transaction=False)
            for plan_id in part:
                pipe.get(PERMIT_KEY_PREFIX + plan_id)
            replies: list[bytes | Exception | None] = pipe.execute(raise_on_error=False)
            now = time.time()
            with self._lock:
                for plan_id, raw in zip(part, replies, strict=True):
                    if isinstance(raw, Exception):
                        self.errors += 1
                    else:
                        self._record(plan_id, raw, now)
        self.rounds += 1

    def _record(self, plan_id: str, raw: bytes | None, now: float) -> None:
        values = self.seen.get(plan_id)
        if raw is None:
            if values:
                self.vanished.add(plan_id)
            return
        permit = text(raw)
        if values is None:
            self.seen[plan_id] = [permit]
            self.first_seen[plan_id] = now
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
