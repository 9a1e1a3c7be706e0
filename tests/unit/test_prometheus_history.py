"""Totals over a window from raw counter samples: rises summed, a drop read as a restart, a series born inside the
window counted from 0 (exact, where PromQL's ``increase()`` extrapolates to the window's edges)."""

from __future__ import annotations

from microservices.ops.prometheus_history import (
    MIN_STEP_SEC,
    RangeSeries,
    counter_increase,
    increases_by,
    mean_value,
    step_for,
)


def test_rises_are_summed_and_a_drop_is_a_restart_from_zero() -> None:
    assert counter_increase([(0, 5.0), (60, 7.0), (120, 7.0), (180, 10.0)]) == 5.0
    assert counter_increase([(0, 5.0), (60, 9.0), (120, 2.0), (180, 3.0)]) == 4.0 + 2.0 + 1.0
    assert counter_increase([]) == 0.0 and counter_increase([(0, 4.0)]) == 0.0


def test_a_series_born_inside_the_window_counts_its_first_value() -> None:
    assert counter_increase([(100, 3.0), (160, 4.0)], window_start=0) == 4.0
    assert counter_increase([(0, 3.0), (60, 4.0)], window_start=0) == 1.0  # it existed when the window began


def test_increases_are_summed_by_label_across_instances() -> None:
    series = [
        RangeSeries({"instance": "a", "reason": "ok"}, ((0, 1.0), (60, 4.0))),
        RangeSeries({"instance": "b", "reason": "ok"}, ((0, 0.0), (60, 2.0))),
        RangeSeries({"instance": "a", "reason": "low_conf"}, ((0, 0.0), (60, 1.0))),
    ]
    assert increases_by(series, 0, "reason") == {("ok",): 5.0, ("low_conf",): 1.0}
    assert increases_by(series, 0) == {(): 6.0}


def test_step_keeps_a_week_under_prometheus_point_limit_and_mean_is_per_step() -> None:
    assert step_for(3600) == MIN_STEP_SEC
    assert step_for(7 * 86400) == 61  # 604,800 s / 10,000 points, rounded up
    assert mean_value([(0, 1.0), (60, 3.0)]) == 2.0 and mean_value([]) is None
