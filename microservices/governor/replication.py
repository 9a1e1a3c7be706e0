"""Writes that survive a failover (SPEC §9, ``GOV_MIN_REPLICAS`` > 0): a batch's decisions are confirmed with ``WAIT``
before any of its permits is written.

Redis replicates asynchronously, so a master that dies can take its last writes with it. Were a batch's permits
written with its decisions, a failover could keep a permit the apply layer already acted on and lose the decision and
the ``XACK``: the plan would be decided again and given a second, different permit. So the batch's decisions (gates,
blocks, dead letters, outcome markers, events, ``XACK``) are written first, then confirmed, and only then are its
permits written, each with the very JSON built when it was decided: written again, it is the same byte for byte.

``WAIT`` waits for the replication offset of the connection's own last write, and redis-py gives a transaction's
connection back to its pool after ``EXEC``: a ``WAIT`` on a connection that wrote nothing returns at once and
confirms nothing. So a confirmation is a small write of its own (a probe key) and ``WAIT`` on one connection, in one
non-transactional pipeline: the replication stream is ordered, so a replica that acknowledged the probe has every
earlier write of that master, the batch's included. Under a cluster, each master that took the batch's writes is
asked, with a probe key in one of its own slots.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster

from microservices.core.http_server import HealthState
from microservices.core.logs import LogThrottle
from microservices.core.redis_client import REDIS_ERRORS, RedisClient
from microservices.governor.decision import Event
from microservices.governor.metrics import GovernorMetrics
from microservices.governor.records import OutcomeMarker

log = logging.getLogger(__name__)

PROBE_KEY_PREFIX = "quantum:governor:replication-probe:"
#: The probe key only needs to outlive its WAIT.
PROBE_TTL_MS = 60_000
#: How many hash tags are tried to find a probe key in a given master's slots (16384 slots: a few suffice).
PROBE_TAG_TRIES = 100_000


@dataclass(frozen=True, slots=True)
class PermitWrite:
    """One permit as decided: its key and JSON, built once, so that any later write of it is byte for byte the same;
    and the outcome marker that records its decision, which must still say so when the permit is written."""

    plan_id: str
    entry_id: str
    key: str
    value: str
    ttl_sec: int
    marker_key: str
    #: The permit's ``created_at`` (the governor's clock when it was decided): it expires ``ttl_sec`` after it, however
    #: long it waited to be written.
    decided_at: float

    def ttl_left_ms(self, now: float) -> int:
        """What is left of its TTL at ``now``, in milliseconds (0 or less: its time is over, it is not written)."""
        return int((self.decided_at + self.ttl_sec - now) * 1000)

    def decision_stands(self, raw_marker: object, consumer: str) -> bool:
        """Whether the outcome marker as read still records this permit, written by this consumer for this entry."""
        marker = OutcomeMarker.parse(raw_marker)
        return (
            marker is not None
            and marker.event == Event.PERMIT.value
            and (marker.entry_id, marker.consumer) == (self.entry_id, consumer)
        )


@dataclass(frozen=True, slots=True)
class HeldPermits:
    """A batch's permits waiting for its decisions to be confirmed by enough replicas."""

    permits: tuple[PermitWrite, ...]
    #: The keys the batch's decisions wrote: under a cluster, their masters are the ones asked.
    keys: frozenset[str]
    #: When the batch was written (monotonic seconds).
    since: float
    #: Whether it was counted in ``quantum_govern_replication_unconfirmed_total`` (once per batch).
    counted: bool = False

    @property
    def plan_ids(self) -> list[str]:
        return [permit.plan_id for permit in self.permits]


@dataclass(frozen=True, slots=True)
class Confirmation:
    """What a confirmation found: the fewest replicas that acknowledged, and the values read with the probe."""

    acked: int
    values: dict[str, object]


