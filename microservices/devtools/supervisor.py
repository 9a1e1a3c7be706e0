"""The daemons of a chaos run as systemd keeps them: restarted a moment after they die, whatever killed them.

Each daemon is a :class:`Slot`: one process at a time (a *life*), started with the run's current Redis password, its
log in a file of its own. A watcher thread per slot notices a death and starts the next life after
``restart_delay`` (``RestartSec=``). Whoever acts on a slot (a fault, a password rotation, the final shutdown) holds
its lock, so one process never meets two of them at once and the watcher never restarts it under their hands.

What happens is kept as evidence for :mod:`microservices.devtools.invariants`: every SIGTERM's exit status and time,
every death nobody asked for, every life with its RSS/FD samples.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from microservices.devtools.daemon_process import DaemonFailedError, DaemonProcess, daemon_env
from microservices.devtools.invariants import STOP_LIMIT_SEC, LifeRecord, StopRecord, UnexpectedExit
from microservices.devtools.procstats import Sample, sample
from microservices.devtools.rotating_password import RotatingPassword

#: How often the watchers look for a dead process.
WATCH_EVERY_SEC = 0.05
#: How often each live process's RSS and open FDs are sampled.
SAMPLE_EVERY_SEC = 2.0
#: Python's fault handler in every daemon: a process that ignores SIGTERM past its limit is sent SIGABRT, and writes
#: the stack of each of its threads to its log before it dies, which says where it hung.
DIAGNOSTICS = {"PYTHONFAULTHANDLER": "1"}
ABORT_WAIT_SEC = 2.0


def abort_with_stacks(process: DaemonProcess) -> None:
    """SIGABRT (the fault handler dumps every thread's stack to the log), then SIGKILL if it is still there."""
    process.process.send_signal(signal.SIGABRT)
    try:
        process.process.wait(timeout=ABORT_WAIT_SEC)
    except subprocess.TimeoutExpired:
        process.process.kill()
        process.process.wait()


@dataclass(frozen=True)
class DaemonSpec:
    """A daemon to run: its name in the run (``governor-2``), its module, its settings but ``REDIS_URL``."""

    name: str
    module: str
    env: Mapping[str, str]


@dataclass
class Life:
    """The process a slot runs now. ``ending`` names what was done to it, once something was (a death with none is
    unexpected)."""

    number: int
    process: DaemonProcess
    password: str
    started: float
    samples: list[Sample] = field(default_factory=list)
    ending: str | None = None


class Slot:
    def __init__(self, spec: DaemonSpec, supervisor: Supervisor) -> None:
        self.spec = spec
        self.name = spec.name
        #: Held by whoever acts on the process; re-entrant, so a fault can stop and restart under one hold.
        self.lock = threading.RLock()
        self.life: Life | None = None
        self._supervisor = supervisor
        self._lives = 0
        self._died_at: float | None = None

    # --- used by faults, the password rotation and the shutdown (with the lock held) --------------------------------

    def running(self) -> Life | None:
        life = self.life
        return life if life is not None and life.process.running else None

    def send(self, signum: signal.Signals, ending: str | None = None) -> None:
        life = self.running()
        if life is None:
            return
        if ending is not None:
            life.ending = ending
        life.process.process.send_signal(signum)

    def kill(self) -> None:
        life = self.running()
        if life is not None:
            life.ending = "sigkill"
            life.process.process.kill()
            life.process.process.wait()
            self._end_life()

    def terminate(self, why: str) -> StopRecord | None:
        """SIGTERM, checked: exit 0 within :data:`STOP_LIMIT_SEC`, else SIGKILL and the record says so."""
        life = self.running()
        if life is None:
            return None
        life.ending = why
        try:
            code, seconds = life.process.terminate(timeout=STOP_LIMIT_SEC)
            record = StopRecord(self.name, life.number, why, code, seconds)
        except subprocess.TimeoutExpired:
            abort_with_stacks(life.process)
            record = StopRecord(self.name, life.number, why, None, STOP_LIMIT_SEC, str(life.process.log_path))
        self._supervisor.stops.append(record)
        self._end_life()
        return record

    def start(self) -> bool:
        """Start the next life now (with the current password); False if it failed to start (recorded)."""
        self._lives += 1
        number = self._lives
        password = self._supervisor.password.current
        env = daemon_env(self._supervisor.password.url(self._supervisor.redis_port), {**self.spec.env, **DIAGNOSTICS})
        log_path = self._supervisor.log_dir / f"{self.name}.{number:03d}.log"
        try:
            process = DaemonProcess(self.spec.module, env, log_path)
        except DaemonFailedError as exc:
            self._supervisor.exits.append(UnexpectedExit(self.name, number, None, f"failed to start: {exc}"))
            self._died_at = time.monotonic()
            return False
        self.life = Life(number, process, password, time.monotonic())
        return True

    # --- the watcher ------------------------------------------------------------------------------------------------

    def _end_life(self) -> None:
        life = self.life
        if life is None:
            return
        code = life.process.process.poll()
        if life.ending is None:
            tail = life.process.log()[-2000:]
            self._supervisor.exits.append(UnexpectedExit(self.name, life.number, code, tail))
        seconds = time.monotonic() - life.started
        self._supervisor.lives.append(LifeRecord(self.name, life.number, seconds, tuple(life.samples)))
        life.process.close()
        self.life = None
        self._died_at = time.monotonic()

    def watch(self, stopping: threading.Event) -> None:
        while not stopping.wait(WATCH_EVERY_SEC):
            with self.lock:
                if stopping.is_set():
                    return
                if self.life is not None and not self.life.process.running:
                    self._end_life()
                if self.life is None and time.monotonic() - (self._died_at or 0.0) >= self._supervisor.restart_delay:
                    self.start()


class Supervisor:
    """Runs ``specs`` against Redis on ``redis_port`` with the run's password; :meth:`shutdown` stops them all."""

    def __init__(
        self,
        specs: Sequence[DaemonSpec],
        *,
        redis_port: int,
        password: RotatingPassword,
        log_dir: Path,
        restart_delay: float,
    ) -> None:
        self.redis_port = redis_port
        self.password = password
        self.log_dir = log_dir
        self.restart_delay = restart_delay
        self.slots = {spec.name: Slot(spec, self) for spec in specs}
        self.stops: list[StopRecord] = []
        self.exits: list[UnexpectedExit] = []
        self.lives: list[LifeRecord] = []
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for slot in self.slots.values():
            with slot.lock:
                slot.start()
        for slot in self.slots.values():
            self._spawn(lambda s=slot: s.watch(self._stopping), f"watch-{slot.name}")  # type: ignore[misc]
        self._spawn(self._sample_all, "sampler")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sample_all(self) -> None:
        while not self._stopping.wait(SAMPLE_EVERY_SEC):
            for slot in self.slots.values():
                life = slot.life
                if life is None:
                    continue
                with contextlib.suppress(ProcessLookupError):  # it just died: the watcher will see it
                    life.samples.append(sample(life.process.process.pid, round(time.monotonic() - life.started, 1)))

    def restart_stale_passwords(self) -> list[StopRecord]:
        """Restart (SIGTERM, checked, then start at once) every daemon running with a password that is no longer the
        current one: what an operator does after rotating it, one daemon at a time."""
        records = []
        for slot in self.slots.values():
            with slot.lock:
                life = slot.life
                if life is None or life.password == self.password.current:
                    continue
                record = slot.terminate("restart for the new password")
                if record is not None:
                    records.append(record)
                if slot.life is None:
                    slot.start()
        return records

    def shutdown(self) -> None:
        """SIGTERM every daemon (checked), no more restarts; then stop the watchers."""
        self._stopping.set()
        for slot in self.slots.values():
            with slot.lock:
                slot.terminate("final shutdown")
                slot._end_life()
        for thread in self._threads:
            thread.join(timeout=10)

    def close(self) -> None:
        """Kill whatever still runs (an aborted run), once no watcher can start another."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=20)
        for slot in self.slots.values():
            life = slot.life
            if life is not None:
                life.process.close()
