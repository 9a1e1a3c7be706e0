"""Benchmark of the governor daemon (SPEC §3) against the least Redis I/O its job needs, in a throwaway Redis.

What it does:

1. Starts a private ``redis-server`` on a free port (:class:`~microservices.devtools.redis_server.RedisServer`, never
   the shared one) with keyspace notifications for string commands (``notify-keyspace-events E$``).
2. Runs two consumers over the same plans, each as a real child process, one at a time:

   - **governor**: ``python -m microservices.governor`` with ``REDIS_URL`` = the throwaway server, ``METRICS_PORT=0``,
     ``GOV_CONSUMER``, ``PERMIT_TTL_SEC`` (long enough that every permit is still there when the run is checked) and
     every other setting at its default (batch ``BATCH_SIZE``, ``GOV_BLOCK_MS`` 1000, ``P31_GOV_MODE`` hint). It is
     started, and has created its group, before the first plan is published.
   - **floor**: this script re-invoked with a hidden ``--child floor``: the Redis I/O SPEC §3 demands and nothing
     else. The group created at 0; ``XREADGROUP`` in batches of ``BATCH_SIZE`` (blocking ``GOV_BLOCK_MS``); per batch
     one non-transactional pipeline reading each plan's efficiency hash (``HMGET`` of ``EFFICIENCY_FIELDS``) and its
     permit key (``EXISTS``); then one non-transactional pipeline holding, per plan, ``MULTI``, the permit's
     ``SET NX EX``, its event ``XADD quantum:stream:governor.events MAXLEN ~ 10000``, the ``XACK`` and ``EXEC``. No
     decision logic: a fixed permit JSON (built once by the package's own ``permit_json``). Its client comes from
     ``microservices.core.redis_client.connect`` with the governor's settings, as the daemon's does.

3. Per run, a producer (``--child producer``, its own process) publishes plans to ``quantum:stream:apply.plan`` in
   three phases, each starting once every permit of the one before is in (and a short pause):

   - **burst**: 20,000 plans, ``XADD`` as fast as it can, pipelined ``BURST_CHUNK`` a round trip, while the consumer
     runs (in practice the backlog is in the stream within a fraction of a second, and the consumer drains it);
   - **2,000/s** (6,000 plans) and then **200/s** (3,000 plans): ``XADD`` one at a time on a fixed schedule
     (absolute deadlines, so a late plan does not delay the ones after it); the achieved rate is shown.

   ``--quick``: 3,000, 2,000 and 400 plans, 2 rounds instead of 4.

   Two scenarios, each with its own runs: **few symbols** (``FEW_SYMBOLS`` symbols, closing plans:
   ``FULL_CLOSE_PROPOSED`` and ``CLOSE_LONG``, which pass the per-symbol cooldown and rate limits, as the old
   governor's 570/s figure was measured) and **distinct symbols** (one non-reducing ``OPEN_LONG`` plan per symbol, so
   each gets a permit and a gate key is read and written: the burst alone is 20,000 plans over 20,000 distinct
   symbols, and the paced phases follow over further new symbols). Every symbol has an efficiency hash (fresh,
   confident, scores between 0.10 and 0.89, about 44 % below the 0.45 downsize threshold), seeded before each run
   after a ``FLUSHALL``, so every run starts from the same empty keyspace.

4. Runs are interleaved: each round runs (few, governor), (few, floor), (distinct, governor), (distinct, floor), and
   every other round the reverse order (ABBA), so a drift in the speed of this shared VM falls on both consumers
   alike. Ratios are computed within a round and the report shows their median over the rounds.

How each figure is measured:

- **latency**: from the producer's ``time.time()`` taken right before the plan's ``XADD`` (for a burst chunk, right
  before the chunk's pipeline is sent) to the arrival of the permit key's ``set`` keyspace notification
  (``__keyevent@0__:set``) at an observer thread of this process, which reads the raw socket and timestamps each read
  (so Python parsing never delays a timestamp). Both consumers write the permit with ``SET``, so one measurement serves
  both. p50/p95/p99/max by nearest rank over the phase's plans.
- **permits/s**: (permits - 1) / (last permit's arrival - first permit's arrival) within the phase: the sustained
  rate. In the paced phases it follows the producer's rate unless the consumer falls behind.
- **permits**: notifications seen, over what was published; a plan with none, or with two, is reported (and every
  permit key is also looked up in Redis after the run, with blocks, dead letters and pending entries).

The governor also ``SET``s an outcome marker per plan, so the observer gets two notifications per governor plan and
one per floor plan (it ignores keys other than ``quantum:permit:*``): a small cost in Redis and in this process that
falls on the governor's runs only.

Targets (from the issue), as ratios of paired runs: burst permits/s of the governor >= 0.5 x the floor's; p99 at 200/s
<= 3 x the floor's; both in the few-symbols scenario and in the distinct-symbols one. How the figures move as distinct
symbols grow is shown as the ratio of the distinct-symbol figure to the few-symbol one, per consumer (median of the
per-round ratios); the issue sets no number for it, so it is reported, not judged. Context: the old governor managed
about 570 closing plans/s in a burst, with a p99 of 17-32 ms at 200/s; the apply layer waits at most 1,200 ms for a
permit. The last line is a summary. The exit status is always 0: this is a measurement, not a test. Progress goes to
stderr, results to stdout. ``--quick`` runs a smaller version (about a minute) as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import redis
from redis.utils import HIREDIS_AVAILABLE

from microservices.core.efficiency import (
    CONFIDENCE_FIELD,
    EFFICIENCY_FIELDS,
    SCORE_FIELD,
    TS_FIELD,
    EfficiencyReading,
    EffReason,
)
from microservices.core.efficiency_reads import EFFICIENCY_KEY
from microservices.core.redis_client import connect
from microservices.core.settings import load_settings
from microservices.devtools.daemon_process import DaemonFailedError, DaemonProcess
from microservices.devtools.redis_server import RedisServer
from microservices.governor.consumer import BATCH_SIZE
from microservices.governor.decision import Facts, Policy, decide
from microservices.governor.plan import EXECUTE, FULL_CLOSE, Plan, parse_plan
from microservices.governor.records import BLOCK_KEY_PREFIX, EVENTS_STREAM, PERMIT_KEY_PREFIX, permit_json
from microservices.governor.settings import GovernorSettings

GOVERNOR_MODULE = "microservices.governor"
GOVERNOR_CONSUMER = "bench-governor"
FLOOR_CONSUMER = "bench-floor"
#: Long enough for every permit of a run to be still there when the run is checked; the TTL costs nothing more.
PERMIT_TTL_SEC = 900
FEW_SYMBOLS = 10
CLOSE_ACTIONS = (FULL_CLOSE, "CLOSE_LONG")
OPEN_ACTION = "OPEN_LONG"
BURST_CHUNK = 500
SEED_CHUNK = 5_000
#: Pause after a phase's last permit, so the next phase finds the consumer idle, blocked in its read.
PHASE_GAP_SEC = 0.5
#: A phase whose permits stop arriving for this long is given up (and its missing permits reported).
STALL_SEC = 10.0
READY_TIMEOUT_SEC = 20.0
#: Keyspace notifications for string commands (``K``: key-space channels; ``$``: string commands, SET among them).
#: The observer subscribes to the permit keys' channels only, so the other strings the governor writes (its gate
#: and outcome marker) cost neither Redis nor the observer a message: the measurement weighs both consumers alike.
NOTIFY_FLAGS = "K$"
SET_CHANNEL = "__keyspace@0__:quantum:permit:*"

GOVERNOR = "governor"
FLOOR = "floor"
VARIANTS = (GOVERNOR, FLOOR)
PRODUCER = "producer"
FEW = "few"
DISTINCT = "distinct"
SCENARIOS = (FEW, DISTINCT)

# Targets (from the issue) and context.
MIN_BURST_OVER_FLOOR = 0.5
MAX_P99_OVER_FLOOR = 3.0
OLD_BURST_PER_SEC = 570.0
OLD_P99_AT_200_MS = (17.0, 32.0)
APPLY_WAIT_MS = 1_200.0

#: One ``__keyevent@0__:set`` message as Redis sends it (RESP2 push: message, channel, key); the key is group 1.
#: ``pmessage <pattern> __keyspace@0__:<key> <event>``: group 1 is the key.
MESSAGE = re.compile(
    rb"\*4\r\n\$8\r\npmessage\r\n\$\d+\r\n[^\r]*\r\n\$\d+\r\n__keyspace@0__:([^\r]*)\r\n\$\d+\r\n[^\r]*\r\n"
)
PERMIT_PREFIX = PERMIT_KEY_PREFIX.encode()


@dataclass(frozen=True)
class Phase:
    key: str
    count: int
    rate: float | None  # plans per second; None: as fast as the producer can

    @property
    def title(self) -> str:
        return "burst" if self.rate is None else f"{self.rate:,.0f}/s"


@dataclass(frozen=True)
class Config:
    rounds: int
    phases: tuple[Phase, ...]

    @property
    def plans(self) -> int:
        return sum(phase.count for phase in self.phases)

    def phase(self, key: str) -> Phase:
        return next(phase for phase in self.phases if phase.key == key)


BURST, FAST, SLOW = "burst", "fast", "slow"
FULL_CONFIG = Config(4, (Phase(BURST, 20_000, None), Phase(FAST, 6_000, 2_000.0), Phase(SLOW, 3_000, 200.0)))
QUICK_CONFIG = Config(2, (Phase(BURST, 3_000, None), Phase(FAST, 2_000, 2_000.0), Phase(SLOW, 400, 200.0)))


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- plans and seeding (shared by the parent and the producer) ------------------------------------------------------


def few_symbol(index: int) -> str:
    return f"FEW{index % FEW_SYMBOLS:02d}USDT"


def distinct_symbol(index: int) -> str:
    return f"S{index:06d}USDT"


def plan_id(tag: str, index: int) -> str:
    return f"{tag}-{index:06d}"


def plan_fields(scenario: str, tag: str, index: int, now: float) -> dict[str, str]:
    """Plan ``index`` of a run: closing plans over a few symbols, or one opening plan per distinct symbol."""
    if scenario == FEW:
        symbol, action, side = few_symbol(index), CLOSE_ACTIONS[index % 2], "SELL"
    else:
        symbol, action, side = distinct_symbol(index), OPEN_ACTION, "BUY"
    return {
        "plan_id": plan_id(tag, index),
        "symbol": symbol,
        "action": action,
        "decision": EXECUTE,
        "side": side,
        "qty": f"{(index % 9 + 1) * 0.01:.2f}",
        "timestamp": str(int(now)),
    }


def seed_efficiency(client: redis.Redis, symbols: Sequence[str], now: float) -> int:
    """An efficiency hash per symbol: fresh, confident, scores 0.10 to 0.89 (about 44 % below 0.45)."""
    pipe = client.pipeline(transaction=False)
    below = 0
    for i, symbol in enumerate(symbols):
        score = 0.10 + 0.80 * ((i * 37) % 100) / 100.0
        below += score < 0.45
        confidence = 0.70 + 0.25 * ((i * 13) % 100) / 100.0
        pipe.hset(
            EFFICIENCY_KEY + symbol.encode(),
            mapping={SCORE_FIELD: f"{score:.4f}", CONFIDENCE_FIELD: f"{confidence:.3f}", TS_FIELD: f"{now:.3f}"},
        )
        if (i + 1) % SEED_CHUNK == 0:
            pipe.execute()
    pipe.execute()
    return below


def scenario_symbols(scenario: str, plans: int) -> list[str]:
    if scenario == FEW:
        return [few_symbol(i) for i in range(FEW_SYMBOLS)]
    return [distinct_symbol(i) for i in range(plans)]


# --- the producer child -----------------------------------------------------------------------------------------------


def produce(client: redis.Redis, stream: str, command: dict[str, Any]) -> list[float]:
    """Publish one phase; the ``time.time()`` taken right before each plan's XADD (a burst chunk's, for a burst)."""
    scenario, tag, start, count = command["scenario"], command["tag"], command["start"], command["count"]
    rate: float | None = command["rate"]
    now = time.time()
    plans = [plan_fields(scenario, tag, i, now) for i in range(start, start + count)]
    sent: list[float] = []
    if rate is None:
        for first in range(0, count, BURST_CHUNK):
            chunk = plans[first : first + BURST_CHUNK]
            pipe = client.pipeline(transaction=False)
            for fields in chunk:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            sent.extend([time.time()] * len(chunk))
            pipe.execute()
        return sent
    begin = time.perf_counter() + 0.01
    for k, fields in enumerate(plans):
        delay = begin + k / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent.append(time.time())
        client.xadd(stream, fields)  # type: ignore[arg-type]
    return sent


def serve_producer(url: str) -> None:
    """A command a line on stdin (JSON: a phase to publish, or ``{"quit": true}``), the send times back on stdout."""
    settings = load_settings(GovernorSettings, {"REDIS_URL": url, "METRICS_PORT": "0"})
    client = redis.Redis.from_url(url, protocol=2)
    client.ping()
    print("ready", flush=True)
    for line in sys.stdin:
        command: dict[str, Any] = json.loads(line)
        if command.get("quit"):
            break
        print(json.dumps({"sent": produce(client, settings.plans_stream, command)}), flush=True)
    client.close()


# --- the floor child --------------------------------------------------------------------------------------------------


def fixed_permit(settings: GovernorSettings) -> str:
    """A permit JSON as the governor writes it (an opening plan with a downsize hint), built once."""
    now = time.time()
    sample = parse_plan(
        f"{int(now * 1000)}-0",
        {"plan_id": "sample-000000", "symbol": distinct_symbol(0), "action": OPEN_ACTION, "decision": EXECUTE,
         "side": "BUY", "qty": "0.05", "timestamp": str(int(now))},
    )  # fmt: skip
    if not isinstance(sample, Plan):
        raise RuntimeError(f"sample plan is invalid: {sample}")
    reading = EfficiencyReading(EffReason.OK, score=0.3, confidence=0.9, ts=now, age_sec=1.0)
    outcome = decide(sample, Facts(now, reading=reading), Policy.from_settings(settings))
    return permit_json(sample, outcome, now)


def serve_floor(url: str) -> None:
    """The least Redis I/O SPEC §3 demands of a consumer, until SIGTERM; prints ``ready`` once its group exists."""
    settings = load_settings(
        GovernorSettings,
        {"REDIS_URL": url, "METRICS_PORT": "0", "GOV_CONSUMER": FLOOR_CONSUMER, "PERMIT_TTL_SEC": str(PERMIT_TTL_SEC)},
    )
    client = connect(settings, client_name="bench-governor-floor", socket_timeout=settings.socket_timeout_sec)
    stop = threading.Event()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    stream, group, consumer = settings.plans_stream, settings.group, settings.consumer
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    permit = fixed_permit(settings)
    ttl, maxlen = settings.permit_ttl_sec, settings.events_maxlen
    print("ready", flush=True)
    plans = batches = 0
    while not stop.is_set():
        reply: Any = client.xreadgroup(group, consumer, {stream: ">"}, count=BATCH_SIZE, block=settings.read_block_ms)
        if not reply:
            continue
        entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
        reads = client.pipeline(transaction=False)
        for _entry_id, fields in entries:
            reads.hmget(EFFICIENCY_KEY + fields[b"symbol"], EFFICIENCY_FIELDS)
            reads.exists(PERMIT_PREFIX + fields[b"plan_id"])
        reads.execute(raise_on_error=False)
        ts = f"{time.time():.3f}"
        writes = client.pipeline(transaction=False)
        for entry_id, fields in entries:
            pid = fields[b"plan_id"]
            writes.execute_command("MULTI")
            writes.execute_command("SET", PERMIT_PREFIX + pid, permit, "NX", "EX", ttl)
            writes.execute_command(
                "XADD", EVENTS_STREAM, "MAXLEN", "~", maxlen, "*",
                "event", "permit", "plan_id", pid, "symbol", fields[b"symbol"], "reason", "permitted", "ts", ts,
            )  # fmt: skip
            writes.execute_command("XACK", stream, group, entry_id)
            writes.execute_command("EXEC")
        writes.execute()
        plans += len(entries)
        batches += 1
    client.close()
    print(json.dumps({"plans": plans, "batches": batches}), flush=True)


# --- the observer (parent) ------------------------------------------------------------------------------------------


class Observer:
    """Subscribes to the permit keys' keyspace channels on a raw socket and timestamps each read; records, per permit
    key's plan id, when its notifications arrived."""

    def __init__(self, port: int) -> None:
        self.arrivals: dict[bytes, list[float]] = {}
        self.count = 0
        self._stop = threading.Event()
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = SET_CHANNEL.encode()
        self._sock.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
        confirmation = b"$%d\r\n%s\r\n:1\r\n" % (len(channel), channel)
        buffer = b""
        while confirmation not in buffer:
            data = self._sock.recv(4096)
            if not data:
                raise RuntimeError("the observer's connection closed before SUBSCRIBE was confirmed")
            buffer += data
        self._tail = buffer[buffer.index(confirmation) + len(confirmation) :]
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        tail = self._tail
        while not self._stop.is_set():
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            arrived = time.time()
            if not chunk:
                break
            buffer = tail + chunk if tail else chunk
            end = 0
            for match in MESSAGE.finditer(buffer):
                end = match.end()
                key = match.group(1)
                if key.startswith(PERMIT_PREFIX):
                    self.arrivals.setdefault(key[len(PERMIT_PREFIX) :], []).append(arrived)
                    self.count += 1
            tail = buffer[end:]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._sock.close()


