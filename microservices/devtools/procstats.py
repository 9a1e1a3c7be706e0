"""A process's resident memory and open file descriptors, read from ``/proc``, and the verdict on a series of them.

Shared by the soak (one long life per daemon, the work counted in loops or plans) and the chaos run (many lives per
daemon, the work counted in seconds): both ask whether memory and descriptors stay flat once the process has warmed
up, which is what a leak per loop, per plan, per reconnect or per fault would break.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
#: Open descriptors a sample may show beyond the baseline without counting as growth: the scrape connection.
FD_SLACK = 1


@dataclass(frozen=True)
class Sample:
    """One reading of a process: how far its work had got (loops, plans or seconds), its RSS and its open FDs."""

    work: float
    rss_bytes: int
    fds: int


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'MISS'} {self.name}: {self.detail}"


def rss_bytes(pid: int) -> int:
    """``VmRSS`` of ``/proc/<pid>/status``; ``ProcessLookupError`` once the process is gone (a zombie has none)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError as exc:
        raise ProcessLookupError(pid) from exc
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


def open_fds(pid: int) -> int:
    """Entries of ``/proc/<pid>/fd``; ``ProcessLookupError`` once the process is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError as exc:
        raise ProcessLookupError(pid) from exc


def sample(pid: int, work: float) -> Sample:
    return Sample(work, rss_bytes(pid), open_fds(pid))


def verdict(
    label: str, samples: list[Sample], total: float, warmup: float, max_growth_mb: float, *, fd_slack: int = FD_SLACK
) -> list[Check]:
    """The memory and descriptor checks of one process's samples.

    The warm-up is the first ``warmup`` fraction of ``total`` work (imports, first connections, caches and metric
    series filling up); the baseline is the first sample at or after it. Memory is flat when the last sample's RSS
    exceeds the baseline's by less than ``max_growth_mb``; descriptors are steady when the last sample has no more
    open than the baseline plus ``fd_slack``."""
    if not samples:
        raise ValueError(f"{label}: no samples")
    after = [s for s in samples if s.work >= warmup * total] or samples[-1:]
    base, last = after[0], samples[-1]
    peak = max(s.rss_bytes for s in after)
    growth_mb = (last.rss_bytes - base.rss_bytes) / MB
    memory = Check(
        f"{label} memory flat",
        growth_mb < max_growth_mb,
        f"growth {growth_mb:+.2f} MB after warm-up ({base.work:g}: {base.rss_bytes / MB:.1f} MB -> {last.work:g}: "
        f"{last.rss_bytes / MB:.1f} MB; peak {peak / MB:.1f} MB), limit {max_growth_mb:g} MB",
    )
    fds = Check(
        f"{label} file descriptors steady",
        last.fds <= base.fds + fd_slack,
        f"{base.fds} after warm-up -> {last.fds} at the end (max {max(s.fds for s in after)}), slack {fd_slack}",
    )
    return [memory, fds]