@dataclass(frozen=True, slots=True)
class PermitsWritten:
    """What writing held permits did: written, found in place already (never overwritten), or not written because
    their decision is no longer in Redis (lost with a master that failed over before it was confirmed: if its
    ``XACK`` was lost too, the plan comes back and is decided again; under a cluster the ``XACK`` may live on another
    master and stand, and the plan then ends without a permit, as a permit lost in a failover does)."""

    written: tuple[str, ...] = ()
    existing: tuple[str, ...] = ()
    decision_lost: tuple[str, ...] = ()
    #: Confirmed only after their ``PERMIT_TTL_SEC`` had run out since they were decided: a permit never outlives
    #: ``created_at`` + ``PERMIT_TTL_SEC``, so these are not written (the apply layer times out, as for a lost one).
    expired: tuple[str, ...] = ()


class Replicas:
    """Confirms with ``WAIT`` that at least ``min_replicas`` replicas of each master that took a batch's writes hold
    them."""

    def __init__(self, client: RedisClient, consumer: str, min_replicas: int, wait_ms: int) -> None:
        self._client = client
        self._consumer = consumer
        self.min_replicas = min_replicas
        self.wait_ms = wait_ms
        #: Under a cluster: node name -> a probe key in one of its slots.
        self._probe_keys: dict[str, str] = {}

    def confirm(self, keys: Collection[str], reads: Sequence[str] = ()) -> Confirmation:
        """The fewest replicas that acknowledged within ``wait_ms`` over the masters asked (it stops at the first
        master short of ``min_replicas``), and the values of ``reads`` (GET; an error reads as None), each read on
        its master just before the probe: a value read there is as confirmed as the probe is. A single Redis is
        asked whatever ``keys`` are; under a cluster, each master that holds one of ``keys`` or ``reads``."""
        client = self._client
        if not isinstance(client, RedisCluster):
            return self._probe_and_wait(client, PROBE_KEY_PREFIX + self._consumer, reads)
        try:
            nodes: dict[str, ClusterNode] = {}
            on_node: dict[str, list[str]] = {}
            for key in keys:
                node = cast(ClusterNode, client.get_node_from_key(key))  # type: ignore[no-untyped-call]
                nodes.setdefault(node.name, node)
            for key in reads:
                node = cast(ClusterNode, client.get_node_from_key(key))  # type: ignore[no-untyped-call]
                nodes.setdefault(node.name, node)
                on_node.setdefault(node.name, []).append(key)
            acked, values = self.min_replicas, {}
            for node in nodes.values():
                server = client.get_redis_connection(node)
                answer = self._probe_and_wait(server, self._probe_key(client, node), on_node.get(node.name, []))
                acked = min(acked, answer.acked)
                values.update(answer.values)
                if acked < self.min_replicas:
                    break
            return Confirmation(acked, values)
        except (redis.RedisError, OSError):
            # a master that failed over answers MOVED or READONLY to a direct call, which the cluster client never
            # sees: refresh its view of the slots so that the next try asks the new master
            client.nodes_manager.initialize()
            raise

    def _probe_and_wait(self, server: redis.Redis, probe_key: str, reads: Sequence[str]) -> Confirmation:
        """The reads, the probe write and the WAIT on one connection (a plain pipeline holds one for its commands)."""
        pipe = server.pipeline(transaction=False)
        command = cast(Any, pipe).execute_command
        for key in reads:
            command("GET", key)
        command("SET", probe_key, f"{time.time():.3f}", "PX", PROBE_TTL_MS)
        command("WAIT", self.min_replicas, self.wait_ms)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            # a key of another type reads as absent (a marker this code did not write); any other error (MOVED from
            # a master that failed over, a connection lost) fails the confirmation, which is tried again
            if isinstance(reply, Exception) and "WRONGTYPE" not in str(reply):
                raise reply
        values = {
            key: None if isinstance(value, Exception) else value
            for key, value in zip(reads, replies[: len(reads)], strict=True)
        }
        return Confirmation(int(replies[-1]), values)

    def _probe_key(self, client: RedisCluster, node: ClusterNode) -> str:
        """A probe key whose slot ``node`` serves now: found once by trying hash tags, checked at each use."""
        cached = self._probe_keys.get(node.name)
        if cached is not None and self._node_of(client, cached) == node.name:
            return cached
        for tag in range(PROBE_TAG_TRIES):
            key = f"{PROBE_KEY_PREFIX}{self._consumer}:{{{tag}}}"
            if self._node_of(client, key) == node.name:
                self._probe_keys[node.name] = key
                return key
        raise redis.RedisError(f"no probe key found in the slots of {node.name}")

    @staticmethod
    def _node_of(client: RedisCluster, key: str) -> str:
        return cast(ClusterNode, client.get_node_from_key(key)).name  # type: ignore[no-untyped-call]


