"""How ``p31ctl`` finds a subcommand's code: a ``"module:function"`` name, imported only when that subcommand runs."""

from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
from pathlib import Path

from microservices.core.usage import EX_USAGE
from microservices.ops.cli import build_parser, resolve_handler

ROOT = Path(__file__).resolve().parents[2]
SUBCOMMAND_MODULES = (
    "microservices.ops.status",
    "microservices.ops.explain",
    "microservices.ops.report",
    "microservices.ops.check_config",
    "microservices.ops.inject_commands",
    "microservices.ops.env_template",
    "microservices.ops.plan_view",
    "microservices.ops.governor_view",
    "microservices.ops.dlq",
)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(actions) == 1
    choices: dict[str, argparse.ArgumentParser] = actions[0].choices
    return choices


def test_every_subcommand_names_a_run_function_of_its_own_module() -> None:
    """The names are strings mypy cannot check, so a typo would only show when an operator ran the subcommand."""
    commands = subparsers(build_parser())
    assert set(commands) == {
        "status", "explain", "report", "check-config", "inject-efficiency", "inject-plan", "env-template", "plan",
        "governor", "dlq",
    }  # fmt: skip
    for name, parser in commands.items():
        target = parser.get_default("handler")
        handler = resolve_handler(target)
        assert handler.__name__ == "run_" + name.replace("-", "_"), target
        module_name = target.partition(":")[0]
        assert module_name in SUBCOMMAND_MODULES
        assert handler.__module__ == module_name
        assert list(inspect.signature(handler).parameters) == ["ctx"]


def test_help_imports_no_subcommand_module() -> None:
    probe = (
        "import sys\n"
        "from microservices.ops.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {SUBCOMMAND_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert "usage: p31ctl" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_run_as_python_dash_m_a_usage_error_is_one_line_and_exit_64() -> None:
    """As ``__main__`` the file is a second copy of the module; the subcommand's UsageError must still be caught."""
    done = subprocess.run(
        [sys.executable, "-m", "microservices.ops.cli", "report", "--since", "bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EX_USAGE
    assert done.stderr == ("p31ctl: error: --since: 'bogus' is not a duration such as 90, 90s, 30m, 1h or 2d\n")
