"""The shipped env files: generated from the settings, valid, and `p31ctl check-config` catches every broken value.

The broken copies are generated from the shipped files, so every variable they set is covered, and a setting added
to a settings class without being shipped fails :func:`test_shipped_file_is_the_generated_one`.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from microservices.core.settings import env_fields, load_settings
from microservices.devtools.daemon_process import ROOT
from microservices.ops.cli import main
from microservices.ops.daemons import DAEMONS, DaemonInfo
from microservices.ops.env_template import UNSET, render_env_file

ASSIGNMENT = re.compile(r"^(#\s)?([A-Z][A-Z0-9_]*)=(.*)$")

#: A value outside the allowed range of each variable that has one (a Literal's list counts as a range). The test
#: below fails when a variable with a check is missing here, so a new check gets its case.
OUT_OF_RANGE = {
    "REDIS_PORT": "65536", "REDIS_DB": "-1", "REDIS_BACKOFF_MAX_SEC": "0", "METRICS_ADDR": "localhost",
    "METRICS_PORT": "70000", "METRICS_MAX_SYMBOLS": "0", "P31_MAX_FUTURE_SEC": "-1", "P31_MIN_CONF": "1.5",
    "P31_STALE_SEC": "0", "P31_MIN_MULT": "1.6", "P31_MAX_MULT": "-1", "PROPOSE_STREAM_MAXLEN": "0",
    "PROPOSE_KEY_TTL": "0", "LOOP_INTERVAL_SEC": "0", "P31_DOWNSIZE_THRESHOLD": "1.01", "P31_MIN_FACTOR": "0",
    "P31_MAX_EXTRA_COOLDOWN_SEC": "-1", "P31_EFF_TTL_SEC": "-600", "P31_GOV_MODE": "shadow", "PERMIT_TTL_SEC": "0",
    "STREAM_PLANS": "'two words'", "GOV_GROUP": "'gov group'", "GOV_BLOCK_MS": "5001", "GOV_CLAIM_IDLE_MS": "0",
    "GOV_MAX_DELIVERIES": "0", "GOV_PLAN_MAX_AGE_SEC": "0", "GOV_EVENTS_MAXLEN": "0", "GOV_KILL_SCORE_CRITICAL": "2",
    "GOV_SYMBOL_COOLDOWN_SECONDS": "-1", "GOV_MAX_EXEC_PER_5MIN": "0", "GOV_MAX_EXEC_PER_HOUR": "0",
    "REDIS_SENTINEL_MASTER": "'my master'", "GOV_MIN_REPLICAS": "-1", "GOV_REPLICA_WAIT_MS": "0",
    "PROPOSER_LEASE_KEY": "'lease key'",
}  # fmt: skip
#: Variables whose every finite number, or every non-empty text, is valid: they have no range to leave.
NO_RANGE = {"P31_SCALE", "P31_BASE", "REDIS_HOST", "PROPOSE_STREAM_NAME", "REDIS_CLUSTER"}


def shipped(daemon: DaemonInfo) -> Path:
    return ROOT / daemon.shipped_env


def assignments(text: str) -> list[tuple[bool, str, str]]:
    """(commented out, variable, value) of every assignment line."""
    found = []
    for line in text.splitlines():
        match = ASSIGNMENT.match(line)
        if match:
            found.append((match.group(1) is not None, match.group(2), match.group(3)))
    return found


def numeric(daemon: DaemonInfo, variable: str) -> bool:
    cls = daemon.settings_class
    hints = typing.get_type_hints(cls)
    field = next(f for f in env_fields(cls) if f.metadata["env"] == variable)
    return hints[field.name] in (int, float, bool)


def check(path: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(["check-config", str(path), *args], out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def with_value(daemon: DaemonInfo, variable: str, value: str, tmp_path: Path) -> Path:
    """A copy of the shipped file with ``variable``'s line set to ``value``."""
    lines = shipped(daemon).read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(f"{variable}="))
    lines[index] = f"{variable}={value}"
    copy = tmp_path / f"{variable}.env"
    copy.write_text("\n".join(lines) + "\n")
    return copy


DAEMON_LIST = list(DAEMONS.values())
SET_VARIABLES = [
    (daemon, name) for daemon in DAEMON_LIST for commented, name, _ in assignments(shipped(daemon).read_text())
    if not commented
]  # fmt: skip


@pytest.mark.parametrize("daemon", DAEMON_LIST, ids=lambda d: d.name)
def test_shipped_file_is_the_generated_one(daemon: DaemonInfo) -> None:
    assert shipped(daemon).read_text() == render_env_file(daemon), (
        f"regenerate: p31ctl env-template {daemon.name} > {daemon.shipped_env}"
    )


