"""Reading days of the daemons' metrics back from Prometheus, for ``p31ctl report --prometheus URL``.

The streams hold minutes (they are trimmed); Prometheus holds what operators keep, weeks. A total over a window is
taken from the raw counter samples of a ``query_range`` (:func:`counter_increase`), not from PromQL's ``increase()``,
which extrapolates to the window's edges: an operator comparing the report with the events they know must get the
same count, not 1.02 times it.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

#: Prometheus refuses a range query of more than 11,000 points per series.
MAX_POINTS = 10_000
#: The finest step asked for: the usual scrape interval is 15 s to 1 min, and finer steps only repeat samples.
MIN_STEP_SEC = 60.0


class PrometheusQueryError(RuntimeError):
    """Prometheus could not be reached or refused the query; the message says which and why."""


@dataclass(frozen=True, slots=True)
class RangeSeries:
    """One series of a range query: its labels (``__name__`` included) and its ``(time, value)`` points, in order."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


#: ``fetch(expr, start, end, step)``: the series of a range query (a function, so the aggregation is testable).
Fetch = Callable[[str, float, float, float], list[RangeSeries]]


def step_for(window_sec: float) -> float:
    """A step that keeps a window under :data:`MAX_POINTS` points and never below :data:`MIN_STEP_SEC`."""
    return max(MIN_STEP_SEC, math.ceil(window_sec / MAX_POINTS))


def counter_increase(points: Sequence[tuple[float, float]], window_start: float | None = None) -> float:
    """How much a counter grew over ``points``: the sum of its rises, a drop being a restart from 0 (the value after
    it is all growth). A series whose first point comes after ``window_start`` was born inside the window, from 0 (a
    per-symbol counter appears on its first increment), so its first value is growth too. Exact between samples;
    what a restart lost after the last sample before it is unknown to anyone."""
    total = points[0][1] if points and window_start is not None and points[0][0] > window_start else 0.0
    for (_, before), (_, after) in pairwise(points):
        total += after - before if after >= before else after
    return total


def last_value(points: Sequence[tuple[float, float]]) -> float | None:
    return points[-1][1] if points else None


def mean_value(points: Sequence[tuple[float, float]]) -> float | None:
    """The mean of a gauge's samples: each step counts once, so it is a time average at the query's step."""
    return math.fsum(v for _, v in points) / len(points) if points else None


def increases_by(series: Sequence[RangeSeries], window_start: float, *labels: str) -> dict[tuple[str, ...], float]:
    """Each series' increase over a window from ``window_start``, summed by the values of ``labels`` (across
    instances, for example)."""
    totals: dict[tuple[str, ...], float] = {}
    for one in series:
        key = tuple(one.labels.get(label, "") for label in labels)
        totals[key] = totals.get(key, 0.0) + counter_increase(one.points, window_start)
    return totals


def http_fetch(base_url: str, timeout: float = 30.0) -> Fetch:
    """A :data:`Fetch` against the Prometheus at ``base_url`` (``/api/v1/query_range``)."""

    def fetch(expr: str, start: float, end: float, step: float) -> list[RangeSeries]:
        params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step})
        url = f"{base_url.rstrip('/')}/api/v1/query_range?{params}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:  # a refused query still says why in its body
            body = exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise PrometheusQueryError(f"cannot reach Prometheus at {base_url}: {exc}") from exc
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise PrometheusQueryError(f"{base_url} did not answer like Prometheus: {body[:200]!r}") from exc
        if answer.get("status") != "success":
            raise PrometheusQueryError(f"Prometheus refused {expr!r}: {answer.get('error', answer)}")
        return [
            RangeSeries(dict(item["metric"]), tuple((float(t), float(v)) for t, v in item["values"]))
            for item in answer["data"]["result"]
        ]

    return fetch
