"""``make demo``: both daemons run for real against one throwaway Redis, Step 1 then Step 2.

Step 1, the shadow allocation proposer (SPEC §1, §2): it seeds some twenty-five symbols whose efficiency hashes
between them hit every reason of SPEC §1, runs the real daemon (``python -m microservices.allocation_target``) as a
subprocess for a few loops, reads back the shadow hashes it wrote and prints them as a table with the daemon's /metrics,
/healthz and log lines.

Step 2, the governor (SPEC §3), on the same Redis and so on the same efficiency hashes: it publishes plans to
``quantum:stream:apply.plan`` that between them hit a downsize (score 0.2 and 0.0), no downsize (score 0.9), each
fail-open reason, reducing plans, a cooldown, a kill score, a stale plan, a skip, a dead letter and plan_ids published
twice; runs the real daemon (``python -m microservices.governor``) until the consumer group is drained, reads back the
permits, block records, events and dead letters, and prints them as a table with /metrics, /healthz and log lines.

Each step checks its own outcome against the SPEC: every symbol and every plan must come out as it was seeded for,
with the exact multiplier, factor and extra cooldown, one event per decided plan and none for a duplicate; else the demo
prints FAIL and exits 1.

Only the standard library, redis-py and this package are used; the shared Redis on port 6379 is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import cast

import redis
from redis.typing import EncodableT

from microservices.allocation_target.proposal import LIVE_TARGET_PREFIX, PROPOSED_PREFIX, TARGET_FIELD
from microservices.allocation_target.settings import DEFAULT_STREAM
from microservices.core.efficiency import EFFICIENCY_KEY_PREFIX
from microservices.devtools.daemon_process import DaemonFailedError, DaemonProcess, http_get, metric_value
from microservices.devtools.redis_server import RedisServer
from microservices.governor.records import EVENTS_STREAM, OutcomeMarker, block_key, outcome_key, permit_key
from microservices.governor.settings import DEFAULT_PLANS_STREAM

ROOT = Path(__file__).resolve().parent.parent
PROPOSER_MODULE = "microservices.allocation_target"
LOOPS_WANTED = 3
LOOP_INTERVAL_SEC = 1
#: Longest wait for the daemon's loops; a healthy run needs about three seconds.
RUN_TIMEOUT_SEC = 10.0
#: SPEC §5: SIGTERM must end a daemon with exit status 0 within 5 s.
STOP_TIMEOUT_SEC = 5.0
LOG_TAIL_LINES = 8
PROPOSER_METRICS = (
    "p29_shadow_proposed_total",
    "p29_shadow_skipped_total",
    "p29_shadow_loops_total",
    "p29_shadow_symbols",
    "p29_shadow_redis_errors_total",
)
#: The daemons' own variables: not inherited from the caller's shell, so the demo's expectations always hold.
_DAEMON_VARIABLE_PREFIXES = ("P31_", "PROPOSE_", "METRICS_", "REDIS_", "LOOP_", "GOV_", "STREAM_", "PERMIT_")
SKIPPED = "skipped: invalid_target"

#: A wrong-type efficiency key: a plain string where a hash belongs, so that HMGET fails with WRONGTYPE.
WRONG_TYPE = "wrong-type"
EffSeed = Mapping[str, str] | None | str


# --- the seeded symbols ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One seeded symbol: its live target, its efficiency hash, and what the proposer must make of them."""

    symbol: str
    target_usd: str
    #: The efficiency hash's fields; None for no key at all, :data:`WRONG_TYPE` for a string key.
    eff: EffSeed
    expected_reason: str
    note: str
    #: The multiplier SPEC §2 gives for this case (1.0 for every reason but ``ok``); None when skipped.
    expected_multiplier: float | None = 1.0
    #: The efficiency time as epoch seconds, for the age column; None when there is no usable one.
    eff_ts: float | None = None

    @property
    def skipped(self) -> bool:
        return self.expected_reason == SKIPPED


def _eff(score: str | None, conf: str | None, **time_fields: str) -> dict[str, str]:
    fields = {"efficiency_score": score, "confidence": conf, **time_fields}
    return {name: value for name, value in fields.items() if value is not None}


