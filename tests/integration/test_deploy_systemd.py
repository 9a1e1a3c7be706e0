"""``deploy/install.sh`` and the units under a real systemd (issue 11): the ten behaviours, on a throwaway VPS.

A :class:`~microservices.devtools.systemd_vps.SystemdVps` boots systemd 252 as PID 1 of namespaces of its own, with an
overlay over this machine's root; its daemons reach this suite's own Redis and serve metrics on free ports (the
network is the host's). Three checkouts of this working tree are installed into it, as an operator would: ``r1``
(the tree as it is), ``r2`` (one commit later) and ``broken`` (one commit later, whose governor dies at start).

The module shares one VPS, in order: what ``r1`` shows once installed (1-6, 10), then the refused install (5), the
upgrade under load (7), the broken release and the rollbacks (8), and ``uninstall`` (9); the deployment before P3.1
gets a VPS of its own. Where this machine cannot boot systemd the whole module is skipped with the reason, which
``tests/conftest.py`` repeats in the last lines of the run.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from microservices.devtools import plans
from microservices.devtools.checkout import snapshot, with_commit
from microservices.devtools.daemon_process import http_get
from microservices.devtools.redis_server import RedisServer, free_port
from microservices.devtools.systemd_vps import SystemdVps, unavailable_reason

UNAVAILABLE = unavailable_reason()
pytestmark = [
    pytest.mark.slow,
    # a release build takes 10-20 s, more on a loaded machine; a test may make two and restart the daemons thrice
    pytest.mark.timeout(420),
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no systemd VPS on this machine: {UNAVAILABLE}"),
]

PROPOSER = "quantum-allocation-target.service"
GOVERNOR = "quantum-governor.service"
UNITS = (PROPOSER, GOVERNOR)
ENV_DIR = "/etc/quantum/p31"
BASE = "/opt/quantum/p31"
SERVICE_USER = "quantum-p31"
#: The proposer's loop in these tests: long enough that a restart fits in one interval (behaviour 7).
LOOP_INTERVAL_SEC = 5
MAX_EXPOSURE = 1.5
BROKEN = "broken on purpose by the test of deploy/install.sh"


@dataclass(frozen=True)
class Sources:
    """The checkouts on this host; :meth:`Deployment.install` copies one into the VPS."""

    r1: Path
    r2: Path
    broken: Path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    base = tmp_path_factory.mktemp("checkouts")
    r1 = snapshot(base / "r1")
    r2 = with_commit(r1, base / "r2", {"docs/RELEASE.md": "The second release of the tests.\n"}, "a later release")
    main = (r1 / "microservices/governor/__main__.py").read_text()
    dead = main.replace("    stop = StopSignal().install()\n", f"    raise RuntimeError({BROKEN!r})\n", 1)
    assert dead != main
    broken = with_commit(r1, base / "broken", {"microservices/governor/__main__.py": dead}, "a broken governor")
    return Sources(r1, r2, broken)


@pytest.fixture(scope="module")
def vps_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@dataclass
class Deployment:
    vps: SystemdVps
    redis_server: RedisServer
    sources: Sources
    ports: dict[str, int]
    first_install: str = ""

    def checkout(self, source: Path) -> str:
        """The checkout's path inside the VPS (copied there on first use: the VPS has a /tmp of its own)."""
        inside = f"/srv/checkouts/{source.name}"
        if not self.vps.path(inside).exists():
            shutil.copytree(source, self.vps.path(inside), symlinks=True)
        return inside

    def script(self, source: Path, *args: str, timeout: float = 300) -> tuple[int, str]:
        """``deploy/install.sh ARGS`` of ``source``, run as root inside; its exit status and output."""
        result = self.vps.run("bash", f"{self.checkout(source)}/deploy/install.sh", *args, timeout=timeout)
        return result.returncode, result.stdout + result.stderr

    def install(self, source: Path, *args: str) -> str:
        status, output = self.script(source, "install", *args)
        assert status == 0, output
        return output

    def healthz(self, unit: str) -> tuple[int, dict[str, Any]]:
        try:
            status, body = http_get(f"http://127.0.0.1:{self.ports[unit]}/healthz", timeout=5)
        except OSError:
            return 0, {}
        return status, json.loads(body) if body.startswith("{") else {}

    def metrics(self, unit: str) -> str:
        return http_get(f"http://127.0.0.1:{self.ports[unit]}/metrics", timeout=5)[1]

    def main_pid(self, unit: str) -> int:
        return int(self.vps.show(unit, "MainPID")["MainPID"])

    def current(self) -> str:
        return self.vps.path(f"{BASE}/current").readlink().name

    def wait_healthy(self, unit: str, *, version: str | None = None, timeout: float = 90) -> None:
        def healthy() -> bool:
            status, body = self.healthz(unit)
            return status == 200 and (version is None or body.get("version") == version)

        self.vps.wait_until(healthy, timeout=timeout, what=f"{unit} /healthz 200 (version {version or 'any'})")

    def client(self) -> redis.Redis:
        return self.redis_server.client()


