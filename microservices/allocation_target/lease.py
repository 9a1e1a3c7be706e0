"""One active proposer (SPEC §9): the lease, the fence on every write, and the pure decisions about them.

Several proposer instances may run; the one holding the lease ``PROPOSER_LEASE_KEY`` writes, the others stand by.

- **Acquire or renew** (:data:`ACQUIRE_OR_RENEW`, one single-key script): an absent key is taken (``SET PX``), our
  own is renewed (``PEXPIRE``), anyone else's is left alone and reported with its ``PTTL``. The reply carries the
  server's ``TIME`` at that moment, ``T``: the key expires at server time ``T + ttl``, so a standby can take over only
  from then on.
- **The fence.** A holder may be paused (SIGSTOP, a stalled VM, a long GC) between its renewal and its writes, and
  wake up after another instance took over. Every write is therefore conditioned on the lease in the same atomic
  step: each shadow-hash and stream script first checks the Redis server's ``TIME`` against the *fence deadline*
  ``T + ttl - margin`` (and, where the lease key lives on the same server, that the key still holds our id) and
  writes nothing, returning :data:`FENCED`, past it. On a single Redis (or behind Sentinel) both checks run on the
  server that holds the lease. Under Redis Cluster the lease key and the shadow keys live in different slots, so only
  the deadline can be checked there, by each node's own clock: the nodes' clocks must agree within the margin
  (:func:`fence_margin_ms`; NTP keeps them within milliseconds).
- **Release** (:data:`RELEASE`): on shutdown a holder deletes the key if it is still its own, so a standby takes
  over at its next check instead of a TTL later.

The decisions (what a reply means, when to renew, what to log on a change of role) are plain functions of frozen
values; Redis is reached only by :class:`microservices.allocation_target.proposer.Proposer`.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from functools import cache

#: KEYS[1]: the lease; ARGV[1]: our instance id; ARGV[2]: the TTL in ms.
#: Reply: {1, server ms} when we hold it now (taken or renewed), else {0, server ms, holder, its PTTL in ms}.
ACQUIRE_OR_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, now}
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, now}
end
return {0, now, holder, redis.call('PTTL', KEYS[1])}
"""
#: KEYS[1]: the lease; ARGV[1]: our instance id. Deletes the key only if it is still ours; 1 if it did.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
#: The first lines of every write script: ARGV[1] the fence deadline (server ms), ARGV[2] our instance id, and
#: KEYS[2], when given, the lease key. Past the deadline, or when the lease is no longer ours, nothing is written.
FENCE_CHECK = """
local t = redis.call('TIME')
if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) >= tonumber(ARGV[1]) then
  return 0
end
if KEYS[2] and redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
"""
#: What a fenced write script returns: nothing was written.
FENCED = 0
#: The most the fence deadline is kept short of the lease's end, ms; less for short leases (a tenth of the TTL).
MAX_FENCE_MARGIN_MS = 1000


@cache
def process_instance_id() -> str:
    """This process's instance id: host name, PID and a random suffix (so a restarted process with a recycled PID,
    or a container with the same host name, is still another instance). One per process: several
    :class:`~microservices.allocation_target.proposer.Proposer` objects in one process are one instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def ttl_ms(ttl_sec: float) -> int:
    return max(1, round(ttl_sec * 1000))


def fence_margin_ms(lease_ttl_ms: int) -> int:
    """How long before the lease's end the writes stop: a tenth of the TTL, at most :data:`MAX_FENCE_MARGIN_MS`."""
    return min(MAX_FENCE_MARGIN_MS, lease_ttl_ms // 10)


@dataclass(frozen=True)
class Fence:
    """What every write of a holder carries: the server time (ms) past which it must write nothing, the holder's id,
    and the lease key when the write's server also holds the lease (None under Redis Cluster)."""

    deadline_ms: int
    holder: str
    lease_key: str | None


@dataclass(frozen=True)
class Lease:
    """What one acquire-or-renew found: who holds the lease, and for how long.

    ``sent_at`` is the local monotonic time the request was sent, before the server's ``TIME`` was read: the local
    estimate of the lease's end, ``sent_at + ttl``, is never later than the server's."""

    me: str
    holder: str
    server_ms: int
    ttl_ms: int
    sent_at: float

    @property
    def held(self) -> bool:
        return self.holder == self.me

    def remaining_sec(self, now: float) -> float:
        """Time left on the lease by the local monotonic clock ``now`` (a lower bound for our own lease)."""
        return self.sent_at + self.ttl_ms / 1000 - now

    def needs_renewal(self, now: float) -> bool:
        """Renew before a batch when less than half the TTL is left, so that a long loop never outlives its lease."""
        return self.remaining_sec(now) < self.ttl_ms / 2000

    def expired(self, now: float) -> bool:
        return self.remaining_sec(now) <= 0

    def fence(self, lease_key: str | None) -> Fence:
        """The fence of the writes under this lease: the server time of the renewal plus the TTL, less the margin."""
        if not self.held:
            raise ValueError(f"no fence for a lease held by {self.holder}")
        return Fence(self.server_ms + self.ttl_ms - fence_margin_ms(self.ttl_ms), self.me, lease_key)


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def lease_from_reply(reply: object, me: str, lease_ttl_ms: int, sent_at: float) -> Lease:
    """The :data:`ACQUIRE_OR_RENEW` reply as a :class:`Lease`; :class:`ValueError` for any other shape."""
    if not isinstance(reply, list) or len(reply) not in (2, 4):
        raise ValueError(f"unexpected lease script reply {reply!r}")
    won, server_ms = int(reply[0]), int(reply[1])
    if won == 1 and len(reply) == 2:
        return Lease(me, me, server_ms, lease_ttl_ms, sent_at)
    if won == 0 and len(reply) == 4:
        return Lease(me, _text(reply[2]), server_ms, int(reply[3]), sent_at)
    raise ValueError(f"unexpected lease script reply {reply!r}")


def role_change(before: Lease | None, after: Lease) -> str | None:
    """The one log line a change of role deserves, or None when the role (and the holder followed) is unchanged.

    ``before`` is None when this instance knew of no lease (just started, or fenced out of a loop)."""
    if after.held:
        if before is not None and before.held:
            return None
        previous = f" (after {before.holder})" if before is not None else ""
        return f"acquired the proposer lease as {after.me}{previous}: writing proposals, TTL {after.ttl_ms} ms"
    if before is not None and before.held:
        return f"lost the proposer lease to {after.holder}: standing by"
    if before is not None and before.holder == after.holder:
        return None
    if after.ttl_ms < 0:  # PTTL -1: set by hand without a TTL, it never expires
        return f"standing by behind {after.holder}, whose lease key has no TTL: delete it if {after.holder} is gone"
    return f"standing by behind {after.holder} (its lease has {after.ttl_ms} ms left)"
