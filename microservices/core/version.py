"""Which build is running: the version and commit setuptools-scm wrote when the package was built.

Every entry point's ``--version``, the start-up log line, ``/healthz`` and the ``p31_build_info`` gauge say it, so an
operator can tell which release runs, and ``deploy/install.sh`` names each release directory after it. The module
setuptools-scm writes (``microservices/_build_version.py``, not in git) is imported by name at run time: a checkout
that was never built has none, and then says ``unknown`` rather than failing.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

#: Written by setuptools-scm at build time (``[tool.setuptools_scm] version_file`` in pyproject.toml).
BUILD_MODULE = "microservices._build_version"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BuildInfo:
    version: str
    #: The abbreviated git commit the build was made from, or ``unknown`` (a copy without git metadata).
    commit: str

    def describe(self) -> str:
        return f"{self.version} (commit {self.commit})"


def _commit_of(node: object) -> str:
    """setuptools-scm's node is ``g<abbreviated hash>`` for git; None without git metadata."""
    if not isinstance(node, str) or not node:
        return UNKNOWN
    return node.removeprefix("g")


@functools.cache
def build_info() -> BuildInfo:
    try:
        module = importlib.import_module(BUILD_MODULE)
    except ImportError:
        return BuildInfo(UNKNOWN, UNKNOWN)
    return BuildInfo(str(getattr(module, "version", UNKNOWN)), _commit_of(getattr(module, "commit_id", None)))


def register_build_info(registry: CollectorRegistry) -> Gauge:
    """``p31_build_info{version,commit} 1`` in ``registry``: which build a scrape came from."""
    info = build_info()
    gauge = Gauge(
        "p31_build_info", "The running build: version and git commit", ["version", "commit"], registry=registry
    )
    gauge.labels(info.version, info.commit).set(1)
    return gauge