@pytest.mark.parametrize("daemon", DAEMON_LIST, ids=lambda d: d.name)
def test_shipped_file_names_every_variable_with_its_default_and_no_inline_comment(daemon: DaemonInfo) -> None:
    text = shipped(daemon).read_text()
    found = assignments(text)
    assert {name for _, name, _ in found} == daemon.variables
    # exactly the variables without a default, or with one computed at start-up, are written commented out
    assert [name for commented, name, _ in found if commented] == [name for _, name, _ in found if name in UNSET]
    assert {name for commented, name, _ in found if commented} == set(UNSET) & daemon.variables
    cls = daemon.settings_class
    for commented, name, value in found:
        assert "#" not in value, name
        if not commented:  # the value written is the default, as the daemon parses it
            field = next(f for f in env_fields(cls) if f.metadata["env"] == name)
            assert getattr(load_settings(cls, {name: value}), field.name) == field.default, name
    lines = text.splitlines()
    for i, line in enumerate(lines):  # every variable is preceded by its own comment lines
        match = ASSIGNMENT.match(line)
        if match and not match.group(1):
            assert lines[i - 1].startswith("# "), line


@pytest.mark.parametrize("daemon", DAEMON_LIST, ids=lambda d: d.name)
def test_shipped_file_passes_check_config_with_the_daemon_inferred(daemon: DaemonInfo) -> None:
    assert check(shipped(daemon)) == (0, f"OK: {shipped(daemon)} ({daemon.name})\n", "")