def release_version(deployment: Deployment) -> str:
    return deployment.vps.path(f"{BASE}/current/.version").read_text().strip()


def write_env_files(vps: SystemdVps, redis_url: str, ports: dict[str, int]) -> None:
    """The operator's env files, there before the first install (which must keep them): this suite's Redis, free
    metrics ports, a short proposer loop and permits that outlive the checks."""
    env_dir = vps.path(ENV_DIR)
    env_dir.mkdir(parents=True, exist_ok=True)
    (env_dir / "allocation-target.env").write_text(
        f"REDIS_URL={redis_url}\nMETRICS_PORT={ports[PROPOSER]}\nLOOP_INTERVAL_SEC={LOOP_INTERVAL_SEC}\n"
    )
    governor = f"REDIS_URL={redis_url}\nMETRICS_PORT={ports[GOVERNOR]}\nPERMIT_TTL_SEC=900\n"
    (env_dir / "governor.env").write_text(governor)
    for name in ("allocation-target.env", "governor.env"):
        (env_dir / name).chmod(0o640)


@pytest.fixture(scope="module")
def deployed(sources: Sources, vps_redis: RedisServer) -> Iterator[Deployment]:
    """A VPS with release r1 installed by ``install.sh`` on a clean system, both daemons healthy."""
    with SystemdVps() as vps:
        ports = {PROPOSER: free_port(), GOVERNOR: free_port()}
        write_env_files(vps, vps_redis.url, ports)
        deployment = Deployment(vps, vps_redis, sources, ports)
        started = time.monotonic()
        deployment.first_install = deployment.install(sources.r1)
        print(f"\ninstall of r1 on a clean VPS: {time.monotonic() - started:.1f}s")
        yield deployment


def reset_plans(deployment: Deployment) -> redis.Redis:
    """An empty Redis for a test's plans; the running governor re-creates its group (NOGROUP) on its next read."""
    client = deployment.client()
    client.flushall()
    deployment.vps.wait_until(
        lambda: bool(client.exists(plans.PLANS)), timeout=30, what="the governor to re-create its consumer group"
    )
    return client


def wait_settled(deployment: Deployment, client: redis.Redis, timeout: float = 90) -> None:
    deployment.vps.wait_until(lambda: plans.settled(client), timeout=timeout, what="every plan decided")


def assert_every_plan_one_outcome(client: redis.Redis) -> None:
    problems, kinds = plans.outcome_violations(client, plans.stream_plan_set(client))
    assert problems == [], problems
    assert kinds["permit"] > 0, kinds


def wait_restarted(deployment: Deployment, unit: str, old_pid: int, why: str) -> None:
    """A new main process of ``unit`` that answers /healthz 200."""

    def restarted() -> bool:
        return deployment.main_pid(unit) not in (0, old_pid) and deployment.healthz(unit)[0] == 200

    deployment.vps.wait_until(restarted, timeout=60, what=f"{unit} restarted {why}")


# --- 1. install on a clean VPS ------------------------------------------------------------------------------------


