"""What ``deploy/install.sh`` does that shell does badly: name a release from its wheel, compare env files, and wait
for a restarted unit to become healthy (or say why it did not).

Run by the system ``python3`` with the standard library only: it must work before any release (and its venv) exists,
and whatever release is being put back. Each subcommand prints lines for the operator and exits 0 on success.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from datetime import UTC, datetime
from pathlib import Path

#: The module setuptools-scm writes into the package (pyproject.toml, ``[tool.setuptools_scm] version_file``).
BUILD_MODULE = "microservices/_build_version.py"
#: The local version part setuptools-scm adds for a tree with uncommitted changes: ``.dYYYYMMDD``.
DIRTY = re.compile(r"\.d\d{8}$")
JOURNAL_LINES = 15


# --- release-name ----------------------------------------------------------------------------------------------


def release_name(wheel: Path) -> str:
    """``<version>-<commit>`` (``<version>-<date>`` for a build without git metadata). A build of a tree with
    uncommitted changes also gets a hash of the wheel's content: its version names only the day, and two different
    such builds must not share a directory (the second install would change nothing)."""
    version = wheel.name.split("-")[1]
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read(BUILD_MODULE).decode("utf-8")
        digest = hashlib.sha256()
        for name in sorted(archive.namelist()):
            digest.update(name.encode() + b"\0" + archive.read(name))
    match = re.search(r"commit_id = '([^']+)'", source)
    if match is None:
        return f"{version}-{datetime.now(UTC):%Y%m%d%H%M%S}"
    name = f"{version}-{match.group(1).removeprefix('g')}"
    if DIRTY.search(version):
        name += f"-{digest.hexdigest()[:8]}"
    return name


# --- env files -------------------------------------------------------------------------------------------------


def read_env(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's ``EnvironmentFile=`` has them (comments and blank lines skipped; the values
    compared as written)."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def shown(key: str, value: str) -> str:
    """A value as the operator may see it on a terminal: secrets (a password, a URL that may carry one) redacted."""
    return "<redacted>" if "PASSWORD" in key or key == "REDIS_URL" else repr(value)


def env_diff(existing: Path, shipped: Path) -> list[str]:
    """One line per variable whose value differs between the operator's file and the shipped one."""
    old, new = read_env(existing), read_env(shipped)
    lines: list[str] = []
    for key in sorted(old.keys() | new.keys()):
        if key not in new:
            lines.append(f"{key}: set here ({shown(key, old[key])}), not in the shipped file (a variable it ignores?)")
        elif key not in old:
            lines.append(f"{key}: not set here; shipped default {shown(key, new[key])}")
        elif old[key] != new[key]:
            lines.append(f"{key}: {shown(key, old[key])} here, shipped default {shown(key, new[key])}")
    return lines


def healthz_url(env_file: Path, default_port: int) -> str:
    values = read_env(env_file) if env_file.exists() else {}
    addr = values.get("METRICS_ADDR", "127.0.0.1") or "127.0.0.1"
    port = values.get("METRICS_PORT", str(default_port)) or str(default_port)
    host = f"[{addr}]" if ":" in addr else addr
    return f"http://{host}:{port}/healthz"


# --- wait-healthy ----------------------------------------------------------------------------------------------


def unit_state(unit: str) -> dict[str, str]:
    props = "ActiveState,SubState,Result,NRestarts,ExecMainStatus,ExecMainCode,InvocationID,MainPID"
    out = subprocess.run(
        ["systemctl", "show", unit, f"--property={props}"], capture_output=True, text=True, check=False
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def healthz(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return int(response.status), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def journal_tail(unit: str, invocation: str) -> list[str]:
    """The unit's last journal lines, of this start only when systemd gave it an invocation id."""
    match = [f"_SYSTEMD_INVOCATION_ID={invocation}"] if invocation else []
    out = subprocess.run(
        ["journalctl", "--no-pager", "-o", "cat", "-n", str(JOURNAL_LINES), "-u", unit, *match],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    return out.splitlines()


def wait_healthy(unit: str, url: str | None, version: str | None, before: str, timeout: float) -> int:
    """Wait until ``unit`` runs a start newer than invocation ``before`` and, given ``url``, its ``/healthz`` answers
    200 (with ``version``, when given: the restarted build, not the one still stopping). A start that fails, exits or
    is restarted by systemd fails at once, naming the reason and the journal lines of that start."""
    deadline = time.monotonic() + timeout
    state: dict[str, str] = {}
    last = "not started"
    while time.monotonic() < deadline:
        state = unit_state(unit)
        new_start = state.get("InvocationID", "") not in ("", before)
        failed = state.get("ActiveState") == "failed" or state.get("SubState") == "auto-restart"
        if new_start and (failed or int(state.get("NRestarts", "0") or 0) > 0):
            return _failed(unit, state, "it exited", last)
        if new_start and state.get("ActiveState") == "active":
            if url is None:
                return 0
            status, body = healthz(url)
            if status == 200 and (version is None or body.get("version") == version):
                print(f"{unit}: healthy ({url}: 200, version {body.get('version')})")
                return 0
            last = f"{url} answered {status or 'nothing'}" + (f" (version {body.get('version')})" if body else "")
        else:
            last = f"state {state.get('ActiveState')}/{state.get('SubState')}"
        time.sleep(0.5)
    return _failed(unit, state, f"not healthy within {timeout:g}s", last)


def _failed(unit: str, state: dict[str, str], what: str, last: str) -> int:
    exit_info = f"{state.get('ExecMainCode', '?')}/{state.get('ExecMainStatus', '?')}"
    print(
        f"{unit} failed: {what}; last seen: {last}; state {state.get('ActiveState')}/{state.get('SubState')},"
        f" result {state.get('Result')}, main process exit {exit_info}"
    )
    print(f"last journal lines of {unit}:")
    for line in journal_tail(unit, state.get("InvocationID", "")):
        print(f"  {line}")
    return 1


# --- main ------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="install_helper.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    name = sub.add_parser("release-name", help="the release directory name for a built wheel")
    name.add_argument("wheel", type=Path)
    version = sub.add_parser("wheel-version", help="the version of a built wheel")
    version.add_argument("wheel", type=Path)
    diff = sub.add_parser("env-diff", help="the variables whose values differ between two env files")
    diff.add_argument("existing", type=Path)
    diff.add_argument("shipped", type=Path)
    url = sub.add_parser("healthz-url", help="the /healthz URL of the daemon an env file configures")
    url.add_argument("env_file", type=Path)
    url.add_argument("default_port", type=int)
    wait = sub.add_parser("wait-healthy", help="wait for a restarted unit to become healthy")
    wait.add_argument("unit")
    wait.add_argument("--url")
    wait.add_argument("--version")
    wait.add_argument("--before", default="", help="the InvocationID of the start being replaced")
    wait.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    if args.command == "release-name":
        print(release_name(args.wheel))
    elif args.command == "wheel-version":
        print(args.wheel.name.split("-")[1])
    elif args.command == "env-diff":
        for line in env_diff(args.existing, args.shipped):
            print(line)
    elif args.command == "healthz-url":
        print(healthz_url(args.env_file, args.default_port))
    else:
        return wait_healthy(args.unit, args.url, args.version, args.before, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
