"""Fault tests' shared pieces: the daemons' metrics and logs read the way the fault tests judge them.

The plan mix, the producer and the outcome check are :mod:`microservices.devtools.plans`' (shared with the stop stress
and the chaos run); this module only adds what a fault test needs around them.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from microservices.devtools.daemon_process import DaemonProcess

PROPOSER = "microservices.allocation_target"
GOVERNOR = "microservices.governor"
LIVE = "quantum:allocation:target:"
PROPOSED_STREAM = "quantum:stream:allocation.target.proposed"
#: The events stream is never trimmed in these tests: every outcome must stay countable.
UNTRIMMED_EVENTS = {"GOV_EVENTS_MAXLEN": "100000000"}


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
