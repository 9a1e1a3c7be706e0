"""SPEC §4, exhaustively: every variable of both daemons, given a bad value of every kind, from the process environment
and from an ``--env-file``, stops the daemon with exit 78 and one line naming the variable, before it touches Redis.

Redis is a plain TCP listener owned by the test (:class:`Listener`), and every connection setting of every case points
at it (the connection variables themselves are under test too): a daemon that accepted a bad value would connect to
it, and the listener counts every connection it is offered.

How, and why so: the matrix is ~50 variables x 4 kinds x 2 sources, ~400 cases. Run as processes (~0.3-0.5 s each on
this machine) that is minutes, too slow for ``make test``; so the whole matrix runs in-process through each daemon's
real ``main(argv)`` (argument parsing, logging set-up, the env file, the merge with the environment, the settings and
their checks: everything a process runs up to exit 78), with the process environment replaced by the case's, and a
representative subset (every kind, both sources, every type of variable of each daemon) runs as real processes, four
at a time, to show the in-process result is the process's.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from microservices.allocation_target.service import run as run_proposer
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.settings import EX_CONFIG, Settings, env_fields, load_settings
from microservices.core.stop_signal import StopSignal
from microservices.devtools.daemon_process import ROOT
from microservices.governor.service import run as run_governor
from microservices.governor.settings import GovernorSettings

PROPOSER, GOVERNOR = "microservices.allocation_target", "microservices.governor"

# --- SPEC §4's list of variables, copied from the contract: a variable missing from a settings class fails -----------

SPEC_CONNECTION = ["REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_CLUSTER"]
SPEC_BOTH = ["METRICS_ADDR", "METRICS_MAX_SYMBOLS", "P31_MAX_FUTURE_SEC", "REDIS_BACKOFF_MAX_SEC"]
SPEC_PROPOSER = [
    "P31_MIN_CONF", "P31_STALE_SEC", "P31_MIN_MULT", "P31_MAX_MULT", "P31_SCALE", "P31_BASE", "PROPOSE_STREAM_NAME",
    "PROPOSE_STREAM_MAXLEN", "PROPOSE_KEY_TTL", "LOOP_INTERVAL_SEC", "METRICS_PORT",
]  # fmt: skip
SPEC_GOVERNOR = [
    "P31_MIN_CONF", "P31_DOWNSIZE_THRESHOLD", "P31_MIN_FACTOR", "P31_MAX_EXTRA_COOLDOWN_SEC", "P31_EFF_TTL_SEC",
    "P31_GOV_MODE", "PERMIT_TTL_SEC", "STREAM_PLANS", "GOV_GROUP", "GOV_CONSUMER", "GOV_BLOCK_MS", "GOV_CLAIM_IDLE_MS",
    "GOV_MAX_DELIVERIES", "GOV_PLAN_MAX_AGE_SEC", "GOV_EVENTS_MAXLEN", "GOV_KILL_SCORE_CRITICAL",
    "GOV_SYMBOL_COOLDOWN_SECONDS", "GOV_MAX_EXEC_PER_5MIN", "GOV_MAX_EXEC_PER_HOUR", "METRICS_PORT",
]  # fmt: skip
#: SPEC §9, one active proposer.
SPEC_PROPOSER_LEASE = ["PROPOSER_LEASE_KEY", "PROPOSER_LEASE_TTL_SEC"]
#: SPEC §9, Sentinel (both daemons) and writes that survive a failover (the governor).
SPEC_SENTINEL = ["REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"]
SPEC_GOVERNOR_REPLICAS = ["GOV_MIN_REPLICAS", "GOV_REPLICA_WAIT_MS"]
SPEC_VARIABLES = {
    PROPOSER: set(SPEC_CONNECTION + SPEC_SENTINEL + SPEC_BOTH + SPEC_PROPOSER + SPEC_PROPOSER_LEASE),
    GOVERNOR: set(SPEC_CONNECTION + SPEC_SENTINEL + SPEC_BOTH + SPEC_GOVERNOR + SPEC_GOVERNOR_REPLICAS),
}
SETTINGS: dict[str, type[Settings]] = {PROPOSER: ProposerSettings, GOVERNOR: GovernorSettings}
#: Each daemon's run, in process, with a stop signal that is never installed (bad configuration stops it first).
RUNS: dict[str, Callable[[Sequence[str] | None, StopSignal], int]] = {PROPOSER: run_proposer, GOVERNOR: run_governor}

# --- the bad values: {PORT} is the listener's port -------------------------------------------------------------------

NOT_A_NUMBER, OUT_OF_RANGE, EMPTY, INLINE_COMMENT = "not a number", "out of range", "empty", "inline comment"
KINDS = (NOT_A_NUMBER, OUT_OF_RANGE, EMPTY, INLINE_COMMENT)
LISTENER_URL = "redis://127.0.0.1:{PORT}/0"


@dataclass(frozen=True)
class Bad:
    """A variable's bad values. ``not_a_number`` is, for a text variable, a value its check refuses; ``out_of_range``
    is None where the variable has no range; ``good`` is a valid value, given with ``# note`` for the inline comment."""

    not_a_number: str
    out_of_range: str | None
    good: str
    empty_is_bad: bool = True

    def value(self, kind: str) -> str | None:
        return {
            NOT_A_NUMBER: self.not_a_number,
            OUT_OF_RANGE: self.out_of_range,
            EMPTY: "" if self.empty_is_bad else None,
            INLINE_COMMENT: self.good + " # note",
        }[kind]