def test_1_install_on_a_clean_vps_runs_both_daemons(deployed: Deployment) -> None:
    output = deployed.first_install
    assert "creating the system user and group quantum-p31" in output
    assert "keeping /etc/quantum/p31/governor.env; the shipped file is written beside it" in output
    vps = deployed.vps
    for unit in UNITS:
        state = vps.show(unit, "ActiveState", "SubState", "UnitFileState", "ExecStart")
        assert (state["ActiveState"], state["UnitFileState"]) == ("active", "enabled"), state  # READY=1 came
        assert f"path={BASE}/current/.venv/bin/" in state["ExecStart"]
        status, body = deployed.healthz(unit)
        assert status == 200
        assert body["version"] == release_version(deployed)
    status, shown = deployed.script(deployed.sources.r1, "status")
    assert status == 0, shown
    assert f"p31-install:  * {deployed.current()}" in shown, shown
    for unit in UNITS:
        assert f"{unit}: enabled, active; http://127.0.0.1:{deployed.ports[unit]}/healthz: 200 " in shown, shown
    # the operator's env files are kept; the shipped ones are beside them
    assert "REDIS_URL=" in vps.path(f"{ENV_DIR}/governor.env").read_text()
    assert "REDIS_HOST=localhost" in vps.path(f"{ENV_DIR}/governor.env.new").read_text()

    client = reset_plans(deployed)
    client.hset("quantum:capital:efficiency:P31VPSUSDT", mapping={"efficiency_score": "0.9", "confidence": "0.9",
                                                                 "ts": str(time.time())})  # fmt: skip
    client.hset("quantum:allocation:target:P31VPSUSDT", mapping={"target_usd": "1000"})
    client.xadd(plans.PLANS, {"plan_id": "vps-1", "symbol": "P31VPSUSDT", "action": "OPEN_LONG",
                              "decision": "EXECUTE", "qty": "1"})  # fmt: skip
    vps.wait_until(lambda: bool(client.exists("quantum:permit:vps-1")), timeout=30, what="the plan's permit")
    vps.wait_until(
        lambda: bool(client.exists("quantum:allocation:target:proposed:P31VPSUSDT")),
        timeout=3 * LOOP_INTERVAL_SEC + 10, what="the symbol's proposal",
    )  # fmt: skip
    assert client.hget("quantum:allocation:target:proposed:P31VPSUSDT", "multiplier") == b"1.4000"

    for unit in UNITS:
        # what the daemon wrote (systemd's own lines about the unit are plain text)
        identifier = "p31-" + unit.removeprefix("quantum-").removesuffix(".service")
        lines = vps.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, "-t", identifier, check=True).stdout
        records = [json.loads(line) for line in lines.splitlines()]  # every line one JSON object
        assert records, lines
        version = release_version(deployed)
        assert any(f"{version} (commit " in record["msg"] and "starting" in record["msg"] for record in records)
    info = deployed.metrics(GOVERNOR)
    build_info = r'^p31_build_info\{commit="[0-9a-f]+",version="' + re.escape(release_version(deployed)) + '"} 1.0$'
    assert re.search(build_info, info, re.MULTILINE), info


# --- 2. the sandbox is enforced -----------------------------------------------------------------------------------


def test_2_the_sandbox_is_enforced_in_the_running_units(deployed: Deployment) -> None:
    vps = deployed.vps
    uid = vps.run("id", "-u", SERVICE_USER, check=True).stdout.strip()
    gid = vps.run("id", "-g", SERVICE_USER, check=True).stdout.strip()
    for unit in UNITS:
        pid = str(deployed.main_pid(unit))
        status = dict(
            line.split(":\t", 1) for line in vps.run("cat", f"/proc/{pid}/status", check=True).stdout.splitlines()
        )
        for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[cap], 16) == 0, (unit, cap, status[cap])
        assert status["Uid"].split()[0] == uid
        assert (status["NoNewPrivs"].strip(), status["Seccomp"].strip()) == ("1", "2")

        # As the daemon's user, in its user and mount namespaces: what may it write?
        def write(path: str, unit: str = unit, pid: str = pid) -> int:
            probe = f"touch {path} 2>/dev/null"
            return vps.run("nsenter", "-t", pid, "-U", "-m", "-S", uid, "-G", gid, "sh", "-c", probe).returncode

        assert write("/tmp/p31-probe") == 0  # its private /tmp: the probe itself works
        for path in (f"{BASE}/p31-probe", f"{BASE}/current/p31-probe", "/etc/p31-probe", "/home/p31-probe"):
            assert write(path) != 0, f"{unit} could write {path}"

        result = vps.run("systemd-analyze", "security", "--no-pager", unit, check=True)
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
        assert match is not None, result.stdout
        print(f"\nsystemd-analyze security {unit} (running): {match.group(1)}")
        assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


# --- 3. SIGKILL -----------------------------------------------------------------------------------------------------


