"""Reading a daemon's ``/metrics`` page the way Prometheus does: every series of a metric, with its labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def metric_samples(metrics_text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every series of ``name`` (a counter's ``_total`` samples included): its labels and value."""
    return [
        (dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name in (name, f"{name}_total")
    ]


def metric_total(metrics_text: str, name: str) -> float:
    """The sum of every series of ``name``: a labelled counter's total over its labels."""
    return sum(value for _, value in metric_samples(metrics_text, name))
