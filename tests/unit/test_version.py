"""Every build says which it is (issue 11): ``--version`` on each entry point, the ``p31_build_info`` gauge of both
daemons, ``/healthz`` — all from the module setuptools-scm writes at build time, and ``unknown`` without it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.core import version
from microservices.core.http_server import HealthState
from microservices.governor.metrics import GovernorMetrics


def test_the_build_names_its_commit() -> None:
    """``make`` installs the checkout (``pip install -e .``), which has setuptools-scm write the version module."""
    info = version.build_info()
    assert info.commit != version.UNKNOWN
    assert f"+g{info.commit}" in info.version  # setuptools-scm's local version carries the commit
    assert info.describe() == f"{info.version} (commit {info.commit})"


def test_without_the_build_module_it_says_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(version, "BUILD_MODULE", "microservices._no_such_module")
    version.build_info.cache_clear()
    try:
        assert version.build_info() == version.BuildInfo("unknown", "unknown")
    finally:
        version.build_info.cache_clear()


@pytest.mark.parametrize("node", [None, ""])
def test_a_build_without_git_metadata_has_no_commit(node: Any) -> None:
    assert version._commit_of(node) == version.UNKNOWN
    assert version._commit_of("g1ec4699") == "1ec4699"


@pytest.mark.parametrize(
    ("module", "prog"),
    [
        ("microservices.allocation_target", "allocation-target"),
        ("microservices.governor", "governor"),
        ("microservices.ops.cli", "p31ctl"),
    ],
)
def test_every_entry_point_answers_version(module: str, prog: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{prog} {version.build_info().describe()}"


def build_info_line() -> str:
    info = version.build_info()
    return f'p31_build_info{{commit="{info.commit}",version="{info.version}"}} 1.0'


def test_both_daemons_export_build_info() -> None:
    for metrics in (ProposerMetrics(CollectorRegistry(), 10), GovernorMetrics(CollectorRegistry(), "hint", 10)):
        assert build_info_line() in generate_latest(metrics.registry).decode().splitlines()


def test_healthz_says_which_build_answers() -> None:
    _, body = HealthState("governor", 10.0).snapshot()
    info = version.build_info()
    assert (body["version"], body["commit"]) == (info.version, info.commit)
    json.dumps(body)