BAD: dict[str, Bad] = {
    # connection: each points at the listener, so a value wrongly accepted would show as a connection
    "REDIS_URL": Bad("http://127.0.0.1:{PORT}/0", "redis://127.0.0.1:70000/0", LISTENER_URL, empty_is_bad=False),
    "REDIS_HOST": Bad("local host", None, "127.0.0.1"),
    "REDIS_PORT": Bad("port", "65536", "{PORT}"),
    "REDIS_DB": Bad("zero", "-1", "0"),
    "REDIS_PASSWORD": Bad(" hunter2", None, "hunter2", empty_is_bad=False),
    "REDIS_CLUSTER": Bad("maybe", None, "0"),
    "REDIS_SENTINELS": Bad("127.0.0.1", "127.0.0.1:65536", "127.0.0.1:{PORT}", empty_is_bad=False),
    "REDIS_SENTINEL_MASTER": Bad("my master", None, "mymaster"),
    "REDIS_SENTINEL_PASSWORD": Bad(" hunter2", None, "hunter2", empty_is_bad=False),
    # both daemons
    "REDIS_BACKOFF_MAX_SEC": Bad("five", "0", "5"),
    "METRICS_ADDR": Bad("localhost", None, "127.0.0.1"),
    "METRICS_PORT": Bad("http", "65536", "0"),
    "METRICS_MAX_SYMBOLS": Bad("many", "0", "500"),
    "P31_MAX_FUTURE_SEC": Bad("soon", "-1", "60"),
    "P31_MIN_CONF": Bad("high", "1.01", "0.65"),
    # the proposer
    "P31_STALE_SEC": Bad("ten", "0", "600"),
    "P31_MIN_MULT": Bad("half", "-0.1", "0.5"),
    "P31_MAX_MULT": Bad("1.5x", "-1", "1.5"),
    "P31_SCALE": Bad("1e999", None, "1.0"),
    "P31_BASE": Bad("one", None, "1.0"),
    "PROPOSE_STREAM_NAME": Bad("quantum:stream:two words", None, "quantum:stream:allocation.target.proposed"),
    "PROPOSE_STREAM_MAXLEN": Bad("1.5", "0", "10000"),
    "PROPOSE_KEY_TTL": Bad("10m", "0", "600"),
    "LOOP_INTERVAL_SEC": Bad("10s", "0", "10"),
    "PROPOSER_LEASE_KEY": Bad("quantum:allocation_target:the leader", None, "quantum:allocation_target:leader"),
    # empty is unset (3 x LOOP_INTERVAL_SEC); 10 is not above the default interval of 10
    "PROPOSER_LEASE_TTL_SEC": Bad("30s", "10", "30", empty_is_bad=False),
    # the governor
    "P31_DOWNSIZE_THRESHOLD": Bad("low", "1.5", "0.45"),
    "P31_MIN_FACTOR": Bad("quarter", "0", "0.25"),
    "P31_MAX_EXTRA_COOLDOWN_SEC": Bad("1.5", "-1", "120"),
    "P31_EFF_TTL_SEC": Bad("nan", "0", "600"),
    "P31_GOV_MODE": Bad("shadow", None, "hint"),
    "PERMIT_TTL_SEC": Bad("1m", "0", "60"),
    "STREAM_PLANS": Bad("quantum:stream:apply plan", None, "quantum:stream:apply.plan"),
    "GOV_GROUP": Bad("the governor", None, "governor"),
    "GOV_CONSUMER": Bad("gov\tone", None, "gov-1"),
    "GOV_BLOCK_MS": Bad("1s", "5001", "1000"),
    "GOV_CLAIM_IDLE_MS": Bad("idle", "0", "30000"),
    "GOV_MIN_REPLICAS": Bad("one", "-1", "0"),
    "GOV_REPLICA_WAIT_MS": Bad("100ms", "0", "100"),
    "GOV_MAX_DELIVERIES": Bad("five", "0", "5"),
    "GOV_PLAN_MAX_AGE_SEC": Bad("2m", "0", "120"),
    "GOV_EVENTS_MAXLEN": Bad("inf", "0", "10000"),
    "GOV_KILL_SCORE_CRITICAL": Bad("0,8", "1.2", "0.8"),
    "GOV_SYMBOL_COOLDOWN_SECONDS": Bad("1min", "-1", "60"),
    "GOV_MAX_EXEC_PER_5MIN": Bad("two", "0", "2"),
    "GOV_MAX_EXEC_PER_HOUR": Bad("three", "0", "3"),
}

