"""The throwaway VPS itself (``microservices/devtools/systemd_vps.py``): it boots a real systemd, keeps what it writes
to itself, never empties the host's /tmp, and leaves nothing running or mounted behind — also when the process that
booted it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microservices.devtools.systemd_vps import CGROUP_ROOT, SystemdVps, unavailable_reason

UNAVAILABLE = unavailable_reason()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no systemd VPS on this machine: {UNAVAILABLE}")


def vps_cgroups(name: str) -> list[Path]:
    return [path for path in CGROUP_ROOT.glob(f"*/{name}") if path.exists()] + [
        path for path in [CGROUP_ROOT / name] if path.exists()
    ]


def test_the_vps_writes_nothing_to_the_host_and_leaves_nothing_behind(tmp_path: Path) -> None:
    marker = tmp_path / "host-marker"  # in the host's /tmp, which systemd-tmpfiles empties at boot
    marker.write_text("still here")
    with SystemdVps() as vps:
        assert vps.run("systemctl", "is-system-running").stdout.strip() in ("running", "degraded")
        assert vps.run("test", "-e", str(marker)).returncode != 0  # a /tmp of its own
        vps.run("sh", "-c", "echo inside > /etc/p31-vps-marker", check=True)
        assert vps.path("/etc/p31-vps-marker").read_text() == "inside\n"
        pid, name = vps.pid, vps.name
        assert pid is not None and vps_cgroups(name)
    assert marker.read_text() == "still here"
    assert not Path("/etc/p31-vps-marker").exists()
    assert not Path(f"/proc/{pid}").exists()
    assert vps_cgroups(name) == []


BOOT_AND_WAIT = """
import sys, time
from microservices.devtools.systemd_vps import SystemdVps
vps = SystemdVps().start()
print(vps.pid, vps.name, flush=True)
time.sleep(600)
"""


def test_a_vps_dies_with_the_process_that_booted_it() -> None:
    booter = subprocess.Popen(
        [sys.executable, "-c", BOOT_AND_WAIT], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
    )
    try:
        assert booter.stdout is not None
        pid_text, name = booter.stdout.readline().split()
        pid = int(pid_text)
        assert Path(f"/proc/{pid}").exists()
        os.kill(booter.pid, signal.SIGKILL)  # no context manager runs: only the kernel can end the VPS now
        booter.wait(timeout=30)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), "systemd outlived the process that booted it"
    finally:
        if booter.poll() is None:
            booter.kill()
            booter.wait()
    for cgroup in vps_cgroups(name):  # empty now; only a clean close removes them
        SystemdVps._remove_cgroup(cgroup)