def proposer_cases(now: float) -> list[Case]:
    """The demo's symbols, between them every reason of SPEC §1 plus an invalid live target (SPEC §2)."""
    fresh, hour_ago, hour_ahead = now - 30, now - 3600, now + 3600
    ts = f"{fresh:.3f}"
    iso_zoned = datetime.fromtimestamp(now - 120, UTC).isoformat()
    iso_naive = datetime.fromtimestamp(now - 90, UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    return [
        Case("BTCUSDT", "10000", _eff("0.9", "0.9", ts=ts), "ok", "high score", 1.4, fresh),
        Case("ETHUSDT", "8000", _eff("0.3", "0.8", ts=ts), "ok", "low score", 0.8, fresh),
        Case("SOLUSDT", "5000", _eff("0.5", "0.9", ts=ts), "ok", "score exactly 0.5", 1.0, fresh),
        Case("BNBUSDT", "4000", _eff("1.0", "0.95", ts=ts), "ok", "score 1.0: top of the clamp", 1.5, fresh),
        Case("XRPUSDT", "3000", _eff("0.0", "0.9", ts=ts), "ok", "score 0.0: bottom of the clamp", 0.5, fresh),
        Case(
            "LDOUSDT", "1000", _eff("0.2", "0.9", ts=ts), "ok", "score 0.2 (the governor's DOWNSIZE case)", 0.7, fresh
        ),
        Case("INJUSDT", "1500", _eff("0.7", "0.65", ts=ts), "ok", "confidence exactly P31_MIN_CONF", 1.2, fresh),
        Case("UNIUSDT", "1200", _eff("0.6", "0.9", ts=f"{now + 30:.0f}"), "ok", "ts 30 s ahead (< 60)", 1.1, now + 30),
        Case("NEARUSDT", "2500", _eff("0.8", "0.9", ts=str(int(fresh * 1000))), "ok", "ts in milliseconds", 1.3, fresh),
        Case("APTUSDT", "2000", _eff("0.4", "0.9", timestamp=iso_zoned), "ok", "ISO timestamp, +00:00", 0.9, now - 120),
        Case("ARBUSDT", "1800", _eff("0.65", "0.7", timestamp=iso_naive), "ok", "ISO timestamp, naive", 1.15, now - 90),
        Case("ADAUSDT", "2200", None, "missing_eff", "no efficiency hash"),
        Case("DOGEUSDT", "900", _eff("nan", "0.9", ts=ts), "invalid_eff", "score NaN", eff_ts=fresh),
        Case("AVAXUSDT", "1100", _eff("high", "0.9", ts=ts), "invalid_eff", "score not a number", eff_ts=fresh),
        Case("DOTUSDT", "1300", _eff("1.7", "0.9", ts=ts), "invalid_eff", "score 1.7 out of range", eff_ts=fresh),
        Case("LINKUSDT", "1400", _eff("0.8", None, ts=ts), "invalid_eff", "confidence absent", eff_ts=fresh),
        Case("SUIUSDT", "600", _eff("0.8", "inf", ts=ts), "invalid_eff", "confidence inf", eff_ts=fresh),
        Case(
            "MATICUSDT",
            "700",
            _eff("0.8", "0.9", ts=f"{hour_ahead:.0f}"),
            "invalid_eff",
            "ts 1 h ahead",
            eff_ts=hour_ahead,
        ),
        Case(
            "LTCUSDT",
            "1600",
            _eff("0.8", "0.9", ts="yesterday", timestamp=iso_zoned),
            "invalid_eff",
            "garbage ts (no fall-back to timestamp)",
        ),
        Case("ETCUSDT", "500", _eff("0.8", "0.9"), "invalid_eff", "no ts and no timestamp"),
        Case("SHIBUSDT", "400", {"model": "v2", "source": "upstream"}, "invalid_eff", "hash of unrelated fields only"),
        Case("TRXUSDT", "800", _eff("0.9", "0.9", ts=f"{hour_ago:.0f}"), "stale_eff", "ts 1 h old", eff_ts=hour_ago),
        Case("ATOMUSDT", "950", _eff("0.9", "0.4", ts=ts), "low_conf", "confidence 0.4", eff_ts=fresh),
        Case("OPUSDT", "1000", WRONG_TYPE, "redis_error", "efficiency key is a string (WRONGTYPE)"),
        Case("FILUSDT", "abc", _eff("0.9", "0.9", ts=ts), SKIPPED, "target_usd 'abc'", None, fresh),
        Case("PEPEUSDT", "-5", _eff("0.9", "0.9", ts=ts), SKIPPED, "target_usd '-5'", None, fresh),
    ]


def seed_proposer_demo(client: redis.Redis, now: float) -> list[Case]:
    """Write every case's live target and efficiency key; returns the cases."""
    cases = proposer_cases(now)
    pipe = client.pipeline(transaction=True)
    for case in cases:
        pipe.hset(LIVE_TARGET_PREFIX + case.symbol, mapping={TARGET_FIELD: case.target_usd})
        eff_key = EFFICIENCY_KEY_PREFIX + case.symbol
        if case.eff == WRONG_TYPE:
            pipe.set(eff_key, "0.9")
        elif isinstance(case.eff, Mapping):
            fields: dict[EncodableT, EncodableT] = {name: value for name, value in case.eff.items()}
            pipe.hset(eff_key, mapping=fields)
    pipe.execute()
    return cases


def snapshot_live_targets(client: redis.Redis, cases: Sequence[Case]) -> dict[str, tuple[dict[bytes, bytes], int]]:
    """Each live target hash and its TTL, to show afterwards that the proposer never wrote one (SPEC §2)."""
    pipe = client.pipeline(transaction=False)
    for case in cases:
        pipe.hgetall(LIVE_TARGET_PREFIX + case.symbol)
        pipe.ttl(LIVE_TARGET_PREFIX + case.symbol)
    replies = pipe.execute()
    return {
        case.symbol: (cast(dict[bytes, bytes], replies[2 * i]), int(replies[2 * i + 1])) for i, case in enumerate(cases)
    }


# --- running a daemon -----------------------------------------------------------------------------------------------


@dataclass
class DaemonRun:
    """What a daemon run showed from the outside: its HTTP endpoints, exit status and log."""

    module: str
    metrics_url: str
    healthz_url: str
    metrics_text: str = ""
    healthz_status: int | None = None
    healthz_body: str = ""
    exit_status: int | None = None
    stop_sec: float | None = None
    log_lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def metric_lines(metrics_text: str, names: Sequence[str]) -> list[str]:
    """The sample lines (no ``# HELP``/``# TYPE``) of the named metrics."""
    return [
        line
        for line in metrics_text.splitlines()
        if not line.startswith("#") and any(line.startswith((name + " ", name + "{")) for name in names)
    ]


def daemon_environment(redis_url: str, extra: Mapping[str, str]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(_DAEMON_VARIABLE_PREFIXES)}
    env.update({"REDIS_URL": redis_url, "METRICS_PORT": "0", **extra})
    return env


def run_daemon(
    module: str,
    redis_url: str,
    done: Callable[[str], bool],
    extra_env: Mapping[str, str] | None = None,
    timeout: float = RUN_TIMEOUT_SEC,
) -> DaemonRun:
    """Start ``python -m module``, poll its /metrics until ``done(metrics_text)``, read /healthz, then SIGTERM it.

    The daemon is always stopped before this returns, also on an error or Ctrl-C.
    """
    env = daemon_environment(redis_url, extra_env or {})
    with tempfile.TemporaryDirectory(prefix="p31-demo-") as tmp:
        log_path = Path(tmp) / "daemon.log"
        try:
            daemon = DaemonProcess(module, env, log_path, "--log-format", "text")
        except DaemonFailedError as exc:
            run = DaemonRun(module, "-", "-", problems=[str(exc)])
            run.log_lines = log_path.read_text(errors="replace").splitlines()
            return run
        run = DaemonRun(module, daemon.url("/metrics"), daemon.url("/healthz"))
        try:
            try:
                daemon.wait_for(lambda: done(_metrics_now(run.metrics_url)), timeout, "the wanted state")
            except DaemonFailedError as exc:
                run.problems.append(str(exc).split(":", 1)[0])
            if daemon.running:
                run.healthz_status, run.healthz_body = _get_or_problem(run, run.healthz_url)
                _, run.metrics_text = _get_or_problem(run, run.metrics_url)
                try:
                    run.exit_status, run.stop_sec = daemon.terminate(STOP_TIMEOUT_SEC)
                except subprocess.TimeoutExpired:
                    run.problems.append(f"{module} did not exit within {STOP_TIMEOUT_SEC:g}s of SIGTERM; killed")
            else:
                run.exit_status = daemon.process.returncode
        finally:
            daemon.close()
            run.log_lines = daemon.log().splitlines()
    return run


def _metrics_now(url: str) -> str:
    """The /metrics page, or "" while the daemon does not answer it."""
    try:
        status, body = http_get(url, timeout=2.0)
    except OSError:
        return ""
    return body if status == 200 else ""


def _get_or_problem(run: DaemonRun, url: str) -> tuple[int | None, str]:
    try:
        return http_get(url, timeout=2.0)
    except OSError as exc:
        run.problems.append(f"GET {url} failed: {exc}")
        return None, ""


def run_proposer(redis_url: str) -> DaemonRun:
    """The real proposer daemon, until it has completed :data:`LOOPS_WANTED` loops."""

    def enough_loops(metrics_text: str) -> bool:
        return (metric_value(metrics_text, "p29_shadow_loops_total") or 0) >= LOOPS_WANTED

    return run_daemon(PROPOSER_MODULE, redis_url, enough_loops, {"LOOP_INTERVAL_SEC": str(LOOP_INTERVAL_SEC)})


# --- reading back and reporting -------------------------------------------------------------------------------------


def read_proposals(client: redis.Redis, cases: Sequence[Case]) -> dict[str, dict[str, str]]:
    """Each symbol's shadow hash ``quantum:allocation:target:proposed:{symbol}`` (empty when there is none)."""
    pipe = client.pipeline(transaction=False)
    for case in cases:
        pipe.hgetall(PROPOSED_PREFIX + case.symbol)
    replies = cast(list[dict[bytes, bytes]], pipe.execute())
    return {
        case.symbol: {k.decode(): v.decode() for k, v in reply.items()}
        for case, reply in zip(cases, replies, strict=True)
    }


def shown_reason(proposal: Mapping[str, str]) -> str:
    return proposal.get("reason", SKIPPED) if proposal else SKIPPED


def _cell(value: str | None) -> str:
    return value if value else "-"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> None:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


def print_proposer_table(cases: Sequence[Case], proposals: Mapping[str, Mapping[str, str]]) -> None:
    """One row per seeded symbol, sorted, from the shadow hashes the daemon wrote; then a count per reason."""
    rows: list[list[str]] = []
    for case in sorted(cases, key=lambda c: c.symbol):
        p = proposals[case.symbol]
        if not p:
            rows.append([case.symbol, "-", "-", "-", SKIPPED, "-", "-", "-", case.note])
            continue
        age = "-" if case.eff_ts is None else f"{int(p['ts_epoch']) - case.eff_ts:.0f}"
        rows.append(
            [
                case.symbol,
                _cell(p.get("eff_score")),
                _cell(p.get("eff_confidence")),
                age,
                _cell(p.get("reason")),
                _cell(p.get("base_target")),
                _cell(p.get("multiplier")),
                _cell(p.get("proposed_target")),
                case.note,
            ]
        )
    headers = ["symbol", "score", "conf", "age s", "reason", "base", "mult", "proposed", "seeded case"]
    print_table(headers, rows, right={1, 2, 3, 5, 6, 7})
    print()
    counts = Counter(shown_reason(proposals[case.symbol]) for case in cases)
    print("Symbols per reason:")
    for reason, count in sorted(counts.items()):
        print(f"  {reason:<24} {count}")


def print_daemon_run(run: DaemonRun, metric_names: Sequence[str]) -> None:
    print(f"/metrics served at {run.metrics_url}")
    print(f"/healthz served at {run.healthz_url}")
    print(f"/healthz -> {run.healthz_status} {run.healthz_body}")
    print("/metrics (excerpt):")
    for line in metric_lines(run.metrics_text, metric_names):
        print(f"  {line}")
    shown = f"{run.exit_status}" if run.exit_status is not None else "none (killed)"
    took = f" after {run.stop_sec:.2f}s" if run.stop_sec is not None else ""
    print(f"{run.module} exit status on SIGTERM: {shown}{took}")
    print(f"last {LOG_TAIL_LINES} log lines of {run.module}:")
    for line in run.log_lines[-LOG_TAIL_LINES:]:
        print(f"  {line}")


# --- checking the outcome -------------------------------------------------------------------------------------------


def check_daemon_run(run: DaemonRun) -> list[str]:
    failures = list(run.problems)
    if run.exit_status != 0:
        failures.append(f"{run.module} exit status {run.exit_status}, expected 0")
    if run.healthz_status != 200:
        failures.append(f"/healthz answered {run.healthz_status}, expected 200")
    else:
        try:
            status = json.loads(run.healthz_body).get("status")
        except ValueError:
            status = None
        if status != "ok":
            failures.append(f"/healthz body status {status!r}, expected 'ok'")
    return failures


def check_proposer(
    cases: Sequence[Case],
    proposals: Mapping[str, Mapping[str, str]],
    run: DaemonRun,
    live_before: Mapping[str, object],
    live_after: Mapping[str, object],
) -> list[str]:
    """Every way the run differs from SPEC §1/§2 for the seeded symbols; empty when it matches."""
    failures = check_daemon_run(run)
    for case in cases:
        p = proposals[case.symbol]
        got = shown_reason(p)
        if got != case.expected_reason:
            failures.append(f"{case.symbol} ({case.note}): reason {got!r}, expected {case.expected_reason!r}")
            continue
        if case.skipped or case.expected_multiplier is None:
            continue
        multiplier = float(p["multiplier"])
        if abs(multiplier - case.expected_multiplier) > 1e-4:
            failures.append(f"{case.symbol}: multiplier {multiplier}, expected {case.expected_multiplier}")
        expected_target = f"{float(case.target_usd) * multiplier:.2f}"
        if p["proposed_target"] != expected_target:
            failures.append(f"{case.symbol}: proposed_target {p['proposed_target']}, expected {expected_target}")
        expected_stale = "1" if case.expected_reason == "stale_eff" else "0"
        if p.get("eff_stale") != expected_stale:
            failures.append(f"{case.symbol}: eff_stale {p.get('eff_stale')!r}, expected {expected_stale!r}")
        if p.get("mode") != "shadow":
            failures.append(f"{case.symbol}: mode {p.get('mode')!r}, expected 'shadow'")
    symbols = metric_value(run.metrics_text, "p29_shadow_symbols")
    if symbols != len(cases):
        failures.append(f"p29_shadow_symbols is {symbols}, expected {len(cases)} (one per live target hash)")
    if live_after != live_before:
        failures.append("a live target hash quantum:allocation:target:{symbol} was changed by the proposer")
    return failures


# --- Step 1 as the demo runs it -------------------------------------------------------------------------------------


def proposer_section(server: RedisServer) -> list[str]:
    """Seed, run, print and check the proposer; returns the failures."""
    print("=== Step 1: allocation-target shadow proposer (docs: Efficiency classification, Multiplier) ===")
    client = server.client()
    try:
        cases = seed_proposer_demo(client, time.time())
        live_before = snapshot_live_targets(client, cases)
        print(f"seeded {len(cases)} symbols in the throwaway Redis at {server.url}")
        print(f"running {PROPOSER_MODULE} with LOOP_INTERVAL_SEC={LOOP_INTERVAL_SEC} for {LOOPS_WANTED} loops ...")
        run = run_proposer(server.url)
        proposals = read_proposals(client, cases)
        live_after = snapshot_live_targets(client, cases)
        stream_length = int(client.xlen(DEFAULT_STREAM))
    finally:
        client.close()
    print()
    print_proposer_table(cases, proposals)
    print(f"stream {DEFAULT_STREAM}: {stream_length} entries")
    print()
    print_daemon_run(run, PROPOSER_METRICS)
    return check_proposer(cases, proposals, run, live_before, live_after)


# --- Step 2: the governor -------------------------------------------------------------------------------------------

GOVERNOR_MODULE = "microservices.governor"
GOVERNOR_CONSUMER = "demo-governor"
GOVERNOR_GROUP = "governor"
DEAD_LETTER_STREAM = DEFAULT_PLANS_STREAM + ".dlq"
GOVERNOR_METRICS = (
    "p32_eff_apply_total",
    "quantum_govern_outcomes_total",
    "quantum_govern_dead_letter_total",
    "quantum_govern_already_decided_total",
    "quantum_govern_pending",
    "quantum_govern_lag",
)
#: The outcomes as the governor's table names them; "acknowledged only" has no event (SPEC §3 step 3).
PERMIT, BLOCK, SKIP, DEAD_LETTER, ACK_ONLY = "permit", "block", "skip", "dead letter", "acknowledged only"
#: The ``event`` field of quantum:stream:governor.events for each outcome.
EVENT_OF = {PERMIT: "permit", BLOCK: "block", SKIP: "skip", DEAD_LETTER: "dead_letter"}
#: How long a stale plan was published before the governor reads it (GOV_PLAN_MAX_AGE_SEC is 120).
STALE_PLAN_AGE_SEC = 600.0


@dataclass(frozen=True)
class PlanCase:
    """One plan published to the plans stream and the outcome SPEC §3 gives it with the seeded efficiency hashes."""

    fields: Mapping[str, str]
    outcome: str
    #: ``eff_reason`` for a permit; the block, skip or dead-letter reason otherwise; "" for an acknowledgement only.
    reason: str
    note: str
    eff_action: str | None = None
    factor: str | None = None
    extra_cooldown: str | None = None
    #: Published with an explicit stream id this many seconds in the past (a stale plan); None: ``*``.
    age_sec: float | None = None
    #: Published only once the governor has decided every earlier plan (a plan_id republished later).
    late: bool = False

    @property
    def plan_id(self) -> str:
        return self.fields.get("plan_id", "")

    @property
    def symbol(self) -> str:
        return self.fields.get("symbol", "")

    @property
    def decided(self) -> bool:
        """True when the plan must end with an outcome of its own, and so exactly one event."""
        return self.outcome != ACK_ONLY


def _plan(
    plan_id: str | None,
    symbol: str,
    action: str = "OPEN_LONG",
    *,
    qty: str = "1.5",
    decision: str = "EXECUTE",
    reduce_only: str = "false",
    kill_score: str = "0.10",
) -> dict[str, str]:
    fields = {
        "plan_id": plan_id,
        "symbol": symbol,
        "action": action,
        "decision": decision,
        "side": "SELL" if reduce_only == "true" or action.startswith("CLOSE") else "BUY",
        "qty": qty,
        "reduceOnly": reduce_only,
        "kill_score": kill_score,
    }
    return {name: value for name, value in fields.items() if value is not None}


#: The hint fields of a permit that is not downsized: eff_action, factor, extra cooldown.
NEUTRAL = ("NONE", "1.0000", "0")


def _permit(fields: Mapping[str, str], hint: tuple[str, str, str], eff_reason: str, note: str) -> PlanCase:
    eff_action, factor, extra_cooldown = hint
    return PlanCase(fields, PERMIT, eff_reason, note, eff_action, factor, extra_cooldown)


def governor_cases() -> list[PlanCase]:
    """The demo's plans, in stream order, over the symbols the proposer section seeded."""
    downsize = _plan("plan-ldo-open", "LDOUSDT", qty="2.0")
    full = _plan("plan-btc-open", "BTCUSDT")
    return [
        PlanCase(_plan("plan-sol-old", "SOLUSDT"), BLOCK, "stale_plan", "published 600 s ago", age_sec=600),
        _permit(downsize, ("DOWNSIZE", "0.4444", "96"), "ok", "score 0.2"),
        _permit(_plan("plan-xrp-open", "XRPUSDT"), ("DOWNSIZE", "0.2500", "120"), "ok", "score 0.0: factor floor"),
        _permit(full, NEUTRAL, "ok", "score 0.9, above 0.45"),
        _permit(_plan("plan-ada-open", "ADAUSDT"), NEUTRAL, "missing_eff", "fail-open: no efficiency hash"),
        _permit(_plan("plan-trx-open", "TRXUSDT"), NEUTRAL, "stale_eff", "fail-open: score 1 h old"),
        _permit(_plan("plan-atom-open", "ATOMUSDT"), NEUTRAL, "low_conf", "fail-open: confidence 0.4"),
        _permit(_plan("plan-op-open", "OPUSDT"), NEUTRAL, "redis_error", "fail-open: efficiency key WRONGTYPE"),
        _permit(
            _plan("plan-xrp-close", "XRPUSDT", "CLOSE_LONG"), NEUTRAL, "reduce_only", "CLOSE*: score 0.0, in cooldown"
        ),
        _permit(
            _plan("plan-eth-reduce", "ETHUSDT", "OPEN_SHORT", reduce_only="true"),
            NEUTRAL,
            "reduce_only",
            "reduceOnly=true: score 0.3",
        ),
        PlanCase(_plan("plan-btc-again", "BTCUSDT"), BLOCK, "cooldown", "2nd plan on BTCUSDT within 60 s"),
        PlanCase(_plan("plan-sol-kill", "SOLUSDT", kill_score="0.90"), BLOCK, "kill_score", "kill_score 0.9 >= 0.8"),
        PlanCase(_plan("plan-near-hold", "NEARUSDT", decision="HOLD"), SKIP, "not_execute", "decision HOLD"),
        PlanCase(_plan(None, "BNBUSDT"), DEAD_LETTER, "invalid_plan", "no plan_id"),
        PlanCase({**downsize, "qty": "9.0"}, ACK_ONLY, "", "same plan_id again, same batch"),
        PlanCase({**full, "qty": "9.0"}, ACK_ONLY, "", "same plan_id again, after its permit", late=True),
    ]


def publish_plans(client: redis.Redis, cases: Sequence[PlanCase], now: float) -> list[str]:
    """XADD each case to the plans stream, in order; returns the stream ids."""
    pipe = client.pipeline(transaction=False)
    for case in cases:
        entry_id = "*" if case.age_sec is None else f"{int((now - case.age_sec) * 1000)}-0"
        fields: dict[EncodableT, EncodableT] = {name: value for name, value in case.fields.items()}
        pipe.xadd(DEFAULT_PLANS_STREAM, fields, id=entry_id)
    return [_text(entry_id) for entry_id in pipe.execute()]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in raw.items()}


