"""The chaos run's supervisor: a daemon that dies unasked is restarted and reported; one that ignores SIGTERM is
reported with the stacks of its threads, which say where it hung."""

from __future__ import annotations

import time
from pathlib import Path

from microservices.devtools.invariants import exit_violations, stop_violations
from microservices.devtools.rotating_password import RotatingPassword
from microservices.devtools.supervisor import DaemonSpec, Supervisor


def supervisor(tmp_path: Path) -> Supervisor:
    spec = DaemonSpec("deaf", "tests.integration.deaf_daemon", {})
    return Supervisor([spec], redis_port=1, password=RotatingPassword("pw"), log_dir=tmp_path, restart_delay=0.1)


def test_a_daemon_deaf_to_sigterm_is_killed_and_reported_with_its_stacks(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    sup.start()
    try:
        slot = sup.slots["deaf"]
        with slot.lock:
            record = slot.terminate("test")
        assert record is not None and record.code is None
        [problem] = stop_violations(sup.stops)
        assert "deaf life 1 (test): still running 5.0 s after SIGTERM (killed)" in problem
        stacks = Path(record.stacks).read_text()
        assert "Fatal Python error: Aborted" in stacks and "in wait_forever" in stacks
    finally:
        sup.close()


def test_a_daemon_that_dies_unasked_is_restarted_and_reported(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    sup.start()
    try:
        slot = sup.slots["deaf"]
        first = slot.life
        assert first is not None
        first.process.process.kill()  # nobody asked: no ending recorded
        deadline = time.monotonic() + 10
        while (slot.life is None or slot.life is first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert slot.life is not None and slot.life.number == 2
        [problem] = exit_violations(sup.exits)
        assert problem.startswith("deaf life 1 exited by itself with status -9")
    finally:
        sup.close()
