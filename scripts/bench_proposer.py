"""Benchmark of the shadow proposer loop (SPEC §2) against two references, over the same data in a throwaway Redis.

What it does, for each size N (default 1,000, 10,000 and 100,000 symbols; ``--sizes 1000,10000`` to choose):

1. Starts (once) a private ``redis-server`` on a free port (:class:`~microservices.devtools.redis_server.RedisServer`,
   never the shared one), flushes it and seeds N symbols with pipelines: a live target hash
   ``quantum:allocation:target:{sym}`` with a valid ``target_usd`` for every symbol, and an efficiency hash
   ``quantum:capital:efficiency:{sym}`` (``efficiency_score``, ``confidence``, ``ts``) in a fixed mix: about 85 % fresh
   and confident (``ok``), 5 % absent (``missing_eff``), 5 % an hour old (``stale_eff``), 5 % ``low_conf``.
2. Runs three variants, each in its own child process (this script re-invoked with a hidden ``--child``, driven
   one loop at a time over a pipe), so that each peak RSS figure (``ru_maxrss`` of that child) is that variant's own:

   - **loop**: the real thing. ``ProposerSettings`` from ``load_settings`` (``REDIS_URL`` = the throwaway server), the
     client from ``microservices.core.redis_client.connect``, ``ProposerMetrics`` on a fresh registry, and
     ``Proposer.run_loop``.
   - **floor**: the same Redis traffic with no logic: the same ``SCAN`` (match, count, type), the same batches of
     ``BATCH_SIZE`` with one non-transactional pipeline (``HGET target_usd``, ``HMGET``; then ``EXISTS`` for the
     keys where ``HMGET`` found no field, in a second pipeline), one pipeline of the proposer's ``EVAL`` (HSET of the
     same 11 fields + EXPIRE, atomically) and one of ``XADD MAXLEN ~`` per batch, but a fixed, precomputed field
     dict, no classification, no sort, no metrics. The proposer cannot be faster than this with the same client.
   - **old pattern**: the replaced code's access pattern, one round trip per command, five commands per symbol
     (``HGETALL`` live target, ``HGETALL`` efficiency hash, ``HSET`` proposed hash, ``EXPIRE``, ``XADD``), with no logic
     and the same ``SCAN`` discovery (which, unlike the old code, skips the ``...:proposed:...`` keys, so each symbol is
     handled once): a conservative reference that flatters the old code.

   The variants take turns, one loop at a time in ABBA order (loop, floor, old; old, floor, loop; ...; never two at
   once), so that a drift in the machine's speed, large on a shared VM, falls on all of them alike. Loop and floor:
   1 warm-up loop each, then 5 timed loops each, or fewer (never under 3) where 5 rounds of both would take over
   ``TIMED_BUDGET_SEC`` as judged by the warm-up (100,000 symbols on a slow 2-core machine). The old pattern is slow,
   so it takes part in fewer rounds: 5 timed loops at N ≤ 1,000, 3 at N ≤ 10,000, 1 above (and no warm-up loop above
   10,000). The tables show the count actually timed.

   The loop's warm-up runs first, so it creates the ``...:proposed:...`` hashes and the stream; every timed loop of
   every variant then sees the keyspace a running deployment has (``SCAN`` walks the proposed keys too).

How each figure is measured:

- **median ms/loop**: wall time of ``run_loop`` (or the reference's loop), median over the timed loops.
- **commands/loop**: server side, ``total_commands_processed`` from ``INFO stats`` read on a separate connection
  before and after the loop (after ``CONFIG RESETSTAT``), minus the measuring commands' own count (calibrated by two
  back-to-back ``INFO`` calls). Redis counts an ``EVAL`` and the HSET and EXPIRE its script runs. Largest value
  over the timed loops.
- **round trips/loop**: client side, calls of ``send_packed_command`` on the variant's connection (a counting subclass
  of ``redis.Connection`` installed in the client's pool): one per plain command, pipeline, ``MULTI``/``EXEC`` block,
  ``SCAN`` page or health-check ``PING``. Largest value over the timed loops. An unmeasured ``PING`` precedes each
  timed loop, so the connection's idling while the other variants ran (which a deployed daemon's never does) does not
  set off redis-py's 30 s health check inside the loop.
- **peak RSS MB**: ``getrusage(RUSAGE_SELF).ru_maxrss`` of the child at its end (it includes the interpreter and its
  imports, about 30-40 MB, as the daemon's RSS does).

How to read it: per N, a table of the three variants, then the checks with their targets and PASS/MISS. The two
ratios are paired: in each round the variants ran back to back, and the check takes the median over the rounds of the
ratio within a round, which cancels the VM's speed drift between rounds (the table's medians do not).
``loop / floor`` ≤ 1.5 (time the proposer's own logic adds over the unavoidable Redis traffic; at N ≥ 10,000),
``old / loop`` ≥ 5 (speed-up over the replaced access pattern; at N ≥ 10,000), loop round trips ≤ N/100 + 10 (every N)
and loop peak RSS ≤ 100 MB (at N ≥ 100,000). The last line is a summary. The exit status is always 0: this is a
measurement, not a test. Progress goes to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import redis
from prometheus_client import CollectorRegistry
from redis.typing import EncodableT
from redis.utils import HIREDIS_AVAILABLE

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.allocation_target.proposal import TARGET_FIELD, Proposal
from microservices.allocation_target.proposer import (
    BATCH_SIZE,
    LIVE_KEY,
    PROPOSED_KEY,
    SCAN_COUNT,
    WRITE_SHADOW_HASH,
    Proposer,
)
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import (
    CONFIDENCE_FIELD,
    EFFICIENCY_FIELDS,
    SCORE_FIELD,
    TS_FIELD,
    EfficiencyReading,
    EffReason,
)
from microservices.core.efficiency_reads import EFFICIENCY_KEY, NO_FIELDS
from microservices.core.redis_client import connect
from microservices.core.settings import load_settings
from microservices.devtools.redis_server import RedisServer

DEFAULT_SIZES = (1_000, 10_000, 100_000)
WARMUP_LOOPS = 1
TIMED_LOOPS = 5
#: Loop and floor time fewer loops (never under MIN_TIMED_LOOPS) when TIMED_LOOPS rounds of both would take longer
#: than this, judged by their warm-up loops: what keeps the default run within about 6 minutes on a slow 2-core machine.
TIMED_BUDGET_SEC = 150.0
MIN_TIMED_LOOPS = 3
SEED_CHUNK = 5_000
RNG_SEED = 31

LOOP = "loop"
FLOOR = "floor"
OLD = "old"
VARIANTS = (LOOP, FLOOR, OLD)
TITLES = {LOOP: "loop", FLOOR: "floor", OLD: "old pattern"}

# Targets (from the issue).
MAX_LOOP_OVER_FLOOR = 1.5
MIN_OLD_OVER_LOOP = 5.0
MAX_RSS_MB = 100.0
RATIO_TARGETS_FROM_N = 10_000
RSS_TARGET_FROM_N = 100_000


Fields = dict[EncodableT, EncodableT]


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def symbol_name(index: int) -> bytes:
    return f"S{index:06d}USDT".encode()


def loop_plan(variant: str, size: int) -> tuple[int, int]:
    """(warm-up loops, most timed loops) of a variant at a size; loop and floor may time fewer, see TIMED_BUDGET_SEC."""
    if variant != OLD:
        return WARMUP_LOOPS, TIMED_LOOPS
    if size <= 1_000:
        return WARMUP_LOOPS, 5
    if size <= 10_000:
        return WARMUP_LOOPS, 3
    return 0, 1


# --- seeding (parent) ------------------------------------------------------------------------------------------------


def seed(client: redis.Redis, size: int, now: float) -> dict[str, int]:
    """N live targets and a realistic mix of efficiency hashes; returns how many of each kind were written."""
    rng = random.Random(RNG_SEED + size)
    mix = {EffReason.OK.value: 0, EffReason.MISSING.value: 0, EffReason.STALE.value: 0, EffReason.LOW_CONF.value: 0}
    pipe = client.pipeline(transaction=False)
    for i in range(size):
        symbol = symbol_name(i)
        pipe.hset(LIVE_KEY + symbol, mapping={TARGET_FIELD: f"{rng.uniform(100.0, 50_000.0):.2f}"})
        draw = rng.random()
        score = f"{rng.random():.4f}"
        ts = now - rng.uniform(0.0, 60.0)
        if draw < 0.05:
            mix[EffReason.MISSING.value] += 1
        else:
            if draw < 0.10:
                kind, ts, confidence = EffReason.STALE, now - rng.uniform(3_600.0, 7_200.0), rng.uniform(0.7, 1.0)
            elif draw < 0.15:
                kind, confidence = EffReason.LOW_CONF, rng.uniform(0.1, 0.6)
            else:
                kind, confidence = EffReason.OK, rng.uniform(0.7, 1.0)
            mix[kind.value] += 1
            ts_text = str(int(ts)) if i % 2 else f"{ts:.3f}"  # integer and float epochs, as upstream writes both
            pipe.hset(
                EFFICIENCY_KEY + symbol,
                mapping={SCORE_FIELD: score, CONFIDENCE_FIELD: f"{confidence:.3f}", TS_FIELD: ts_text},
            )
        if (i + 1) % SEED_CHUNK == 0:
            pipe.execute()
    pipe.execute()
    return mix


# --- the variants, each run in a child process ---------------------------------------------------------------------


#: redis-py's own method (untyped upstream), typed here so the counting subclass can call it under strict mypy.
_send_packed_command: Callable[[redis.Connection, Any, bool], None] = redis.Connection.send_packed_command


class CountingConnection(redis.Connection):
    """A connection that counts its round trips: each ``send_packed_command`` is one plain command, one pipeline,
    one ``MULTI``/``EXEC`` block, one ``SCAN`` page or one health-check ``PING``. The count is class-wide: a child has
    exactly one client with this connection class, the variant's."""

    sends: ClassVar[int] = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        _send_packed_command(self, command, check_health)


