"""A throwaway VPS with a real systemd as its PID 1, for the tests of ``deploy/install.sh`` and the units.

``with SystemdVps() as vps:`` boots ``/lib/systemd/system`` as PID 1 of new PID, mount and UTS namespaces
(:file:`systemd_vps_boot.sh` lays out its root: an overlay over the host's ``/`` on a tmpfs, private ``/tmp`` and
``/run``), waits until it has booted, and however the block ends SIGKILLs that PID 1 — which ends every process of the
namespace — and removes what it left on the host (its cgroups and scratch directory). Every file it writes stays in
the overlay: each VPS starts as a clean copy of this machine.

Commands run inside with ``nsenter`` (:meth:`SystemdVps.run`); files are read and written through
``/proc/<pid>/root`` (:meth:`SystemdVps.path`). The network is the host's: a test gives the VPS's daemons a Redis and
metrics ports of its own.

It needs root, ``unshare``/``nsenter`` (util-linux), overlayfs and systemd installed; :func:`unavailable_reason` says
why a machine cannot, so that a test suite can say so plainly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Self

BOOT_SCRIPT = Path(__file__).with_name("systemd_vps_boot.sh")
SYSTEMD = Path("/lib/systemd/systemd")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The cgroup hierarchies systemd tracks its processes in (v1 named hierarchy, v2 unified or pure v2).
TRACKING_HIERARCHIES = ("systemd", "unified")
#: What a command inside sees of the caller's environment: the pip settings (which index, which wheels) and no more.
PASSED_ENV_PREFIXES = ("PIP_",)
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
#: systemctl is-system-running once the boot is over (degraded: some unit of this machine failed, as expected here).
BOOTED_STATES = frozenset({"running", "degraded"})


class VpsError(RuntimeError):
    """The VPS did not boot, or a command inside failed."""


def unavailable_reason() -> str | None:
    """Why this machine cannot boot a :class:`SystemdVps` (None when it can)."""
    if os.geteuid() != 0:
        return "not root (booting systemd in namespaces needs root)"
    for tool in ("unshare", "nsenter", "setpriv", "mount", "pivot_root"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux)"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is not installed (the systemd package)"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    if "overlay" not in filesystems:
        return "the kernel has no overlayfs"
    if (
        not any((CGROUP_ROOT / name / "cgroup.procs").exists() for name in TRACKING_HIERARCHIES)
        and not (CGROUP_ROOT / "cgroup.procs").exists()
    ):
        return f"no cgroup hierarchy for systemd under {CGROUP_ROOT}"
    return None


class SystemdVps:
    """A booted systemd in namespaces of its own; a context manager that always kills it."""

    def __init__(self, *, boot_timeout: float = 90.0) -> None:
        self.name = f"p31-vps-{uuid.uuid4().hex[:10]}"
        self.boot_timeout = boot_timeout
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self._scratch = self._dir / "scratch"
        self._scratch.mkdir()
        self.console_log = self._dir / "console.log"
        self._unshare: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # systemd, as the host numbers it

    # --- life -------------------------------------------------------------------------------------------------

    def _cgroups(self) -> list[Path]:
        """The cgroup of its own this VPS gets in each hierarchy systemd tracks processes in: systemd takes the cgroup
        it starts in as its root, so it never touches the host's."""
        if (CGROUP_ROOT / "cgroup.procs").exists():  # pure cgroup v2
            return [CGROUP_ROOT / self.name]
        return [
            CGROUP_ROOT / h / self.name for h in TRACKING_HIERARCHIES if (CGROUP_ROOT / h / "cgroup.procs").exists()
        ]

    def start(self) -> Self:
        reason = unavailable_reason()
        if reason is not None:
            raise VpsError(f"cannot boot a systemd VPS here: {reason}")
        cgroups = self._cgroups()
        for cgroup in cgroups:
            cgroup.mkdir()
        join = " ".join(f"echo $$ > {cgroup / 'cgroup.procs'};" for cgroup in cgroups)
        # setpriv --pdeathsig: unshare gets SIGKILL when this process dies, even by SIGKILL (a test run killed);
        # --kill-child: systemd gets SIGKILL whenever unshare dies. So no VPS outlives the process that booted it.
        command = (
            f"{join} exec unshare --pid --fork --kill-child=SIGKILL --mount --uts --propagation private"
            f" -- bash {BOOT_SCRIPT} {self._scratch}"
        )
        with self.console_log.open("wb") as console:
            self._unshare = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "--", "sh", "-c", command],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                env=BASE_ENV, start_new_session=True,
            )  # fmt: skip
        try:
            self.pid = self._find_systemd()
            self._wait_booted()
        except BaseException:
            self.close()
            raise
        return self

    def _find_systemd(self) -> int:
        """The host PID of the namespace's PID 1 (unshare's only child), once it has become systemd."""
        assert self._unshare is not None
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                raise VpsError(f"the VPS ended while booting (status {self._unshare.returncode}):\n{self.console()}")
            for child in self._children(self._unshare.pid):
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                        return child
            time.sleep(0.05)
        raise VpsError(f"systemd did not start within {self.boot_timeout:g}s:\n{self.console()}")

    @staticmethod
    def _children(pid: int) -> list[int]:
        children: list[int] = []
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                children += [int(c) for c in (task / "children").read_text().split()]
        return children

    def _wait_booted(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", timeout=30).stdout.strip()
            if state in BOOTED_STATES:
                return
            time.sleep(0.2)
        raise VpsError(f"systemd did not finish booting within {self.boot_timeout:g}s (state {state!r})")

    def close(self) -> None:
        """Kill the namespace's PID 1 (the kernel then kills every process in it); remove what is left on the host."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.pid = None
        if self._unshare is not None:
            # unshare reaps systemd, then exits; killed only if it does not (a zombie would keep systemd's PID)
            try:
                self._unshare.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._unshare.pid, signal.SIGKILL)
                self._unshare.wait(timeout=30)
            self._unshare = None
        for cgroup in self._cgroups():
            self._remove_cgroup(cgroup)
        shutil.rmtree(self._dir, ignore_errors=True)

    @staticmethod
    def _remove_cgroup(cgroup: Path, timeout: float = 10.0) -> None:
        """rmdir the cgroup and those systemd made in it, deepest first, once their processes are gone."""
        if not cgroup.exists():
            return
        deadline = time.monotonic() + timeout
        dirs = sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for directory in [*dirs, cgroup]:
            while True:
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- inside -----------------------------------------------------------------------------------------------

    def console(self) -> str:
        return self.console_log.read_text(errors="replace")[-4000:] if self.console_log.exists() else ""

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {**BASE_ENV, **{k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)}}
        env.update(extra or {})
        return env

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` as run inside: in the VPS's namespaces, its root and working directory /."""
        if self.pid is None:
            raise VpsError("the VPS is not running")
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-r", "-w", *args]

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside and wait for it; ``check`` raises :class:`VpsError` with its output on failure."""
        result = subprocess.run(
            self.command(args), capture_output=True, text=True, encoding="utf-8", errors="replace",
            env=self.env(env), timeout=timeout, input=input, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise VpsError(f"{' '.join(args)}: exit status {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def popen(self, *args: str, env: Mapping[str, str] | None = None, **kwargs: object) -> subprocess.Popen[str]:
        """Start a command inside without waiting for it."""
        return subprocess.Popen(self.command(args), env=self.env(env), text=True, **kwargs)  # type: ignore[call-overload, no-any-return]

    def path(self, path: str | PurePosixPath) -> Path:
        """The host's view of a path inside (through ``/proc/<pid>/root``), to read or write it directly."""
        if self.pid is None:
            raise VpsError("the VPS is not running")
        return Path(f"/proc/{self.pid}/root") / PurePosixPath(path).relative_to("/")

    # --- systemd ----------------------------------------------------------------------------------------------

    def systemctl(self, *args: str, check: bool = False, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check, timeout=timeout)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` of ``unit``'s ``properties``, as a dict."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in properties), check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_until(self, predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2) -> None:
        """Poll ``predicate`` until it holds; :class:`VpsError` naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise VpsError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(interval)

    def journal(self, unit: str, lines: int = 200) -> list[str]:
        """The unit's journal lines as written (``-o cat``)."""
        result = self.run("journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", unit)
        return result.stdout.splitlines()
