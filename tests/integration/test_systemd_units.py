"""The systemd units in ``deploy/systemd``, checked with systemd's own tool and against the daemons they run.

- ``systemd-analyze verify`` loads each unit as systemd would, inside a throwaway root laid out like the VPS;
- ``systemd-analyze security --offline=true`` scores its sandboxing (exposure at most 2.0 of 10);
- the directives the daemons rely on (``Type=notify``, the watchdog, ``RestartPreventExitStatus=78``, the installed
  paths of the console script and env file, as named in ``pyproject.toml``) are present with the right values;
- ``WatchdogSec=`` is long enough for the daemon's longest healthy gap between two ``WATCHDOG=1``.

A machine without ``systemd-analyze`` fails these tests rather than skipping them (``.ci/run`` installs ``systemd``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from microservices.allocation_target.settings import ProposerSettings
from microservices.core.daemon import parse_args
from microservices.core.settings import EX_CONFIG, load_settings
from microservices.core.systemd import WATCHDOG_EVERY_SEC
from microservices.devtools.daemon_process import ROOT
from microservices.governor.settings import MAX_READ_BLOCK_MS, GovernorSettings

UNIT_DIR = ROOT / "deploy" / "systemd"
#: The installed layout on the VPS (deploy/install.sh): the current release's venv, the env files, the user and group.
VENV_BIN = PurePosixPath("/opt/quantum/p31/current/.venv/bin")
ENV_DIR = PurePosixPath("/etc/quantum/p31")
INSTALLED_UNIT_DIR = PurePosixPath("/etc/systemd/system")
SERVICE_USER = "quantum-p31"
#: Where distributions keep the standard units (sysinit.target, network-online.target, ...) a unit pulls in.
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
#: SPEC §5: SIGTERM is honoured within this many seconds.
STOP_WITHIN_SEC = 5.0


@dataclass(frozen=True)
class Daemon:
    unit: str
    script: str  # console script, a key of pyproject's [project.scripts]
    module: str

    @property
    def exec_start(self) -> str:
        return f"{VENV_BIN / self.script} --log-format json"

    @property
    def env_file(self) -> PurePosixPath:
        """``p31-governor`` reads ``/etc/quantum/p31/governor.env``: the script's name without its prefix."""
        return ENV_DIR / f"{self.script.removeprefix('p31-')}.env"


PROPOSER = Daemon("quantum-allocation-target.service", "p31-allocation-target", "microservices.allocation_target")
GOVERNOR = Daemon("quantum-governor.service", "p31-governor", "microservices.governor")
DAEMONS = [pytest.param(PROPOSER, id="allocation-target"), pytest.param(GOVERNOR, id="governor")]

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Section -> key -> every value assigned, in order (``Documentation=`` and the like may repeat)."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not used in these units"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"line {number} is not a key=value in a section: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def load_unit(daemon: Daemon) -> Unit:
    return parse_unit((UNIT_DIR / daemon.unit).read_text(encoding="utf-8"))


def single(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set exactly once, found {values}"
    return values[0]


def words(unit: Unit, section: str, key: str) -> list[str]:
    return [word for value in unit.get(section, {}).get(key, []) for word in value.split()]


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is not installed: install the systemd package (.ci/run does)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), *args], capture_output=True, text=True, encoding="utf-8", check=False, timeout=60
    )


def shown(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args)}\nexit status {result.returncode}\n{result.stdout}{result.stderr}"


def timespan_sec(value: str) -> float:
    """A systemd time span (``60``, ``30s``, ``1min``) in seconds, parsed by systemd itself."""
    result = run("timespan", value)
    assert result.returncode == 0, shown(result)
    match = re.search(r"^\s*(?:μs|us):\s*(\d+)\s*$", result.stdout, re.MULTILINE)
    assert match is not None, shown(result)
    return int(match.group(1)) / 1e6


# --- 1. systemd-analyze verify -------------------------------------------------------------------------------------


def system_unit_dir() -> Path:
    for candidate in SYSTEM_UNIT_DIRS:
        if (candidate / "sysinit.target").is_file():
            return candidate
    pytest.fail(f"no standard systemd units (sysinit.target) in any of {SYSTEM_UNIT_DIRS}")


