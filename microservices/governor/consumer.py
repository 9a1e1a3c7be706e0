"""The governor's consumption (SPEC §3): the consumer group, its own pending plans, claims of other consumers' idle
plans, new plans; each batch read, decided and written as :mod:`microservices.governor.batch` describes.

The delivery guarantee rests on three things:

* a plan is acknowledged only by the transaction that records its outcome (permit or block record, gate state,
  dead-letter entry, outcome marker, event, ``XACK``), so a governor killed at any instant leaves each plan either
  fully decided or still pending, and a pending plan is re-read on start (same consumer name) or claimed by another
  consumer;
* every key a decision reads and another writer could change (each outcome marker, each symbol's gate, the kill
  switch) is ``WATCH``-ed before it is read, so if a replica decides the same entry or passes the same symbol's
  cooldown first, ``EXEC`` does nothing and the batch is read and decided again;
* an entry whose outcome is recorded, or a plan_id with a permit, is only acknowledged: nothing is rewritten and no
  event is added. An entry whose outcome this consumer wrote without learning it (the connection died during
  ``EXEC``) is counted in the metrics when it comes back.

Under Redis Cluster a transaction cannot span slots: each symbol's gate is set first by a compare-and-set on its one
key (so replicas never pass one symbol's cooldown together: the one that finds the gate changed decides that
symbol's plans again), then each outcome's own records, its marker and event only once they succeeded, and the
``XACK`` last; the permit's ``SET NX`` keeps the permit unique.

With ``GOV_MIN_REPLICAS`` > 0 a batch's permits are written only once replicas confirm its decisions
(:mod:`microservices.governor.replication`); meanwhile no new plan is decided.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from redis.client import Pipeline
from redis.exceptions import ResponseError, WatchError

from microservices.core.http_server import HealthState
from microservices.core.redis_client import REDIS_ERRORS, RedisClient
from microservices.governor.batch import PERMIT, BatchIO, Decided, Delivery, Parsed, gate_key, gate_updates
from microservices.governor.decision import Event, Outcome, Reason
from microservices.governor.metrics import BatchTally, GovernorMetrics
from microservices.governor.plan import entry_time
from microservices.governor.records import OutcomeMarker
from microservices.governor.replication import HeldPermitWriter, PermitWrite, Replicas
from microservices.governor.settings import GovernorSettings

log = logging.getLogger(__name__)


def _abandon(tx: Pipeline) -> None:
    """Give back a transaction's connection after a failure, dropping its WATCH by disconnecting rather than by the
    ``UNWATCH`` redis-py's ``reset()`` sends: after a timeout that call waited a whole socket timeout more on a
    paused or dead Redis (past SIGTERM's 5 s), and when it timed out too the connection never went back to the
    pool. A closed connection holds no WATCH on the server, and the pool reconnects it on its next use."""
    if tx.connection is not None:
        tx.connection.disconnect()  # type: ignore[no-untyped-call]  # untyped upstream
    tx.watching = False
    tx.reset()


#: Plans per read, and so per transaction.
BATCH_SIZE = 200
#: A batch whose watched keys keep changing under it is read and decided again at most this often in a row; after
#: that its plans stay pending and are re-read with the next pass over the pending list.
MAX_ATTEMPTS = 5
#: How often other consumers' idle plans are looked for with XAUTOCLAIM, seconds: this often, or twice per
#: ``GOV_CLAIM_IDLE_MS`` when that is shorter.
CLAIM_EVERY_SEC = 5.0
#: How often the pending and lag gauges are refreshed, seconds.
GAUGES_EVERY_SEC = 1.0
#: How often a summary of the outcomes is logged, seconds.
SUMMARY_EVERY_SEC = 60.0
FIRST_ID = "0"
#: The message of redis-py's WatchError for a real conflict; any other WatchError is a connection lost while watching.
WATCH_CONFLICT = "Watched variable changed."


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a value that orders like the ids do."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _deliveries(entries: Any, counts: dict[str, int] | None = None) -> list[Delivery]:
    """Deliveries from the ``[(id, fields), ...]`` part of an XREADGROUP or XAUTOCLAIM reply."""
    counts = counts or {}
    return [Delivery(_text(i), f or {}, counts.get(_text(i), 1)) for i, f in entries]


class Governor:
    """Consumes plans for one consumer name; all decisions are delegated to :func:`decide`."""

    def __init__(
        self,
        client: RedisClient,
        settings: GovernorSettings,
        metrics: GovernorMetrics,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        batch_size: int = BATCH_SIZE,
        reader: RedisClient | None = None,
        health: HealthState | None = None,
    ) -> None:
        self._client = client
        #: The client of the blocking read for new plans, whose socket timeout must outlast the block; every other
        #: call goes through ``client``, whose shorter timeout bounds how long a hung Redis holds a batch (and so a
        #: SIGTERM) up. Defaults to ``client``.
        self._reader = reader or client
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._monotonic = monotonic
        self._batch = batch_size
        self._stream = settings.plans_stream
        self._group = settings.group
        self._consumer = settings.consumer
        self._transactional = not settings.redis_cluster
        self._io = BatchIO(client, settings, metrics, transactional=self._transactional)
        self._group_ready = False
        #: Where the pass over this consumer's own pending plans stands; None when no pass is due.
        self._pending_cursor: str | None = FIRST_ID
        #: Whether a pass delivers the plans again (the pass on start) or only reads them (a pass after a failure in
        #: this process): see :meth:`_next_pending`.
        self._redeliver_pending = True
        #: Whether the pass on start has sent its XREADGROUP (whose delivery Redis counts, even if the reply is lost).
        self._redelivery_sent = False
        #: A batch whose EXEC was sent and whose reply never came: see :meth:`_count_unconfirmed_write`.
        self._unconfirmed: list[Decided] = []
        self._pending_left_behind = False
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._claim_every = min(CLAIM_EVERY_SEC, settings.claim_idle_ms / 2000)
        self._next_gauges = 0.0
        self._next_summary = monotonic() + SUMMARY_EVERY_SEC
        self._summary: Counter[str] = Counter()
        #: GOV_MIN_REPLICAS > 0: a batch's decisions are confirmed by replicas before its permits are written; they
        #: wait here meanwhile, and /healthz (``health``) says so.
        replicas = (
            Replicas(client, self._consumer, settings.min_replicas, settings.replica_wait_ms)
            if settings.min_replicas > 0
            else None
        )
        self._permits = HeldPermitWriter(
            client, replicas, metrics, consumer=self._consumer, permit_ttl_sec=settings.permit_ttl_sec, clock=clock,
            monotonic=monotonic, health=health,
        )  # fmt: skip
        #: The permits of the batch whose EXEC reply never came (:attr:`_unconfirmed`).
        self._unconfirmed_permits: tuple[PermitWrite, ...] = ()

    # --- the runner's step ----------------------------------------------------------------------------------------

    def poll(self, stop: threading.Event) -> int:
        """One round: a batch of own pending plans, else of claimed ones, else of new ones (blocking at most
        ``GOV_BLOCK_MS``). Returns how many plans were delivered."""
        del stop  # one batch per call: the runner checks for shutdown between calls
        try:
            self._ensure_group()
            self._count_unconfirmed_write()
            if not self._permits.release():  # safety over liveness: no new plan is decided while permits wait
                self._refresh_gauges()
                return 0
            deliveries = self._next_pending() or self._next_claimed()
            if not deliveries:
                deliveries = self._read_new(self._settings.read_block_ms)
            self._process(deliveries)
            self._refresh_gauges()
            return len(deliveries)
        except BaseException as exc:
            self._after_failure(exc)
            raise

    def drain(self, stop: threading.Event) -> int:
        """``--once``: decide every plan the stream holds for this group now (own pending, claimable, new, up to
        the last entry at the start, so that producers that keep up cannot keep it running), then return. Returns
        how many plans were delivered."""
        total = 0
        try:
            self._ensure_group()
            self._count_unconfirmed_write()
            while not stop.is_set() and (deliveries := self._next_pending()):
                self._process(deliveries)
                total += len(deliveries)
            cursor = "0-0"
            while not stop.is_set():
                deliveries, cursor = self._claim_page(cursor)
                self._process(deliveries)
                total += len(deliveries)
                if cursor == "0-0":
                    break
            last = _entry_key(_text(self._client.xinfo_stream(self._stream)["last-generated-id"]))
            while not stop.is_set() and (deliveries := self._read_new(None)):
                self._process(deliveries)
                total += len(deliveries)
                if _entry_key(deliveries[-1].entry_id) >= last:  # what the stream held at the start is decided
                    break
            self._permits.require_released()
            self._refresh_gauges(force=True)
            return total
        except BaseException as exc:
            self._after_failure(exc)
            raise

    def _after_failure(self, exc: BaseException) -> None:
        """Whatever the batch in hand was, its plans are pending: read them again, from the start of the list. Once
        the pass on start has delivered them again (or sent the command to, the reply lost or not), later passes only
        read them (:meth:`_next_pending`): a process delivers its pending plans again once, whatever fails after."""
        if self._redelivery_sent:
            self._redeliver_pending = False
        self._pending_cursor = FIRST_ID
        if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
            log.warning(
                "consumer group %s on %s is gone (Redis lost its data?): creating it again", self._group, self._stream
            )
            self._group_ready = False

    # --- reading ----------------------------------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        """Create the group at 0 when it is missing, so that no plan published before the first start is missed."""
        if self._group_ready:
            return
        try:
            self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
            log.info("created consumer group %s on %s at 0", self._group, self._stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _next_pending(self) -> list[Delivery]:
        """The next batch of this consumer's own pending plans, while a pass over them is due (on start, and after
        any failure).

        The pass on start delivers them again (XREADGROUP from their ids), so Redis counts the delivery: a plan that
        kills the governor each time it is decided reaches ``GOV_MAX_DELIVERIES`` and becomes a dead letter. A pass
        after a failure in this process only reads them (XPENDING, XRANGE) and counts nothing: a write that Redis
        refused (out of memory, a read-only replica, a timeout) is no fault of the plans, and counting each retry
        dead-lettered every plan in hand within seconds of such a fault instead of deciding it when Redis recovered.
        """
        if self._pending_cursor is None:
            return []
        cursor = self._pending_cursor
        if self._redeliver_pending:
            deliveries = self._redeliver_own_pending(cursor)
        else:
            deliveries = self._reread_own_pending(cursor)
        if not deliveries:
            self._redeliver_pending = False
            if self._pending_left_behind:  # some plans of the pass could not be written: another pass
                self._pending_left_behind = False
                self._pending_cursor = FIRST_ID
            else:
                self._pending_cursor = None
            return []
        self._pending_cursor = deliveries[-1].entry_id
        if cursor == FIRST_ID:
            if self._redeliver_pending:
                log.info("re-reading pending plans of consumer %s (from %s)", self._consumer, deliveries[0].entry_id)
            else:  # after a failure, which the runner logs once per outage: nothing more to say at each retry
                log.debug("retrying pending plans of consumer %s (from %s)", self._consumer, deliveries[0].entry_id)
        return deliveries

    def _redeliver_own_pending(self, cursor: str) -> list[Delivery]:
        """A batch of this consumer's pending plans after ``cursor``, delivered again: Redis counts the delivery."""
        pipe = self._client.pipeline(transaction=False)
        pipe.xreadgroup(self._group, self._consumer, {self._stream: cursor}, count=self._batch)
        start = self._after(cursor)
        pipe.xpending_range(self._stream, self._group, start, "+", self._batch, consumername=self._consumer)
        self._redelivery_sent = True
        read, pending = pipe.execute()
        counts = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        return _deliveries(read[0][1] if read else [], counts)

    def _reread_own_pending(self, cursor: str) -> list[Delivery]:
        """A batch of this consumer's pending plans after ``cursor``, read without delivering them again: their ids and
        delivery counts from XPENDING, their fields with one XRANGE each (none for an entry deleted from the stream
        while pending, as XREADGROUP reports it)."""
        pending = cast(
            list[dict[str, Any]],
            self._client.xpending_range(
                self._stream, self._group, self._after(cursor), "+", self._batch, consumername=self._consumer
            ),
        )
        if not pending:
            return []
        pipe = self._client.pipeline(transaction=False)
        for row in pending:
            pipe.xrange(self._stream, row["message_id"], row["message_id"])
        return [
            Delivery(_text(row["message_id"]), found[0][1] if found else {}, int(row["times_delivered"]))
            for row, found in zip(pending, pipe.execute(), strict=True)
        ]

    @staticmethod
    def _after(cursor: str) -> str:
        """The XPENDING range start of the entries after ``cursor``."""
        return "-" if cursor == FIRST_ID else "(" + cursor

    def _next_claimed(self) -> list[Delivery]:
        """Every few seconds, a batch of plans idle longer than ``GOV_CLAIM_IDLE_MS`` in other consumers."""
        now = self._monotonic()
        if now < self._next_claim:
            return []
        deliveries, self._claim_cursor = self._claim_page(self._claim_cursor)
        if self._claim_cursor == "0-0":  # the whole pending list was scanned
            self._next_claim = now + self._claim_every
        return deliveries

    def _claim_page(self, cursor: str) -> tuple[list[Delivery], str]:
        """One XAUTOCLAIM page from ``cursor`` (a claim counts as a delivery) and the cursor to go on from."""
        reply = self._client.xautoclaim(
            self._stream, self._group, self._consumer, self._settings.claim_idle_ms, cursor, count=self._batch
        )
        next_cursor, entries = _text(reply[0]), reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:
            log.warning(
                "%d pending plan(s) were deleted from %s before a decision: %s",
                len(deleted),
                self._stream,
                ", ".join(_text(d) for d in deleted[:5]),
            )
        if not entries:
            return [], next_cursor
        pipe = self._client.pipeline(transaction=False)
        for entry_id, _fields in entries:
            pipe.xpending_range(self._stream, self._group, entry_id, entry_id, 1)
        counts: dict[str, int] = {}
        for rows in pipe.execute():
            for row in rows:
                counts[_text(row["message_id"])] = int(row["times_delivered"])
        deliveries = _deliveries(entries, counts)
        log.info("claimed %d plan(s) idle over %d ms in other consumers", len(deliveries), self._settings.claim_idle_ms)
        return deliveries, next_cursor

    def _read_new(self, block_ms: int | None) -> list[Delivery]:
        reply = self._reader.xreadgroup(
            self._group, self._consumer, {self._stream: ">"}, count=self._batch, block=block_ms
        )
        return _deliveries(cast(Any, reply)[0][1]) if reply else []

    # --- deciding and writing -------------------------------------------------------------------------------------

    def _process(self, deliveries: Sequence[Delivery]) -> None:
        """Decide and record a batch. A failure that is not Redis's (a bug, or a value nothing foresaw) must not stall
        the stream behind one plan: the batch is then decided plan by plan, and a plan that still cannot be decided
        becomes a dead letter that says why."""
        if not deliveries:
            return
        parsed = [(delivery, delivery.parse()) for delivery in deliveries]
        try:
            self._process_parsed(parsed)
        except REDIS_ERRORS:
            raise
        except Exception:
            log.exception("a batch of %d plans could not be decided; deciding them one by one", len(parsed))
            for item in parsed:
                try:
                    self._process_parsed([item])
                except REDIS_ERRORS:
                    raise
                except Exception as exc:
                    self._dead_letter_undecidable(item, exc)

    def _process_parsed(self, parsed: Sequence[Parsed]) -> None:
        """Decide and write a batch; the plans another writer's change made stale are decided again: all of them
        after a WATCH conflict (single Redis), those of the symbols whose gate changed since it was read under a
        cluster (:meth:`_write_in_cluster`)."""
        self._permits.require_released()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                decided, finished, again = self._decide_and_write(parsed)
            except WatchError as exc:
                if str(exc) != WATCH_CONFLICT:  # the connection died while watching: EXEC may or may not have run
                    raise redis.ConnectionError(str(exc)) from exc
                self._metrics.conflicts.inc()
                log.debug("batch of %d plans: a watched key changed, deciding again (attempt %d)", len(parsed), attempt)
                continue
            self._account(decided, finished)
            if not again:
                self._permits.release()
                return
            self._metrics.conflicts.inc()
            log.debug("batch of %d plans: a symbol's gate changed since it was read, deciding its %d plan(s) again "
                      "(attempt %d)", len(parsed), len(again), attempt)  # fmt: skip
            stale = {item.delivery.entry_id for item in again}
            parsed = [item for item in parsed if item[0].entry_id in stale]
        self._pending_left_behind = True
        if self._pending_cursor is None:
            self._pending_cursor = FIRST_ID
        log.warning("batch of %d plans left pending: other writers changed its keys %d times in a row", len(parsed),
                    MAX_ATTEMPTS)  # fmt: skip

    def _decide_and_write(self, parsed: Sequence[Parsed]) -> tuple[list[Decided], float, list[Decided]]:
        """The outcomes written and acknowledged, when that ended, and those decided from a gate that changed
        since it was read (under a cluster), not written, to be decided again."""
        tx: Pipeline | None = None
        if self._transactional:
            tx = cast(Pipeline, self._client.pipeline(transaction=True))
            tx.watch(*self._io.watched_keys(parsed))  # type: ignore[no-untyped-call]  # untyped upstream
        try:
            now = self._clock()
            kill, reads = self._io.read(parsed, now)
            if tx is not None:
                reads = self._io.settle_shared_entries(parsed, reads, tx.watch)
            decided = self._hold_unwritable_dead_letters(self._io.decide(parsed, kill, reads, now))
            acked, again = self._write(decided, now, tx)
        except BaseException:
            if tx is not None:
                _abandon(tx)
            raise
        if tx is not None:
            tx.reset()
        return acked, self._clock(), again

    def _write(
        self, decided: Sequence[Decided], now: float, tx: Pipeline | None
    ) -> tuple[list[Decided], list[Decided]]:
        """Record the outcomes and acknowledge their entries; returns those acknowledged, and those to decide again.
        On a single Redis one ``MULTI``/``EXEC`` (``tx``, already watching, or a fresh one) holds it all, the
        symbols' gates included (watched: a gate changed since it was read makes EXEC do nothing); a failed command
        inside it is reported and the rest stands. Under a cluster: :meth:`_write_in_cluster`."""
        if self._transactional:
            pipe = tx if tx is not None else cast(Pipeline, self._client.pipeline(transaction=True))
            pipe.multi()
            permits = self._permit_writes(decided, now)
            kinds: list[tuple[str, Decided]] = []
            for item in decided:
                queued = self._io.queue_records(
                    pipe, item, now, primary=True, secondary=True, permit=not self._permits.enabled
                )
                kinds += [(kind, item) for kind in queued]
            if decided:
                pipe.xack(self._stream, self._group, *[d.delivery.entry_id for d in decided])
            # until EXEC's reply says whether it ran
            self._unconfirmed, self._unconfirmed_permits = list(decided), permits
            try:
                replies = pipe.execute(raise_on_error=False)
            except ResponseError:  # EXECABORT (OOM, READONLY, ...): refused as a whole, nothing written
                self._unconfirmed, self._unconfirmed_permits = [], ()
                raise
            except WatchError as exc:
                if str(exc) == WATCH_CONFLICT:  # nothing written; any other WatchError is a connection lost
                    self._unconfirmed, self._unconfirmed_permits = [], ()
                raise
            self._unconfirmed, self._unconfirmed_permits = [], ()
            self._permits.hold(permits, frozenset())
            self._report_failed_writes(kinds, replies)
            return list(decided), []
        return self._write_in_cluster(decided, now)

    def _count_unconfirmed_write(self) -> None:
        """Count the outcomes of a batch whose EXEC was sent but whose reply never came (the connection died or timed
        out; Redis stopped right after running it), if the EXEC ran: it acknowledged the batch's entries, so they
        never come back to be counted when re-read. Whether it ran shows in the batch's outcome markers, written all
        or none: this consumer's, for these very entries. If it did not run, the entries are still pending, and are
        decided and counted when re-read. (A batch that only acknowledged entries writes no marker: it is not
        counted, which leaves ``quantum_govern_already_decided_total`` short.)"""
        batch, permits = self._unconfirmed, self._unconfirmed_permits
        if not batch:
            return
        marked = [(item.delivery.entry_id, key) for item in batch if (key := item.record_key) is not None]
        pipe = self._client.pipeline(transaction=False)
        for _, key in marked:
            pipe.get(key)
        markers = [OutcomeMarker.parse(raw) for raw in pipe.execute()] if marked else []
        self._unconfirmed, self._unconfirmed_permits = [], ()
        ran = any(
            marker is not None and (marker.entry_id, marker.consumer) == (entry_id, self._consumer)
            for (entry_id, _), marker in zip(marked, markers, strict=True)
        )
        if ran:
            log.info("the unconfirmed write of a batch of %d plans happened: its outcomes are counted now", len(batch))
            self._account(batch, self._clock())
            self._permits.hold(permits, frozenset())

    def _write_in_cluster(self, decided: Sequence[Decided], now: float) -> tuple[list[Decided], list[Decided]]:
        """Under a cluster, where one transaction cannot span the batch's slots: first each symbol's gate, by a
        compare-and-set on its one key, before any permit of that symbol (so two replicas never both pass one
        symbol's cooldown: the second finds the gate changed); then the outcomes' own records, then the markers and
        events of those that succeeded, then the ``XACK`` of those. The plans of a symbol whose gate changed since
        it was read are not written: returned, to be decided again from the gate as it is now. A plan whose writes
        failed stays pending."""
        failed: set[int] = set()
        taken: set[int] = set()  # a permit SET NX found in place: another writer decided the plan first
        replicated = self._permits.enabled
        keys: set[str] | None = {self._stream} if replicated else None  # where the batch's decisions went
        stale_symbols = self._set_gates(decided, failed, keys)
        stale = {i for i, item in enumerate(decided) if item.gate_symbol in stale_symbols}
        for primary in (True, False):
            pipe = self._client.pipeline(transaction=False)
            kinds: list[tuple[str, int]] = []
            for i, item in enumerate(decided):
                if i not in failed and i not in taken and i not in stale:
                    queued = self._io.queue_records(
                        pipe, item, now, primary=primary, secondary=not primary, permit=not replicated, gate=False,
                        keys=keys,
                    )  # fmt: skip
                    kinds += [(kind, i) for kind in queued]
            results = pipe.execute(raise_on_error=False) if kinds else []
            for (kind, i), result in zip(kinds, results, strict=True):
                if isinstance(result, Exception):
                    failed.add(i)
                elif kind == PERMIT and not result:
                    taken.add(i)
            self._report_failed_writes([(kind, decided[i]) for kind, i in kinds], results)
        acked = [item for i, item in enumerate(decided) if i not in failed and i not in stale]
        if acked:
            acks = self._client.pipeline(transaction=False)
            acks.xack(self._stream, self._group, *[d.delivery.entry_id for d in acked])
            acks.execute()
            self._permits.hold(self._permit_writes(acked, now), frozenset(keys or ()))
        if failed:
            raise redis.RedisError(f"{len(failed)} plan(s) left pending: their outcome could not be written")
        return acked, [decided[i] for i in sorted(stale)]

    def _set_gates(self, decided: Sequence[Decided], failed: set[int], keys: set[str] | None) -> set[str]:
        """Compare-and-set the gate of each symbol the batch permitted; the symbols whose gate another writer changed
        since it was read. A symbol whose gate could not be written has its plans added to ``failed``."""
        updates = gate_updates(decided)
        if not updates:
            return set()
        results = self._io.compare_and_set_gates(updates)
        if keys is not None:
            keys.update(gate_key(update.symbol) for update in updates)
        errors = {u.symbol: r for u, r in zip(updates, results, strict=True) if isinstance(r, Exception)}
        if errors:
            failed.update(i for i, item in enumerate(decided) if item.gate_symbol in errors)
            self._metrics.redis_errors.inc(len(errors))
            shown = "; ".join(f"gate of {symbol}: {error}" for symbol, error in list(errors.items())[:5])
            log.error("%d gate write(s) of a decided batch failed: %s", len(errors), shown)
        return {update.symbol for update, result in zip(updates, results, strict=True) if result is False}

    # --- writes that survive a failover (GOV_MIN_REPLICAS > 0) -------------------------------------------------

    def _permit_writes(self, decided: Sequence[Decided], now: float) -> tuple[PermitWrite, ...]:
        """The batch's permits as decided, when they are to wait for its decisions' confirmation; else none."""
        if not self._permits.enabled:
            return ()
        return tuple(permit for item in decided if (permit := self._io.permit_write(item, now)) is not None)

    def stop(self) -> None:
        """On shutdown: one last try to write held permits (:meth:`HeldPermitWriter.stop`)."""
        self._permits.stop()

    def _hold_unwritable_dead_letters(self, decided: list[Decided]) -> list[Decided]:
        """The batch without its dead letters when the dead-letter stream cannot take them (a key of another type
        under its name): inside MULTI/EXEC their XADD would fail while their XACK succeeded, losing the plan. They
        stay pending, are reported, and come back when the governor restarts or another consumer claims them."""
        if not any(d.outcome.event is Event.DEAD_LETTER for d in decided):
            return decided
        kind = self._io.dead_letter_stream_type_if_unusable()
        if kind is None:
            return decided
        held = [d for d in decided if d.outcome.event is Event.DEAD_LETTER]
        self._metrics.redis_errors.inc(len(held))
        first = held[0]
        log.error("%d dead letter(s) left pending: %s is a %s, not a stream; e.g. entry %s (%s)", len(held),
                  self._settings.dead_letter_stream, kind, first.delivery.entry_id, first.outcome.detail)  # fmt: skip
        return [d for d in decided if d.outcome.event is not Event.DEAD_LETTER]

    def _dead_letter_undecidable(self, item: Parsed, exc: Exception) -> None:
        delivery, plan = item
        log.error("entry %s (plan_id %r) could not be decided (%s: %s): sending it to the dead-letter stream",
                  delivery.entry_id, plan.plan_id, type(exc).__name__, exc, exc_info=exc)  # fmt: skip
        outcome = Outcome(Event.DEAD_LETTER, Reason.INVALID_PLAN, f"could not be decided: {type(exc).__name__}: {exc}")
        now = self._clock()
        decided = self._hold_unwritable_dead_letters([Decided(delivery, plan, outcome)])
        self._account(self._write(decided, now, None)[0], self._clock())

    def _report_failed_writes(self, kinds: Sequence[tuple[str, Decided]], results: Sequence[object]) -> None:
        """Log and count the writes that failed. A permit whose ``SET NX`` wrote nothing (a permit another writer
        made since the read) is reported too: the existing key is left as it is, never overwritten."""
        failed: list[str] = []
        for (kind, item), result in zip(kinds, results, strict=False):
            if isinstance(result, Exception):
                failed.append(f"{kind} of entry {item.delivery.entry_id}: {result}")
            elif kind == PERMIT and not result:
                failed.append(f"permit {item.plan.plan_id}: the key exists already, not written")
        if failed:
            self._metrics.redis_errors.inc(len(failed))
            log.error("%d write(s) of a decided batch failed: %s", len(failed), "; ".join(failed[:5]))

    # --- accounting -------------------------------------------------------------------------------------------------

    def _account(self, decided: Sequence[Decided], finished: float) -> None:
        """Metrics and logs of a written batch: every block and dead letter is logged; permits and skips at DEBUG (the
        events stream explains each), with a summary of all outcomes every minute."""
        tally = BatchTally()
        for item in decided:
            plan, outcome = item.plan, item.outcome
            if outcome.event is None:
                self._account_acknowledged(item, tally)
                continue
            reason = outcome.reason.value
            tally.add_outcome(plan, outcome, max(0.0, finished - entry_time(item.delivery.entry_id)))
            if outcome.event is Event.PERMIT and outcome.hint is not None:
                hint = outcome.hint
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("permit %s %s: eff_action %s factor %.4f extra cooldown %ds (%s)", plan.plan_id,
                              plan.symbol, hint.action.value, hint.factor, hint.extra_cooldown_sec,
                              hint.reason)  # fmt: skip
            elif outcome.event is Event.BLOCK:
                log.info("block %s %s: %s (%s)", plan.plan_id, plan.symbol, reason, outcome.detail)
            elif outcome.event is Event.DEAD_LETTER:
                log.warning("dead letter: entry %s (plan_id %r) to %s: %s (%s)", item.delivery.entry_id,
                            plan.plan_id, self._settings.dead_letter_stream, reason, outcome.detail)  # fmt: skip
            else:
                log.debug("skip %s %s: %s", plan.plan_id, plan.symbol, outcome.detail)
        self._metrics.record(tally, finished)
        for (event, reason), n in tally.outcomes.items():
            self._summary[f"{event}:{reason}"] += n
        self._log_summary()

    def _account_acknowledged(self, item: Decided, tally: BatchTally) -> None:
        """An entry only acknowledged. If this consumer wrote its outcome before without learning it (the connection
        died during EXEC, or the process was killed), the outcome is counted now, once."""
        prior, entry_id = item.prior, item.delivery.entry_id
        if prior is not None and prior.entry_id == entry_id and prior.consumer == self._consumer:
            tally.outcomes[prior.event, prior.reason] += 1
            if prior.event == Event.PERMIT.value:
                tally.eff_apply[prior.eff_action, prior.eff_reason] += 1
            elif prior.event == Event.DEAD_LETTER.value:
                tally.dead_letters[prior.reason] += 1
            log.info("entry %s: its %s (%s) was written by this consumer unconfirmed; counted now", entry_id,
                     prior.event, prior.reason)  # fmt: skip
            return
        tally.already_decided += 1
        log.info("plan %s (entry %s): %s; acknowledged only", item.plan.plan_id, entry_id, item.outcome.detail)

    def _log_summary(self) -> None:
        now = self._monotonic()
        if now < self._next_summary:
            return
        self._next_summary = now + SUMMARY_EVERY_SEC
        if self._summary:
            log.info("outcomes in the last %.0fs: %s", SUMMARY_EVERY_SEC, dict(sorted(self._summary.items())))
            self._summary.clear()

    def _refresh_gauges(self, *, force: bool = False) -> None:
        now = self._monotonic()
        if not force and now < self._next_gauges:
            return
        self._next_gauges = now + GAUGES_EVERY_SEC
        for group in self._client.xinfo_groups(self._stream):
            if _text(group["name"]) == self._group:
                self._metrics.pending.set(int(group["pending"]))
                lag = group.get("lag")
                if lag is not None:
                    self._metrics.lag.set(int(lag))
        self._metrics.last_success.set(self._clock())
