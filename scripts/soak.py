"""Soak test of both daemons as real processes: is memory flat and are file descriptors steady over a long run?

What it does (not part of ``make test``; a measurement, so the exit status is 0 whatever the verdict, and 1 only when
the run itself failed: a daemon exited, or the work did not finish within ``--timeout``):

1. Starts a private ``redis-server`` on a free port (:class:`~microservices.devtools.redis_server.RedisServer`).
2. **Proposer**: seeds ``--symbols`` live targets (``quantum:allocation:target:{symbol}``; one in 50 with an unusable
   ``target_usd``) and efficiency hashes with varied readings (ok with scores across [0, 1], stale, low confidence,
   invalid, missing), then runs ``python -m microservices.allocation_target`` with ``LOOP_INTERVAL_SEC`` at
   ``--interval`` (default 0.001 s: the loops run back to back, as fast as the daemon can). A real process rather
   than ``Proposer.run_loop`` in this one, so what is measured is the daemon as deployed: its HTTP server being
   scraped, its metrics registry, its logging, its Redis connection. Loops are counted from
   ``p29_shadow_loops_total`` on ``/metrics``; every ``--sample-loops`` loops the process's RSS (``VmRSS`` of
   ``/proc/<pid>/status``) and open file descriptors (entries of ``/proc/<pid>/fd``) are printed, until ``--loops``.
3. **Governor**: runs ``python -m microservices.governor`` while a producer ``XADD``s ``--plans`` plans to
   ``quantum:stream:apply.plan``, pipelined ``--chunk`` a round trip, over ``--plan-symbols`` distinct symbols (so
   per-symbol metric series, gate keys and the symbol cap churn), with mixed actions (opening, partial and full
   closes, ``reduceOnly``), mostly ``EXECUTE`` with some ``HOLD`` and a few malformed plans (dead letters); a third
   of the symbols have an efficiency hash. The producer keeps at most ``--backlog`` plans undecided, so the stream
   does not hold the whole run at once. Decided plans are counted from ``quantum_govern_outcomes_total`` plus
   ``quantum_govern_already_decided_total``; every ``--sample-plans`` decided plans RSS and FDs are printed.
4. **Verdict**, per daemon: the warm-up is the first ``--warmup`` fraction (default 10 %) of the work; the baseline is
   the first sample taken at or after it. Memory is flat when the last sample's RSS exceeds the baseline's by less
   than ``--max-growth-mb`` (default 5 MB); descriptors are steady when the last sample has no more open than the
   baseline plus ``FD_SLACK`` (the scrape connection that may be open at the instant of a sample). Each check prints
   PASS or MISS with its numbers.

Defaults are the issue's: 10,000 symbols for 500 loops, 200,000 plans, samples every 50 loops and 20,000 plans.
``--symbols/--loops/--plans`` (and the sampling steps) scale it down, e.g. for the quick test that keeps it working.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from microservices.allocation_target.proposal import LIVE_TARGET_PREFIX, TARGET_FIELD
from microservices.core.efficiency import EFFICIENCY_KEY_PREFIX
from microservices.devtools.daemon_process import DaemonFailedError, DaemonProcess, http_get, metric_value
from microservices.devtools.procstats import MB, Check, Sample, sample, verdict
from microservices.devtools.redis_server import RedisServer

PROPOSER = "microservices.allocation_target"
GOVERNOR = "microservices.governor"
PLANS_STREAM = "quantum:stream:apply.plan"
#: How often the metrics are polled while waiting for the next sample, seconds.
POLL_SEC = 0.1


class RunFailedError(RuntimeError):
    """The soak could not be carried out (not a MISS: there is nothing to judge)."""


def print_sample(unit: str, s: Sample, started: float) -> None:
    print(f"  {unit} {s.work:>8}  rss {s.rss_bytes / MB:7.1f} MB  fds {s.fds:4}  t {time.monotonic() - started:6.1f} s",
          flush=True)  # fmt: skip


@contextmanager
def daemon(module: str, redis_url: str, log_dir: Path, extra: dict[str, str]) -> Iterator[DaemonProcess]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "REDIS_URL": redis_url,
        "METRICS_PORT": "0",
        **extra,
    }
    process = DaemonProcess(module, env, log_dir / f"{module.rsplit('.', 1)[-1]}.log")
    try:
        yield process
    finally:
        if process.running:
            process.terminate(timeout=10)
        process.close()


def sample_until(
    process: DaemonProcess,
    progress: Callable[[], int],
    *,
    total: int,
    step: int,
    unit: str,
    deadline: float,
    between_polls: Callable[[int], None] = lambda _done: None,
) -> list[Sample]:
    """Poll ``progress`` until it reaches ``total``, sampling the process at every multiple of ``step``."""
    started = time.monotonic()
    samples: list[Sample] = []
    next_at = step
    while True:
        if not process.running:
            raise RunFailedError(f"{process.module} exited {process.process.returncode}: {process.log()[-2000:]}")
        done = progress()
        if done >= next_at or done >= total:
            s = sample(process.process.pid, done)
            samples.append(s)
            print_sample(unit, s, started)
            next_at = (done // step + 1) * step
        if done >= total:
            return samples
        if time.monotonic() > deadline:
            raise RunFailedError(f"{process.module}: only {done} of {total} {unit} within the time allowed")
        between_polls(done)
        time.sleep(POLL_SEC)


# --- proposer ---------------------------------------------------------------------------------------------------------


def efficiency_fields(i: int, now: float) -> dict[str, str] | None:
    """Varied readings: mostly ok with scores across [0, 1]; some stale, low-confidence, invalid or missing."""
    kind = i % 20
    if kind == 0:
        return None  # missing_eff
    if kind == 1:
        return {"efficiency_score": "0.7", "confidence": "0.9", "ts": str(now - 7200)}  # stale_eff
    if kind == 2:
        return {"efficiency_score": "0.7", "confidence": "0.1", "ts": str(now)}  # low_conf
    if kind == 3:
        return {"efficiency_score": "nan", "confidence": "0.9", "ts": str(now)}  # invalid_eff
    return {"efficiency_score": f"{(i * 7919 % 1000) / 999:.4f}", "confidence": "0.9", "ts": str(now)}


def seed_proposer(client: redis.Redis, symbols: int) -> None:
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for i in range(symbols):
        symbol = f"S{i:06d}"
        target = "not-a-number" if i % 50 == 7 else f"{100 + i % 900}"
        pipe.hset(LIVE_TARGET_PREFIX + symbol, TARGET_FIELD, target)
        fields = efficiency_fields(i, now)
        if fields is not None:
            pipe.hset(EFFICIENCY_KEY_PREFIX + symbol, mapping=fields)  # type: ignore[arg-type]
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def soak_proposer(server: RedisServer, args: argparse.Namespace, log_dir: Path) -> list[Check]:
    client = server.client()
    seed_proposer(client, args.symbols)
    print(f"proposer: {args.symbols} symbols, {args.loops} loops, LOOP_INTERVAL_SEC={args.interval:g}", flush=True)
    extra = {"LOOP_INTERVAL_SEC": f"{args.interval:g}", "P31_STALE_SEC": "3600"}
    with daemon(PROPOSER, server.url, log_dir, extra) as process:
        started = time.monotonic()

        def loops() -> int:
            return int(process.metric("p29_shadow_loops_total") or 0)

        deadline = time.monotonic() + args.timeout
        samples = sample_until(process, loops, total=args.loops, step=args.sample_loops, unit="loop", deadline=deadline)
        took = time.monotonic() - started
        print(f"  {samples[-1].work} loops in {took:.1f} s ({samples[-1].work / took:.2f} loops/s)", flush=True)
    client.close()
    return verdict("proposer", samples, args.loops, args.warmup, args.max_growth_mb)


# --- governor ---------------------------------------------------------------------------------------------------------

ACTIONS = ("OPEN_LONG", "OPEN_SHORT", "PARTIAL_CLOSE_50", "FULL_CLOSE_PROPOSED", "CLOSE_LONG", "OPEN_LONG")


def plan_fields(n: int, symbols: int) -> dict[str, str]:
    """The ``n``-th plan: a spread of symbols, actions and decisions, and now and then a malformed one."""
    symbol = f"G{(n * 7919) % symbols:05d}"
    if n % 500 == 499:
        return {"symbol": symbol, "decision": "EXECUTE"}  # no plan_id: a dead letter
    fields = {
        "plan_id": f"soak-{n}",
        "symbol": symbol,
        "action": ACTIONS[n % len(ACTIONS)],
        "decision": "HOLD" if n % 10 == 3 else "EXECUTE",
        "side": "BUY" if n % 2 else "SELL",
        "qty": f"{1 + n % 17}",
        "kill_score": f"{(n % 10) / 10:.1f}",
        "timestamp": f"{time.time():.3f}",
    }
    if n % 13 == 0:
        fields["reduceOnly"] = "true"
    return fields


def seed_governor(client: redis.Redis, symbols: int) -> None:
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for i in range(0, symbols, 3):
        fields = efficiency_fields(i, now)
        if fields is not None:
            pipe.hset(EFFICIENCY_KEY_PREFIX + f"G{i:05d}", mapping=fields)  # type: ignore[arg-type]
    pipe.execute()


def decided_plans(metrics_text: str) -> int:
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("quantum_govern_outcomes_total{")
    )
    return int(total + (metric_value(metrics_text, "quantum_govern_already_decided_total") or 0))


def soak_governor(server: RedisServer, args: argparse.Namespace, log_dir: Path) -> list[Check]:
    client = server.client()
    client.flushall()
    seed_governor(client, args.plan_symbols)
    print(f"governor: {args.plans} plans over {args.plan_symbols} symbols, chunks of {args.chunk}", flush=True)
    published = 0

    def produce(decided: int) -> None:
        nonlocal published
        while published < args.plans and published - decided < args.backlog:
            pipe = client.pipeline(transaction=False)
            for n in range(published, min(published + args.chunk, args.plans)):
                pipe.xadd(PLANS_STREAM, plan_fields(n, args.plan_symbols))  # type: ignore[arg-type]
            published += len(pipe.execute())

    with daemon(GOVERNOR, server.url, log_dir, {"GOV_CONSUMER": "soak"}) as process:
        started = time.monotonic()

        def decided() -> int:
            return decided_plans(http_get(process.url("/metrics"))[1])

        samples = sample_until(
            process, decided, total=args.plans, step=args.sample_plans, unit="plan",
            deadline=time.monotonic() + args.timeout, between_polls=produce,
        )  # fmt: skip
        took = time.monotonic() - started
        print(f"  {samples[-1].work} plans decided in {took:.1f} s ({samples[-1].work / took:.0f} plans/s)", flush=True)
        metrics = http_get(process.url("/metrics"))[1]
        series = sum(1 for line in metrics.splitlines() if line.startswith("quantum_govern_allow_total{"))
        print(f"  per-symbol series at the end: quantum_govern_allow_total x{series}", flush=True)
    client.close()
    return verdict("governor", samples, args.plans, args.warmup, args.max_growth_mb)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--symbols", type=int, default=10_000, help="proposer: live targets (default 10000)")
    parser.add_argument("--loops", type=int, default=500, help="proposer: loops to run (default 500)")
    parser.add_argument("--sample-loops", type=int, default=50, help="proposer: sample every N loops (default 50)")
    parser.add_argument("--interval", type=float, default=0.001, help="proposer: LOOP_INTERVAL_SEC (default 0.001)")
    parser.add_argument("--plans", type=int, default=200_000, help="governor: plans to publish (default 200000)")
    parser.add_argument("--plan-symbols", type=int, default=5_000, help="governor: distinct symbols (default 5000)")
    parser.add_argument("--sample-plans", type=int, default=20_000, help="governor: sample every N plans")
    parser.add_argument("--chunk", type=int, default=1_000, help="governor: plans per pipelined XADD round trip")
    parser.add_argument("--backlog", type=int, default=20_000, help="governor: most plans published, not decided")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the work that is warm-up (0.1)")
    parser.add_argument("--max-growth-mb", type=float, default=5.0, help="RSS growth allowed after warm-up (5)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds each daemon's run may take")
    args = parser.parse_args(argv)
    for name in ("symbols", "loops", "sample_loops", "plans", "plan_symbols", "sample_plans", "chunk", "backlog"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="p31-soak-") as tmp, RedisServer() as server:
        try:
            checks += soak_proposer(server, args, Path(tmp))
            checks += soak_governor(server, args, Path(tmp))
        except (RunFailedError, DaemonFailedError) as exc:
            print(f"soak run failed: {exc}", file=sys.stderr)
            return 1
    print("verdict:")
    for check in checks:
        print("  " + check.line())
    passed = sum(c.passed for c in checks)
    print(f"{passed} of {len(checks)} checks PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