def test_3_a_sigkilled_daemon_is_restarted_and_nothing_is_lost(deployed: Deployment) -> None:
    vps = deployed.vps
    client = reset_plans(deployed)
    before = {unit: deployed.main_pid(unit) for unit in UNITS}
    stop = threading.Event()
    producer = threading.Thread(
        target=plans.publish, args=(client, 300), kwargs={"symbols": 8, "seed": 3, "pause": 0.01, "stop": stop}
    )
    producer.start()
    try:
        time.sleep(0.5)
        for unit in UNITS:
            vps.run("kill", "-KILL", str(before[unit]), check=True)
        for unit in UNITS:
            wait_restarted(deployed, unit, before[unit], "after SIGKILL")
            assert int(vps.show(unit, "NRestarts")["NRestarts"]) >= 1
    finally:
        stop.set()
        producer.join()
    wait_settled(deployed, client)
    assert_every_plan_one_outcome(client)


# --- 4. watchdog ----------------------------------------------------------------------------------------------------

WATCHDOG_DROPIN = f"/etc/systemd/system/{GOVERNOR}.d/zz-watchdog-test.conf"
WATCHDOG_TEST_SEC = 5


def test_4_a_hung_daemon_is_killed_by_the_watchdog_and_restarted(deployed: Deployment) -> None:
    vps = deployed.vps
    dropin = vps.path(WATCHDOG_DROPIN)
    dropin.parent.mkdir(parents=True, exist_ok=True)
    # short enough for a test, long enough that a governor slowed by a loaded machine still pings in time
    dropin.write_text(f"[Service]\nWatchdogSec={WATCHDOG_TEST_SEC}s\nRestartSec=1s\n")
    try:
        vps.systemctl("daemon-reload", check=True)
        vps.systemctl("restart", GOVERNOR, check=True)
        deployed.wait_healthy(GOVERNOR)
        time.sleep(WATCHDOG_TEST_SEC + 1)  # pings keep a healthy governor alive past one WatchdogSec
        assert vps.show(GOVERNOR, "ActiveState")["ActiveState"] == "active"
        hung = deployed.main_pid(GOVERNOR)
        restarts = int(vps.show(GOVERNOR, "NRestarts")["NRestarts"])
        vps.run("kill", "-STOP", str(hung), check=True)
        wait_restarted(deployed, GOVERNOR, hung, "by the watchdog")
        assert int(vps.show(GOVERNOR, "NRestarts")["NRestarts"]) == restarts + 1
        journal = vps.run("journalctl", "--no-pager", "-u", GOVERNOR, "-o", "cat").stdout
        assert "Watchdog timeout" in journal
    finally:
        dropin.unlink(missing_ok=True)
        vps.systemctl("daemon-reload", check=True)
        vps.systemctl("restart", GOVERNOR, check=True)
    deployed.wait_healthy(GOVERNOR)


# --- 5. a bad env file ----------------------------------------------------------------------------------------------


def test_5_a_bad_value_exits_78_without_a_restart_loop(deployed: Deployment) -> None:
    vps = deployed.vps
    env_file = vps.path(f"{ENV_DIR}/governor.env")
    good = env_file.read_text()
    env_file.write_text(good + "P31_MIN_CONF=0.65 # a note\n")
    try:
        vps.systemctl("restart", GOVERNOR)
        vps.wait_until(lambda: vps.show(GOVERNOR, "ActiveState")["ActiveState"] == "failed", timeout=30, what="exit 78")
        time.sleep(7)  # longer than RestartSec=5: a restart would have come by now
        state = vps.show(GOVERNOR, "ActiveState", "ExecMainStatus", "NRestarts", "Result")
        assert state == {"ActiveState": "failed", "ExecMainStatus": "78", "NRestarts": "0", "Result": "exit-code"}
        status = vps.systemctl("status", "--no-pager", "--lines=20", GOVERNOR).stdout
        assert "invalid configuration: P31_MIN_CONF=" in status, status
    finally:
        env_file.write_text(good)
        vps.systemctl("restart", GOVERNOR, check=True)
    deployed.wait_healthy(GOVERNOR)