def vps_root(tmp_path: Path, daemon: Daemon) -> Path:
    """A root holding what the unit names, where the VPS has it: the unit, its console script (an executable), its
    env file; plus the distribution's standard units, which every service pulls in (sysinit.target, ...).

    ``verify --root`` in systemd 252 looks for the unit, ``ExecStart=``'s binary and every unit it depends on under
    the root. It does not resolve ``User=`` or read ``EnvironmentFile=`` (those happen when the service starts), so no
    etc/passwd is needed; the env file is there anyway, as installed (mode 0640)."""
    root = tmp_path / "root"
    shutil.copytree(system_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / INSTALLED_UNIT_DIR.relative_to("/")
    unit_dir.mkdir(parents=True)
    shutil.copy(UNIT_DIR / daemon.unit, unit_dir / daemon.unit)
    script = root / VENV_BIN.relative_to("/") / daemon.script
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    env_file = root / daemon.env_file.relative_to("/")
    env_file.parent.mkdir(parents=True)
    env_file.write_text("")
    env_file.chmod(0o640)
    return root


def verify(root: Path, daemon: Daemon) -> subprocess.CompletedProcess[str]:
    return run("verify", f"--root={root}", str(INSTALLED_UNIT_DIR / daemon.unit))


def lines_about(result: subprocess.CompletedProcess[str], daemon: Daemon) -> list[str]:
    """What verify printed about our unit: it exits 0 even for an unknown directive, which it only warns about."""
    return [line for line in (result.stdout + result.stderr).splitlines() if daemon.unit in line]


@pytest.mark.parametrize("daemon", DAEMONS)
def test_systemd_analyze_verify_passes_in_a_root_laid_out_like_the_vps(tmp_path: Path, daemon: Daemon) -> None:
    result = verify(vps_root(tmp_path, daemon), daemon)
    assert result.returncode == 0, shown(result)
    assert lines_about(result, daemon) == [], shown(result)


@pytest.mark.parametrize("daemon", DAEMONS)
def test_verify_checks_the_console_script_and_directives_inside_the_root(tmp_path: Path, daemon: Daemon) -> None:
    """The check above can fail: a unit whose ExecStart= names no executable there, or with a misspelt directive, is
    reported, so a wrong installed path or a typo in a unit would not pass."""
    root = vps_root(tmp_path, daemon)
    (root / VENV_BIN.relative_to("/") / daemon.script).unlink()
    missing = verify(root, daemon)
    assert missing.returncode != 0, shown(missing)
    assert any(str(VENV_BIN / daemon.script) in line for line in lines_about(missing, daemon)), shown(missing)

    root = vps_root(tmp_path / "typo", daemon)
    with (root / INSTALLED_UNIT_DIR.relative_to("/") / daemon.unit).open("a") as unit:
        unit.write("\n[Service]\nProtectSytem=strict\n")
    typo = verify(root, daemon)
    assert any("ProtectSytem" in line for line in lines_about(typo, daemon)), shown(typo)


# --- 2. systemd-analyze security -----------------------------------------------------------------------------------

MAX_EXPOSURE = 2.0
#: ``--threshold=`` counts tenths of the printed exposure (0..100 for 0.0..10.0; its default, 100, passes anything).
THRESHOLD = round(MAX_EXPOSURE * 10)


def security(daemon: Daemon, threshold: int) -> tuple[subprocess.CompletedProcess[str], float]:
    result = run("security", "--offline=true", f"--threshold={threshold}", "--no-pager", str(UNIT_DIR / daemon.unit))
    match = re.search(r"Overall exposure level for (\S+): (\d+\.\d+)", result.stdout + result.stderr)
    assert match is not None, shown(result)
    assert match.group(1) == daemon.unit, shown(result)
    return result, float(match.group(2))


@pytest.mark.parametrize("daemon", DAEMONS)
def test_security_exposure_is_at_most_2(daemon: Daemon) -> None:
    result, exposure = security(daemon, THRESHOLD)
    assert exposure <= MAX_EXPOSURE, shown(result)
    assert result.returncode == 0, shown(result)
    # The tool itself enforces the bound: one tenth below the unit's own figure, it fails.
    tenths = round(exposure * 10)
    assert tenths >= 1, shown(result)  # PrivateNetwork= is impossible (Redis may be remote), so never 0.0
    below, _ = security(daemon, tenths - 1)
    assert below.returncode != 0, shown(below)


# --- 3. the directives the daemons rely on -------------------------------------------------------------------------


def project_scripts() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        scripts: dict[str, str] = tomllib.load(f)["project"]["scripts"]
    return scripts


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_runs_the_installed_console_script_as_the_service_user(daemon: Daemon) -> None:
    assert project_scripts()[daemon.script] == f"{daemon.module}.__main__:main"
    unit = load_unit(daemon)
    exec_start = single(unit, "Service", "ExecStart")
    assert exec_start == daemon.exec_start
    # The daemon's own parser takes the arguments: a long-running daemon (no --once), settings from the environment
    # systemd builds from EnvironmentFile= (no --env-file), JSON logs.
    args = parse_args(daemon.script, "", exec_start.split()[1:])
    assert (args.once, args.env_file, args.log_format) == (False, None, "json")
    assert single(unit, "Service", "EnvironmentFile") == str(daemon.env_file)
    assert single(unit, "Service", "User") == SERVICE_USER
    assert single(unit, "Service", "Group") == SERVICE_USER


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_declares_notify_watchdog_restart_and_ordering(daemon: Daemon) -> None:
    unit = load_unit(daemon)
    assert single(unit, "Unit", "Description")
    assert unit["Unit"].get("Documentation")
    assert "network-online.target" in words(unit, "Unit", "Wants")
    assert {"network-online.target", "redis-server.service"} <= set(words(unit, "Unit", "After"))
    # Ordered after Redis only: a dependency would stop or fail the daemon with Redis, which it rides out itself.
    for strong in ("Requires", "Requisite", "BindsTo", "PartOf", "Upholds"):
        assert "redis-server.service" not in words(unit, "Unit", strong), strong

    assert single(unit, "Service", "Type") == "notify"
    assert single(unit, "Service", "NotifyAccess") == "main"
    assert timespan_sec(single(unit, "Service", "WatchdogSec")) > 0
    assert single(unit, "Service", "Restart") == "on-failure"
    assert timespan_sec(single(unit, "Service", "RestartSec")) > 0
    assert str(EX_CONFIG) in words(unit, "Service", "RestartPreventExitStatus")
    assert timespan_sec(single(unit, "Service", "TimeoutStopSec")) > STOP_WITHIN_SEC
    assert words(unit, "Install", "WantedBy") == ["multi-user.target"]


# --- 4. the watchdog against the daemon ----------------------------------------------------------------------------


def watchdog_sec(daemon: Daemon) -> float:
    return timespan_sec(single(load_unit(daemon), "Service", "WatchdogSec"))


def assert_watchdog_covers(daemon: Daemon, healthy_gap_sec: float, backoff_max_sec: float) -> None:
    """systemd wants a ping every half period; a daemon pinging every ``healthy_gap_sec`` must make it even when one
    round failed and waited out the whole reconnect backoff first."""
    watchdog = watchdog_sec(daemon)
    needed = 2 * (healthy_gap_sec + backoff_max_sec)
    assert watchdog >= needed, (
        f"{daemon.unit}: WatchdogSec={watchdog:g}s is shorter than 2 x (longest healthy gap {healthy_gap_sec:g}s"
        f" + backoff cap {backoff_max_sec:g}s) = {needed:g}s: a healthy daemon could be killed"
    )


def test_proposer_watchdog_outlasts_its_loop_interval() -> None:
    """The proposer pings after each loop, one every LOOP_INTERVAL_SEC (its loop takes milliseconds), and never more
    often than the notifier's own pace."""
    settings = load_settings(ProposerSettings, {})
    gap = max(settings.loop_interval_sec, WATCHDOG_EVERY_SEC)
    assert_watchdog_covers(PROPOSER, gap, settings.redis_backoff_max_sec)


def test_governor_watchdog_outlasts_its_longest_read() -> None:
    """The governor pings after each read, which blocks at most the cap whatever GOV_BLOCK_MS says; and a hung
    governor is restarted before a plan waiting for it turns stale."""
    settings = load_settings(GovernorSettings, {})
    assert settings.read_block_ms <= MAX_READ_BLOCK_MS
    assert_watchdog_covers(GOVERNOR, max(MAX_READ_BLOCK_MS / 1000, WATCHDOG_EVERY_SEC), settings.redis_backoff_max_sec)
    restart_sec = timespan_sec(single(load_unit(GOVERNOR), "Service", "RestartSec"))
    assert watchdog_sec(GOVERNOR) + restart_sec < settings.plan_max_age_sec
