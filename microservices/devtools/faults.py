"""The chaos run's faults: what kinds there are, a seeded schedule of them, and the runner that injects them.

:func:`plan_faults` is pure: the same seed gives the same faults (kind, start, length, target, size, new password) in
the same order; only the timing of what the daemons happen to be doing when each lands varies. Every kind appears at
least once, in the first three quarters of the window, so that even a one-minute run meets all of them; the rest are
drawn by weight, anywhere in the window, so that several overlap; the last is a Redis outage that ends with the
window.

:class:`FaultRunner` starts each fault at its time in a thread of its own (so they overlap) and counts what was
injected. A process fault holds its daemon's slot for its whole length (a stopped process is not also killed), and
waits for a daemon being restarted to be up; Redis faults go through :class:`~microservices.devtools.faulty_redis.
FaultyRedis`, which orders their commands.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from microservices.devtools.faulty_redis import FaultyRedis
from microservices.devtools.latency_proxy import LatencyProxy
from microservices.devtools.private_network import PacketLoss
from microservices.devtools.supervisor import Slot, Supervisor


class FaultKind(StrEnum):
    SIGKILL = "sigkill"
    SIGTERM = "sigterm"
    SIGSTOP = "sigstop"
    REDIS_RESTART = "redis_restart"
    CLIENT_PAUSE_WRITE = "client_pause_write"
    CLIENT_PAUSE_ALL = "client_pause_all"
    OOM = "oom"
    READONLY = "readonly"
    PASSWORD_ROTATION = "password_rotation"
    LATENCY = "latency"
    LOSS = "loss"


PROCESS_FAULTS = frozenset({FaultKind.SIGKILL, FaultKind.SIGTERM, FaultKind.SIGSTOP})
#: The kinds the schedule's last fault is drawn from: each leaves every daemon failing its loops until it ends.
FINALE = (FaultKind.REDIS_RESTART, FaultKind.CLIENT_PAUSE_ALL, FaultKind.OOM, FaultKind.READONLY)


@dataclass(frozen=True)
class Shape:
    """How a kind of fault is drawn: its relative frequency, its length in seconds and its size (ms of latency, % of
    packets lost), each uniform in its range."""

    weight: float
    seconds: tuple[float, float] = (0.0, 0.0)
    amount: tuple[float, float] = (0.0, 0.0)


#: Lengths: a SIGSTOP and a CLIENT PAUSE sometimes past the daemons' 2 s socket timeout; latency up to 0.15 s each way
#: (a batch's few round trips still end well within SIGTERM's 5 s); loss up to 12 % (TCP retransmits from 200 ms).
SHAPES: dict[FaultKind, Shape] = {
    FaultKind.SIGKILL: Shape(3.0),
    FaultKind.SIGTERM: Shape(3.0),
    FaultKind.SIGSTOP: Shape(2.0, (1.0, 4.0)),
    FaultKind.REDIS_RESTART: Shape(1.0, (0.2, 3.0)),
    FaultKind.CLIENT_PAUSE_WRITE: Shape(1.0, (0.5, 3.5)),
    FaultKind.CLIENT_PAUSE_ALL: Shape(1.0, (0.5, 3.5)),
    FaultKind.OOM: Shape(1.0, (1.0, 5.0)),
    FaultKind.READONLY: Shape(1.0, (1.0, 5.0)),
    FaultKind.PASSWORD_ROTATION: Shape(0.3, (1.0, 3.0)),
    FaultKind.LATENCY: Shape(1.5, (2.0, 8.0), (20.0, 150.0)),
    FaultKind.LOSS: Shape(1.0, (2.0, 8.0), (2.0, 12.0)),
}


@dataclass(frozen=True)
class Fault:
    """One fault: when it starts (seconds into the run), what, for how long; the daemon it hits (process faults),
    its size (latency in ms, loss in %) and the new password (rotation)."""

    at: float
    kind: FaultKind
    seconds: float
    target: str = ""
    amount: float = 0.0
    password: str = ""

    def describe(self) -> str:
        parts = [f"{self.kind.value}"]
        if self.target:
            parts.append(self.target)
        if self.seconds:
            parts.append(f"{self.seconds:.1f}s")
        if self.kind is FaultKind.LATENCY:
            parts.append(f"+{self.amount:.0f}ms each way")
        if self.kind is FaultKind.LOSS:
            parts.append(f"{self.amount:.0f}% loss")
        return " ".join(parts)


def draw(rng: random.Random, kind: FaultKind, at: float, daemons: Sequence[str]) -> Fault:
    shape = SHAPES[kind]
    return Fault(
        at=round(at, 3),
        kind=kind,
        seconds=round(rng.uniform(*shape.seconds), 3),
        target=rng.choice(daemons) if kind in PROCESS_FAULTS else "",
        amount=round(rng.uniform(*shape.amount)),
        password=f"{rng.getrandbits(96):024x}" if kind is FaultKind.PASSWORD_ROTATION else "",
    )


def plan_faults(
    rng: random.Random,
    *,
    start: float,
    end: float,
    daemons: Sequence[str],
    kinds: Sequence[FaultKind],
    per_minute: float,
) -> tuple[Fault, ...]:
    """The schedule, sorted by start: each of ``kinds`` once, starting in the first three quarters of [start, end);
    more drawn by :data:`SHAPES`' weights, each over by ``end``, up to ``per_minute`` faults a minute in all; and a
    finale, a Redis outage (:data:`FINALE`) that ends at ``end`` exactly, so that the recovery measured once the
    faults are over is a recovery from an outage, not from a quiet stretch."""
    span = max(0.0, end - start)
    faults = [draw(rng, kind, rng.uniform(start, start + 0.75 * span), daemons) for kind in kinds]
    extra = max(0, round(per_minute * span / 60) - len(faults) - 1)
    weights = [SHAPES[kind].weight for kind in kinds]
    for kind in rng.choices(list(kinds), weights=weights, k=extra):
        fault = draw(rng, kind, 0.0, daemons)
        faults.append(replace(fault, at=round(rng.uniform(start, max(start, end - fault.seconds)), 3)))
    finale = draw(rng, rng.choice(FINALE), 0.0, daemons)
    faults.append(replace(finale, at=round(max(start, end - finale.seconds), 3)))
    return tuple(sorted(faults, key=lambda f: f.at))


class FaultRunner:
    """Injects ``faults`` at their times (measured from :meth:`start`) until they are all over."""

    #: How long a process fault waits for its daemon to be up (it may be restarting) before it is given up.
    TARGET_PATIENCE_SEC = 20.0

    def __init__(
        self,
        faults: Sequence[Fault],
        *,
        supervisor: Supervisor,
        redis: FaultyRedis,
        proxy: LatencyProxy,
        loss: PacketLoss | None,
        say: Callable[[str], None],
    ) -> None:
        self.faults = tuple(faults)
        self._supervisor = supervisor
        self._redis = redis
        self._proxy = proxy
        self._loss = loss
        self._say = say
        self.injected: Counter[str] = Counter()
        self.given_up: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        #: Failures of the harness itself (a fault that could not be carried out): the run cannot vouch for itself.
        self.errors: list[str] = []
        self._kind_locks = {kind: threading.Lock() for kind in FaultKind}
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._scheduler = threading.Thread(target=self._schedule, name="faults", daemon=True)
        self._abort = threading.Event()

    def start(self) -> FaultRunner:
        self._started = time.monotonic()
        self._scheduler.start()
        return self

    def _schedule(self) -> None:
        for fault in self.faults:
            if self._abort.wait(max(0.0, self._started + fault.at - time.monotonic())):
                return
            thread = threading.Thread(target=self._run, args=(fault,), name=f"fault-{fault.kind}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self) -> None:
        """Wait until every fault has been injected and is over."""
        self._scheduler.join()
        for thread in list(self._threads):
            thread.join()

    def abort(self) -> None:
        self._abort.set()

    def _run(self, fault: Fault) -> None:
        try:
            if fault.kind in PROCESS_FAULTS:  # these hold their daemon's slot instead: two daemons may be hit at once
                done = self._inject(fault)
            else:  # one Redis or network fault of a kind at a time: two OOM bursts would end at the first one's end
                with self._kind_locks[fault.kind]:
                    done = self._inject(fault)
        except Exception as exc:
            self.errors.append(f"{fault.describe()}: {type(exc).__name__}: {exc}")
            self._say(f"fault failed: {fault.describe()}: {traceback.format_exc(limit=3)}")
            return
        with self._count_lock:  # faults end in threads of their own
            (self.injected if done else self.given_up)[fault.kind.value] += 1

    def _inject(self, fault: Fault) -> bool:
        self._say(f"t={time.monotonic() - self._started:6.1f}s fault {fault.describe()}")
        if fault.kind in PROCESS_FAULTS:
            return self._process_fault(fault)
        r = self._redis
        match fault.kind:
            case FaultKind.REDIS_RESTART:
                r.restart(fault.seconds)
            case FaultKind.CLIENT_PAUSE_WRITE | FaultKind.CLIENT_PAUSE_ALL:
                r.pause(fault.seconds, writes_only=fault.kind is FaultKind.CLIENT_PAUSE_WRITE)
                time.sleep(fault.seconds)
            case FaultKind.OOM:
                r.refuse_writes_for_memory()
                time.sleep(fault.seconds)
                r.accept_writes_for_memory()
            case FaultKind.READONLY:
                r.make_replica()
                time.sleep(fault.seconds)
                r.make_primary()
            case FaultKind.PASSWORD_ROTATION:
                r.rotate_password(fault.password)
                time.sleep(fault.seconds)  # the daemons ride out the refused password: none may exit
                self._supervisor.restart_stale_passwords()
            case FaultKind.LATENCY:
                self._proxy.delay_sec = fault.amount / 1000
                time.sleep(fault.seconds)
                self._proxy.delay_sec = 0.0
            case FaultKind.LOSS:
                if self._loss is None:
                    return False
                self._loss.set(int(fault.amount))
                time.sleep(fault.seconds)
                self._loss.clear()
        return True

    def _process_fault(self, fault: Fault) -> bool:
        slot = self._supervisor.slots[fault.target]
        deadline = time.monotonic() + self.TARGET_PATIENCE_SEC
        while time.monotonic() < deadline:
            with slot.lock:
                if slot.running() is not None:
                    self._hit(slot, fault)
                    return True
            time.sleep(0.05)
        return False

    @staticmethod
    def _hit(slot: Slot, fault: Fault) -> None:
        match fault.kind:
            case FaultKind.SIGKILL:
                slot.kill()
            case FaultKind.SIGTERM:
                slot.terminate("sigterm fault")
            case FaultKind.SIGSTOP:
                slot.send(signal.SIGSTOP)
                try:
                    time.sleep(fault.seconds)
                finally:
                    slot.send(signal.SIGCONT)