def test_5_install_refuses_a_bad_env_file_before_switching(deployed: Deployment) -> None:
    vps = deployed.vps
    running = deployed.current()
    pids = {unit: deployed.main_pid(unit) for unit in UNITS}
    env_file = vps.path(f"{ENV_DIR}/allocation-target.env")
    good = env_file.read_text()
    env_file.write_text(good + "P31_MIN_MULT=2\nP31_MAX_MULT=1.5\n")
    try:
        status, output = deployed.script(deployed.sources.r2, "install")
    finally:
        env_file.write_text(good)
    assert status != 0, output
    assert "P31_MIN_MULT" in output and "refused" in output, output
    assert "next: fix the variable named above" in output
    assert deployed.current() == running
    assert {unit: deployed.main_pid(unit) for unit in UNITS} == pids


# --- 6. systemctl stop during a burst -------------------------------------------------------------------------------


def test_6_stop_during_a_burst_exits_0_and_every_plan_ends_once(deployed: Deployment) -> None:
    vps = deployed.vps
    client = reset_plans(deployed)
    stop = threading.Event()
    producer = threading.Thread(
        target=plans.publish, args=(client, 3000), kwargs={"symbols": 20, "seed": 6, "pause": 0.0, "stop": stop}
    )
    producer.start()
    try:
        vps.wait_until(lambda: plans.events_count(client) > 50, timeout=30, what="the burst being decided")
        started = time.monotonic()
        vps.systemctl("stop", GOVERNOR, check=True)
        took = time.monotonic() - started
        state = vps.show(GOVERNOR, "ExecMainStatus", "ExecMainCode", "Result", "TimeoutStopUSec")
        assert (state["ExecMainStatus"], state["Result"]) == ("0", "success"), state
        assert took < 15, took
        print(f"\nsystemctl stop of the governor during a burst: {took:.1f}s, exit status 0")
    finally:
        stop.set()
        producer.join()
        vps.systemctl("start", GOVERNOR, check=True)
    wait_settled(deployed, client)
    assert_every_plan_one_outcome(client)


# --- 10. the proof scripts against the installed daemons ------------------------------------------------------------


def test_10_both_proof_scripts_pass_against_the_installed_daemons(deployed: Deployment) -> None:
    vps = deployed.vps
    deployed.client().flushall()
    deployed.wait_healthy(GOVERNOR)  # its group is re-created on its next read
    proofs = [
        ("proof_p31_step1_allocation_shadow.sh", "allocation-target.env", "--proposer-url", PROPOSER),
        ("proof_p31_step2_governor_downsize.sh", "governor.env", "--governor-url", GOVERNOR),
    ]
    for script, env_file, url_option, unit in proofs:
        result = vps.run(
            f"{BASE}/current/scripts/{script}", "--env-file", f"{ENV_DIR}/{env_file}",
            url_option, f"http://127.0.0.1:{deployed.ports[unit]}", timeout=180,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "RESULT PASS" in result.stdout


# --- 7. upgrade while plans flow ------------------------------------------------------------------------------------


def proposal_gaps(client: redis.Redis, symbol: str, since_ms: int) -> list[float]:
    """Seconds between consecutive proposals of ``symbol`` on the proposals stream since ``since_ms``."""
    raw: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
        "quantum:stream:allocation.target.proposed", min=str(since_ms)
    )
    times = [plans.entry_ms(entry_id) / 1000 for entry_id, fields in raw if fields[b"symbol"] == symbol.encode()]
    return [b - a for a, b in itertools.pairwise(times)]