def metric_total(metrics_text: str, name: str) -> float:
    """The sum of every series of a metric (0 when there is none)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metric_lines(metrics_text, [name]))


def group_backlog(client: redis.Redis) -> tuple[int | None, int | None]:
    """The governor group's pending and lag counts from XINFO GROUPS (None: no such group, or no lag reported)."""
    try:
        groups = client.xinfo_groups(DEFAULT_PLANS_STREAM)
    except redis.ResponseError:  # no stream yet
        return None, None
    for group in groups:
        if _text(group["name"]) == GOVERNOR_GROUP:
            lag = group.get("lag")
            return int(group["pending"]), None if lag is None else int(lag)
    return None, None


def run_governor(server: RedisServer, cases: Sequence[PlanCase], entry_ids: list[str]) -> DaemonRun:
    """The real governor daemon, until every plan published so far is decided and acknowledged; then the late plans
    are published, and it runs until those are too. ``entry_ids`` gets the late plans' stream ids."""
    late = [case for case in cases if case.late]
    client = server.client()
    late_published = not late

    def all_decided(metrics_text: str) -> bool:
        nonlocal late_published
        wanted = [case for case in cases if late_published or not case.late]
        events = metric_total(metrics_text, "quantum_govern_outcomes_total")
        acks = metric_value(metrics_text, "quantum_govern_already_decided_total") or 0
        if events < sum(1 for case in wanted if case.decided) or acks < sum(1 for case in wanted if not case.decided):
            return False
        if group_backlog(client) not in {(0, 0), (0, None)}:
            return False
        if not late_published:
            entry_ids.extend(publish_plans(client, late, time.time()))
            late_published = True
            return False
        return True

    env = {"GOV_CONSUMER": GOVERNOR_CONSUMER, "GOV_GROUP": GOVERNOR_GROUP, "P31_GOV_MODE": "hint"}
    try:
        return run_daemon(GOVERNOR_MODULE, server.url, all_decided, env)
    finally:
        client.close()