# --- the consumers and the producer as seen from the parent -------------------------------------------------------


class ChildFailedError(Exception):
    pass


def governor_env(url: str) -> dict[str, str]:
    """The parent's environment without any governor setting, plus the benchmark's."""
    own = set(load_settings(GovernorSettings, {}).as_environment())
    env = {name: value for name, value in os.environ.items() if name not in own}
    env.update(
        REDIS_URL=url, METRICS_PORT="0", GOV_CONSUMER=GOVERNOR_CONSUMER, PERMIT_TTL_SEC=str(PERMIT_TTL_SEC),
        PYTHONUNBUFFERED="1",
    )  # fmt: skip
    return env


class GovernorChild:
    """``python -m microservices.governor``, ready once its consumer group exists."""

    def __init__(self, url: str, admin: redis.Redis, log_path: Path) -> None:
        self._daemon = DaemonProcess(GOVERNOR_MODULE, governor_env(url), log_path, start_timeout=READY_TIMEOUT_SEC)
        stream = load_settings(GovernorSettings, {}).plans_stream
        self._daemon.wait_for(lambda: group_exists(admin, stream), READY_TIMEOUT_SEC, "its consumer group")

    @property
    def running(self) -> bool:
        return self._daemon.running

    def stop(self) -> list[str]:
        notes: list[str] = []
        try:
            for name, label in (
                ("quantum_govern_write_conflicts_total", "write conflicts"),
                ("quantum_govern_redis_errors_total", "Redis errors"),
                ("quantum_govern_already_decided_total", "already decided"),
            ):
                value = self._daemon.metric(name)
                if value:
                    notes.append(f"governor metric {label}: {value:,.0f}")
        except OSError as exc:
            notes.append(f"governor metrics unreadable: {exc}")
        try:
            code, took = self._daemon.terminate(timeout=10)
            if code != 0:
                notes.append(f"governor exited with {code}")
            if took > 3.0:
                notes.append(f"governor took {took:.1f} s to stop")
        except subprocess.TimeoutExpired:
            notes.append("governor did not stop within 10 s of SIGTERM")
        self._daemon.close()
        log = self._daemon.log()
        problems = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
        notes += [f"governor log: {line}" for line in problems[:5]]
        if len(problems) > 5:
            notes.append(f"governor log: ... and {len(problems) - 5} more warnings/errors")
        return notes