#: Kinds a variable accepts by design, and why; :func:`test_what_is_accepted_by_design_is_accepted` holds them to it.
BY_DESIGN = {
    ("REDIS_URL", EMPTY, "environment"): "an empty REDIS_URL is unset: REDIS_HOST and the others apply",
    ("REDIS_URL", EMPTY, "env file"): "an empty REDIS_URL is unset: REDIS_HOST and the others apply",
    ("REDIS_PASSWORD", EMPTY, "environment"): "an empty password is no password",
    ("REDIS_PASSWORD", EMPTY, "env file"): "an empty password is no password",
    # A password may hold " #": from a quoted env-file line systemd passes it without the quotes, so the process
    # cannot tell it from a comment. The env file refuses the unquoted form; in the environment it is a password.
    ("REDIS_PASSWORD", INLINE_COMMENT, "environment"): "a password may hold ' #'",
    ("REDIS_SENTINEL_PASSWORD", INLINE_COMMENT, "environment"): "a password may hold ' #'",
}

SOURCES = ("environment", "env file")


@dataclass(frozen=True)
class Case:
    module: str
    variable: str
    kind: str
    source: str

    @property
    def id(self) -> str:
        return f"{self.module.rsplit('.', 1)[1]}-{self.variable}-{self.kind.replace(' ', '_')}-{self.source[:3]}"


def all_cases() -> list[Case]:
    cases = []
    for module, variables in SPEC_VARIABLES.items():
        for variable in sorted(variables):
            for kind in KINDS:
                for source in SOURCES:
                    if BAD[variable].value(kind) is not None and (variable, kind, source) not in BY_DESIGN:
                        cases.append(Case(module, variable, kind, source))
    return cases


CASES = all_cases()


def case_environment(case: Case, port: int) -> dict[str, str]:
    """The case's variables: the bad value, and every connection setting it leaves free pointing at the listener
    (never the defaults, which are the shared Redis on 6379)."""
    bad = BAD[case.variable].value(case.kind)
    assert bad is not None
    env = {"METRICS_PORT": "0", "GOV_CONSUMER": "gov-test"}
    if case.variable not in ("REDIS_HOST", "REDIS_PORT"):
        env["REDIS_URL"] = LISTENER_URL  # wins over REDIS_HOST/REDIS_PORT
    env.update(REDIS_HOST="127.0.0.1", REDIS_PORT=str(port))
    env[case.variable] = bad
    return {name: value.replace("{PORT}", str(port)) for name, value in env.items()}


def quoted(value: str) -> str:
    """An env-file value: unquoted (an inline comment must reach the file as systemd would read it), but quoted when
    its surrounding white space would otherwise be stripped by the file's parser."""
    return f"'{value}'" if value != value.strip() else value


def split_by_source(case: Case, env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], list[str]]:
    """The process environment and the flags of the case: in the env file, every variable is in the file."""
    if case.source == "environment":
        return env, ["--once"]
    env_file = tmp_path / f"{case.id}.env"
    lines = [f"{name}={quoted(value)}\n" for name, value in env.items()]
    env_file.write_text("".join(lines), encoding="utf-8")
    return {}, ["--once", "--env-file", str(env_file)]


# --- the listener standing in for Redis ------------------------------------------------------------------------------


