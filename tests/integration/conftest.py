"""The last lines of a run say whether the deployment was shown under a real systemd (issue 11): a machine that cannot
boot one skips ``test_deploy_systemd.py``, and that must never pass unnoticed."""

from __future__ import annotations

from _pytest.terminal import TerminalReporter

SYSTEMD_TESTS = "test_deploy_systemd.py"


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if SYSTEMD_TESTS in r.nodeid]
    ran = [
        r
        for kind in ("passed", "failed", "error")
        for r in terminalreporter.stats.get(kind, [])
        if SYSTEMD_TESTS in getattr(r, "nodeid", "") and getattr(r, "when", "call") == "call"
    ]
    if skipped and not ran:
        reason = skipped[0].longrepr[2] if isinstance(skipped[0].longrepr, tuple) else str(skipped[0].longrepr)
        terminalreporter.write_sep("!", "DEPLOYMENT NOT SHOWN UNDER A REAL SYSTEMD", red=True)
        terminalreporter.write_line(f"{len(skipped)} tests of {SYSTEMD_TESTS} were skipped: {reason}")
        terminalreporter.write_line("run make test as root on a machine with overlayfs (.ci/run does) to show them")
    elif ran:
        passed = sum(1 for r in ran if r.outcome == "passed")
        terminalreporter.write_line(f"under a real systemd: {passed} of {len(ran)} deployment tests passed")