def group_exists(admin: redis.Redis, stream: str) -> bool:
    try:
        groups: Any = admin.xinfo_groups(stream)
    except redis.ResponseError:
        return False
    return len(groups) > 0


class ScriptChild:
    """This script re-invoked as ``--child <role>``: answers a line per command on stdout; ``ready`` first."""

    def __init__(self, role: str, url: str) -> None:
        self.role = role
        command = [sys.executable, os.path.abspath(__file__), "--child", role, "--url", url]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._line() != "ready":
            self.close()
            raise ChildFailedError(f"{role} child did not start (exit status {self.process.poll()}, stderr above)")

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        stdin, stdout = self.process.stdin, self.process.stdout
        if stdin is None or stdout is None:  # pragma: no cover - both are pipes
            raise ChildFailedError("child has no pipes")
        return stdin, stdout

    def _line(self) -> str:
        return self._pipes()[1].readline().strip()

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        stdin, _ = self._pipes()
        try:
            stdin.write(json.dumps(command) + "\n")
            stdin.flush()
        except BrokenPipeError:
            pass  # it died: the empty read below says so
        line = self._line()
        if not line:
            raise ChildFailedError(f"{self.role} child exited with {self.process.wait()} (stderr above)")
        answer: dict[str, Any] = json.loads(line)
        return answer

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> list[str]:
        """SIGTERM (the floor), then its last line."""
        self.process.terminate()
        try:
            out, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.close()
            return [f"{self.role} did not stop within 10 s of SIGTERM"]
        if self.process.returncode != 0:
            return [f"{self.role} exited with {self.process.returncode}"]
        return [] if out.strip() else [f"{self.role} ended without its summary"]

    def finish(self) -> None:
        """Ask it to quit (the producer), and wait."""
        stdin, _ = self._pipes()
        try:
            stdin.write(json.dumps({"quit": True}) + "\n")
            stdin.flush()
        except BrokenPipeError:
            pass
        try:
            self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


