"""The chaos run (issue 10): both daemons as real processes under load while many faults land together, and every
guarantee of the SPEC checked while it runs and once it is quiet again.

The run, all on loopback (inside a network namespace of its own when it has one):

1. **Set-up.** One redis-server with AOF (``appendfsync always``) and a password; a latency proxy in front of it,
   which is what the daemons' ``REDIS_URL`` names (the run's own clients talk to Redis directly); the proposer and
   ``governors`` governor replicas under a :class:`~microservices.devtools.supervisor.Supervisor` that restarts any
   of them half a second after it dies.
2. **Chaos**, ``minutes`` long: plans published at a varying rate, the market moving, and the seeded schedule of
   :mod:`~microservices.devtools.faults` landing on all of it, several faults at once; the
   :class:`~microservices.devtools.chaos_observer.ChaosObserver` checks permits, proposals and stream lengths as it
   goes.
3. **Recovery.** Once the last fault is over, Redis is restored (writable, no memory limit, the current password)
   and the network healed; each daemon must report a new successful loop on /healthz within its interval plus the
   backoff cap (plus start-up time for one that was restarting).
4. **Quiet checks.** The load stops; every plan must be decided. Then a last batch of plans is published and the
   governors' counters must move by exactly what Redis holds for it (no process restarts in between, so each
   counter covers it whole); each governor's pending gauge must be 0; the proposer's gauges must equal the live
   targets and shadow hashes; every entry of the stream exactly one outcome, no plan_id two permits, every write
   Redis acknowledged still there, the live targets as their writer left them.
5. **Shutdown**: SIGTERM to every daemon, each checked like every SIGTERM of the run (exit 0 within 5 s); then the
   memory and descriptors of every process life long enough to judge.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from microservices.allocation_target.proposal import LIVE_TARGET_PREFIX
from microservices.devtools.chaos_checks import (
    final_batch_violations,
    measure_recovery,
    pending_gauge_violations,
    proposer_gauge_violations,
    wait_until,
)
from microservices.devtools.chaos_load import MarketChurn, PlanLoad
from microservices.devtools.chaos_observer import ChaosObserver
from microservices.devtools.chaos_summary import Summary
from microservices.devtools.faults import FaultKind, FaultRunner, plan_faults
from microservices.devtools.faulty_redis import FaultyRedis, reserve_closed_port
from microservices.devtools.invariants import (
    MultiplierBounds,
    Recovery,
    ResourcePolicy,
    exit_violations,
    live_target_violations,
    lost_write_violations,
    recovery_violations,
    resource_checks,
    stop_violations,
)
from microservices.devtools.latency_proxy import LatencyProxy
from microservices.devtools.plans import PLANS, outcome_violations, settled, stream_plan_set
from microservices.devtools.private_network import PacketLoss, inside, listen_port
from microservices.devtools.procstats import Check
from microservices.devtools.redis_server import free_port
from microservices.devtools.rotating_password import RotatingPassword
from microservices.devtools.supervisor import DaemonSpec, Slot, Supervisor

PROPOSER_MODULE = "microservices.allocation_target"
GOVERNOR_MODULE = "microservices.governor"
PROPOSALS = "quantum:stream:allocation.target.proposed"
LOOP_INTERVAL_SEC = 0.5
BACKOFF_MAX_SEC = 1.0
GOV_BLOCK_MS = 200
#: Scores older than this are stale: short, so that readings age into ``stale_eff`` during a run.
STALE_SEC = 30
BOUNDS = MultiplierBounds(min_mult=0.6, max_mult=1.4, base=1.0, scale=1.6)  # the clamp is reached at both ends
#: systemd's ``RestartSec=``.
RESTART_DELAY_SEC = 0.5
#: Plans flow this long before the first fault.
WARMUP_SEC = 3.0
#: Recovery bounds on top of interval + backoff cap: scheduling on a busy two-CPU machine, and for a daemon that was
#: restarting when the last fault cleared, its restart delay and start-up (a Python process: imports, then serving).
SCHEDULING_SLACK_SEC = 1.5
START_SLACK_SEC = 3.0
#: How long the run waits for things that must happen (every plan decided, counters caught up).
SETTLE_TIMEOUT_SEC = 90.0
FINAL_PLANS = 200
#: Block records live BLOCK_TTL_SEC (3600 s), and the final check wants each block event's record: a run whose first
#: blocks would have expired before its end cannot be judged by it.
MAX_MINUTES = 50.0
RESOURCES = ResourcePolicy(min_life_sec=30.0, warmup_sec=10.0, max_growth_mb=20.0, fd_slack=4)


@dataclass(frozen=True)
class ChaosConfig:
    seed: int
    minutes: float
    governors: int = 3
    symbols: int = 12
    faults_per_minute: float = 20.0
    max_rate: float = 150.0
    #: None: packet loss is available (inside the private namespace); else why it is not.
    no_loss_because: str | None = None
    #: Whether a missing namespace is a failure (it is, unless the caller asked to run without network faults).
    loss_required: bool = True
    keep_logs: bool = False


def say(line: str) -> None:
    print(line, flush=True)


def daemon_specs(config: ChaosConfig) -> list[DaemonSpec]:
    """The daemons and their settings: short intervals, block and backoff so faults show and heal fast; the events
    stream never trimmed (every outcome stays countable); permits that outlive the run (checked at the end);
    ``GOV_MAX_DELIVERIES`` out of reach of the kills (a plan in hand at many deaths would rightly become a
    max_deliveries dead letter, which is not what is judged here, nor the run's outcome to predict)."""
    common = {"REDIS_BACKOFF_MAX_SEC": f"{BACKOFF_MAX_SEC:g}"}
    proposer = {
        **common,
        "LOOP_INTERVAL_SEC": f"{LOOP_INTERVAL_SEC:g}",
        "P31_STALE_SEC": str(STALE_SEC),
        "P31_MIN_MULT": f"{BOUNDS.min_mult:g}",
        "P31_MAX_MULT": f"{BOUNDS.max_mult:g}",
        "P31_BASE": f"{BOUNDS.base:g}",
        "P31_SCALE": f"{BOUNDS.scale:g}",
        "PROPOSE_STREAM_MAXLEN": "100000000",
    }
    governor = {
        **common,
        "GOV_BLOCK_MS": str(GOV_BLOCK_MS),
        "GOV_CLAIM_IDLE_MS": "1000",
        "GOV_EVENTS_MAXLEN": "100000000",
        "GOV_MAX_DELIVERIES": "1000",
        "PERMIT_TTL_SEC": str(int(config.minutes * 60 + 900)),
        "P31_EFF_TTL_SEC": str(STALE_SEC),
        "GOV_SYMBOL_COOLDOWN_SECONDS": "2",
        "GOV_MAX_EXEC_PER_5MIN": "30",
        "GOV_MAX_EXEC_PER_HOUR": "200",
    }
    specs = [DaemonSpec("proposer", PROPOSER_MODULE, proposer)]
    specs += [
        DaemonSpec(f"governor-{i}", GOVERNOR_MODULE, {**governor, "GOV_CONSUMER": f"chaos-gov-{i}"})
        for i in range(1, config.governors + 1)
    ]
    return specs


def recovery_bound(slot: Slot, restarting: bool) -> float:
    """SPEC §5: one interval (the governor's is its blocking read) plus the backoff cap, plus scheduling slack; for a
    daemon that was restarting when the last fault cleared, its restart delay and start-up too."""
    interval = LOOP_INTERVAL_SEC if slot.spec.module == PROPOSER_MODULE else GOV_BLOCK_MS / 1000
    extra = RESTART_DELAY_SEC + START_SLACK_SEC if restarting else 0.0
    return interval + BACKOFF_MAX_SEC + SCHEDULING_SLACK_SEC + extra


def fault_kinds(config: ChaosConfig) -> list[FaultKind]:
    return [kind for kind in FaultKind if not (kind is FaultKind.LOSS and config.no_loss_because is not None)]


# --- the run ----------------------------------------------------------------------------------------------------------


@dataclass
class Evidence:
    violations: list[str] = field(default_factory=list)
    recovery: list[Recovery] = field(default_factory=list)

    def add(self, problems: list[str]) -> None:
        for problem in problems:
            self.violations.append(problem)
            say(f"VIOLATION: {problem}")


@dataclass(frozen=True)
class Rig:
    """What a run is made of once it is set up."""

    faulty: FaultyRedis
    proxy: LatencyProxy
    loss: PacketLoss | None
    client: redis.Redis
    supervisor: Supervisor
    churn: MarketChurn
    load: PlanLoad
    observer: ChaosObserver
    runner: FaultRunner

    @property
    def slots(self) -> list[Slot]:
        return list(self.supervisor.slots.values())

    @property
    def governors(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.spec.module == GOVERNOR_MODULE]


class ChaosRun:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.log_dir = Path(tempfile.mkdtemp(prefix="p31-chaos-"))
        self.evidence = Evidence()
        self.password = RotatingPassword(f"{self.rng.getrandbits(96):024x}")

    def run(self) -> Summary:
        config = self.config
        say(f"chaos: seed {config.seed}, {config.minutes:g} minutes, {config.governors} governors, "
            f"{config.symbols} symbols; logs in {self.log_dir}")  # fmt: skip
        if config.no_loss_because is not None:
            say(f"chaos: NO PACKET LOSS: {config.no_loss_because}")
            if config.loss_required:
                self.evidence.add([f"network faults could not be set up: {config.no_loss_because}"])
        with contextlib.ExitStack() as stack:
            rig = self._set_up(stack)
            started = time.monotonic()
            self._chaos(rig)
            say(f"chaos: t={time.monotonic() - started:.1f}s every fault over, Redis restored; watching the recovery")
            self.evidence.recovery = measure_recovery(rig.slots, recovery_bound)
            kinds = self._quiet_checks(rig)
            checks = self._shut_down(rig)
            summary = self._summary(rig, kinds, checks)
        if not summary.violations and not config.keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        return summary

    def _set_up(self, stack: contextlib.ExitStack) -> Rig:
        """Redis, the proxy, the market, the daemons (running once this returns), the load, the observer, the fault
        schedule: each given back by ``stack`` however the run ends."""
        config, rng = self.config, self.rng
        in_namespace = inside()
        closed = stack.enter_context(reserve_closed_port(listen_port(2) if in_namespace else 0))
        redis_port = listen_port(0) if in_namespace else free_port()
        faulty = stack.enter_context(FaultyRedis(redis_port, self.password, closed.getsockname()[1]))
        proxy = stack.enter_context(LatencyProxy(redis_port, listen_port(1) if in_namespace else 0))
        loss = PacketLoss(proxy.port) if config.no_loss_because is None else None
        if loss is not None:
            stack.callback(loss.clear)
        client = faulty.client(socket_timeout=10)
        stack.callback(client.close)
        churn = MarketChurn(
            faulty.client(socket_timeout=2), seed=rng.randrange(2**32), symbols=config.symbols, stale_sec=STALE_SEC
        )
        churn.seed()
        supervisor = Supervisor(
            daemon_specs(config), redis_port=proxy.port, password=self.password, log_dir=self.log_dir,
            restart_delay=RESTART_DELAY_SEC,
        )  # fmt: skip
        stack.callback(supervisor.close)
        supervisor.start()
        faults = plan_faults(
            rng, start=WARMUP_SEC, end=max(WARMUP_SEC, config.minutes * 60),
            daemons=list(supervisor.slots), kinds=fault_kinds(config), per_minute=config.faults_per_minute,
        )  # fmt: skip
        say(f"chaos: {len(faults)} faults scheduled: {dict(Counter(f.kind.value for f in faults))}")
        load = PlanLoad(
            faulty.port, self.password, seed=rng.randrange(2**32), symbols=config.symbols, max_rate=config.max_rate
        )
        observer = ChaosObserver(faulty.client(socket_timeout=5), proposals_stream=PROPOSALS, bounds=BOUNDS, say=say)
        runner = FaultRunner(faults, supervisor=supervisor, redis=faulty, proxy=proxy, loss=loss, say=say)
        stack.callback(runner.abort)
        return Rig(faulty, proxy, loss, client, supervisor, churn, load, observer, runner)

    def _chaos(self, rig: Rig) -> None:
        """The load and the faults for ``minutes``; then, once the last fault is over, Redis and the network healed."""
        started = time.monotonic()
        rig.load.start()
        rig.churn.start()
        rig.observer.start()
        rig.runner.start()
        time.sleep(max(0.0, started + self.config.minutes * 60 - time.monotonic()))
        rig.runner.join()  # the last faults run to their end
        rig.faulty.restore()
        rig.proxy.delay_sec = 0.0
        if rig.loss is not None:
            rig.loss.clear()

    def _quiet_checks(self, rig: Rig) -> Counter[str]:
        """The load stopped, every plan decided, then the checks that need a quiet Redis; the events by kind."""
        evidence, client = self.evidence, rig.client
        rig.load.stop()
        rig.churn.stop()
        if not wait_until(lambda: settled(client), SETTLE_TIMEOUT_SEC, every=0.2):
            evidence.add([f"plans still undecided {SETTLE_TIMEOUT_SEC:g} s after the load stopped"])
        lives_before = {slot.name: slot.life.number if slot.life else None for slot in rig.slots}
        final = {"plans": FINAL_PLANS, "symbols": self.config.symbols, "seed": self.rng.randrange(2**32)}
        evidence.add(final_batch_violations(client, rig.governors, **final, timeout=SETTLE_TIMEOUT_SEC))
        evidence.add(pending_gauge_violations(rig.governors))
        evidence.add(proposer_gauge_violations(client, rig.supervisor.slots["proposer"], LOOP_INTERVAL_SEC))
        if {slot.name: slot.life.number if slot.life else None for slot in rig.slots} != lives_before:
            evidence.add(["a daemon restarted during the quiet checks: their counters do not cover them"])
        rig.observer.stop()
        rig.observer.final_pass()
        published = stream_plan_set(client)
        problems, kinds = outcome_violations(client, published)
        evidence.add(problems)
        evidence.add(lost_write_violations("plans", rig.load.client.accepted, set(published.entries)))
        written = {name: fields for name, fields in rig.churn.written.items() if name not in rig.churn.unsure}
        held = {name: self._hash(client, LIVE_TARGET_PREFIX + name) for name in written}
        evidence.add(live_target_violations(written, held))
        return kinds

    def _shut_down(self, rig: Rig) -> list[Check]:
        """SIGTERM to every daemon; then the evidence gathered all along is judged."""
        evidence, supervisor = self.evidence, rig.supervisor
        supervisor.shutdown()
        evidence.add(rig.observer.violations)
        evidence.add(stop_violations(supervisor.stops))
        evidence.add(exit_violations(supervisor.exits))
        checks = resource_checks(supervisor.lives, RESOURCES)
        evidence.add([check.line() for check in checks if not check.passed])
        evidence.add(recovery_violations(evidence.recovery))
        evidence.add([f"harness: a fault could not be carried out: {e}" for e in rig.runner.errors])
        return checks

    def _summary(self, rig: Rig, kinds: Counter[str], checks: list[Check]) -> Summary:
        return Summary(
            seed=self.config.seed,
            minutes=self.config.minutes,
            faults=dict(rig.runner.injected),
            faults_given_up=dict(rig.runner.given_up),
            plans=int(rig.client.xlen(PLANS)),
            outcomes=dict(kinds),
            proposals=int(rig.client.xlen(PROPOSALS)),
            lives=len(rig.supervisor.lives),
            sigterms=len(rig.supervisor.stops),
            resource_rule=f"lives of {RESOURCES.min_life_sec:g} s or more, after {RESOURCES.warmup_sec:g} s of warm-up",
            resource_lines=tuple(check.line() for check in checks),
            recovery_lines=tuple(
                f"{r.daemon}: {'never' if r.seconds is None else f'{r.seconds:.2f} s'} (bound {r.bound_sec:.1f} s"
                f"{', restarting' if r.restarting else ''})"
                for r in self.evidence.recovery
            ),
            violations=tuple(self.evidence.violations),
            log_dir=str(self.log_dir),
        )

    @staticmethod
    def _hash(client: redis.Redis, key: str) -> dict[str, str]:
        raw: Any = client.hgetall(key)
        return {k.decode(): v.decode() for k, v in raw.items()}


def run(config: ChaosConfig) -> Summary:
    summary = ChaosRun(config).run()
    for line in summary.lines():
        say(line)
    say("summary-json: " + summary.as_json())
    return summary