@dataclass(frozen=True)
class PlanResult:
    """What Redis shows for one published plan after the governor ran."""

    case: PlanCase
    entry_id: str
    permit: dict[str, object] | None
    block: dict[str, object] | None
    #: The events of this plan_id (for a plan without one: the dead-letter events without a plan_id).
    events: list[dict[str, str]]
    #: The dead-letter entries whose source_id is this entry.
    dead_letters: list[dict[str, str]]
    #: The entry the outcome marker names as decided, when the plan_id has one.
    decided_entry: str | None
    pending: bool

    @property
    def outcome(self) -> str:
        return self._shown()[0]

    @property
    def reason(self) -> str:
        return self._shown()[1]

    def _shown(self) -> tuple[str, str]:
        """The outcome and reason the table shows, read off what Redis holds for this entry."""
        if self.pending:
            return "pending (undecided)", "-"
        if self.dead_letters:
            return DEAD_LETTER, self.dead_letters[0].get("reason", "-")
        if self.decided_entry is not None and self.decided_entry != self.entry_id:
            return ACK_ONLY, f"plan_id decided at {self.decided_entry}"
        if not self.events:
            return "no outcome", "-"
        event, reason = self.events[0].get("event", ""), self.events[0].get("reason", "-")
        if event == EVENT_OF[PERMIT]:
            return PERMIT, str(self.permit.get("eff_reason", "-")) if self.permit is not None else "permit key missing"
        if event == EVENT_OF[BLOCK]:
            return BLOCK, str(self.block.get("reason", "-")) if self.block is not None else "block key missing"
        if event == EVENT_OF[SKIP]:
            return SKIP, reason
        return f"event {event!r}", reason


