"""``make demo``: the shadow allocation proposer (SPEC §2) run for real against a throwaway Redis.

It seeds about twenty symbols whose efficiency hashes between them hit every reason of SPEC §1, runs the real daemon
(``python -m microservices.allocation_target``) as a subprocess for a few loops, reads back the shadow hashes it wrote,
prints them as a table with the daemon's /metrics, /healthz and log lines, and checks its own outcome: every symbol must
come out with the reason it was seeded for, else the demo prints FAIL and exits 1.

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


# --- the demo -------------------------------------------------------------------------------------------------------


def proposer_section(server: RedisServer) -> list[str]:
    """Seed, run, print and check the proposer; returns the failures."""
    print("=== Step 1: allocation-target shadow proposer (SPEC §1, §2) ===")
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


def main() -> int:
    started = time.monotonic()
    failures: list[str] = []
    with RedisServer() as server:
        failures += proposer_section(server)
    print()
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        print(f"demo FAILED ({len(failures)} problems) in {time.monotonic() - started:.1f}s")
        return 1
    print(f"demo OK: every symbol came out as SPEC §1/§2 says, in {time.monotonic() - started:.1f}s")
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