@dataclass
class ChildResult:
    variant: str
    size: int
    warmup: int
    times_ms: list[float] = field(default_factory=list)
    commands: list[int] = field(default_factory=list)
    round_trips: list[int] = field(default_factory=list)
    rss_mb: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


def commands_processed(probe: redis.Redis) -> int:
    stats = probe.info("stats")
    return int(stats["total_commands_processed"])


def live_symbols(client: redis.Redis) -> list[bytes]:
    """The discovery the references share with the proposer: same ``SCAN`` match and count, same key filter."""
    symbols: list[bytes] = []
    for key in client.scan_iter(match=LIVE_KEY + b"*", count=SCAN_COUNT, _type="hash"):
        suffix = key[len(LIVE_KEY) :]
        if suffix and b":" not in suffix:
            symbols.append(suffix)
    return symbols


def batches(items: Sequence[bytes], size: int) -> Iterator[Sequence[bytes]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def fixed_fields() -> tuple[Fields, Fields]:
    """The shadow hash and stream entry fields, built once by the package's own :class:`Proposal`."""
    reading = EfficiencyReading(EffReason.OK, score=0.9, confidence=0.8, ts=time.time(), age_sec=1.0)
    sample = Proposal(symbol_name(0).decode(), 12_345.67, 1.4, reading, int(time.time()))
    return cast(Fields, sample.hash_fields()), cast(Fields, sample.stream_fields())


def floor_step(client: redis.Redis, settings: ProposerSettings) -> Callable[[], None]:
    """The proposer's Redis traffic, pipelined as it does, with no logic: the least a loop can cost."""
    hash_fields, stream_fields = fixed_fields()
    hash_args = [settings.key_ttl_sec, *(item for pair in hash_fields.items() for item in pair)]

    def step() -> None:
        for batch in batches(live_symbols(client), BATCH_SIZE):
            reads = client.pipeline(transaction=False)
            for symbol in batch:
                reads.hget(LIVE_KEY + symbol, TARGET_FIELD)
                reads.hmget(EFFICIENCY_KEY + symbol, EFFICIENCY_FIELDS)
            values = reads.execute(raise_on_error=False)[1::2]
            unknown = [symbol for symbol, reply in zip(batch, values, strict=True) if reply == NO_FIELDS]
            if unknown:  # as the proposer: EXISTS only where HMGET found none of the fields
                checks = client.pipeline(transaction=False)
                for symbol in unknown:
                    checks.exists(EFFICIENCY_KEY + symbol)
                checks.execute(raise_on_error=False)
            hashes = client.pipeline(transaction=False)
            for symbol in batch:
                hashes.execute_command("EVAL", WRITE_SHADOW_HASH, 1, PROPOSED_KEY + symbol, *hash_args)  # type: ignore[no-untyped-call]
            hashes.execute(raise_on_error=False)
            entries = client.pipeline(transaction=False)
            for _ in batch:
                entries.xadd(settings.stream_name, stream_fields, maxlen=settings.stream_maxlen, approximate=True)
            entries.execute()

    return step


def old_step(client: redis.Redis, settings: ProposerSettings) -> Callable[[], None]:
    """The replaced code's access pattern: five commands per symbol, one round trip each, no logic."""
    hash_fields, stream_fields = fixed_fields()

    def step() -> None:
        for symbol in live_symbols(client):
            client.hgetall(LIVE_KEY + symbol)
            client.hgetall(EFFICIENCY_KEY + symbol)
            key = PROPOSED_KEY + symbol
            client.hset(key, mapping=hash_fields)
            client.expire(key, settings.key_ttl_sec)
            client.xadd(settings.stream_name, stream_fields, maxlen=settings.stream_maxlen, approximate=True)

    return step


class VariantRunner:
    """One variant, in the child process: builds its client and loop, then runs and measures one loop when asked."""

    def __init__(self, variant: str, url: str) -> None:
        settings = load_settings(ProposerSettings, {"REDIS_URL": url, "METRICS_PORT": "0"})
        client = connect(settings, client_name=f"bench-proposer-{variant}")
        if not isinstance(client, redis.Redis) or client.connection_pool.connection_class is not redis.Connection:
            raise RuntimeError("expected a plain TCP redis.Redis client")
        client.connection_pool.connection_class = CountingConnection  # connect() sent nothing: no connection yet
        client.ping()  # the connection handshake, outside every measured loop
        self._client = client
        self.reasons: dict[str, int] = {}
        if variant == LOOP:
            proposer = Proposer(client, settings, ProposerMetrics(CollectorRegistry(), settings.metrics_max_symbols))
            stop = threading.Event()

            def loop_step() -> None:
                summary = proposer.run_loop(stop)
                self.reasons = {**summary.proposed, **{"skipped:" + k: v for k, v in summary.skipped.items()}}

            self._step = loop_step
        elif variant == FLOOR:
            self._step = floor_step(client, settings)
        else:
            self._step = old_step(client, settings)
        # The measuring connection: a plain one, so not counted client side; its commands are subtracted server side.
        self._probe = redis.Redis.from_url(url, protocol=2)

    def warm_up(self) -> dict[str, Any]:
        started = time.perf_counter()
        self._step()
        return {"ms": (time.perf_counter() - started) * 1000.0}

    def timed(self) -> dict[str, Any]:
        # The connection idled while the other child ran; a deployed daemon's does not. Without this PING, redis-py's
        # health check (connect() sets 30 s) would add one to the loop's round trips and commands.
        self._client.ping()
        # Calibrated on every loop, while the other child is idle: what one INFO adds to the count it reports.
        self._probe.config_resetstat()
        first = commands_processed(self._probe)
        before = commands_processed(self._probe)
        overhead = before - first
        CountingConnection.sends = 0
        started = time.perf_counter()
        self._step()
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        trips = CountingConnection.sends
        commands = commands_processed(self._probe) - before - overhead
        return {"ms": elapsed_ms, "commands": commands, "round_trips": trips}

    def finish(self) -> dict[str, Any]:
        self._probe.close()
        self._client.close()
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
        return {"rss_mb": rss_mb, "reasons": self.reasons}


def serve_child(variant: str, url: str) -> None:
    """The child's side: a command a line on stdin (``warmup``, ``timed``, ``finish``), a JSON line back on stdout."""
    runner = VariantRunner(variant, url)
    actions: dict[str, Callable[[], dict[str, Any]]] = {
        "warmup": runner.warm_up,
        "timed": runner.timed,
        "finish": runner.finish,
    }
    for line in sys.stdin:
        command = line.strip()
        print(json.dumps(actions[command]()), flush=True)
        if command == "finish":
            return


# --- the parent's side of a child -----------------------------------------------------------------------------------


class ChildFailedError(Exception):
    pass


class Child:
    """A variant running in its own interpreter (so its peak RSS is its own), driven one loop at a time."""

    def __init__(self, variant: str, url: str, size: int, warmup: int) -> None:
        self.result = ChildResult(variant, size, warmup)
        command = [sys.executable, os.path.abspath(__file__), "--child", variant, "--url", url]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, command: str) -> dict[str, Any]:
        stdin, stdout = self._process.stdin, self._process.stdout
        if stdin is None or stdout is None:  # pragma: no cover - both are pipes
            raise ChildFailedError("child has no pipes")
        try:
            stdin.write(command + "\n")
            stdin.flush()
        except BrokenPipeError:
            pass  # it died: the empty read below says how
        line = stdout.readline()
        if not line:
            raise ChildFailedError(
                f"{TITLES[self.result.variant]} child exited with {self._process.wait()} (stderr above)"
            )
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError as exc:
            raise ChildFailedError(f"unreadable answer from the {TITLES[self.result.variant]} child: {line!r}") from exc
        return answer

    def warm_up(self) -> float:
        return float(self._ask("warmup")["ms"])

    def timed(self) -> float:
        answer = self._ask("timed")
        self.result.times_ms.append(float(answer["ms"]))
        self.result.commands.append(int(answer["commands"]))
        self.result.round_trips.append(int(answer["round_trips"]))
        return float(answer["ms"])

    def finish(self) -> ChildResult:
        answer = self._ask("finish")
        self.result.rss_mb = float(answer["rss_mb"])
        self.result.reasons = dict(answer["reasons"])
        self._process.wait(timeout=30)
        return self.result

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()