def _json(raw: bytes | None) -> dict[str, object] | None:
    return cast(dict[str, object], json.loads(raw)) if raw is not None else None


def read_governor_results(
    client: redis.Redis, cases: Sequence[PlanCase], entry_ids: Sequence[str]
) -> tuple[list[PlanResult], list[dict[str, str]]]:
    """Each plan's permit, block record, events and dead letters as Redis holds them; and every event."""
    events = [_fields(f) for _, f in cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(EVENTS_STREAM))]
    dlq = [
        {**_fields(f), "_id": _text(i)}
        for i, f in cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(DEAD_LETTER_STREAM))
    ]
    pending_rows = client.xpending_range(DEFAULT_PLANS_STREAM, GOVERNOR_GROUP, "-", "+", 1000)
    pending = {_text(cast(bytes, row["message_id"])) for row in pending_rows}
    results: list[PlanResult] = []
    for case, entry_id in zip(cases, entry_ids, strict=True):
        plan_id = case.plan_id
        permit = block = marker = None
        if plan_id:
            pipe = client.pipeline(transaction=False)
            pipe.get(permit_key(plan_id))
            pipe.get(block_key(plan_id))
            pipe.get(outcome_key(plan_id))
            raw_permit, raw_block, raw_marker = pipe.execute()
            permit, block = _json(raw_permit), _json(raw_block)
            marker = OutcomeMarker.parse(raw_marker)
            mine = [e for e in events if e.get("plan_id") == plan_id]
        else:
            mine = [e for e in events if not e.get("plan_id") and e.get("event") == EVENT_OF[DEAD_LETTER]]
        dead = [d for d in dlq if d.get("source_id") == entry_id]
        decided_entry = marker.entry_id if marker is not None else None
        results.append(PlanResult(case, entry_id, permit, block, mine, dead, decided_entry, entry_id in pending))
    return results, events


