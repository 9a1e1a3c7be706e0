"""SIGTERM and SIGINT at uniformly random moments of a daemon's life, checked each time (issue 10, SPEC §5).

A **trial** starts one daemon as a real process on a private Redis, waits until the process catches SIGTERM (the bit
in ``SigCgt`` of ``/proc/<pid>/status``: before it, no code of ours runs, and the signal ends the interpreter, which
systemd counts as a clean stop), sleeps a uniformly random delay in ``[0, life]`` and sends SIGTERM or SIGINT. The
daemon must exit 0 within 5 s. ``life`` spans what the daemon does in that time: loading its modules, serving
metrics, connecting, creating the consumer group, re-reading its own pending plans, claiming a dead consumer's,
deciding batches (with ``WATCH`` retries when a contender touches a watched key), blocking reads, and backoff while
Redis refuses it; and, as under a PID 1 too busy to read, a ``NOTIFY_SOCKET`` whose queue is full (which stalled the
daemons for good before issue 10's fix). Each trial draws which of those it sets up.

Then **nothing is lost**: for the governor, a ``--once`` run under the same consumer name decides whatever is left,
and every entry of the stream must have exactly one outcome (:func:`~microservices.devtools.plans.outcome_violations`);
for the proposer, every shadow hash it wrote has its expiry (hash and ``EXPIRE`` are one transaction) and no live
target changed.

:func:`plan_trials` is pure (the schedule from a seed); :func:`run_trial` does the I/O; :func:`summary` prints.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import redis

from microservices.allocation_target.proposal import LIVE_TARGET_PREFIX, PROPOSED_PREFIX, TARGET_FIELD
from microservices.core.efficiency import EFFICIENCY_KEY_PREFIX
from microservices.devtools.daemon_process import ROOT, daemon_env
from microservices.devtools.patient_clients import PatientRedis, ProducerStoppedError
from microservices.devtools.plans import GROUP, PLANS, outcome_violations, publish, stream_plan_set
from microservices.devtools.redis_server import RedisServer

GOVERNOR = "microservices.governor"
PROPOSER = "microservices.allocation_target"
#: SPEC §5: SIGTERM/SIGINT end the daemon with exit 0 within this many seconds.
EXIT_WITHIN_SEC = 5.0
#: The consumer name of the governor under test (and of the ``--once`` run that finishes its work).
CONSUMER = "stress"
#: The daemon under test connects as this ACL user, which an outage switches off; everything else is the default user.
DAEMON_USER, DAEMON_PASSWORD = "stressed", "stress-password"
#: What a governor trial may set up before or during the daemon's life.
GOVERNOR_SETUPS = ("pending", "claim", "contention", "outage", "trickle", "notify-full")
PROPOSER_SETUPS = ("outage", "slow-loop", "notify-full")


@dataclass(frozen=True)
class Trial:
    index: int
    module: str
    signal: str
    #: Seconds from the moment the process catches SIGTERM to the signal.
    delay_sec: float
    setups: tuple[str, ...]
    seed: int

    @property
    def daemon(self) -> str:
        return "governor" if self.module == GOVERNOR else "proposer"

    def describe(self) -> str:
        setups = ",".join(self.setups) or "-"
        return f"#{self.index} {self.daemon} {self.signal} at {self.delay_sec:.3f}s setups={setups} seed={self.seed}"


@dataclass(frozen=True)
class TrialResult:
    trial: Trial
    #: None when the daemon did not exit within EXIT_WITHIN_SEC (it was then killed).
    exit_code: int | None
    exit_sec: float
    problems: tuple[str, ...]
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def plan_trials(rng: random.Random, count: int, *, life_sec: float, governor_share: float = 0.7) -> list[Trial]:
    """``count`` trials: about ``governor_share`` of them the governor's, half SIGTERM and half SIGINT, each with a
    delay uniform in ``[0, life_sec]`` and each setup drawn with probability one half."""
    trials = []
    for index in range(count):
        module = GOVERNOR if rng.random() < governor_share else PROPOSER
        choices = GOVERNOR_SETUPS if module == GOVERNOR else PROPOSER_SETUPS
        trials.append(
            Trial(
                index=index,
                module=module,
                signal=rng.choice(["SIGTERM", "SIGINT"]),
                delay_sec=rng.uniform(0.0, life_sec),
                setups=tuple(s for s in choices if rng.random() < 0.5),
                seed=rng.randrange(2**31),
            )
        )
    return trials


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (``SigCgt`` in ``/proc/<pid>/status``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


# --- what a trial sets up ------------------------------------------------------------------------------------------


def _prepare_governor(client: redis.Redis, trial: Trial, rng: random.Random) -> None:
    """A burst of plans over many symbols, and the consumer group as a previous life left it."""
    publish(client, 300, symbols=150, seed=trial.seed, prefix=f"t{trial.index}-")
    if {"pending", "claim"} & set(trial.setups):
        client.xgroup_create(PLANS, GROUP, id="0")
    if "pending" in trial.setups:  # read by this consumer in a life that ended before deciding them
        client.xreadgroup(GROUP, CONSUMER, {PLANS: ">"}, count=rng.randint(1, 120))
    if "claim" in trial.setups:  # read by a replica that died
        client.xreadgroup(GROUP, "dead-replica", {PLANS: ">"}, count=rng.randint(1, 120))


def _prepare_proposer(client: redis.Redis, trial: Trial) -> None:
    symbols = 3000 if "slow-loop" in trial.setups else 400
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for i in range(symbols):
        pipe.hset(f"{LIVE_TARGET_PREFIX}S{i}", TARGET_FIELD, str(100 + i))
        score = f"{(i * 37 % 100) / 100:.2f}"
        pipe.hset(f"{EFFICIENCY_KEY_PREFIX}S{i}", mapping={"efficiency_score": score, "confidence": "0.9", "ts": now})
    pipe.execute()


def _as_daemon(url: str) -> str:
    return url.replace("redis://", f"redis://{DAEMON_USER}:{DAEMON_PASSWORD}@", 1)


def _daemon_settings(trial: Trial) -> dict[str, str]:
    common = {"REDIS_BACKOFF_MAX_SEC": "1"}
    if trial.module == PROPOSER:
        return {**common, "LOOP_INTERVAL_SEC": "0.05" if "slow-loop" in trial.setups else "0.3"}
    return {
        **common,
        "GOV_CONSUMER": CONSUMER,
        "GOV_BLOCK_MS": "1000",
        "GOV_CLAIM_IDLE_MS": "200",
        "GOV_EVENTS_MAXLEN": "100000000",
        "GOV_SYMBOL_COOLDOWN_SECONDS": "0",  # every opening plan reaches the permit path
    }


class _Disturbance:
    """What runs beside the daemon during a trial: a trickle of new plans, a contender that touches the kill switch
    (a watched key: the governor's EXEC is refused and the batch decided again), an outage in which Redis refuses the
    daemon (its ACL user switched off, its connections killed) so that it backs off while the others carry on."""

    def __init__(self, server: RedisServer, trial: Trial, rng: random.Random) -> None:
        self._server = server
        self._trial = trial
        self._outage_at = rng.uniform(0.0, trial.delay_sec + 0.5)
        self._outage_for = rng.uniform(0.3, 1.5)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(name,), daemon=True) for name in trial.setups
                         if name in ("trickle", "contention", "outage")]  # fmt: skip
        self.error: BaseException | None = None

    def __enter__(self) -> _Disturbance:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self, name: str) -> None:
        # the trickle and the contender ride out the outage as patient producers do; the outage has a plain client
        client = self._server.client() if name == "outage" else PatientRedis(self._stop, port=self._server.port)
        try:
            if name == "trickle":
                publish(client, 10**6, symbols=150, seed=self._trial.seed + 1, prefix=f"t{self._trial.index}-late-",
                        pause=0.005, stop=self._stop)  # fmt: skip
            elif name == "contention":
                while not self._stop.wait(0.02):
                    client.set("quantum:kill", "0")  # disengaged either way; only the write matters
            elif name == "outage" and not self._stop.wait(self._outage_at):
                client.acl_setuser(DAEMON_USER, enabled=False)  # its password refused from now on
                client.client_kill_filter(user=DAEMON_USER)
                self._stop.wait(self._outage_for)
                client.acl_setuser(DAEMON_USER, enabled=True)
        except ProducerStoppedError:
            pass
        except BaseException as exc:  # reported by the trial: a disturbance that died proves nothing
            self.error = RuntimeError(f"{name}: {type(exc).__name__}: {exc}")
        finally:
            client.close()


# --- a trial -------------------------------------------------------------------------------------------------------


@contextmanager
def _full_notify_socket(path: Path) -> Iterator[str]:
    """A ``NOTIFY_SOCKET`` bound but never read, its queue already full: systemd's socket while PID 1 is busy."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        with suppress(BlockingIOError):
            while True:  # a socket per datagram, as the daemons send: one sender's own buffer would fill first
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
                    sender.sendto(b"WATCHDOG=1", socket.MSG_DONTWAIT, str(path))
        yield str(path)


@contextmanager
def _spawned(module: str, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", module], env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=log, cwd=ROOT)  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_trial(trial: Trial, work_dir: Path) -> TrialResult:
    """One trial on a Redis of its own (see the module docstring)."""
    rng = random.Random(trial.seed)
    log_path = work_dir / f"trial-{trial.index}-{trial.daemon}.log"
    with RedisServer() as server:
        client = server.client()
        if trial.module == GOVERNOR:
            _prepare_governor(client, trial, rng)
        else:
            _prepare_proposer(client, trial)
        live_before = _live_targets(client)
        client.acl_setuser(DAEMON_USER, enabled=True, passwords=[f"+{DAEMON_PASSWORD}"], keys=["*"], channels=["*"],
                           commands=["+@all"])  # fmt: skip
        env = daemon_env(_as_daemon(server.url), _daemon_settings(trial))
        problems: list[str] = []
        with ExitStack() as stack:
            if "notify-full" in trial.setups:
                env["NOTIFY_SOCKET"] = stack.enter_context(_full_notify_socket(work_dir / f"notify-{trial.index}"))
            disturbance = stack.enter_context(_Disturbance(server, trial, rng))
            process = stack.enter_context(_spawned(trial.module, env, log_path))
            deadline = time.monotonic() + 10
            while not catches_sigterm(process.pid):
                if process.poll() is not None or time.monotonic() > deadline:
                    return TrialResult(trial, process.poll(), 0.0, ("never caught SIGTERM",), _tail(log_path))
                time.sleep(0.001)
            time.sleep(trial.delay_sec)
            sent = time.monotonic()
            process.send_signal(signal.Signals[trial.signal])
            try:
                exit_code: int | None = process.wait(timeout=EXIT_WITHIN_SEC)
            except subprocess.TimeoutExpired:
                exit_code = None
                problems.append(f"still running {EXIT_WITHIN_SEC:g}s after {trial.signal}")
            exit_sec = time.monotonic() - sent
        if exit_code not in (0, None):
            problems.append(f"exit status {exit_code} after {trial.signal}, not 0")
        if disturbance.error is not None:
            problems.append(f"the disturbance failed: {disturbance.error}")
        if trial.module == GOVERNOR:
            problems += _governor_lost(server, client, work_dir / f"trial-{trial.index}-drain.log")
        else:
            problems += _proposer_lost(client, live_before)
        client.close()
    return TrialResult(trial, exit_code, exit_sec, tuple(problems), _tail(log_path) if problems else "")


def _governor_lost(server: RedisServer, client: redis.Redis, log_path: Path) -> list[str]:
    """What is left is decided by a ``--once`` run under the same name; then every entry must have one outcome."""
    env = daemon_env(server.url, {"GOV_CONSUMER": CONSUMER, "GOV_CLAIM_IDLE_MS": "1", "GOV_EVENTS_MAXLEN": "100000000",
                                  "GOV_SYMBOL_COOLDOWN_SECONDS": "0"})  # fmt: skip
    drained = subprocess.run([sys.executable, "-m", GOVERNOR, "--once"], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    if drained.returncode != 0:
        log_path.write_text(drained.stderr)
        return [f"the --once run that finishes the work exited {drained.returncode}"]
    problems, _kinds = outcome_violations(client, stream_plan_set(client))
    return problems


def _live_targets(client: redis.Redis) -> dict[bytes, dict[bytes, bytes]]:
    keys = [k for k in client.scan_iter(match=LIVE_TARGET_PREFIX + "*", count=1000) if k.count(b":") == 3]
    return {key: client.hgetall(key) for key in keys}  # type: ignore[misc]


def _proposer_lost(client: redis.Redis, live_before: dict[bytes, dict[bytes, bytes]]) -> list[str]:
    problems = []
    without_expiry = [k for k in client.scan_iter(match=PROPOSED_PREFIX + "*", count=1000) if client.ttl(k) < 0]
    if without_expiry:
        problems.append(f"{len(without_expiry)} shadow hashes without expiry, e.g. {without_expiry[:3]}")
    if _live_targets(client) != live_before:
        problems.append("a live target changed")
    return problems


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# --- a run ---------------------------------------------------------------------------------------------------------


def run_trials(trials: Sequence[Trial], work_dir: Path, *, jobs: int, echo: bool = False) -> list[TrialResult]:
    """Every trial, ``jobs`` at a time; each failure printed as it happens when ``echo``."""

    def one(trial: Trial) -> TrialResult:
        result = run_trial(trial, work_dir)
        if echo and not result.ok:
            print(f"FAIL {trial.describe()}: {'; '.join(result.problems)}\n{result.log_tail}", flush=True)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, trials))


def summary(results: Sequence[TrialResult]) -> list[str]:
    """The figures of a run, one line each: trials by daemon and signal, setups covered, exit times, failures."""
    by_kind = Counter(f"{r.trial.daemon} {r.trial.signal}" for r in results)
    setups = Counter(s for r in results for s in r.trial.setups)
    times = sorted(r.exit_sec for r in results if r.exit_code is not None)
    failed = [r for r in results if not r.ok]
    lines = [
        f"trials: {len(results)} ({', '.join(f'{k}: {n}' for k, n in sorted(by_kind.items()))})",
        f"setups: {', '.join(f'{k}: {n}' for k, n in sorted(setups.items()))}",
    ]
    if times:
        lines.append(f"exit after the signal: median {times[len(times) // 2]:.3f}s, max {times[-1]:.3f}s "
                     f"(limit {EXIT_WITHIN_SEC:g}s)")  # fmt: skip
    lines.append(f"failures: {len(failed)}")
    lines += [f"  {r.trial.describe()}: {'; '.join(r.problems)}" for r in failed]
    return lines
