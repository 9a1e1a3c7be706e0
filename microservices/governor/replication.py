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

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster

from microservices.core.redis_client import RedisClient
from microservices.governor.decision import Event
from microservices.governor.records import OutcomeMarker

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
            for key in (*keys, *reads):
                node = cast(ClusterNode, client.get_node_from_key(key))  # type: ignore[no-untyped-call]
                nodes.setdefault(node.name, node)
            for key in reads:
                on_node.setdefault(self._node_of(client, key), []).append(key)
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