def _permit_cell(result: PlanResult, name: str) -> str:
    if result.outcome != PERMIT or result.permit is None:
        return "-"
    return _cell(str(result.permit.get(name, "")))


def print_governor_table(results: Sequence[PlanResult]) -> None:
    rows = [
        [
            _cell(r.case.plan_id) if r.case.plan_id else "(none)",
            _cell(r.case.symbol),
            _cell(r.case.fields.get("decision")),
            _cell(r.case.fields.get("action")) + (" +reduceOnly" if r.case.fields.get("reduceOnly") == "true" else ""),
            r.outcome,
            _permit_cell(r, "eff_action"),
            _permit_cell(r, "eff_factor"),
            _permit_cell(r, "extra_cooldown_sec"),
            r.reason,
            r.case.note,
        ]
        for r in results
    ]
    headers = [
        "plan_id",
        "symbol",
        "decision",
        "action",
        "outcome",
        "eff_action",
        "factor",
        "extra cd",
        "reason",
        "case",
    ]
    print_table(headers, rows, right={6, 7})
    print()
    counts = Counter(r.outcome for r in results)
    print("Plans per outcome:")
    for outcome, count in sorted(counts.items()):
        print(f"  {outcome:<24} {count}")


# --- checking the governor ------------------------------------------------------------------------------------------


