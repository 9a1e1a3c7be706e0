"""The proposer loop (SPEC §2): discover symbols, read in pipelined batches, decide, write in transactions.

Redis round trips per loop: one per ``SCAN`` page, then per batch of :data:`BATCH_SIZE` symbols one pipelined read,
one more only if some efficiency keys turned out to hold none of the fields, and one ``MULTI``/``EXEC`` of writes: they
grow with N / batch size, never with N.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

from redis.typing import EncodableT

from microservices.allocation_target.metrics import ProposerMetrics
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
    symbols_from_live_keys,
)
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import (
    EFFICIENCY_FIELDS,
    EFFICIENCY_KEY_PREFIX,
    MISSING_READING,
    EfficiencyReading,
    EffReason,
    classify_values,
)
from microservices.core.logs import LogThrottle
from microservices.core.redis_client import RedisClient

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
SCAN_COUNT = 1000
#: Key prefixes as bytes: symbols are bytes on the wire, and keys are built by concatenation.
LIVE_KEY = LIVE_TARGET_PREFIX.encode()
PROPOSED_KEY = PROPOSED_PREFIX.encode()
EFFICIENCY_KEY = EFFICIENCY_KEY_PREFIX.encode()
#: An ``HMGET`` reply that found none of the efficiency fields.
NO_FIELDS = [None] * len(EFFICIENCY_FIELDS)
#: How many symbols a problem's log line names.
PROBLEM_EXAMPLES = 5
#: A problem's log line is repeated at most this often while it persists.
PROBLEM_LOG_EVERY_SEC = 60.0
#: Reasons worth a (throttled) warning: the input or the read is broken, not merely old or unsure.
_WARN_REASONS = {EffReason.INVALID, EffReason.REDIS_ERROR}


@dataclass
class LoopSummary:
    symbols: int = 0
    proposed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    #: For each problem ("invalid_eff", "skipped invalid_target", ...): how many symbols, and the first few, explained.
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note_problem(self, problem: str, symbol: str, detail: str) -> None:
        self.problems[problem] += 1
        examples = self.examples.setdefault(problem, [])
        if len(examples) < PROBLEM_EXAMPLES:
            examples.append(f"{symbol} ({detail})")


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Proposer:
    """Runs proposer loops against one Redis client; all decisions are delegated to :func:`decide`."""

    def __init__(
        self,
        client: RedisClient,
        settings: ProposerSettings,
        metrics: ProposerMetrics,
        clock: Callable[[], float] = time.time,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._client = client
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._batch_size = batch_size
        self._policy = settings.efficiency_policy
        self._params = settings.multiplier_params
        self._transactional = not settings.redis_cluster
        self._throttle = LogThrottle(PROBLEM_LOG_EVERY_SEC)

    def discover(self) -> list[str]:
        """Every symbol with a live target hash, sorted; ``SCAN``, never ``KEYS``."""
        return sorted(symbols_from_live_keys(self._client.scan_iter(match=LIVE_KEY + b"*", count=SCAN_COUNT)))

    def read_and_decide(self, symbols: Sequence[str], now: float) -> list[Proposal | Skip]:
        """One pipelined round trip for the batch's live targets and efficiency hashes, then the pure decisions.

        ``HGET`` of ``target_usd`` and ``HMGET`` of the efficiency fields per symbol; a second, small round trip of
        ``EXISTS`` only for the symbols whose ``HMGET`` found none of the fields (absent key, or a hash without them).
        """
        raws = [encode(symbol) for symbol in symbols]
        pipe = self._client.pipeline(transaction=False)
        for raw in raws:
            pipe.hget(LIVE_KEY + raw, TARGET_FIELD)
            pipe.hmget(EFFICIENCY_KEY + raw, EFFICIENCY_FIELDS)
        replies = pipe.execute(raise_on_error=False)
        targets, values = replies[0::2], replies[1::2]
        absent = self._absent_efficiency(raws, values)
        decisions: list[Proposal | Skip] = []
        for i, symbol in enumerate(symbols):
            target, eff = targets[i], values[i]
            if isinstance(target, Exception):
                decisions.append(Skip(symbol, SkipReason.REDIS_ERROR, f"reading {TARGET_FIELD} failed: {target}"))
                continue
            if isinstance(eff, Exception):
                reading = EfficiencyReading.redis_error(f"reading the efficiency hash failed: {eff}")
            else:
                reading = absent.get(i) or classify_values(eff, now, self._policy)
            decisions.append(decide(symbol, target, reading, self._params, now))
        return decisions

    def _absent_efficiency(self, raws: Sequence[bytes], values: Sequence[object]) -> dict[int, EfficiencyReading]:
        """The readings of the batch's efficiency keys that turn out absent (or whose ``EXISTS`` failed), by index."""
        unknown = [i for i, reply in enumerate(values) if reply == NO_FIELDS]
        if not unknown:
            return {}
        pipe = self._client.pipeline(transaction=False)
        for i in unknown:
            pipe.exists(EFFICIENCY_KEY + raws[i])
        readings: dict[int, EfficiencyReading] = {}
        for i, exists in zip(unknown, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(exists, Exception):
                readings[i] = EfficiencyReading.redis_error(f"checking the efficiency key failed: {exists}")
            elif not exists:
                readings[i] = MISSING_READING
        return readings

    def write(self, proposals: Sequence[Proposal]) -> None:
        """Each shadow hash with its ``EXPIRE``, and the stream entries: one ``MULTI``/``EXEC`` for the batch.

        Under Redis Cluster the keys live in different slots and cannot share a transaction; the hash and its
        ``EXPIRE`` are then sent back to back in one pipeline.
        """
        if not proposals:
            return
        ttl, stream, maxlen = self._settings.key_ttl_sec, self._settings.stream_name, self._settings.stream_maxlen
        pipe = self._client.pipeline(transaction=self._transactional)
        for proposal in proposals:
            raw = encode(proposal.symbol)
            entry = cast(dict[EncodableT, EncodableT], proposal.stream_fields())
            entry["symbol"] = raw
            key = PROPOSED_KEY + raw
            pipe.hset(key, mapping={**entry, LAST_UPDATE_FIELD: entry["ts_epoch"]})
            pipe.expire(key, ttl)
            pipe.xadd(stream, entry, maxlen=maxlen, approximate=True)
        pipe.execute()

    def run_loop(self, stop: threading.Event) -> LoopSummary:
        """One loop over every symbol; returns early, after the batch in hand, when ``stop`` is set."""
        started = time.perf_counter()
        summary = LoopSummary()
        symbols = self.discover()
        summary.symbols = len(symbols)
        self._metrics.symbols.set(len(symbols))
        exported = set(symbols[: self._settings.metrics_max_symbols])
        series: dict[str, tuple[float | None, ...]] = {}
        for batch in _batches(symbols, self._batch_size):
            if stop.is_set():
                summary.interrupted = True
                break
            decisions = self.read_and_decide(batch, self._clock())
            self.write([d for d in decisions if isinstance(d, Proposal)])
            self._account(decisions, summary)
            for decision in decisions:
                if isinstance(decision, Proposal) and decision.symbol in exported:
                    reading = decision.reading
                    series[decision.symbol] = (decision.multiplier, reading.score, reading.confidence)
        if not summary.interrupted:
            self._metrics.per_symbol.publish(series)
        elapsed = time.perf_counter() - started
        self._metrics.loops.inc()
        self._metrics.loop_duration.observe(elapsed)
        self._metrics.last_success.set(time.time())
        self._log_problems(summary)
        log.info(
            "loop: %d symbols, proposed %s, skipped %s in %.1f ms%s",
            summary.symbols,
            dict(summary.proposed),
            dict(summary.skipped),
            elapsed * 1000,
            " (interrupted by shutdown)" if summary.interrupted else "",
        )
        return summary

    def _account(self, decisions: Sequence[Proposal | Skip], summary: LoopSummary) -> None:
        """Count a written batch: in the loop's summary, then in the metrics, once per reason rather than per symbol."""
        proposed: Counter[str] = Counter()
        skipped: Counter[str] = Counter()
        redis_errors = 0
        for decision in decisions:
            if isinstance(decision, Skip):
                skipped[decision.reason.value] += 1
                redis_errors += decision.reason is SkipReason.REDIS_ERROR
                summary.note_problem(f"no proposal, {decision.reason.value}", decision.symbol, decision.detail)
                continue
            reason = decision.reading.reason
            proposed[reason.value] += 1
            if reason in _WARN_REASONS:
                redis_errors += reason is EffReason.REDIS_ERROR
                summary.note_problem(
                    f"{reason.value} (multiplier held at 1.0)", decision.symbol, decision.reading.detail
                )
        for value, count in proposed.items():
            self._metrics.proposed.labels(value).inc(count)
        for value, count in skipped.items():
            self._metrics.skipped.labels(value).inc(count)
        if redis_errors:
            self._metrics.redis_errors.inc(redis_errors)
        summary.proposed.update(proposed)
        summary.skipped.update(skipped)

    def _log_problems(self, summary: LoopSummary) -> None:
        """One warning per kind of problem and loop, naming the first symbols; throttled while it persists."""
        for problem, count in summary.problems.items():
            self._throttle.log(
                log, logging.WARNING, problem, "%s: %d symbol(s) this loop, e.g. %s",
                problem, count, "; ".join(summary.examples[problem]),
            )  # fmt: skip