# --- one run (parent) -----------------------------------------------------------------------------------------------


@dataclass
class PhaseStats:
    expected: int
    permits: int = 0  # plans with at least one permit notification
    missing: int = 0
    duplicates: int = 0
    per_sec: float | None = None
    produced_per_sec: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


@dataclass
class RunResult:
    round_no: int
    scenario: str
    variant: str
    phases: dict[str, PhaseStats] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def problems(self) -> int:
        return sum(stats.missing + stats.duplicates for stats in self.phases.values())


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest rank."""
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def phase_stats(tag: str, start: int, sent: Sequence[float], arrivals: dict[bytes, list[float]]) -> PhaseStats:
    stats = PhaseStats(len(sent))
    latencies: list[float] = []
    firsts: list[float] = []
    for offset, sent_at in enumerate(sent):
        times = arrivals.get(plan_id(tag, start + offset).encode())
        if not times:
            stats.missing += 1
            continue
        stats.permits += 1
        stats.duplicates += len(times) - 1
        firsts.append(times[0])
        latencies.append((times[0] - sent_at) * 1000.0)
    if len(sent) > 1 and sent[-1] > sent[0]:
        stats.produced_per_sec = (len(sent) - 1) / (sent[-1] - sent[0])
    if len(firsts) > 1 and max(firsts) > min(firsts):
        stats.per_sec = (len(firsts) - 1) / (max(firsts) - min(firsts))
    if latencies:
        latencies.sort()
        stats.p50, stats.p95, stats.p99 = (percentile(latencies, p) for p in (50, 95, 99))
        stats.max = latencies[-1]
    return stats


def wait_for_permits(observer: Observer, expected: int, consumer: GovernorChild | ScriptChild) -> str | None:
    """Until ``expected`` permit notifications have arrived; what went wrong otherwise."""
    seen, changed = observer.count, time.monotonic()
    while observer.count < expected:
        time.sleep(0.02)
        now = time.monotonic()
        if observer.count != seen:
            seen, changed = observer.count, now
        elif now - changed > STALL_SEC:
            return f"permits stopped at {seen:,} of {expected:,} for {STALL_SEC:g} s"
        if not consumer.running:
            return "the consumer exited"
    return None


def check_redis(admin: redis.Redis, tag: str, plans: int, settings: GovernorSettings) -> list[str]:
    """Every plan's permit key in Redis, and anything else the run left: blocks, dead letters, pending plans."""
    notes: list[str] = []
    present = 0
    for first in range(0, plans, SEED_CHUNK):
        pipe = admin.pipeline(transaction=False)
        for i in range(first, min(plans, first + SEED_CHUNK)):
            pipe.exists(PERMIT_KEY_PREFIX + plan_id(tag, i))
        present += sum(int(x) for x in pipe.execute())
    if present != plans:
        notes.append(f"{plans - present:,} of {plans:,} permit keys absent from Redis after the run")
    blocks = sum(1 for _ in admin.scan_iter(match=BLOCK_KEY_PREFIX + "*", count=1000))
    if blocks:
        notes.append(f"{blocks:,} block records")
    if admin.exists(settings.dead_letter_stream):
        notes.append(f"{admin.xlen(settings.dead_letter_stream):,} dead letters")
    pending: Any = admin.xpending(settings.plans_stream, settings.group)
    if pending["pending"]:
        notes.append(f"{pending['pending']:,} plans still pending")
    return notes