def check_plan(result: PlanResult) -> list[str]:
    """Every way one plan's outcome differs from what SPEC §3 gives it."""
    case, failures = result.case, []
    name = f"{case.plan_id or '(no plan_id)'} at {result.entry_id} ({case.note})"
    if result.outcome != case.outcome or (case.decided and result.reason != case.reason):
        return [f"{name}: {result.outcome} ({result.reason}), expected {case.outcome} ({case.reason})"]
    if case.decided:
        kinds = [e.get("event") for e in result.events]
        if kinds != [EVENT_OF[case.outcome]]:
            failures.append(f"{name}: events {kinds}, expected exactly one {EVENT_OF[case.outcome]!r}")
    if case.outcome == PERMIT and result.permit is not None:
        failures += _check_permit(name, case, result.permit)
    elif case.outcome == BLOCK and result.block is not None:
        record = (result.block.get("plan_id"), result.block.get("symbol"))
        if record != (case.plan_id, case.symbol):
            failures.append(f"{name}: block record names {record}, expected {(case.plan_id, case.symbol)}")
        if result.events and result.events[0].get("reason") != case.reason:
            failures.append(f"{name}: block event reason {result.events[0].get('reason')!r}, expected {case.reason!r}")
    elif case.outcome == DEAD_LETTER:
        failures += _check_dead_letter(name, result)
    return failures


def _check_permit(name: str, case: PlanCase, permit: Mapping[str, object]) -> list[str]:
    failures: list[str] = []
    wanted: dict[str, object] = {
        "granted": True,
        "consumed": False,
        "decision": "EXECUTE",
        "plan_id": case.plan_id,
        "symbol": case.symbol,
        "action": case.fields.get("action"),
        "eff_action": case.eff_action,
        "eff_factor": case.factor,
        "downsize_factor": case.factor,
        "extra_cooldown_sec": case.extra_cooldown,
        "eff_reason": case.reason,
        "eff_stale": "1" if case.reason == "stale_eff" else "0",
        # hint mode: the plan's qty, unscaled
        "computed_qty": float(case.fields["qty"]),
    }
    for field_name, value in wanted.items():
        if permit.get(field_name) != value:
            failures.append(f"{name}: permit {field_name} {permit.get(field_name)!r}, expected {value!r}")
    return failures


def _check_dead_letter(name: str, result: PlanResult) -> list[str]:
    if len(result.dead_letters) != 1:
        return [f"{name}: {len(result.dead_letters)} dead-letter entries with source_id {result.entry_id}, expected 1"]
    entry = result.dead_letters[0]
    failures = []
    for field_name, value in {**result.case.fields, "reason": result.case.reason, "deliveries": "1"}.items():
        if entry.get(field_name) != value:
            failures.append(f"{name}: dead letter {field_name} {entry.get(field_name)!r}, expected {value!r}")
    return failures


def check_governor(
    results: Sequence[PlanResult], events: Sequence[Mapping[str, str]], run: DaemonRun, backlog: tuple[object, object]
) -> list[str]:
    """Every way the governor's run differs from SPEC §3 for the published plans; empty when it matches."""
    failures = check_daemon_run(run)
    for result in results:
        failures += check_plan(result)
        if result.pending:
            failures.append(f"{result.case.plan_id or result.entry_id}: still pending in group {GOVERNOR_GROUP}")
    by_entry = {r.entry_id: r for r in results}
    for result in results:
        if result.case.decided:
            continue
        original = by_entry.get(result.decided_entry or "")
        if original is None or original.case.plan_id != result.case.plan_id:
            failures.append(f"{result.case.plan_id} at {result.entry_id}: decided entry {result.decided_entry!r}")
            continue
        if len(original.events) != 1:
            failures.append(f"{result.case.plan_id}: {len(original.events)} events after the duplicate, expected 1")
        # the republished plan rewrote nothing: the permit still carries the first plan's qty
        qty = original.permit.get("computed_qty") if original.permit is not None else None
        if qty != float(original.case.fields["qty"]):
            failures.append(
                f"{result.case.plan_id}: permit computed_qty {qty!r} after the duplicate, expected the first"
            )
    decided = [r for r in results if r.case.decided]
    if len(events) != len(decided):
        failures.append(f"{EVENTS_STREAM} holds {len(events)} events, expected {len(decided)} (one per decided plan)")
    if backlog not in {(0, 0), (0, None)}:
        failures.append(f"group {GOVERNOR_GROUP} pending/lag {backlog}, expected (0, 0)")
    failures += _check_governor_metrics(results, run.metrics_text)
    return failures


