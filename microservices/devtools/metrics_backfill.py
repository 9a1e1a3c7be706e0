"""Days of metric history without waiting days: snapshots of a daemon's registry, taken as the daemon's own code
counts simulated time, written as OpenMetrics for ``promtool tsdb create-blocks-from openmetrics``.

``promtool`` wants each metric family's samples together and timestamps in seconds; ``_created`` samples are left
out (the daemons' scrapes do not carry them into the dashboards' queries either).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry

#: Families written once per snapshot: (name, type, help) -> lines.
_Family = tuple[str, str, str]


def _label_text(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class OpenMetricsHistory:
    """``snapshot(registry, ts)`` as often as a scrape would happen; ``write(path)`` the whole history."""

    def __init__(self) -> None:
        self._families: dict[_Family, list[str]] = {}

    def snapshot(self, registry: CollectorRegistry, timestamp: float, labels: Mapping[str, str] | None = None) -> None:
        """Every sample of ``registry`` at ``timestamp``, with ``labels`` added (``job``, as a scrape adds it)."""
        extra = dict(labels or {})
        for family in registry.collect():
            lines = self._families.setdefault((family.name, family.type, family.documentation), [])
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                lines.append(
                    f"{sample.name}{_label_text(extra | sample.labels)} {_number(sample.value)} {timestamp:.3f}"
                )

    def text(self) -> str:
        out: list[str] = []
        for (name, kind, documentation), lines in self._families.items():
            out += [f"# TYPE {name} {kind}", f"# HELP {name} {documentation}", *lines]
        return "\n".join([*out, "# EOF"]) + "\n"


def find_promtool() -> str:
    found = os.environ.get("PROMTOOL_BIN") or shutil.which("promtool")
    if not found:
        raise FileNotFoundError("no promtool binary: install it (Debian: apt-get install prometheus) or PROMTOOL_BIN")
    return found


def create_blocks(history: OpenMetricsHistory, data_dir: Path) -> None:
    """TSDB blocks of ``history`` in ``data_dir`` (a Prometheus started on it afterwards serves them)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    source = data_dir.parent / "backfill.om"
    source.write_text(history.text())
    subprocess.run([find_promtool(), "tsdb", "create-blocks-from", "openmetrics", str(source), str(data_dir)],
                   check=True, capture_output=True, text=True, timeout=120)  # fmt: skip