def write_permits(
    client: RedisClient, permits: Sequence[PermitWrite], markers: Mapping[str, object], consumer: str, now: float
) -> PermitsWritten:
    """Write confirmed permits, ``SET NX PX`` each with what is left at ``now`` of its TTL since it was decided, those
    whose outcome markers, as read with the confirmation (``markers``, by key), still record them."""
    if not permits:
        return PermitsWritten()
    standing = [p for p in permits if p.decision_stands(markers.get(p.marker_key), consumer)]
    lost = tuple(p.plan_id for p in permits if not p.decision_stands(markers.get(p.marker_key), consumer))
    expired = tuple(p.plan_id for p in standing if p.ttl_left_ms(now) <= 0)
    standing = [p for p in standing if p.ttl_left_ms(now) > 0]
    if not standing:
        return PermitsWritten(decision_lost=lost, expired=expired)
    writes = client.pipeline(transaction=False)
    for permit in standing:
        cast(Any, writes).execute_command("SET", permit.key, permit.value, "NX", "PX", permit.ttl_left_ms(now))
    results = writes.execute(raise_on_error=True)
    in_place = [p for p, ok in zip(standing, results, strict=True) if not ok]
    ours: set[str] = set()
    if in_place:  # a write whose reply was lost, tried again: the very same bytes are this permit, written
        check = client.pipeline(transaction=False)
        for permit in in_place:
            cast(Any, check).execute_command("GET", permit.key)
        found = check.execute(raise_on_error=True)
        ours = {p.plan_id for p, raw in zip(in_place, found, strict=True) if raw == p.value.encode()}
    written = tuple(p.plan_id for p, ok in zip(standing, results, strict=True) if ok or p.plan_id in ours)
    existing = tuple(p.plan_id for p in in_place if p.plan_id not in ours)
    return PermitsWritten(written, existing, lost, expired)


class ReplicationUnconfirmedError(redis.RedisError):
    """``--once`` cannot go on: permits wait for replicas to confirm their batch's decisions."""