def test_7_upgrade_while_plans_flow_loses_nothing(deployed: Deployment) -> None:
    vps = deployed.vps
    client = reset_plans(deployed)
    client.hset("quantum:allocation:target:P31UPGUSDT", mapping={"target_usd": "100"})
    vps.wait_until(
        lambda: bool(client.exists("quantum:allocation:target:proposed:P31UPGUSDT")),
        timeout=3 * LOOP_INTERVAL_SEC + 10, what="the upgrade symbol's first proposal",
    )  # fmt: skip
    old = release_version(deployed)
    since_ms = int(time.time() * 1000)
    stop = threading.Event()
    producer = threading.Thread(
        target=plans.publish, args=(client, 100_000), kwargs={"symbols": 20, "seed": 7, "pause": 0.01, "stop": stop}
    )
    producer.start()
    try:
        started = time.monotonic()
        output = deployed.install(deployed.sources.r2)
        upgrade_sec = time.monotonic() - started
        time.sleep(1)
    finally:
        stop.set()
        producer.join()
    print(f"\nupgrade r1 -> r2 under ~100 plans/s: {upgrade_sec:.1f}s")
    new = release_version(deployed)
    assert new != old and "done: release" in output, output
    for unit in UNITS:
        assert deployed.healthz(unit)[1]["version"] == new
    wait_settled(deployed, client)
    assert_every_plan_one_outcome(client)
    assert len(plans.stream_plan_set(client).entries) > 300
    # the proposer misses at most one loop: no gap reaches two intervals (plus a second of scheduling slack)
    time.sleep(LOOP_INTERVAL_SEC)
    gaps = proposal_gaps(client, "P31UPGUSDT", since_ms)
    assert gaps and max(gaps) < 2 * LOOP_INTERVAL_SEC + 1, gaps
    published = len(plans.stream_plan_set(client).entries)
    longest = max(gaps)
    print(f"upgrade: {published} plans, one outcome each; proposer gaps <= {longest:.1f}s (loop {LOOP_INTERVAL_SEC}s)")

    # a second install of the same release changes nothing and restarts nothing
    pids = {unit: deployed.main_pid(unit) for unit in UNITS}
    again = deployed.install(deployed.sources.r2)
    assert "already current and both units run it: nothing to do" in again, again
    assert {unit: deployed.main_pid(unit) for unit in UNITS} == pids


# --- 8. a release that cannot become healthy ------------------------------------------------------------------------


def test_8_an_unhealthy_release_is_rolled_back_automatically(deployed: Deployment) -> None:
    vps = deployed.vps
    deployed.install(deployed.sources.r2)  # as test 7 left it, also when run alone
    good, good_version = deployed.current(), release_version(deployed)
    status, output = deployed.script(deployed.sources.broken, "install")
    assert status != 0, output
    assert f"{GOVERNOR} failed" in output, output
    assert BROKEN in output, output  # the reason, from the journal
    assert f"release {good} is current and healthy again" in output, output
    assert deployed.current() == good
    for unit in UNITS:
        assert vps.show(unit, "ActiveState")["ActiveState"] == "active"
        deployed.wait_healthy(unit, version=good_version, timeout=30)

    # rollback: explicitly back to the release before
    status, output = deployed.script(deployed.sources.r2, "rollback")
    assert status == 0, output
    assert deployed.current() != good
    for unit in UNITS:
        deployed.wait_healthy(unit, version=release_version(deployed), timeout=30)
    assert release_version(deployed) != good_version


# --- 9. uninstall ---------------------------------------------------------------------------------------------------


def tree(vps: SystemdVps, *paths: str) -> dict[str, tuple[int, int, int, int, str]]:
    """Every file under ``paths``: mode, owner, group, size and symlink target (or mtime), to tell whether anything
    changed."""
    found: dict[str, tuple[int, int, int, int, str]] = {}
    for top in paths:
        root = vps.path(top)
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            what = str(path.readlink()) if path.is_symlink() else str(st.st_mtime_ns)
            found[str(path.relative_to(vps.path("/")))] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, what)
    return found


def test_9_dry_runs_change_nothing_and_uninstall_keeps_the_env_files(deployed: Deployment) -> None:
    vps = deployed.vps
    watched = (BASE, ENV_DIR, "/etc/systemd/system")
    before, pids = tree(vps, *watched), {unit: deployed.main_pid(unit) for unit in UNITS}
    for command in ("install", "rollback", "uninstall"):
        status, output = deployed.script(deployed.sources.r2, command, "--dry-run")
        if command == "rollback" and "there is no release before" in output:
            continue  # test 8 rolled back to the first release
        assert status == 0, output
        assert "would run: " in output, output
    assert tree(vps, *watched) == before
    assert {unit: deployed.main_pid(unit) for unit in UNITS} == pids

    client = deployed.client()
    keys = set(client.keys("*"))
    status, output = deployed.script(deployed.sources.r2, "uninstall")
    assert status == 0, output
    for unit in UNITS:
        assert vps.show(unit, "LoadState")["LoadState"] == "not-found"
        assert not vps.path(f"/etc/systemd/system/{unit}").exists()
    assert not vps.path(BASE).exists()
    assert vps.path(f"{ENV_DIR}/allocation-target.env").exists()
    assert vps.path(f"{ENV_DIR}/governor.env").exists()
    # uninstall leaves Redis alone; the proposer it stopped gave its lease back on the way out (SPEC §9)
    assert b"quantum:allocation_target:leader" in keys
    assert set(client.keys("*")) == keys - {b"quantum:allocation_target:leader"}


