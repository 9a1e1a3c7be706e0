"""The loop runner: success, Redis failures with backoff, --once give-up, stop, systemd notifications."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.backoff import ConstantBackoff

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.core.daemon import Service, _build_once_redis_answers
from microservices.core.http_server import HealthState
from microservices.core.runner import EX_OK, EX_UNAVAILABLE, LoopRunner
from microservices.core.stop_signal import StopSignal
from microservices.devtools.daemon_process import ROOT


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def ready(self) -> None:
        self.sent.append("READY=1")

    def watchdog(self) -> None:
        self.sent.append("WATCHDOG=1")

    def stopping(self) -> None:
        self.sent.append("STOPPING=1")


class Script:
    """A step that fails ``failures`` times with a connection error, then succeeds."""

    def __init__(self, failures: int = 0, stop_after: int | None = None) -> None:
        self.failures = failures
        self.calls = 0
        self.successes = 0
        self.stop_after = stop_after

    def step(self, stop: threading.Event) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise redis.ConnectionError("Connection refused")
        self.successes += 1
        if self.stop_after is not None and self.successes >= self.stop_after:
            stop.set()


def make_runner(script: Script, **kwargs: object) -> tuple[LoopRunner, RecordingNotifier, list[Exception]]:
    errors: list[Exception] = []
    notifier = RecordingNotifier()
    runner = LoopRunner(
        step=script.step,
        ping=lambda: True,
        interval_sec=0.0,
        health=HealthState("t", 10),
        backoff=ConstantBackoff(0.0),
        on_redis_error=errors.append,
        notifier=notifier,
        **kwargs,  # type: ignore[arg-type]
    )
    return runner, notifier, errors


def test_once_runs_one_loop_and_notifies_in_order() -> None:
    script = Script()
    runner, notifier, errors = make_runner(script, once=True)
    assert runner.run() == EX_OK
    assert script.calls == 1
    assert notifier.sent == ["READY=1", "WATCHDOG=1", "STOPPING=1"]
    assert errors == []


def test_redis_failures_are_counted_and_retried_until_success() -> None:
    script = Script(failures=3)
    runner, notifier, errors = make_runner(script, once=True)
    assert runner.run() == EX_OK
    assert len(errors) == 3
    assert script.successes == 1
    assert notifier.sent.count("WATCHDOG=1") == 1


def test_no_watchdog_without_progress_and_once_gives_up_after_the_limit() -> None:
    script = Script(failures=10**9)
    runner, notifier, errors = make_runner(script, once=True, unavailable_after_sec=0.2)
    assert runner.run() == EX_UNAVAILABLE
    assert "WATCHDOG=1" not in notifier.sent
    assert len(errors) >= 2


def test_a_failing_ping_delays_ready() -> None:
    attempts: list[int] = []

    def ping() -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise redis.ConnectionError("down")

    script = Script()
    runner, notifier, errors = make_runner(script, once=True)
    runner._ping = ping
    assert runner.run() == EX_OK
    assert len(attempts) == 3 and len(errors) == 2
    assert notifier.sent == ["READY=1", "WATCHDOG=1", "STOPPING=1"]


def test_daemon_mode_loops_until_stopped() -> None:
    script = Script(stop_after=4)
    runner, notifier, _ = make_runner(script)
    assert runner.run() == EX_OK
    assert script.successes == 4
    assert notifier.sent[-1] == "STOPPING=1"
    assert notifier.sent.count("WATCHDOG=1") == 4


def test_an_unexpected_error_fails_the_loop_without_ending_the_daemon() -> None:
    calls: list[int] = []

    def step(stop: threading.Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("a bug")

    runner, notifier, errors = make_runner(Script(), once=True)
    runner._step = step
    assert runner.run() == EX_OK
    assert len(calls) == 2
    assert errors == []  # not counted as a Redis error
    assert notifier.sent == ["READY=1", "WATCHDOG=1", "STOPPING=1"]


def test_a_signal_during_a_write_to_stderr_still_stops_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler runs between any two bytecodes, possibly inside the main thread's write to stderr: it must not
    write anything itself (a log call there raised "reentrant call" and lost the stop)."""

    class BusyStderr:
        def write(self, _text: str) -> int:
            raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

        def flush(self) -> None:
            pass

    stop = StopSignal()
    runner, _, _ = make_runner(Script(), stop=stop)
    stop.install()
    monkeypatch.setattr(sys, "stderr", BusyStderr())
    busy = logging.StreamHandler()  # writes to the busy stderr if anything logs
    logging.getLogger().addHandler(busy)
    try:
        signal.raise_signal(signal.SIGTERM)
        assert runner.stop_event.wait(5)
    finally:
        logging.getLogger().removeHandler(busy)
        stop.uninstall()
    assert runner.stopped_by == "SIGTERM"


def test_a_stop_while_the_service_is_being_built_closes_it_and_exits_0() -> None:
    """A SIGTERM that lands while the service is being built (a cluster client asks for its slots) must not be lost:
    the service just built is closed again, and start-up ends with exit 0 instead of running until SIGKILL."""
    stop = threading.Event()
    closed: list[bool] = []

    def build() -> Service:
        stop.set()  # the signal handler ran during the build
        return Service(step=lambda _s: None, ping=lambda: None, interval_sec=1.0, health=HealthState("t", 1.0),
                       close=lambda: closed.append(True))  # fmt: skip

    metrics = ProposerMetrics(CollectorRegistry(), 1)
    outcome = _build_once_redis_answers(
        build, once=False, backoff=ConstantBackoff(0), health=HealthState("t", 1.0), metrics=metrics, stop=stop
    )
    assert (outcome, closed) == (EX_OK, [True])


def test_a_stop_signal_installed_at_start_is_the_one_the_runner_obeys() -> None:
    stop = StopSignal()
    runner, _, _ = make_runner(Script(), stop=stop)
    stop.install()
    try:
        signal.raise_signal(signal.SIGINT)
        assert runner.stop_event.wait(5)
    finally:
        stop.uninstall()
    assert runner.stopped_by == "SIGINT"


def test_uninstall_hands_the_signals_and_the_wakeup_descriptor_back() -> None:
    previous = {sig: signal.getsignal(sig) for sig in StopSignal.SIGNALS}
    stop = StopSignal().install()
    assert signal.getsignal(signal.SIGTERM) is not previous[signal.SIGTERM]
    stop.uninstall()
    assert {sig: signal.getsignal(sig) for sig in StopSignal.SIGNALS} == previous
    assert signal.set_wakeup_fd(-1) == -1  # none was left installed


#: The hang of issue 10, made certain: the signal lands while the main thread holds the stop event's own lock, as it
#: does inside ``Event.wait`` between two reads. A handler that sets the event itself waits for that lock forever.
_SIGNAL_WHILE_THE_EVENT_LOCK_IS_HELD = """
import os, signal
from microservices.core.stop_signal import StopSignal
stop = StopSignal().install()
with stop.event._cond:  # what Event.wait holds around its check of the flag
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000):  # bytecodes: the Python-level handler runs here, under the lock
        pass
print("stopped" if stop.event.wait(5) else "not stopped", stop.stopped_by, flush=True)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_while_the_main_thread_holds_the_stop_events_lock_stops_instead_of_hanging(sig: str) -> None:
    script = _SIGNAL_WHILE_THE_EVENT_LOCK_IS_HELD.replace("SIGTERM", sig)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()  # the old handler: deaf to every further SIGTERM, only SIGKILL ends it
        process.communicate()
        pytest.fail(f"a {sig} delivered while the main thread held the event's lock hung the process")
    assert (process.returncode, out.split()) == (0, ["stopped", sig])
