"""The proposer loop (SPEC §2): discover symbols, read in pipelined batches, decide, write atomically per key.

Redis round trips per loop: one per ``SCAN`` page, then per batch of :data:`BATCH_SIZE` symbols one pipelined read,
one more only if some efficiency keys turned out to hold none of the fields, one for the shadow hashes and one for the
stream entries: they grow with N / batch size, never with N.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import cast

from redis.exceptions import RedisError
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
from microservices.core.efficiency import EffReason
from microservices.core.efficiency_reads import efficiency_readings, queue_efficiency_read
from microservices.core.logs import LogThrottle
from microservices.core.redis_client import RedisClient, scan_pages

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
SCAN_COUNT = 1000
#: Key prefixes as bytes: symbols are bytes on the wire, and keys are built by concatenation.
LIVE_KEY = LIVE_TARGET_PREFIX.encode()
PROPOSED_KEY = PROPOSED_PREFIX.encode()
#: The shadow hash and its TTL, written atomically (SPEC §2: never a key without its EXPIRE). A script rather than
#: MULTI/EXEC: when HSET fails (a key of another type under that name) the script stops, so the EXPIRE never reaches a
#: key that is not ours, and one key's failure is that key's alone. It touches one key, so it also runs in a cluster.
#: KEYS[1]: the shadow hash; ARGV[1]: the TTL in seconds; ARGV[2..]: field, value, field, value, ...
WRITE_SHADOW_HASH = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
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
    #: Sums of the live and the proposed targets of the proposals written, by efficiency reason.
    live_usd: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    proposed_usd: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
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


def discover_symbols(client: RedisClient, stop: threading.Event | None = None) -> list[str]:
    """Every symbol with a live target hash, sorted; ``SCAN`` (never ``KEYS``) of hashes only: SPEC §2's symbols are
    the hashes, so a key of another type under the live prefix is not a symbol. ``p31ctl status`` lists these too.
    Once ``stop`` is set it returns after the page in hand, with what it found so far (the caller must check)."""
    keys: list[bytes] = []
    for page in scan_pages(client, match=LIVE_KEY + b"*", count=SCAN_COUNT, type_="hash"):
        keys += page
        if stop is not None and stop.is_set():
            break
    return sorted(symbols_from_live_keys(keys))


class WritesRefusedError(RedisError):
    """Redis refused every write of a batch for a reason of its own (OOM, READONLY, NOPERM...), not because of one
    key: the loop has made no progress, so the loop runner counts it as failed and retries it with backoff."""


def _refused_by_the_server(replies: Sequence[object]) -> Exception | None:
    """The first refusal, when every reply is one and not all are a key of the wrong type (which fails alone)."""
    if not replies or not all(isinstance(reply, Exception) for reply in replies):
        return None
    return next((r for r in replies if isinstance(r, Exception) and "WRONGTYPE" not in str(r)), None)


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
        self._throttle = LogThrottle(PROBLEM_LOG_EVERY_SEC)

    def discover(self, stop: threading.Event | None = None) -> list[str]:
        return discover_symbols(self._client, stop)

    def read_and_decide(self, symbols: Sequence[str], now: float) -> list[Proposal | Skip]:
        """One pipelined round trip for the batch's live targets and efficiency hashes, then the pure decisions.

        ``HGET`` of ``target_usd`` and the efficiency read per symbol (plus, only where that found none of the
        fields, one more round trip to tell an absent key from a hash without them).
        """
        raws = [encode(symbol) for symbol in symbols]
        pipe = self._client.pipeline(transaction=False)
        for raw in raws:
            pipe.hget(LIVE_KEY + raw, TARGET_FIELD)
            queue_efficiency_read(pipe, raw)
        replies = pipe.execute(raise_on_error=False)
        readings = efficiency_readings(self._client, raws, replies[1::2], now, self._policy)
        decisions: list[Proposal | Skip] = []
        for symbol, target, reading in zip(symbols, replies[0::2], readings, strict=True):
            if isinstance(target, Exception):
                decisions.append(Skip(symbol, SkipReason.REDIS_ERROR, f"reading {TARGET_FIELD} failed: {target}"))
            else:
                decisions.append(decide(symbol, target, reading, self._params, now))
        return decisions

    def write(self, proposals: Sequence[Proposal], *, refusal_fails_loop: bool = True) -> dict[str, Skip]:
        """Write the batch's proposals; the symbols whose shadow hash could not be written, with why.

        One round trip runs :data:`WRITE_SHADOW_HASH` per symbol (the hash and its TTL, atomically), a second appends
        the stream entries of the hashes that were written. A key of another type under the shadow name fails alone:
        the other symbols are written, and the foreign key keeps its TTL.
        """
        if not proposals:
            return {}
        ttl, stream, maxlen = self._settings.key_ttl_sec, self._settings.stream_name, self._settings.stream_maxlen
        entries: list[dict[EncodableT, EncodableT]] = []
        hashes = self._client.pipeline(transaction=False)
        for proposal in proposals:
            raw = encode(proposal.symbol)
            entry = cast(dict[EncodableT, EncodableT], proposal.stream_fields())
            entry["symbol"] = raw
            entries.append(entry)
            args: list[EncodableT] = [ttl]
            for name, value in entry.items():
                args += (name, value)
            args += (LAST_UPDATE_FIELD, entry["ts_epoch"])
            # execute_command: redis-py's cluster pipeline has no eval(), but routes an EVAL by its key
            hashes.execute_command("EVAL", WRITE_SHADOW_HASH, 1, PROPOSED_KEY + raw, *args)
        replies = hashes.execute(raise_on_error=False)
        refusal = _refused_by_the_server(replies) if refusal_fails_loop else None
        if refusal is not None:
            raise WritesRefusedError(f"Redis refused all {len(replies)} shadow writes of a batch: {refusal}")
        failed: dict[str, Skip] = {}
        stream_entries = self._client.pipeline(transaction=False)
        for proposal, entry, reply in zip(proposals, entries, replies, strict=True):
            if isinstance(reply, Exception):
                detail = f"writing the shadow hash failed: {reply}"
                failed[proposal.symbol] = Skip(proposal.symbol, SkipReason.REDIS_ERROR, detail)
            else:
                stream_entries.xadd(stream, entry, maxlen=maxlen, approximate=True)
        if len(failed) < len(proposals):
            stream_entries.execute()
        return failed

    def run_loop(self, stop: threading.Event) -> LoopSummary:
        """One loop over every symbol; returns early, after the batch in hand, when ``stop`` is set."""
        started = time.perf_counter()
        summary = LoopSummary()
        symbols = self.discover(stop)
        if stop.is_set():  # maybe mid-scan: a partial list is no count of the symbols, and nothing is written
            summary.interrupted = True
            symbols = []
        else:
            summary.symbols = len(symbols)
            self._metrics.symbols.set(len(symbols))
        exported = set(symbols[: self._settings.metrics_max_symbols])
        series: dict[str, tuple[float | None, ...]] = {}
        for batch in _batches(symbols, self._batch_size):
            if stop.is_set():
                summary.interrupted = True
                break
            decisions = self.read_and_decide(batch, self._clock())
            # a loop that has written nothing yet fails when Redis refuses a whole batch (retried with backoff); once
            # batches are written, a refused one is skipped as redis_error, so a retry never writes them twice
            proposals = [d for d in decisions if isinstance(d, Proposal)]
            failed = self.write(proposals, refusal_fails_loop=not summary.proposed)
            if failed:
                decisions = [failed.get(d.symbol, d) for d in decisions]
            self._account(decisions, summary)
            for decision in decisions:
                if isinstance(decision, Proposal) and decision.symbol in exported:
                    reading = decision.reading
                    series[decision.symbol] = (decision.multiplier, reading.score, reading.confidence)
        if not summary.interrupted:
            self._metrics.per_symbol.publish(series)
            self._metrics.publish_usd_totals(summary.live_usd, summary.proposed_usd)
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
            summary.live_usd[reason.value] += decision.base_target
            summary.proposed_usd[reason.value] += decision.proposed_target
            self._metrics.proposal_multiplier.observe(decision.multiplier)
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
