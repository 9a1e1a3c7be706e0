"""Reading many symbols' efficiency hashes in pipelined batches (SPEC §1), the one way both daemons do it.

Per symbol the caller queues :func:`queue_efficiency_read` (an ``HMGET`` of :data:`EFFICIENCY_FIELDS`) into its own
pipeline, next to its other reads; :func:`efficiency_readings` then classifies the replies. Only when ``HMGET`` finds
none of the fields does one more pipelined round trip of ``EXISTS`` tell an absent key (``missing_eff``) from a hash
without those fields (``invalid_eff``).
"""

from __future__ import annotations

from collections.abc import Sequence

from microservices.core.efficiency import (
    EFFICIENCY_FIELDS,
    EFFICIENCY_KEY_PREFIX,
    MISSING_READING,
    EfficiencyPolicy,
    EfficiencyReading,
    classify_values,
)
from microservices.core.redis_client import AnyPipeline, RedisClient

#: Key prefix as bytes: symbols are bytes on the wire, and keys are built by concatenation.
EFFICIENCY_KEY = EFFICIENCY_KEY_PREFIX.encode()
#: An ``HMGET`` reply that found none of the efficiency fields.
NO_FIELDS = [None] * len(EFFICIENCY_FIELDS)


def queue_efficiency_read(pipe: AnyPipeline, raw_symbol: bytes) -> None:
    pipe.hmget(EFFICIENCY_KEY + raw_symbol, EFFICIENCY_FIELDS)


def efficiency_readings(
    client: RedisClient,
    raw_symbols: Sequence[bytes],
    replies: Sequence[object],
    now: float,
    policy: EfficiencyPolicy,
) -> list[EfficiencyReading]:
    """The classified readings of ``raw_symbols``, given their ``HMGET`` replies (an exception for a failed read)."""
    unknown = [i for i, reply in enumerate(replies) if reply == NO_FIELDS]
    absent: dict[int, EfficiencyReading] = {}
    if unknown:
        pipe = client.pipeline(transaction=False)
        for i in unknown:
            pipe.exists(EFFICIENCY_KEY + raw_symbols[i])
        for i, exists in zip(unknown, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(exists, Exception):
                absent[i] = EfficiencyReading.redis_error(f"checking the efficiency key failed: {exists}")
            elif not exists:
                absent[i] = MISSING_READING
    readings: list[EfficiencyReading] = []
    for i, reply in enumerate(replies):
        if isinstance(reply, Exception):
            readings.append(EfficiencyReading.redis_error(f"reading the efficiency hash failed: {reply}"))
        else:
            readings.append(absent.get(i) or classify_values(reply, now, policy))  # type: ignore[arg-type]
    return readings
