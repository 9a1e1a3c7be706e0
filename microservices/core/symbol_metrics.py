"""Per-symbol metric series, capped in number and removed when their symbol goes away (SPEC §6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client import Gauge


def label_text(symbol: str) -> str:
    """A symbol as a label value: bytes that are not UTF-8 (kept as surrogates when read) become U+FFFD."""
    return symbol.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def exported_symbols(symbols: Iterable[str], max_symbols: int) -> set[str]:
    """Which symbols get per-symbol series: the first ``max_symbols`` in sorted order, so the choice is stable."""
    return set(sorted(symbols)[:max_symbols])


class SymbolSeries:
    """A group of gauges labelled by ``symbol``, published together once per loop.

    :meth:`publish` sets the series of the given symbols (at most ``max_symbols`` of them, the first in sorted order)
    and removes every series of a symbol it no longer has, so dead symbols do not linger on dashboards.
    A value of ``None`` removes that one series (e.g. a score that upstream did not give as a number).
    """

    def __init__(self, gauges: Sequence[Gauge], max_symbols: int) -> None:
        self._gauges = tuple(gauges)
        self._max = max_symbols
        self._exported: set[str] = set()

    @property
    def exported(self) -> frozenset[str]:
        return frozenset(self._exported)

    def publish(self, values: Mapping[str, Sequence[float | None]]) -> None:
        chosen = exported_symbols(values, self._max)
        for symbol in self._exported - chosen:
            for gauge in self._gauges:
                gauge.remove(label_text(symbol))
        for symbol in chosen:
            label = label_text(symbol)
            for gauge, value in zip(self._gauges, values[symbol], strict=True):
                if value is None:
                    gauge.remove(label)
                else:
                    gauge.labels(label).set(value)
        self._exported = chosen


class RecentSymbols:
    """Which symbols get per-symbol series when symbols arrive one event at a time (the governor's plans).

    A symbol is admitted while fewer than ``max_symbols`` are tracked; a symbol not seen for ``idle_sec`` has gone
    away: :meth:`expire` returns it (for its series to be removed) and frees its place.
    """

    def __init__(self, max_symbols: int, idle_sec: float) -> None:
        self._max = max_symbols
        self._idle = idle_sec
        self._last_seen: dict[str, float] = {}

    def admit(self, symbol: str, now: float) -> bool:
        if symbol in self._last_seen or len(self._last_seen) < self._max:
            self._last_seen[symbol] = now
            return True
        return False

    def expire(self, now: float) -> list[str]:
        gone = [symbol for symbol, seen in self._last_seen.items() if now - seen > self._idle]
        for symbol in gone:
            del self._last_seen[symbol]
        return gone

    def __len__(self) -> int:
        return len(self._last_seen)