def test_9_a_dry_run_on_a_clean_vps_shows_every_step_and_changes_nothing(sources: Sources) -> None:
    """Without env files, install would create them from the shipped ones (with REDIS_HOST=localhost: never run for
    real here, where 6379 is this machine's own Redis)."""
    with SystemdVps() as vps:
        deployment = Deployment(vps, None, sources, {})  # type: ignore[arg-type]  # no daemon runs
        watched = (BASE, ENV_DIR, "/etc/systemd/system")
        before = tree(vps, *watched)
        status, output = deployment.script(sources.r1, "install", "--dry-run")
        assert status == 0, output
        for expected in (
            "would run: useradd --system --user-group",
            f"creating {ENV_DIR}/allocation-target.env from the shipped deploy/allocation-target.env",
            f"creating {ENV_DIR}/governor.env from the shipped deployment/config/governor.env",
            f"would run: install -m 0644 /srv/checkouts/r1/deploy/systemd/{PROPOSER} /etc/systemd/system/{PROPOSER}",
            f"would run: mv -T {BASE}/.current.new {BASE}/current",
            f"would run: systemctl restart --no-block {GOVERNOR}",
        ):
            assert expected in output, output
        assert all(line.startswith("p31-install: ") for line in output.splitlines()), output
        assert tree(vps, *watched) == before
        assert vps.run("getent", "passwd", SERVICE_USER).returncode != 0


# --- coming from the deployment before P3.1 -------------------------------------------------------------------------

LEGACY_UNIT = """[Unit]
Description=the deployment before P3.1 ({name})

[Service]
ExecStart=/bin/sleep infinity
EnvironmentFile=/etc/quantum/p31/{name}.env

[Install]
WantedBy=multi-user.target
"""


def test_the_deployment_before_p31_is_kept_and_restored_by_rollback(sources: Sources, vps_redis: RedisServer) -> None:
    with SystemdVps() as vps:
        ports = {PROPOSER: free_port(), GOVERNOR: free_port()}
        write_env_files(vps, vps_redis.url, ports)
        for unit, name in ((PROPOSER, "allocation-target"), (GOVERNOR, "governor")):
            path = vps.path(f"/etc/systemd/system/{unit}")
            path.write_text(LEGACY_UNIT.format(name=name))
            path.chmod(0o644)
        vps.systemctl("daemon-reload", check=True)
        # the old governor runs; the old proposer is installed but disabled and stopped
        vps.systemctl("enable", "--now", GOVERNOR, check=True)
        states = {unit: vps.show(unit, "ActiveState", "UnitFileState") for unit in UNITS}
        assert states[PROPOSER] == {"ActiveState": "inactive", "UnitFileState": "disabled"}
        legacy = {**tree(vps, ENV_DIR), **tree(vps, *(f"/etc/systemd/system/{unit}" for unit in UNITS))}
        contents = {path: vps.path(f"/{path}").read_bytes() for path in legacy if vps.path(f"/{path}").is_file()}

        deployment = Deployment(vps, vps_redis, sources, ports)
        output = deployment.install(sources.r1)
        assert "found the deployment before P3.1 under the same unit names" in output, output
        for unit in UNITS:
            assert f"path={BASE}/current/" in vps.show(unit, "ExecStart")["ExecStart"]
            deployment.wait_healthy(unit, timeout=30)

        status, output = deployment.script(sources.r1, "rollback")
        assert status == 0, output
        restored = {**tree(vps, ENV_DIR), **tree(vps, *(f"/etc/systemd/system/{unit}" for unit in UNITS))}
        restored_files = {k: v for k, v in restored.items() if k in contents}
        assert restored_files == {k: v for k, v in legacy.items() if k in contents}
        assert {path: vps.path(f"/{path}").read_bytes() for path in contents} == contents
        assert not any(path.endswith(".env.new") for path in restored), sorted(restored)
        for unit in UNITS:
            assert vps.show(unit, "ActiveState", "UnitFileState") == states[unit]
            assert "path=/bin/sleep" in vps.show(unit, "ExecStart")["ExecStart"]
        assert not vps.path(f"{BASE}/current").exists()
