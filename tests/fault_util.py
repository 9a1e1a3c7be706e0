"""Fault tests' shared pieces: a producer that never gives up a plan, the plan stream as ground truth, the daemons'
metrics and logs read the way the fault tests judge them.

The plan mix is :func:`tests.integration.test_governor_delivery.publish`'s and the final check is its
:func:`~tests.integration.test_governor_delivery.assert_exactly_one_outcome_each`; this module only adds what a
fault needs around them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from microservices.devtools.daemon_process import DaemonProcess
from tests.integration.test_governor_delivery import PLANS, PlanSet, publish

PROPOSER = "microservices.allocation_target"
GOVERNOR = "microservices.governor"
LIVE = "quantum:allocation:target:"
PROPOSED_STREAM = "quantum:stream:allocation.target.proposed"
#: How long a refused producer command waits before it is sent again: short, so that plans land as soon as Redis
#: accepts writes again, ahead of a governor still in its reconnect backoff.
RETRY_SEC = 0.01
#: The events stream is never trimmed in these tests: every outcome must stay countable.
UNTRIMMED_EVENTS = {"GOV_EVENTS_MAXLEN": "100000000"}
#: What a refused write looks like to a producer: Redis down or paused past the timeout, out of memory, a replica.
REFUSED = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError, redis.ReadOnlyError)


class ProducerStoppedError(Exception):
    """The producer was asked to stop; raised out of its next command."""


class PatientRedis(redis.Redis):
    """A producer's client: every command is sent again until Redis accepts it, as a producer that must not drop a plan
    does, every ``RETRY_SEC`` (redis-py's own retries are off: their backoff would delay the plans' landing). It has no
    socket timeout, so a paused Redis is waited for rather than written to twice."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(host="127.0.0.1", port=port, protocol=2, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        self._stop = stop
        self.refused = 0
        #: The id of every XADD Redis acknowledged: what it must still hold after any fault.
        self.accepted: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        while True:
            if self._stop.is_set():
                raise ProducerStoppedError
            try:
                reply = super().execute_command(*args, **options)  # type: ignore[no-untyped-call]  # untyped upstream
            except REFUSED:
                self.refused += 1
                time.sleep(RETRY_SEC)
                continue
            if args[0] == "XADD":
                self.accepted.append(reply.decode())
            return reply


class PlanProducer:
    """A thread publishing ``publish``'s mix of plans (opening, closing, HOLD, without plan_id, republished plan_ids)
    over ``symbols`` symbols, one XADD every ``pause`` seconds, until :meth:`stop`."""

    def __init__(self, port: int, *, symbols: int, seed: int, pause: float, prefix: str = "p") -> None:
        self._stop = threading.Event()
        self.client = PatientRedis(port, self._stop)
        self._args = (symbols, seed, pause, prefix)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="plan-producer", daemon=True)

    def _run(self) -> None:
        symbols, seed, pause, prefix = self._args
        try:
            publish(self.client, 10**9, symbols=symbols, seed=seed, prefix=prefix, pause=pause)
        except ProducerStoppedError:
            pass
        except BaseException as exc:  # reported by stop(): a producer that died would make the test vacuous
            self.error = exc

    def start(self) -> PlanProducer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.client.close()
        assert self.error is None, f"the producer failed: {self.error!r}"
        assert not self._thread.is_alive(), "the producer did not stop"


def stream_plan_set(client: redis.Redis) -> PlanSet:
    """What the plan stream holds, entry by entry: the set every outcome is judged against. Built from the stream, not
    from what the producer meant to send, because a retried XADD whose first reply was lost lands twice (the second
    copy is then a republished plan_id, which the governor must handle as such)."""
    raw: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(PLANS)  # type: ignore[assignment]
    found = PlanSet()
    seen: set[str] = set()
    for entry_id, fields in raw:
        plan_id = fields.get(b"plan_id", b"").decode()
        found.entries[entry_id.decode()] = plan_id
        if plan_id and plan_id in seen:
            found.republished.add(entry_id.decode())
        seen.add(plan_id)
    return found


def metric_sum(daemon: DaemonProcess, name: str) -> float:
    """The sum of every series of a counter family (``name`` without ``_total``), e.g. all ``p32_eff_apply_total``."""
    text = daemon.get("/metrics")[1]
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == name
        for sample in family.samples
        if sample.name == name + "_total"
    )


def entry_ms(entry_id: bytes | str) -> int:
    """The time part of a stream entry id, in epoch milliseconds."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


class LogWindow:
    """The lines a daemon logged between :meth:`open` and :meth:`close`: what a fault made it say."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self._daemon = daemon
        self._start = len(daemon.log())
        self._end: int | None = None

    def close(self) -> LogWindow:
        self._end = len(self._daemon.log())
        return self

    def lines(self, *, ignoring: str | None = None) -> list[str]:
        """The window's lines, without those containing ``ignoring`` (a routine line logged whatever happens)."""
        text = self._daemon.log()[self._start : self._end]
        return [line for line in text.splitlines() if line and (ignoring is None or ignoring not in line)]