def _check_governor_metrics(results: Sequence[PlanResult], text: str) -> list[str]:
    cases = [r.case for r in results]
    permits = Counter((c.eff_action, c.reason) for c in cases if c.outcome == PERMIT)
    expected: dict[tuple[str, str], float] = {
        ("quantum_govern_outcomes_total", ""): sum(1 for c in cases if c.decided),
        ("p32_eff_apply_total", ""): sum(permits.values()),
        ("quantum_govern_already_decided_total", ""): sum(1 for c in cases if not c.decided),
        ("quantum_govern_dead_letter_total", 'reason="invalid_plan"'): sum(
            1 for c in cases if c.outcome == DEAD_LETTER
        ),
        **{
            ("p32_eff_apply_total", f'action="{action}",reason="{reason}"'): count
            for (action, reason), count in permits.items()
        },
    }
    failures = []
    for (name, labels), value in expected.items():
        got = metric_value(text, name, labels) if labels else metric_total(text, name)
        if got != value:
            series = f"{name}{{{labels}}}" if labels else f"sum of {name}"
            failures.append(f"{series} is {got}, expected {value}")
    return failures


def governor_section(server: RedisServer) -> list[str]:
    """Publish plans, run, print and check the governor, against the proposer's Redis; returns the failures."""
    print("=== Step 2: governor (docs: Governor decision order, Downsize hint), on the efficiency hashes above ===")
    cases = governor_cases()
    early = [case for case in cases if not case.late]
    late = [case for case in cases if case.late]
    client = server.client()
    try:
        entry_ids = publish_plans(client, early, time.time())
        print(f"published {len(early)} plans to {DEFAULT_PLANS_STREAM}; {len(late)} more once those are decided")
        print(
            f"running {GOVERNOR_MODULE} (P31_GOV_MODE=hint, GOV_CONSUMER={GOVERNOR_CONSUMER}) until all are decided ..."
        )
        run = run_governor(server, cases, entry_ids)
        # the late plans are missing from entry_ids when the governor never decided the early ones
        published = (early + late)[: len(entry_ids)]
        results, events = read_governor_results(client, published, entry_ids)
        backlog = group_backlog(client)
        dlq_length = int(client.xlen(DEAD_LETTER_STREAM))
    finally:
        client.close()
    print()
    print_governor_table(results)
    print(f"stream {EVENTS_STREAM}: {len(events)} events; {DEAD_LETTER_STREAM}: {dlq_length} entries")
    print(f"group {GOVERNOR_GROUP} on {DEFAULT_PLANS_STREAM}: pending {backlog[0]}, lag {backlog[1]}")
    print()
    print_daemon_run(run, GOVERNOR_METRICS)
    failures = check_governor(results, events, run, backlog)
    if len(results) < len(cases):
        failures.append(f"{len(cases) - len(results)} late plan(s) never published: the earlier ones were not decided")
    return failures


#: The operator's commands the demo closes with, on the data it leaves: the governor as a queue, one blocked plan, one
#: downsized plan, the dead letters.
OPERATOR_COMMANDS = (
    ("governor",),
    ("plan", "plan-btc-again"),
    ("plan", "plan-ldo-open"),
    ("dlq", "list"),
)


def operator_section(server: RedisServer) -> list[str]:
    """``p31ctl``'s governor commands on the demo's Redis, as an operator would run them; returns the failures."""
    print("=== What an operator sees: p31ctl on the demo's data ===")
    failures: list[str] = []
    for command in OPERATOR_COMMANDS:
        print(f"$ p31ctl {' '.join(command)}")
        done = subprocess.run(
            [sys.executable, "-m", "microservices.ops.cli", *command],
            env=daemon_environment(server.url, {}),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        print(done.stdout + done.stderr, end="")
        print()
        if done.returncode != 0:
            failures.append(f"p31ctl {' '.join(command)} exited {done.returncode}")
    return failures


# --- the demo -------------------------------------------------------------------------------------------------------


def main() -> int:
    started = time.monotonic()
    failures: list[str] = []
    with RedisServer() as server:
        failures += proposer_section(server)
        print()
        failures += governor_section(server)
        print()
        failures += operator_section(server)
    print()
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        print(f"demo FAILED ({len(failures)} problems) in {time.monotonic() - started:.1f}s")
        return 1
    print(
        "demo OK: every symbol and every plan came out as docs/P3.1_STEP1_STEP2_INTEGRATION.md says, in "
        f"{time.monotonic() - started:.1f}s"
    )
    return 0


def _terminate(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the daemon and the throwaway Redis are stopped on the way out."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
