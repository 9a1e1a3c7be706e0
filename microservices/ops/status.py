"""``p31ctl status``: which proposer leads (SPEC §9), and per symbol what the proposer would propose now, next to what
it last proposed.

Symbols are found by the proposer's own discovery
(:func:`~microservices.allocation_target.proposer.discover_symbols`). The reads are pipelined per batch (live target,
efficiency fields and last shadow proposal of each symbol in one round trip, plus the shared ``EXISTS`` round trip for
efficiency hashes holding none of the fields), and the numbers come from the proposer's own code: the shared
classification (:func:`~microservices.core.efficiency_reads.efficiency_readings`) and
:func:`~microservices.allocation_target.proposal.decide` with its multiplier.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from microservices.allocation_target.proposal import (
    LAST_UPDATE_FIELD,
    LIVE_TARGET_PREFIX,
    PROPOSED_PREFIX,
    TARGET_FIELD,
    Proposal,
    Skip,
    SkipReason,
    decide,
    encode,
)
from microservices.allocation_target.proposer import BATCH_SIZE, discover_symbols
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import EfficiencyReading
from microservices.core.efficiency_reads import efficiency_readings, queue_efficiency_read
from microservices.core.numbers import parse_float
from microservices.core.redis_client import RedisClient
from microservices.ops.symbols import no_live_target
from microservices.ops.tables import NONE, fmt, fmt_usd, format_table

if TYPE_CHECKING:
    from microservices.ops.cli import Context

SHADOW_FIELDS = ("proposed_target", LAST_UPDATE_FIELD)


@dataclass(frozen=True)
class Leader:
    """The proposer lease as Redis holds it: the instance id of its holder (None: no proposer leads) and its TTL left
    in ms (``PTTL``: -1 for a key set without one)."""

    key: str
    holder: str | None
    ttl_ms: int | None

    def as_json(self) -> dict[str, Any]:
        ttl = None if self.ttl_ms is None or self.ttl_ms < 0 else self.ttl_ms / 1000
        return {"key": self.key, "holder": self.holder, "ttl_sec": ttl}

    def line(self) -> str:
        if self.holder is None:
            return f"proposer leader: none (no proposer holds the lease {self.key})"
        if self.ttl_ms is None or self.ttl_ms < 0:
            return f"proposer leader: {self.holder} (lease {self.key} has no TTL: it never expires)"
        return f"proposer leader: {self.holder} (lease {self.key}, {self.ttl_ms / 1000:.1f} s left)"


def read_leader(client: RedisClient, key: str) -> Leader:
    """``GET`` and ``PTTL`` of the lease key, in one round trip (one key: one node of a cluster)."""
    pipe = client.pipeline(transaction=False)
    pipe.get(key)
    pipe.pttl(key)
    holder, ttl = pipe.execute()
    if holder is None:
        return Leader(key, None, None)
    text = holder.decode("utf-8", "replace") if isinstance(holder, bytes) else str(holder)
    return Leader(key, text, int(ttl))


@dataclass(frozen=True)
class StatusRow:
    """One symbol now: the reading, and either the proposal the proposer would write or why it would write none."""

    symbol: str
    decision: Proposal | Skip
    reading: EfficiencyReading
    shadow_proposed: float | None
    shadow_age_sec: float | None

    @property
    def reason(self) -> str:
        """The reason the proposer would record: the efficiency reason, or the skip reason when no proposal."""
        return self.decision.reason.value if isinstance(self.decision, Skip) else self.decision.reason

    def as_json(self) -> dict[str, Any]:
        proposal = self.decision if isinstance(self.decision, Proposal) else None
        return {
            "symbol": self.symbol,
            "score": self.reading.score,
            "confidence": self.reading.confidence,
            "age_sec": self.reading.age_sec,
            "eff_reason": self.reading.reason.value,
            "reason": self.reason,
            "skip_detail": self.decision.detail if isinstance(self.decision, Skip) else None,
            "base_target": proposal.base_target if proposal else None,
            "multiplier": proposal.multiplier if proposal else None,
            "proposed_target": proposal.proposed_target if proposal else None,
            "shadow_proposed_target": self.shadow_proposed,
            "shadow_age_sec": self.shadow_age_sec,
        }


def read_status(
    client: RedisClient, settings: ProposerSettings, symbols: Sequence[str], now: float, batch_size: int = BATCH_SIZE
) -> list[StatusRow]:
    """The rows of ``symbols`` at time ``now``: one pipelined round trip per batch (two if some efficiency hash has
    none of the fields), never one per symbol."""
    policy, params = settings.efficiency_policy, settings.multiplier_params
    live, proposed = LIVE_TARGET_PREFIX.encode(), PROPOSED_PREFIX.encode()
    rows: list[StatusRow] = []
    for start in range(0, len(symbols), batch_size):
        batch = symbols[start : start + batch_size]
        raws = [encode(symbol) for symbol in batch]
        pipe = client.pipeline(transaction=False)
        for raw in raws:
            pipe.hget(live + raw, TARGET_FIELD)
            queue_efficiency_read(pipe, raw)
            pipe.hmget(proposed + raw, SHADOW_FIELDS)
        replies = pipe.execute(raise_on_error=False)
        readings = efficiency_readings(client, raws, replies[1::3], now, policy)
        for symbol, target, reading, shadow in zip(batch, replies[0::3], readings, replies[2::3], strict=True):
            decision: Proposal | Skip
            if isinstance(target, Exception):
                decision = Skip(symbol, SkipReason.REDIS_ERROR, f"reading {TARGET_FIELD} failed: {target}")
            else:
                decision = decide(symbol, target, reading, params, now)
            shadow_target, shadow_ts = (None, None) if isinstance(shadow, Exception) else shadow
            shadow_epoch = parse_float(shadow_ts)
            rows.append(
                StatusRow(
                    symbol=symbol,
                    decision=decision,
                    reading=reading,
                    shadow_proposed=parse_float(shadow_target),
                    shadow_age_sec=None if shadow_epoch is None else now - shadow_epoch,
                )
            )
    return rows


HEADERS = (
    "symbol", "score", "conf", "age s", "reason", "base USD", "mult", "proposed USD", "last shadow USD", "shadow age s",
)  # fmt: skip


def render_status(rows: Sequence[StatusRow]) -> str:
    cells = []
    for row in rows:
        proposal = row.decision if isinstance(row.decision, Proposal) else None
        reading = row.reading
        cells.append(
            [
                row.symbol,
                fmt(reading.score),
                fmt(reading.confidence, ".3f"),
                fmt(reading.age_sec, ".0f"),
                row.reason,
                fmt_usd(proposal.base_target) if proposal else NONE,
                fmt(proposal.multiplier) if proposal else NONE,
                fmt_usd(proposal.proposed_target) if proposal else NONE,
                fmt_usd(row.shadow_proposed),
                fmt(row.shadow_age_sec, ".0f"),
            ]
        )
    return format_table(HEADERS, cells)


def run_status(ctx: Context) -> int:
    settings: ProposerSettings = ctx.settings(ProposerSettings)
    with ctx.connect(settings) as client:
        symbols = known = discover_symbols(client)
        wanted: list[str] | None = ctx.args.symbol
        missing: list[str] = []
        if wanted:
            found, keep = set(symbols), set(wanted)
            missing = [s for s in wanted if s not in found]
            symbols = [s for s in symbols if s in keep]
        now = time.time()
        rows = read_status(client, settings, symbols, now)
        leader = read_leader(client, settings.lease_key)
    if ctx.json:
        ctx.emit_json(
            {
                "now": now,
                "leader": leader.as_json(),
                "stale_sec": settings.stale_sec,
                "min_conf": settings.min_conf,
                "symbols": len(rows),
                "no_live_target": missing,
                "rows": [row.as_json() for row in rows],
            }
        )
        return 0
    ctx.out.write(leader.line() + "\n")
    if not rows and not wanted:
        ctx.out.write("no live allocation targets (quantum:allocation:target:{symbol})\n")
    elif rows:
        ctx.out.write(render_status(rows))
        ctx.out.write(f"{len(rows)} symbol(s); proposed = base x multiplier as the proposer would write it now\n")
    for symbol in missing:
        print(no_live_target(symbol, known), file=ctx.err)
    return 0