class Listener:
    """A TCP socket on 127.0.0.1 that counts and closes every connection offered to it."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()


@pytest.fixture(scope="module")
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def assert_one_line_naming(text: str, variable: str) -> None:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert f"invalid configuration: {variable}=" in lines[0], text


# --- the list of variables -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [PROPOSER, GOVERNOR])
def test_every_spec_variable_is_a_setting_and_has_bad_values(module: str) -> None:
    declared = {f.metadata["env"] for f in env_fields(SETTINGS[module])}
    assert declared == SPEC_VARIABLES[module]
    assert SPEC_VARIABLES[module] <= set(BAD)
    tested = {case.variable for case in CASES if case.module == module}
    assert tested == SPEC_VARIABLES[module]
    # every variable is tested with every kind that applies to it, from both sources
    for variable in SPEC_VARIABLES[module]:
        kinds = {(c.kind, c.source) for c in CASES if c.module == module and c.variable == variable}
        assert {c.kind for c in CASES if c.module == module and c.variable == variable} >= {NOT_A_NUMBER}
        assert (INLINE_COMMENT, "env file") in kinds, variable


@pytest.mark.parametrize(("variable", "kind", "source"), sorted(BY_DESIGN))
def test_what_is_accepted_by_design_is_accepted(variable: str, kind: str, source: str) -> None:
    value = BAD[variable].value(kind)
    value = "" if value is None else value
    for cls in SETTINGS.values():
        settings = load_settings(cls, {"GOV_CONSUMER": "c", variable: value})
        shown = settings.as_environment()[variable]
        assert shown in (None, "<redacted>"), (variable, shown)


# --- in-process: the whole matrix through main(argv) -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    """main() points the root logger at the stderr of the moment (pytest's capture): put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_value_stops_main_with_78_and_one_line_before_redis(
    case: Case,
    listener: Listener,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    environ, argv = split_by_source(case, case_environment(case, listener.port), tmp_path)
    for name in list(os.environ):
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    before = listener.accepted
    status = RUNS[case.module](argv, StopSignal())
    err = capsys.readouterr().err
    assert status == EX_CONFIG, err
    assert_one_line_naming(err, case.variable)
    assert listener.accepted == before


# --- as processes: a representative subset, four at a time -----------------------------------------------------------

#: Every kind from both sources, and each type of variable of each daemon: float, int, bool, ip, port, URL, host,
#: key name, mode, consumer name.
PROCESS_SUBSET = [
    Case(PROPOSER, "P31_MIN_CONF", NOT_A_NUMBER, "environment"),
    Case(PROPOSER, "P31_STALE_SEC", OUT_OF_RANGE, "env file"),
    Case(PROPOSER, "PROPOSE_KEY_TTL", EMPTY, "environment"),
    Case(PROPOSER, "PROPOSE_STREAM_MAXLEN", INLINE_COMMENT, "env file"),
    Case(PROPOSER, "PROPOSE_STREAM_NAME", INLINE_COMMENT, "environment"),
    Case(PROPOSER, "PROPOSE_STREAM_NAME", NOT_A_NUMBER, "env file"),
    Case(PROPOSER, "REDIS_CLUSTER", NOT_A_NUMBER, "env file"),
    Case(PROPOSER, "METRICS_ADDR", INLINE_COMMENT, "environment"),
    Case(PROPOSER, "REDIS_URL", INLINE_COMMENT, "environment"),
    Case(PROPOSER, "REDIS_URL", OUT_OF_RANGE, "env file"),
    Case(PROPOSER, "REDIS_HOST", INLINE_COMMENT, "environment"),
    Case(PROPOSER, "REDIS_PORT", OUT_OF_RANGE, "environment"),
    Case(GOVERNOR, "P31_GOV_MODE", NOT_A_NUMBER, "environment"),
    Case(GOVERNOR, "P31_GOV_MODE", INLINE_COMMENT, "env file"),
    Case(GOVERNOR, "GOV_BLOCK_MS", OUT_OF_RANGE, "environment"),
    Case(GOVERNOR, "GOV_KILL_SCORE_CRITICAL", EMPTY, "env file"),
    Case(GOVERNOR, "STREAM_PLANS", INLINE_COMMENT, "environment"),
    Case(GOVERNOR, "GOV_CONSUMER", NOT_A_NUMBER, "env file"),
    Case(GOVERNOR, "METRICS_PORT", OUT_OF_RANGE, "env file"),
    Case(GOVERNOR, "REDIS_HOST", NOT_A_NUMBER, "env file"),
    Case(GOVERNOR, "REDIS_URL", NOT_A_NUMBER, "environment"),
    Case(GOVERNOR, "REDIS_DB", INLINE_COMMENT, "env file"),
    Case(GOVERNOR, "REDIS_PASSWORD", INLINE_COMMENT, "env file"),
    Case(GOVERNOR, "P31_MIN_FACTOR", OUT_OF_RANGE, "environment"),
]


def test_the_process_subset_covers_every_kind_source_and_is_in_the_matrix() -> None:
    assert {(c.kind, c.source) for c in PROCESS_SUBSET} == {(k, s) for k in KINDS for s in SOURCES}
    assert set(PROCESS_SUBSET) <= set(CASES)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_bad_value_stops_the_process_with_78_and_one_line_before_redis(listener: Listener, tmp_path: Path) -> None:
    def run(case: Case) -> tuple[Case, subprocess.CompletedProcess[str]]:
        environ, argv = split_by_source(case, case_environment(case, listener.port), tmp_path)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **environ}
        result = subprocess.run(
            [sys.executable, "-m", case.module, *argv],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return case, result

    before = listener.accepted
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, PROCESS_SUBSET))
    for case, result in results:
        assert result.returncode == EX_CONFIG, (case, result.stderr)
        assert_one_line_naming(result.stderr, case.variable)
    assert listener.accepted == before