class HeldPermitWriter:
    """The governor's permits that wait for their batch's decisions to be confirmed (``GOV_MIN_REPLICAS`` > 0): it
    holds them (:meth:`hold`), confirms and writes them (:meth:`release`), and keeps ``/healthz`` told while they
    wait. With ``replicas`` None (``GOV_MIN_REPLICAS=0``) it holds nothing and every call is a no-op."""

    def __init__(
        self,
        client: RedisClient,
        replicas: Replicas | None,
        metrics: GovernorMetrics,
        *,
        consumer: str,
        permit_ttl_sec: int,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        health: HealthState | None = None,
    ) -> None:
        self._client = client
        self._replicas = replicas
        self._metrics = metrics
        self._consumer = consumer
        self._permit_ttl_sec = permit_ttl_sec
        self._clock = clock
        self._monotonic = monotonic
        self._health = health
        self._throttle = LogThrottle(60.0)
        #: The permits of the batches written since the last confirmation.
        self._held: HeldPermits | None = None

    @property
    def enabled(self) -> bool:
        """Whether permits wait for confirmation: a batch's permits are then left out of its writes."""
        return self._replicas is not None

    def hold(self, permits: tuple[PermitWrite, ...], keys: frozenset[str]) -> None:
        """Keep a written batch's permits until replicas confirm its decisions (:meth:`release`)."""
        if not permits:
            return
        held = self._held
        if held is None:
            self._held = HeldPermits(permits, keys, self._monotonic())
        else:  # not released yet (a batch's plans decided again, or a failure that cut a release short): one wait
            self._held = replace(held, permits=held.permits + permits, keys=held.keys | keys)

    def release(self) -> bool:
        """Confirm the held batch's decisions with WAIT and, once confirmed, write its permits; True when nothing
        is held any more. Not confirmed in time: counted once per batch, logged (throttled), and /healthz says why;
        the next call tries again. A Redis error leaves the permits held and is raised."""
        held, replicas = self._held, self._replicas
        if held is None or replicas is None:
            return True
        try:
            confirmation = replicas.confirm(held.keys, [permit.marker_key for permit in held.permits])
        except REDIS_ERRORS as exc:
            self._set_blocked(self._reason(held, f"replicas could not be asked ({type(exc).__name__})"))
            raise
        acked = confirmation.acked
        if acked < replicas.min_replicas:
            if not held.counted:
                self._metrics.replication_unconfirmed.inc()
                held = self._held = replace(held, counted=True)
            reason = self._reason(
                held, f"{acked} of {replicas.min_replicas} replica(s) confirmed within {replicas.wait_ms} ms"
            )
            self._throttle.log(log, logging.WARNING, "unconfirmed", "%s", reason)
            self._set_blocked(reason)
            return False
        try:
            result = write_permits(self._client, held.permits, confirmation.values, self._consumer, self._clock())
        except REDIS_ERRORS as exc:
            self._set_blocked(self._reason(held, f"confirmed, but the permits could not be written ({exc})"))
            raise
        self._held = None
        self._set_blocked(None)
        self._log_written(held, result)
        return True

    def require_released(self) -> None:
        """No batch is decided while permits wait: ``--once`` (which has no health to report through) fails, to be
        retried by the runner, and gives up after 10 s as without Redis."""
        if not self.release():
            held = len(self._held.permits) if self._held is not None else 0
            raise ReplicationUnconfirmedError(f"{held} permit(s) wait for replicas to confirm their decisions")

    def stop(self) -> None:
        """On shutdown: one last try to write held permits; else say which plan_ids' permits were not written
        (their decisions stand; the apply layer times out on them, which SPEC §9 accepts)."""
        if self._held is None:
            return
        try:
            if self.release():
                return
        except REDIS_ERRORS as exc:
            log.warning("last try to confirm held permits failed: %s: %s", type(exc).__name__, exc)
        held = self._held
        if held is not None:
            log.error("stopping with %d permit(s) not written, their batch's decisions unconfirmed by replicas (the "
                      "decisions stand; the apply layer times out on them): plan_ids %s", len(held.permits),
                      " ".join(held.plan_ids))  # fmt: skip

    def _log_written(self, held: HeldPermits, result: PermitsWritten) -> None:
        if held.counted:
            log.info("replicas confirmed a batch's decisions after %.1fs: %d held permit(s) written",
                     self._monotonic() - held.since, len(result.written))  # fmt: skip
        if result.existing:
            self._metrics.redis_errors.inc(len(result.existing))
            log.error("%d held permit(s) found in place already, not written: %s", len(result.existing),
                      ", ".join(result.existing[:5]))  # fmt: skip
        if result.expired:
            log.warning("%d held permit(s) not written: replicas confirmed their decisions only after PERMIT_TTL_SEC "
                        "(%ds) had run out since they were decided; the apply layer times out on them: %s",
                        len(result.expired), self._permit_ttl_sec, ", ".join(result.expired[:5]))  # fmt: skip
        if result.decision_lost:
            log.warning("%d held permit(s) not written: their decision is no longer in Redis (a failover lost it "
                        "before replicas confirmed it); a plan still pending is decided again: %s",
                        len(result.decision_lost), ", ".join(result.decision_lost[:5]))  # fmt: skip

    def _reason(self, held: HeldPermits, why: str) -> str:
        return (f"{len(held.permits)} permit(s) held for {self._monotonic() - held.since:.1f}s until replicas "
                f"confirm their batch's decisions; no new plan is decided meanwhile: {why}")  # fmt: skip

    def _set_blocked(self, reason: str | None) -> None:
        if self._health is not None:
            self._health.set_blocked(reason)