def run_once(
    server: RedisServer, admin: redis.Redis, config: Config, *, round_no: int, scenario: str, variant: str
) -> RunResult:
    """One consumer over one scenario's plans, from an empty keyspace: every phase in turn, then the checks."""
    started = time.monotonic()
    result = RunResult(round_no, scenario, variant)
    settings = load_settings(GovernorSettings, {})
    tag = f"r{round_no}{scenario[0]}{variant[0]}"
    admin.flushall()
    seed_efficiency(admin, scenario_symbols(scenario, config.plans), time.time())
    observer = Observer(server.port)
    consumer: GovernorChild | ScriptChild | None = None
    producer: ScriptChild | None = None
    with tempfile.TemporaryDirectory(prefix="bench-governor-") as tmp:
        try:
            if variant == GOVERNOR:
                consumer = GovernorChild(server.url, admin, Path(tmp) / "governor.log")
            else:
                consumer = ScriptChild(FLOOR, server.url)
            producer = ScriptChild(PRODUCER, server.url)
            start = 0
            for phase in config.phases:
                command = {"scenario": scenario, "tag": tag, "start": start, "count": phase.count, "rate": phase.rate}
                sent: list[float] = producer.ask(command)["sent"]
                trouble = wait_for_permits(observer, start + phase.count, consumer)
                if trouble:
                    result.notes.append(f"{phase.title}: {trouble}")
                time.sleep(PHASE_GAP_SEC)
                result.phases[phase.key] = phase_stats(tag, start, sent, observer.arrivals)
                start += phase.count
            producer.finish()
            producer = None
            result.notes += consumer.stop()
            consumer = None
        finally:
            if producer is not None:
                producer.close()
            if consumer is not None:
                consumer.stop()
            observer.stop()
    result.notes += check_redis(admin, tag, config.plans, settings)
    result.seconds = time.monotonic() - started
    return result