@pytest.mark.parametrize("daemon", DAEMON_LIST, ids=lambda d: d.name)
def test_the_commented_out_examples_are_valid_when_uncommented(daemon: DaemonInfo, tmp_path: Path) -> None:
    """Each on its own: some exclude one another (REDIS_URL and REDIS_SENTINELS)."""
    text = shipped(daemon).read_text()
    examples = re.findall(r"^# ([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE)
    assert examples
    for variable in examples:
        copy = tmp_path / f"{variable}.env"
        copy.write_text(re.sub(rf"^# ({variable}=)", r"\1", text, flags=re.MULTILINE))
        assert check(copy)[0] == 0, (variable, check(copy))


@pytest.mark.parametrize(("daemon", "variable"), SET_VARIABLES, ids=lambda v: getattr(v, "name", v))
def test_every_variable_broken_each_way_fails_naming_it(daemon: DaemonInfo, variable: str, tmp_path: Path) -> None:
    default = next(value for commented, name, value in assignments(shipped(daemon).read_text()) if name == variable)
    broken = {"empty": "", "inline comment": f"{default} # note"}
    if numeric(daemon, variable):
        broken["not a number"] = "abc"
    if variable not in NO_RANGE:
        broken["out of range"] = OUT_OF_RANGE[variable]
    for kind, value in broken.items():
        status, out, err = check(with_value(daemon, variable, value, tmp_path))
        assert status == 78, (kind, value, out, err)
        assert out == ""
        assert err.startswith(f"invalid configuration: {variable}="), (kind, err)
        assert len(err.splitlines()) == 1, err


def test_every_variable_with_a_range_has_an_out_of_range_case() -> None:
    every = set().union(*(d.variables for d in DAEMON_LIST)) - set(UNSET)
    assert set(OUT_OF_RANGE) | NO_RANGE == every


def test_a_typo_warns_and_fails_with_strict(tmp_path: Path) -> None:
    daemon = DAEMONS["governor"]
    copy = tmp_path / "typo.env"
    copy.write_text(shipped(daemon).read_text() + "GOV_MAX_EXEC_PER_5MINS=4\n")
    status, out, err = check(copy)
    assert (status, out) == (0, f"OK: {copy} (governor)\n")
    assert err == f"warning: {copy}: GOV_MAX_EXEC_PER_5MINS is not read by governor (a typo?)\n"
    status, out, err = check(copy, "--strict")
    assert status == 78
    assert "GOV_MAX_EXEC_PER_5MINS is not read by governor" in err
    assert "(--strict)" in err


def test_a_variable_of_the_other_daemon_is_a_warning_given_daemon(tmp_path: Path) -> None:
    copy = tmp_path / "mixed.env"
    copy.write_text(shipped(DAEMONS["allocation-target"]).read_text() + "P31_GOV_MODE=hint\n")
    assert check(copy)[0] == 64  # both daemons' own variables: which one?
    status, _, err = check(copy, "--daemon", "allocation-target")
    assert status == 0
    assert "P31_GOV_MODE is not read by allocation-target" in err


def test_a_file_of_shared_variables_only_needs_daemon(tmp_path: Path) -> None:
    copy = tmp_path / "shared.env"
    copy.write_text("REDIS_HOST=redis.internal\nP31_MIN_CONF=0.7\n")
    status, _, err = check(copy)
    assert status == 64
    assert "pass --daemon" in err
    assert check(copy, "--daemon", "governor") == (0, f"OK: {copy} (governor)\n", "")


def test_json_verdict(tmp_path: Path) -> None:
    out = io.StringIO()
    bad = with_value(DAEMONS["governor"], "GOV_BLOCK_MS", "0", tmp_path)
    assert main(["check-config", str(bad), "--json"], out=out, err=io.StringIO()) == 78
    assert json.loads(out.getvalue()) == {
        "file": str(bad),
        "daemon": "governor",
        "ok": False,
        "error": "invalid configuration: GOV_BLOCK_MS=0: must be within [1, 5000]",
        "variable": "GOV_BLOCK_MS",
        "errors": [
            {"variable": "GOV_BLOCK_MS", "error": "invalid configuration: GOV_BLOCK_MS=0: must be within [1, 5000]"}
        ],
        "unknown_variables": [],
    }


@pytest.mark.slow
def test_the_real_command_checks_the_file_not_the_callers_environment(tmp_path: Path) -> None:
    """The installed console script; a bad value in the caller's environment does not leak into the verdict."""
    p31ctl = Path(sys.executable).parent / "p31ctl"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "P31_MIN_CONF": "abc", "GOV_BLOCK_MS": "0"}
    for daemon in DAEMON_LIST:
        result = subprocess.run(
            [str(p31ctl), "check-config", daemon.shipped_env], env=env, cwd=ROOT, capture_output=True, text=True,
            check=False, timeout=60,
        )  # fmt: skip
        assert (result.returncode, result.stdout, result.stderr) == (
            0,
            f"OK: {daemon.shipped_env} ({daemon.name})\n",
            "",
        )
    broken = with_value(DAEMONS["governor"], "P31_MIN_CONF", "0.65 # note", tmp_path)
    result = subprocess.run(
        [str(p31ctl), "check-config", str(broken)], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 78
    assert result.stderr.startswith("invalid configuration: P31_MIN_CONF='0.65 # note': inline comment on line")
    assert "Traceback" not in result.stderr


def test_check_config_lists_every_bad_value_of_a_file(tmp_path: Path) -> None:
    """Issue 12: check-config stopped at the first bad value; the operator fixed a file one line per run."""
    bad = tmp_path / "governor.env"
    bad.write_text(
        "P31_GOV_MODE=enforced\nP31_MIN_CONF=1.5\nPERMIT_TTL_SEC=60 # one minute\nGOV_BLOCK_MS=0\nGOV_GROUP=governor\n"
    )
    out, err = io.StringIO(), io.StringIO()
    assert main(["check-config", str(bad)], out=out, err=err) == 78
    assert out.getvalue() == ""
    assert err.getvalue().splitlines() == [
        f"invalid configuration: PERMIT_TTL_SEC='60 # one minute': inline comment on line 3 of {bad} "
        "(systemd keeps it in the value)",
        "invalid configuration: P31_MIN_CONF=1.5: must be within [0, 1]",
        "invalid configuration: P31_GOV_MODE='enforced': must be one of hint, enforce, off",
        "invalid configuration: GOV_BLOCK_MS=0: must be within [1, 5000]",
    ]
    document = io.StringIO()
    assert main(["check-config", str(bad), "--json"], out=document, err=io.StringIO()) == 78
    assert [e["variable"] for e in json.loads(document.getvalue())["errors"]] == [
        "PERMIT_TTL_SEC", "P31_MIN_CONF", "P31_GOV_MODE", "GOV_BLOCK_MS",
    ]  # fmt: skip


def test_check_config_refuses_env_file_instead_of_ignoring_it(tmp_path: Path) -> None:
    """Issue 12: ``check-config --env-file /missing FILE`` ignored --env-file without a word."""
    good = tmp_path / "a.env"
    good.write_text("LOOP_INTERVAL_SEC=10\n")
    err = io.StringIO()
    assert main(["check-config", "--env-file", "/missing", str(good)], out=io.StringIO(), err=err) == 64
    assert err.getvalue() == (
        "p31ctl: error: check-config judges FILE alone and ignores --env-file /missing: give the file to check as "
        "FILE (p31ctl check-config /missing)\n"
    )
