"""The loop runner both daemons use: interval, ``--once``, signals, systemd notification, Redis outages.

A daemon supplies a ``step`` (one loop of work, raising a Redis error when Redis fails it) and a ``ping``. The runner
calls them, keeps health and systemd informed, backs off with jitter while Redis is unreachable and never exits because
of Redis, except in ``--once`` mode, where 10 s without Redis ends the run with exit status 69.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis.backoff import AbstractBackoff

from microservices.core.http_server import HealthState
from microservices.core.redis_client import REDIS_ERRORS
from microservices.core.stop_signal import StopSignal
from microservices.core.systemd import Notifier, SystemdNotifier

log = logging.getLogger(__name__)

EX_OK = 0
EX_UNAVAILABLE = 69
#: In ``--once`` mode, Redis unreachable for this long ends the run with EX_UNAVAILABLE.
ONCE_UNAVAILABLE_AFTER_SEC = 10.0
#: While an outage lasts, it is logged again at most this often.
OUTAGE_LOG_EVERY_SEC = 30.0

Step = Callable[[threading.Event], object]


class LoopRunner:
    def __init__(
        self,
        *,
        step: Step,
        ping: Callable[[], object],
        interval_sec: float,
        health: HealthState,
        backoff: AbstractBackoff,
        on_redis_error: Callable[[Exception], None],
        notifier: Notifier | None = None,
        once: bool = False,
        unavailable_after_sec: float = ONCE_UNAVAILABLE_AFTER_SEC,
        clock: Callable[[], float] = time.monotonic,
        stop: StopSignal | None = None,
    ) -> None:
        self._stop = stop or StopSignal()
        self._step = step
        self._ping = ping
        self._interval = interval_sec
        self._health = health
        self._backoff = backoff
        self._on_redis_error = on_redis_error
        self._notifier: Notifier = notifier or SystemdNotifier()
        self._once = once
        self._unavailable_after = unavailable_after_sec
        self._clock = clock
        self.stop_event = self._stop.event

    @property
    def stopped_by(self) -> str | None:
        """The name of the signal that asked the loop to stop, if one did."""
        return self._stop.stopped_by

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT ask the loop to finish the batch in hand and return."""
        self._stop.install()

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> int:
        """Loop until stopped (or once); the process exit status."""
        ready = False
        failures = 0
        outage_started: float | None = None
        last_outage_log = 0.0
        try:
            while not self.stop_event.is_set():
                started = self._clock()
                try:
                    if not ready:
                        self._ping()
                        self._notifier.ready()
                        ready = True
                    self._step(self.stop_event)
                except Exception as exc:
                    failures += 1
                    now = self._clock()
                    if outage_started is None:
                        outage_started = started  # the failed attempt's own duration counts toward the outage
                    self._health.mark_error(type(exc).__name__)
                    if isinstance(exc, REDIS_ERRORS):
                        self._on_redis_error(exc)
                        if failures == 1 or now - last_outage_log >= OUTAGE_LOG_EVERY_SEC:
                            last_outage_log = now
                            log.warning(
                                "Redis call failed (%s: %s), %d in a row over %.1fs; retrying with backoff",
                                type(exc).__name__, exc, failures, now - outage_started,
                            )  # fmt: skip
                    elif failures == 1 or now - last_outage_log >= OUTAGE_LOG_EVERY_SEC:
                        last_outage_log = now
                        log.exception("loop failed unexpectedly, %d in a row; retrying with backoff", failures)
                    if self._once and now - outage_started >= self._unavailable_after:
                        log.error("no successful loop for %.0fs in --once mode: giving up", now - outage_started)
                        return EX_UNAVAILABLE
                    delay = self._backoff.compute(failures)
                    if self._once:
                        delay = min(delay, max(0.0, outage_started + self._unavailable_after - now))
                    self.stop_event.wait(delay)
                    continue
                if outage_started is not None:
                    log.info(
                        "Redis calls succeed again after %d failures over %.1fs",
                        failures,
                        self._clock() - outage_started,
                    )
                failures, outage_started = 0, None
                self._health.mark_success()
                self._notifier.watchdog()
                if self._once:
                    return EX_OK
                self.stop_event.wait(max(0.0, self._interval - (self._clock() - started)))
            return EX_OK
        finally:
            if self.stopped_by is not None:
                log.info("received %s: the batch in hand was finished; stopping", self.stopped_by)
            self._notifier.stopping()
