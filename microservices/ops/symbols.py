"""What to tell an operator who names a symbol the proposer does not see: symbols are case-sensitive Redis key parts,
so ``p31testbtcusdt`` and ``P31TESTBTCUSDT`` are different symbols, and a typo reads as a symbol with no data."""

from __future__ import annotations

import difflib
from collections.abc import Collection

from microservices.allocation_target.proposal import LIVE_TARGET_PREFIX


def closest_symbol(symbol: str, known: Collection[str]) -> str | None:
    """The known symbol ``symbol`` most likely meant (compared without case), or None."""
    by_lower = {k.lower(): k for k in known}
    match = difflib.get_close_matches(symbol.lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[match[0]] if match else None


def no_live_target(symbol: str, known: Collection[str]) -> str:
    """One line saying ``symbol`` has no live target, how many symbols do, and the closest one."""
    closest = closest_symbol(symbol, known)
    hint = f"; did you mean {closest}?" if closest is not None else ""
    return (
        f"{symbol}: no live target {LIVE_TARGET_PREFIX}{symbol} ({len(known)} symbol(s) have one; symbols are "
        f"case-sensitive{hint})"
    )
