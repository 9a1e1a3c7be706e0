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

from microservices.allocation_target.lease import (
    ACQUIRE_OR_RENEW,
    FENCE_CHECK,
    FENCED,
    RELEASE,
    Fence,
    Lease,
    lease_from_reply,
    process_instance_id,
    role_change,
    ttl_ms,
)
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
from microservices.core.redis_client import REDIS_ERRORS, RedisClient, queue_script, scan_pages

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
SCAN_COUNT = 1000
#: Key prefixes as bytes: symbols are bytes on the wire, and keys are built by concatenation.
LIVE_KEY = LIVE_TARGET_PREFIX.encode()
PROPOSED_KEY = PROPOSED_PREFIX.encode()
#: The shadow hash and its TTL, written atomically (SPEC §2: never a key without its EXPIRE). A script rather than
#: MULTI/EXEC: when HSET fails (a key of another type under that name) the script stops, so the EXPIRE never reaches a
#: key that is not ours, and one key's failure is that key's alone. It touches one key (two with the lease check, off
#: under Redis Cluster), so it also runs in a cluster. It first checks the lease's fence (SPEC §9, :mod:`.lease`): a
#: holder that lost its lease writes nothing and gets :data:`~.lease.FENCED`.
#: KEYS[1]: the shadow hash, KEYS[2] (optional): the lease; ARGV[1]: the fence deadline, server ms; ARGV[2]: our
#: instance id; ARGV[3]: the TTL in seconds; ARGV[4..]: field, value, field, value, ...
WRITE_SHADOW_HASH = (
    FENCE_CHECK
    + """
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)
#: The stream entry, behind the same fence. KEYS[1]: the stream, KEYS[2] (optional): the lease; ARGV[1], ARGV[2]: as
#: above; ARGV[3]: the approximate MAXLEN; ARGV[4..]: field, value, ... Returns the entry id.
APPEND_STREAM_ENTRY = (
    FENCE_CHECK
    + """
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
"""
)
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
    #: A standby's loop: it checked the lease, which another instance holds, and wrote nothing.
    standby: bool = False
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


def _eval(client: RedisClient, script: str, key: str, *args: EncodableT) -> object:
    """A single-key script: ``execute_command`` because redis-py's cluster client routes an EVAL by its key."""
    return client.execute_command("EVAL", script, 1, key, *args)  # type: ignore[no-untyped-call]  # untyped upstream


class LeaseLostError(Exception):
    """A write was fenced (SPEC §9): this instance's lease ended, or another holds it. Nothing more may be written."""


class Proposer:
    """Runs proposer loops against one Redis client; all decisions are delegated to :func:`decide`.

    Only the holder of the lease writes (SPEC §9): each loop first acquires or renews it; a standby's loop is that
    check alone. ``instance_id`` defaults to the process's own (:func:`~.lease.process_instance_id`)."""

    def __init__(
        self,
        client: RedisClient,
        settings: ProposerSettings,
        metrics: ProposerMetrics,
        clock: Callable[[], float] = time.time,
        batch_size: int = BATCH_SIZE,
        *,
        instance_id: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._batch_size = batch_size
        self._policy = settings.efficiency_policy
        self._params = settings.multiplier_params
        self._throttle = LogThrottle(PROBLEM_LOG_EVERY_SEC)
        self.instance_id = instance_id or process_instance_id()
        self._lease_ttl_ms = ttl_ms(settings.lease_ttl_sec)
        #: Under Redis Cluster the lease key lives in another slot than the keys written: the fence is the deadline.
        self._fence_key = None if settings.redis_cluster else settings.lease_key
        #: What the last acquire-or-renew found; None before the first, and after a fenced write.
        self._lease: Lease | None = None

    @property
    def lease(self) -> Lease | None:
        return self._lease

    @property
    def leading(self) -> bool:
        return self._lease is not None and self._lease.held

    def renew(self) -> Lease:
        """Acquire the lease if it is free, renew it if it is ours (one round trip); log a change of role and keep
        the metrics to it."""
        sent_at = self._monotonic()
        reply = _eval(self._client, ACQUIRE_OR_RENEW, self._settings.lease_key, self.instance_id, self._lease_ttl_ms)
        lease = lease_from_reply(reply, self.instance_id, self._lease_ttl_ms, sent_at)
        self._set_lease(lease)
        return lease

    def _set_lease(self, lease: Lease | None, why: str | None = None) -> None:
        before, self._lease = self._lease, lease
        message = why if lease is None else role_change(before, lease)
        if message is not None:
            log.info("%s", message, extra={"lease_holder": lease.holder if lease else None})
        leading = lease is not None and lease.held
        self._metrics.leader.set(1 if leading else 0)
        if not leading and (before is None or before.held):
            self._metrics.clear_loop_gauges()  # a standby exports no stale gauges of its former leadership

    def release(self) -> None:
        """Give the lease up if this instance still holds it (on shutdown), so a standby takes over at its next
        check rather than a TTL later. A Redis error is logged: the lease then ends with its TTL."""
        if not self.leading:
            return
        try:
            released = _eval(self._client, RELEASE, self._settings.lease_key, self.instance_id)
        except REDIS_ERRORS as exc:
            log.warning("could not release the proposer lease (%s: %s): it ends with its TTL", type(exc).__name__, exc)
            return
        self._set_lease(None, "released the proposer lease" if released else "the proposer lease had already lapsed")

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

    def _fence(self) -> Fence:
        if self._lease is None or not self._lease.held:
            raise LeaseLostError("this instance holds no proposer lease")
        return self._lease.fence(self._fence_key)

    def write(self, proposals: Sequence[Proposal], *, refusal_fails_loop: bool = True) -> dict[str, Skip]:
        """Write the batch's proposals under the current lease (:meth:`write_fenced`)."""
        if not proposals:
            return {}
        return self.write_fenced(self._fence(), proposals, refusal_fails_loop=refusal_fails_loop)

    def write_fenced(
        self, fence: Fence, proposals: Sequence[Proposal], *, refusal_fails_loop: bool = True
    ) -> dict[str, Skip]:
        """Write the batch's proposals; the symbols whose shadow hash could not be written, with why.

        One round trip runs :data:`WRITE_SHADOW_HASH` per symbol (the hash and its TTL, atomically), a second appends
        the stream entries of the hashes that were written. A key of another type under the shadow name fails alone:
        the other symbols are written, and the foreign key keeps its TTL. Every write carries ``fence``: once Redis
        refuses one (the lease's end has passed, or the lease is another's), :class:`LeaseLostError` is raised and
        nothing more is written.
        """
        if not proposals:
            return {}
        guard: list[EncodableT] = [fence.deadline_ms, fence.holder]
        lease_key: tuple[EncodableT, ...] = () if fence.lease_key is None else (fence.lease_key,)
        ttl, stream, maxlen = self._settings.key_ttl_sec, self._settings.stream_name, self._settings.stream_maxlen
        entries: list[list[EncodableT]] = []
        hashes = self._client.pipeline(transaction=False)
        for proposal in proposals:
            raw = encode(proposal.symbol)
            entry = cast(dict[EncodableT, EncodableT], proposal.stream_fields())
            entry["symbol"] = raw
            fields: list[EncodableT] = []
            for name, value in entry.items():
                fields += (name, value)
            entries.append(fields)
            args = [*guard, ttl, *fields, LAST_UPDATE_FIELD, entry["ts_epoch"]]
            queue_script(hashes, "EVAL", WRITE_SHADOW_HASH, [PROPOSED_KEY + raw, *lease_key], args)
        replies = hashes.execute(raise_on_error=False)
        fenced = sum(1 for reply in replies if reply == FENCED)
        if fenced:
            raise LeaseLostError(f"{fenced} of {len(replies)} shadow writes of a batch were fenced")
        refusal = _refused_by_the_server(replies) if refusal_fails_loop else None
        if refusal is not None:
            raise WritesRefusedError(f"Redis refused all {len(replies)} shadow writes of a batch: {refusal}")
        failed: dict[str, Skip] = {}
        stream_entries = self._client.pipeline(transaction=False)
        for proposal, fields, reply in zip(proposals, entries, replies, strict=True):
            if isinstance(reply, Exception):
                detail = f"writing the shadow hash failed: {reply}"
                failed[proposal.symbol] = Skip(proposal.symbol, SkipReason.REDIS_ERROR, detail)
            else:
                queue_script(
                    stream_entries, "EVAL", APPEND_STREAM_ENTRY, [stream, *lease_key], [*guard, maxlen, *fields]
                )
        if len(failed) < len(proposals):
            appended = stream_entries.execute()
            fenced = sum(1 for reply in appended if reply == FENCED)
            if fenced:
                raise LeaseLostError(f"{fenced} of {len(appended)} stream entries of a batch were fenced")
        return failed

    def run_loop(self, stop: threading.Event) -> LoopSummary:
        """One loop: renew the lease, then, as its holder, propose for every symbol (returning early, after the batch
        in hand, when ``stop`` is set); as a standby, nothing more. A check of the lease is a successful loop for
        health and the last-success gauge; only a holder's loop counts in ``p29_shadow_loops_total``."""
        try:
            lease = self.renew()
            if not lease.held:
                self._metrics.last_success.set(time.time())
                return LoopSummary(standby=True)
            return self._propose(stop)
        except LeaseLostError as exc:
            if self.leading:  # fenced; a renewal that found another holder has said so already
                self._set_lease(None, f"lost the proposer lease during a loop ({exc}): standing by")
            self._metrics.last_success.set(time.time())
            return LoopSummary(standby=True, interrupted=True)
        except REDIS_ERRORS:
            # the lease cannot be renewed while Redis fails: once it has run out, this instance no longer leads
            if self._lease is not None and self._lease.held and self._lease.expired(self._monotonic()):
                self._set_lease(None, "the proposer lease ran out while Redis calls failed: not leading")
            raise

    def _propose(self, stop: threading.Event) -> LoopSummary:
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
            lease = self._lease
            if lease is not None and lease.needs_renewal(self._monotonic()) and not self.renew().held:
                raise LeaseLostError("another instance took the lease over during a long loop")
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