def measure(url: str, size: int) -> dict[str, ChildResult | str]:
    """Time the variants over the same data, each in its own child process, interleaved loop by loop (ABBA order:
    loop, floor, old; old, floor, loop; ...) so that a drift in the machine's speed, large on a shared VM, falls on
    each of them alike. The old pattern takes part in as many rounds as its plan allows (fewer at large N)."""
    plans = {variant: loop_plan(variant, size) for variant in VARIANTS}
    children: dict[str, Child] = {}
    outcome: dict[str, ChildResult | str] = {}
    try:
        for variant in VARIANTS:  # the loop first: its warm-up creates the proposed keys and the stream
            children[variant] = Child(variant, url, size, plans[variant][0])
        warmup_ms = dict.fromkeys(VARIANTS, 0.0)
        for variant in VARIANTS:
            warmup = plans[variant][0]
            for i in range(warmup):
                progress(f"  N={size:,}: {TITLES[variant]}: warm-up loop {i + 1}/{warmup}")
                warmup_ms[variant] = children[variant].warm_up()
        round_ms = warmup_ms[LOOP] + warmup_ms[FLOOR]  # what one timed round of these two will take
        loops = TIMED_LOOPS
        if round_ms * TIMED_LOOPS > TIMED_BUDGET_SEC * 1000.0:
            loops = max(MIN_TIMED_LOOPS, int(TIMED_BUDGET_SEC * 1000.0 // round_ms))
        counts = {LOOP: loops, FLOOR: loops, OLD: plans[OLD][1]}
        for i in range(max(counts.values())):
            for variant in VARIANTS if i % 2 == 0 else VARIANTS[::-1]:
                if i < counts[variant]:
                    elapsed_ms = children[variant].timed()
                    progress(
                        f"  N={size:,}: {TITLES[variant]}: timed loop {i + 1}/{counts[variant]}: {elapsed_ms:,.1f} ms"
                    )
        for variant in VARIANTS:
            outcome[variant] = children[variant].finish()
    except ChildFailedError as exc:
        for variant in VARIANTS:
            outcome.setdefault(variant, str(exc))
    finally:
        for child in children.values():
            child.close()
    return outcome


# --- the report (parent) --------------------------------------------------------------------------------------------


@dataclass
class Check:
    size: int
    name: str
    value: float | None
    target: str
    verdict: str  # PASS, MISS, n/a or ERROR
    fmt: str = ",.2f"

    @property
    def line(self) -> str:
        shown = "-" if self.value is None else format(self.value, self.fmt)
        return f"  {self.name:<34} {shown:>12}   {self.target:<22} {self.verdict}"


@dataclass
class SizeReport:
    size: int
    mix: dict[str, int]
    keys: int
    results: dict[str, ChildResult | str]
    checks: list[Check] = field(default_factory=list)


def verdict(applies: bool, ok: bool) -> str:
    if not applies:
        return "n/a"
    return "PASS" if ok else "MISS"


def paired_ratio(a: ChildResult, b: ChildResult) -> float:
    """The median, over the rounds both took part in, of ``a``'s time over ``b``'s in the same round.

    Two variants' loops in one round ran back to back, so each round's ratio sees the machine at one speed; the
    median of those ratios cancels the drift between rounds that a ratio of the two medians would keep.
    """
    return statistics.median(x / y for x, y in zip(a.times_ms, b.times_ms, strict=False))


def make_checks(report: SizeReport) -> list[Check]:
    size = report.size
    loop, floor, old = (report.results[v] for v in VARIANTS)
    ratios = size >= RATIO_TARGETS_FROM_N
    ratio_note = "" if ratios else f" (at N>={RATIO_TARGETS_FROM_N:,})"
    checks: list[Check] = []
    if isinstance(loop, ChildResult) and isinstance(floor, ChildResult):
        value = paired_ratio(loop, floor)
        checks.append(
            Check(
                size,
                "loop / floor",
                value,
                f"<= {MAX_LOOP_OVER_FLOOR}{ratio_note}",
                verdict(ratios, value <= MAX_LOOP_OVER_FLOOR),
            )
        )
    else:
        checks.append(Check(size, "loop / floor", None, f"<= {MAX_LOOP_OVER_FLOOR}", "ERROR"))
    if isinstance(loop, ChildResult) and isinstance(old, ChildResult):
        value = paired_ratio(old, loop)
        checks.append(
            Check(
                size,
                "old pattern / loop",
                value,
                f">= {MIN_OLD_OVER_LOOP:g}{ratio_note}",
                verdict(ratios, value >= MIN_OLD_OVER_LOOP),
            )
        )
    else:
        checks.append(Check(size, "old pattern / loop", None, f">= {MIN_OLD_OVER_LOOP:g}", "ERROR"))
    limit = size / 100 + 10
    if isinstance(loop, ChildResult):
        trips = max(loop.round_trips)
        checks.append(
            Check(
                size,
                "loop round trips (<= N/100 + 10)",
                trips,
                f"<= {limit:,g}",
                verdict(True, trips <= limit),
                fmt=",.0f",
            )
        )
        rss = size >= RSS_TARGET_FROM_N
        rss_note = "" if rss else f" (at N>={RSS_TARGET_FROM_N:,})"
        checks.append(
            Check(
                size,
                "loop peak RSS MB",
                loop.rss_mb,
                f"<= {MAX_RSS_MB:g}{rss_note}",
                verdict(rss, loop.rss_mb <= MAX_RSS_MB),
                fmt=",.1f",
            )
        )
    else:
        checks.append(Check(size, "loop round trips (<= N/100 + 10)", None, f"<= {limit:,g}", "ERROR"))
        checks.append(Check(size, "loop peak RSS MB", None, f"<= {MAX_RSS_MB:g}", "ERROR"))
    return checks


def print_report(report: SizeReport) -> None:
    size = report.size
    print()
    print(f"== N = {size:,} symbols ==")
    mix = ", ".join(f"{reason} {count:,}" for reason, count in report.mix.items())
    print(f"  seeded efficiency mix: {mix}; every live target valid")
    print(f"  keys in Redis during the timed loops: {report.keys:,} (live + efficiency + proposed + 1 stream)")
    loop = report.results[LOOP]
    if isinstance(loop, ChildResult) and loop.reasons:
        seen = ", ".join(f"{reason} {count:,}" for reason, count in sorted(loop.reasons.items()))
        print(f"  proposer's last loop: {seen}")
    header = f"  {'':<22}" + "".join(f"{TITLES[v]:>16}" for v in VARIANTS)
    print(header)
    rows: list[tuple[str, Callable[[ChildResult], str]]] = [
        ("median ms / loop", lambda r: f"{r.median_ms:,.1f}"),
        ("timed loops (warm-up)", lambda r: f"{len(r.times_ms)} ({r.warmup})"),
        ("min .. max ms", lambda r: f"{min(r.times_ms):,.0f}..{max(r.times_ms):,.0f}"),
        ("commands / loop", lambda r: f"{max(r.commands):,}"),
        ("round trips / loop", lambda r: f"{max(r.round_trips):,}"),
        ("peak RSS MB", lambda r: f"{r.rss_mb:,.1f}"),
    ]
    for label, show in rows:
        cells = [show(r) if isinstance(r, ChildResult) else "ERROR" for r in (report.results[v] for v in VARIANTS)]
        print(f"  {label:<22}" + "".join(f"{cell:>16}" for cell in cells))
    for variant in VARIANTS:
        outcome = report.results[variant]
        if isinstance(outcome, str):
            print(f"  {TITLES[variant]}: {outcome}")
    print(f"  {'check':<34} {'value':>12}   {'target':<22} result")
    for check in report.checks:
        print(check.line)


def print_summary(reports: Sequence[SizeReport]) -> None:
    checks = [c for r in reports for c in r.checks if c.verdict != "n/a"]
    counts = {v: sum(1 for c in checks if c.verdict == v) for v in ("PASS", "MISS", "ERROR")}
    bad = [
        f"{c.name} at N={c.size:,}" + ("" if c.value is None else f" = {c.value:,.2f}")
        for c in checks
        if c.verdict != "PASS"
    ]
    print()
    line = f"SUMMARY: {counts['PASS']} PASS, {counts['MISS']} MISS, {counts['ERROR']} ERROR of {len(checks)} targets"
    print(line + (f" — not met: {'; '.join(bad)}" if bad else " — all targets met") + " (exit status 0: a measurement)")


def run_parent(sizes: Sequence[int]) -> None:
    started = time.monotonic()
    with RedisServer() as server:
        admin = server.client()
        server_info = admin.info("server")
        print("Shadow proposer loop benchmark (scripts/bench_proposer.py)")
        print(
            f"redis-server {server_info['redis_version']} on 127.0.0.1:{server.port} (throwaway), "
            f"Python {platform.python_version()}, redis-py {redis.__version__} "
            f"({'with' if HIREDIS_AVAILABLE else 'without'} hiredis), {os.cpu_count()} CPUs"
        )
        print(
            f"each variant in its own child process, interleaved loop by loop (ABBA); loop and floor: {WARMUP_LOOPS} "
            f"warm-up + {TIMED_LOOPS} timed loops ({MIN_TIMED_LOOPS} or more where {TIMED_LOOPS} rounds would take "
            f"over {TIMED_BUDGET_SEC:g} s)"
        )
        old_plans = (f"{loop_plan(OLD, n)[1]} timed ({loop_plan(OLD, n)[0]} warm-up) at N={n:,}" for n in sizes)
        print(f"old pattern: {', '.join(old_plans)}; one round trip per command is slow, so fewer loops at large N")
        print(
            f"batch size {BATCH_SIZE}, SCAN COUNT {SCAN_COUNT}; medians of wall time (single loops vary on a shared VM)"
        )
        reports: list[SizeReport] = []
        for size in sizes:
            admin.flushall()
            progress(f"N={size:,}: seeding")
            mix = seed(admin, size, time.time())
            progress(f"N={size:,}: loop, floor and old pattern, interleaved, each in its own child process")
            results = measure(server.url, size)
            keys = admin.dbsize()
            report = SizeReport(size, mix, keys, results)
            report.checks = make_checks(report)
            reports.append(report)
            print_report(report)
            sys.stdout.flush()
        admin.close()
    print_summary(reports)
    progress(f"done in {time.monotonic() - started:,.0f} s")


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from exc
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive integers: {text!r}")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(DEFAULT_SIZES),
        help="comma-separated symbol counts (default: 1000,10000,100000)",
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        serve_child(args.child, args.url)
        return 0
    run_parent(args.sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