# --- the report (parent) --------------------------------------------------------------------------------------------

TITLES = {GOVERNOR: "governor", FLOOR: "floor"}
SCENARIO_TITLES = {FEW: "few symbols", DISTINCT: "distinct symbols"}
#: A consumer in a scenario: (scenario, variant).
Who = tuple[str, str]


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def show(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


class Results:
    """Every run's figures, by round, scenario and consumer."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.runs: dict[tuple[int, str, str], RunResult] = {}

    @property
    def rounds(self) -> range:
        return range(1, self.config.rounds + 1)

    def add(self, run: RunResult) -> None:
        self.runs[(run.round_no, run.scenario, run.variant)] = run

    def figure(self, round_no: int, who: Who, phase: str, metric: str) -> float | None:
        run = self.runs.get((round_no, *who))
        stats = run.phases.get(phase) if run is not None and run.error is None else None
        value = getattr(stats, metric) if stats is not None else None
        return None if value is None else float(value)

    def over_rounds(self, who: Who, phase: str, metric: str) -> list[float]:
        found = (self.figure(r, who, phase, metric) for r in self.rounds)
        return [value for value in found if value is not None]

    def median(self, who: Who, phase: str, metric: str) -> float | None:
        return median_or_none(self.over_rounds(who, phase, metric))

    def ratio(self, top: Who, bottom: Who, phase: str, metric: str) -> float | None:
        """The median, over the rounds, of ``top``'s figure over ``bottom``'s in the same round.

        Both runs of a round ran close together, so each ratio sees the machine at one speed; the median of the
        ratios cancels the drift between rounds that a ratio of two medians would keep."""
        ratios: list[float] = []
        for r in self.rounds:
            a, b = self.figure(r, top, phase, metric), self.figure(r, bottom, phase, metric)
            if a is not None and b:
                ratios.append(a / b)
        return median_or_none(ratios)


METRICS: tuple[tuple[str, str, str], ...] = (
    ("per_sec", "permits/s", ",.0f"),
    ("p50", "p50 ms", ",.1f"),
    ("p95", "p95 ms", ",.1f"),
    ("p99", "p99 ms", ",.1f"),
    ("max", "max ms", ",.1f"),
)


def print_scenario(results: Results, scenario: str) -> None:
    config = results.config
    print()
    if scenario == FEW:
        about = f"{FEW_SYMBOLS} symbols, closing plans ({', '.join(CLOSE_ACTIONS)})"
    else:
        about = f"one {OPEN_ACTION} plan per symbol, {config.plans:,} distinct symbols a run (gate read and written)"
    print(f"== {SCENARIO_TITLES[scenario]}: {about}; medians over the rounds ==")
    head = "".join(f"{title:>11}" for _, title, _ in METRICS)
    print(f"  {'phase':<16}{'consumer':<16}{head}{'permits':>17}{'sent/s':>10}")
    governor, floor = (scenario, GOVERNOR), (scenario, FLOOR)
    for phase in config.phases:
        label = f"{phase.title} x {phase.count:,}"
        for variant in VARIANTS:
            who = (scenario, variant)
            cells = "".join(f"{show(results.median(who, phase.key, m), f):>11}" for m, _, f in METRICS)
            got = sum(results.over_rounds(who, phase.key, "permits"))
            want = sum(results.over_rounds(who, phase.key, "expected"))
            sent = show(results.median(who, phase.key, "produced_per_sec"), ",.0f")
            print(f"  {label:<16}{TITLES[variant]:<16}{cells}{f'{got:,.0f}/{want:,.0f}':>17}{sent:>10}")
            label = ""
        ratios = "".join(f"{show(results.ratio(governor, floor, phase.key, m), '.2f'):>11}" for m, _, _ in METRICS)
        print(f"  {'':<16}{'governor/floor':<16}{ratios}")


def print_rounds(results: Results) -> None:
    print()
    print("== per round (order alternates: few G, few F, distinct G, distinct F; then the reverse) ==")
    slow = results.config.phase(SLOW).title
    print(f"  {'round':<7}{'scenario':<18}{'burst permits/s: G | F (G/F)':<36}p99 ms at {slow}: G | F (G/F)")
    for r in results.rounds:
        for scenario in SCENARIOS:
            parts: list[str] = []
            for phase, metric, fmt in ((BURST, "per_sec", ",.0f"), (SLOW, "p99", ",.1f")):
                g = results.figure(r, (scenario, GOVERNOR), phase, metric)
                f = results.figure(r, (scenario, FLOOR), phase, metric)
                ratio = g / f if g is not None and f else None
                parts.append(f"{show(g, fmt)} | {show(f, fmt)} ({show(ratio, '.2f')})")
            print(f"  {r:<7}{SCENARIO_TITLES[scenario]:<18}{parts[0]:<36}{parts[1]}")


def print_growth(results: Results) -> None:
    print()
    print("== as distinct symbols grow: distinct-symbols figure / few-symbols figure (median of per-round ratios) ==")
    print(f"  {'figure':<28}{'governor':>10}{'floor':>10}")
    paced = [p for p in results.config.phases if p.rate is not None]
    rows = [(BURST, "per_sec", "burst permits/s")]
    rows += [(p.key, metric, f"{metric} ms at {p.title}") for metric in ("p50", "p99") for p in paced]
    for phase, metric, label in rows:
        cells = "".join(f"{show(results.ratio((DISTINCT, v), (FEW, v), phase, metric), '.2f'):>10}" for v in VARIANTS)
        print(f"  {label:<28}{cells}")
    print("  (the distinct-symbols plans are opening plans: the governor also reads, watches and writes their gate)")


@dataclass
class Check:
    name: str
    value: float | None
    target: str
    verdict: str  # PASS, MISS or ERROR
    fmt: str = ".2f"

    @property
    def line(self) -> str:
        return f"  {self.name:<52} {show(self.value, self.fmt):>10}   {self.target:<10} {self.verdict}"


def judged(value: float | None, ok: Callable[[float], bool]) -> str:
    if value is None:
        return "ERROR"
    return "PASS" if ok(value) else "MISS"


def make_checks(results: Results) -> list[Check]:
    checks: list[Check] = []
    slow = results.config.phase(SLOW)
    for scenario in SCENARIOS:
        governor, floor = (scenario, GOVERNOR), (scenario, FLOOR)
        burst = results.ratio(governor, floor, BURST, "per_sec")
        checks.append(
            Check(
                f"burst permits/s, governor / floor, {SCENARIO_TITLES[scenario]}",
                burst,
                f">= {MIN_BURST_OVER_FLOOR:g}",
                judged(burst, lambda v: v >= MIN_BURST_OVER_FLOOR),
            )
        )
        p99 = results.ratio(governor, floor, SLOW, "p99")
        checks.append(
            Check(
                f"p99 at {slow.title}, governor / floor, {SCENARIO_TITLES[scenario]}",
                p99,
                f"<= {MAX_P99_OVER_FLOOR:g}",
                judged(p99, lambda v: v <= MAX_P99_OVER_FLOOR),
            )
        )
    governor_runs = [run for run in results.runs.values() if run.variant == GOVERNOR]
    problems: float | None = sum(run.problems for run in governor_runs if run.error is None)
    if any(run.error is not None for run in governor_runs):
        problems = None
    checks.append(
        Check("governor plans without exactly one permit", problems, "= 0", judged(problems, lambda v: v == 0), ",.0f")
    )
    return checks


def print_context(results: Results) -> None:
    print()
    print("== context ==")
    burst = results.median((FEW, GOVERNOR), BURST, "per_sec")
    times = f" ({burst / OLD_BURST_PER_SEC:.1f} x)" if burst else ""
    print(
        f"  old governor: about {OLD_BURST_PER_SEC:,.0f} closing plans/s in a burst; this one (few symbols, closing "
        f"plans): {show(burst, ',.0f')}/s{times}"
    )
    slow = results.config.phase(SLOW)
    p99s = ", ".join(
        f"{show(results.median((s, GOVERNOR), SLOW, 'p99'), ',.1f')} ms ({SCENARIO_TITLES[s]})" for s in SCENARIOS
    )
    low, high = OLD_P99_AT_200_MS
    print(f"  old governor: p99 {low:g}-{high:g} ms at 200/s; this one at {slow.title}: {p99s}")
    print(f"  the apply layer waits at most {APPLY_WAIT_MS:,.0f} ms for a permit; the governor's slowest permit:")
    for s in SCENARIOS:
        worst = ", ".join(
            f"{p.title} {show(max(results.over_rounds((s, GOVERNOR), p.key, 'max'), default=None), ',.0f')} ms"
            for p in results.config.phases
        )
        print(f"    {SCENARIO_TITLES[s]}: {worst} (a burst's latency is mostly queueing behind its own backlog)")


def print_notes(results: Results) -> None:
    noted = [run for run in results.runs.values() if run.notes or run.error]
    if not noted:
        return
    print()
    print("== notes ==")
    for run in noted:
        where = f"round {run.round_no}, {SCENARIO_TITLES[run.scenario]}, {TITLES[run.variant]}"
        if run.error:
            print(f"  {where}: ERROR {run.error}")
        for note in run.notes:
            print(f"  {where}: {note}")


def print_summary(checks: Sequence[Check]) -> None:
    counts = {v: sum(1 for c in checks if c.verdict == v) for v in ("PASS", "MISS", "ERROR")}
    bad = [f"{c.name}" + ("" if c.value is None else f" = {c.value:,.2f}") for c in checks if c.verdict != "PASS"]
    print()
    line = f"SUMMARY: {counts['PASS']} PASS, {counts['MISS']} MISS, {counts['ERROR']} ERROR of {len(checks)} targets"
    print(line + (f" — not met: {'; '.join(bad)}" if bad else " — all targets met") + " (exit status 0: a measurement)")


def run_order(round_no: int) -> list[tuple[str, str]]:
    order = [(scenario, variant) for scenario in SCENARIOS for variant in VARIANTS]
    return order if round_no % 2 == 1 else order[::-1]


def describe_run(run: RunResult, config: Config) -> str:
    if run.error:
        return f"ERROR {run.error}"
    parts = []
    for phase in config.phases:
        stats = run.phases.get(phase.key)
        if stats is None:
            continue
        if phase.rate is None:
            parts.append(f"burst {show(stats.per_sec, ',.0f')}/s")
        else:
            parts.append(f"{phase.title} p99 {show(stats.p99, ',.1f')} ms")
    problems = f", {run.problems} without exactly one permit" if run.problems else ""
    return f"{'; '.join(parts)}{problems} ({run.seconds:.0f} s)"


def run_parent(config: Config, quick: bool) -> None:
    started = time.monotonic()
    results = Results(config)
    with RedisServer() as server:
        admin = server.client()
        admin.config_set("notify-keyspace-events", NOTIFY_FLAGS)
        server_info: Any = admin.info("server")
        settings = load_settings(GovernorSettings, {})
        print(f"Governor benchmark (scripts/bench_governor.py){' --quick' if quick else ''}")
        print(
            f"redis-server {server_info['redis_version']} on 127.0.0.1:{server.port} (throwaway, "
            f"notify-keyspace-events {NOTIFY_FLAGS}), Python {platform.python_version()}, redis-py {redis.__version__} "
            f"({'with' if HIREDIS_AVAILABLE else 'without'} hiredis), {os.cpu_count()} CPUs"
        )
        print(
            f"governor: python -m {GOVERNOR_MODULE}, batch {BATCH_SIZE}, GOV_BLOCK_MS {settings.block_ms}, "
            f"P31_GOV_MODE {settings.mode}, PERMIT_TTL_SEC {PERMIT_TTL_SEC}, other settings default; floor: the same "
            f"reads and writes (XREADGROUP, a pipeline of HMGET + EXISTS, a pipeline of per-plan MULTI/SET NX/XADD/"
            f"XACK/EXEC), no logic"
        )
        phases = ", then ".join(
            f"{p.count:,} as fast as possible ({BURST_CHUNK} per pipelined round trip)"
            if p.rate is None
            else f"{p.count:,} at {p.rate:,.0f}/s"
            for p in config.phases
        )
        print(f"per run, {config.plans:,} plans: {phases}; each phase starts once the previous one's permits are in")
        print(
            f"{config.rounds} rounds, each consumer and scenario in its own run and child process, order alternating "
            f"(ABBA); ratios are medians of per-round ratios"
        )
        print(
            "latency: producer's time.time() right before XADD -> arrival of the permit key's keyspace notification "
            f"({SET_CHANNEL})"
        )
        sys.stdout.flush()
        for r in range(1, config.rounds + 1):
            for scenario, variant in run_order(r):
                progress(f"round {r}/{config.rounds}: {SCENARIO_TITLES[scenario]}, {TITLES[variant]}")
                try:
                    run = run_once(server, admin, config, round_no=r, scenario=scenario, variant=variant)
                except (ChildFailedError, DaemonFailedError, redis.RedisError, OSError) as exc:
                    run = RunResult(r, scenario, variant, error=f"{type(exc).__name__}: {exc}"[:500])
                results.add(run)
                progress(f"  {describe_run(run, config)}")
        admin.close()
    for scenario in SCENARIOS:
        print_scenario(results, scenario)
    print_rounds(results)
    print_growth(results)
    checks = make_checks(results)
    print()
    print(f"  {'check':<52} {'value':>10}   {'target':<10} result")
    for check in checks:
        print(check.line)
    print_context(results)
    print_notes(results)
    print_summary(checks)
    progress(f"done in {time.monotonic() - started:,.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a smaller run, about a minute: a smoke test")
    parser.add_argument("--rounds", type=int, help="rounds of paired runs (default: 4, or 2 with --quick)")
    parser.add_argument("--child", choices=(FLOOR, PRODUCER), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == FLOOR:
        serve_floor(args.url)
        return 0
    if args.child == PRODUCER:
        serve_producer(args.url)
        return 0
    config = QUICK_CONFIG if args.quick else FULL_CONFIG
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        config = Config(args.rounds, config.phases)
    run_parent(config, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
