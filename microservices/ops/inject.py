"""Writing test inputs the way upstream services do: an efficiency hash, a live allocation target, an execution plan.

Values are taken as text and written exactly as given, so that a proof or an operator can inject malformed input
(``"abc"``, ``"nan"``, a millisecond ``ts``) as readily as good input. A value of ``None`` leaves the field out.
Nothing here decides anything: the daemons' own code judges what is written.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis.cluster import RedisCluster
from redis.typing import EncodableT, FieldT

from microservices.allocation_target.proposal import LIVE_TARGET_PREFIX, TARGET_FIELD
from microservices.core.efficiency import CONFIDENCE_FIELD, SCORE_FIELD, TS_FIELD, efficiency_key
from microservices.core.redis_client import RedisClient

#: What an injected efficiency hash lives for unless told otherwise: long enough for a proof, never forever.
DEFAULT_INJECT_TTL_SEC = 3600
#: Symbols that are test data by their name: ``p31ctl inject-*`` writes for no other symbol unless forced, and the
#: proof scripts name theirs so. No exchange lists them, so a plan for one can never become an order.
TEST_SYMBOL_PREFIXES = ("P31TEST", "P31PROOF")

#: Writes the live target only where none exists, with its TTL, in one step: a test never overwrites (or sets an
#: expiry on) a real allocation target.
_CREATE_LIVE_TARGET = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


class LiveTargetExistsError(RuntimeError):
    """A live allocation target already exists for the symbol: it belongs to the allocator, not to a test."""


def is_test_symbol(symbol: str) -> bool:
    return symbol.startswith(TEST_SYMBOL_PREFIXES)


def live_target_key(symbol: str) -> str:
    return LIVE_TARGET_PREFIX + symbol


def _present(values: Mapping[str, str | None]) -> dict[FieldT, EncodableT]:
    """The fields that have a value, typed as redis-py's commands take them."""
    return {name: value for name, value in values.items() if value is not None}


def inject_efficiency(
    client: RedisClient,
    symbol: str,
    *,
    score: str | None,
    confidence: str | None,
    ts: str | None = None,
    extra: Mapping[str, str] | None = None,
    ttl_sec: int = DEFAULT_INJECT_TTL_SEC,
) -> str:
    """Replace ``quantum:capital:efficiency:{symbol}`` with the given fields (``ts`` defaults to now) and a TTL.
    Returns the key. With every field ``None`` the key is deleted, which is how upstream's "missing" looks."""
    key = efficiency_key(symbol)
    mapping = _present(
        {SCORE_FIELD: score, CONFIDENCE_FIELD: confidence, TS_FIELD: ts if ts is not None else f"{time.time():.3f}"}
    )
    mapping.update(extra or {})
    pipe = client.pipeline(transaction=not _is_cluster(client))
    pipe.delete(key)
    if score is not None or confidence is not None or extra:
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, ttl_sec)
    pipe.execute()
    return key


def inject_live_target(
    client: RedisClient, symbol: str, target_usd: str, *, ttl_sec: int = DEFAULT_INJECT_TTL_SEC
) -> str:
    """Create a live allocation target for a *test* symbol (the proposer never writes one; only tests and proofs do,
    and only for their own symbols). Returns the key; raises :class:`LiveTargetExistsError`, writing nothing, when the
    symbol already has one."""
    key = live_target_key(symbol)
    # execute_command (untyped upstream): redis-py's cluster client has no eval(), but routes an EVAL by its key
    created = client.execute_command(  # type: ignore[no-untyped-call]
        "EVAL", _CREATE_LIVE_TARGET, 1, key, TARGET_FIELD, target_usd, ttl_sec
    )
    if not created:
        raise LiveTargetExistsError(f"{key} exists: a live target is never overwritten by test data")
    return key


def side_for(action: str) -> str:
    """The order side that carries ``action`` out, as a producer would write it: opening a long or closing a short
    buys, opening a short or closing a long (``CLOSE_LONG``, ``PARTIAL_CLOSE_LONG``) sells; BUY when the action
    names no direction (``FULL_CLOSE_PROPOSED``)."""
    name = action.upper()
    opening = name.startswith("OPEN")
    if name.endswith("LONG"):
        return "BUY" if opening else "SELL"
    if name.endswith("SHORT"):
        return "SELL" if opening else "BUY"
    return "BUY"


@dataclass(frozen=True)
class PlanSpec:
    """The fields of an execution plan as a producer writes them; ``None`` leaves a field out."""

    plan_id: str | None
    symbol: str | None
    action: str | None = "OPEN_LONG"
    decision: str | None = "EXECUTE"
    side: str | None = "BUY"
    qty: str | None = "1.0"
    reduce_only: str | None = None
    kill_score: str | None = None
    timestamp: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def fields(self) -> dict[FieldT, EncodableT]:
        values = _present(
            {
                "plan_id": self.plan_id,
                "symbol": self.symbol,
                "action": self.action,
                "decision": self.decision,
                "side": self.side,
                "qty": self.qty,
                "reduceOnly": self.reduce_only,
                "kill_score": self.kill_score,
                "timestamp": self.timestamp if self.timestamp is not None else str(int(time.time())),
            }
        )
        overriding = sorted(set(self.extra) & {_text(name) for name in values})
        if overriding:
            raise ValueError(f"extra fields may not replace named ones: {', '.join(overriding)}")
        values.update(self.extra)
        return values


def _text(name: FieldT) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def inject_plan(client: RedisClient, stream: str, plan: PlanSpec) -> str:
    """Append ``plan`` to the plans stream; returns the entry id."""
    entry_id = client.xadd(stream, plan.fields())
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _is_cluster(client: RedisClient) -> bool:
    return isinstance(client, RedisCluster)
