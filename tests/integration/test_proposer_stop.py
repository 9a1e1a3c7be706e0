"""SPEC §5's 5 s after SIGTERM hold however long the proposer's SCAN: over a keyspace of millions, or a slow link, a
whole scan took longer than that, and the stop was only looked at once it was over. It now ends the loop after the
SCAN page in hand, writes nothing and counts no symbols from a partial scan."""

from __future__ import annotations

import threading

import redis
from prometheus_client import CollectorRegistry

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.allocation_target.proposer import SCAN_COUNT, Proposer, discover_symbols
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.settings import load_settings

FILLER_PAGES = 5


class SetAfter(threading.Event):
    """A stop that a SIGTERM sets while the ``calls``-th look at it is being made."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self._left = calls

    def is_set(self) -> bool:
        self._left -= 1
        if self._left <= 0:
            self.set()
        return super().is_set()


def _seed(r: redis.Redis) -> None:
    """Ten live targets among keys that fill several SCAN pages and match nothing (other services' keys)."""
    pipe = r.pipeline(transaction=False)
    for i in range(FILLER_PAGES * SCAN_COUNT):
        pipe.set(f"other:service:{i}", "x")
    for i in range(10):
        pipe.hset(f"quantum:allocation:target:S{i}", "target_usd", "100")
    pipe.execute()


def _scans(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_a_stop_during_discovery_ends_the_scan_after_the_page_in_hand(r: redis.Redis) -> None:
    _seed(r)
    r.config_resetstat()
    assert discover_symbols(r) == [f"S{i}" for i in range(10)]
    whole = _scans(r)
    assert whole > FILLER_PAGES  # what a stop mid-scan would otherwise wait for
    r.config_resetstat()
    discover_symbols(r, SetAfter(1))
    assert _scans(r) == 1


def test_a_loop_stopped_mid_scan_writes_nothing_and_counts_no_symbols(r: redis.Redis) -> None:
    _seed(r)
    metrics = ProposerMetrics(CollectorRegistry(), 10)
    metrics.symbols.set(42)  # the last whole loop's count stays
    summary = Proposer(r, load_settings(ProposerSettings, {}), metrics).run_loop(SetAfter(1))
    assert summary.interrupted and summary.symbols == 0
    assert not r.keys("quantum:allocation:target:proposed:*")
    assert metrics.registry.get_sample_value("p29_shadow_symbols") == 42
