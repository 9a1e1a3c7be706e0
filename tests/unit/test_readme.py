"""What a newcomer reads first holds for them (issue 12): the README, the demo and ``p31ctl --help`` cite only the
repository's own docs, never a contract file users of the repository do not have; the README names every system tool
``.ci/run`` installs for ``make test``; and it quotes no test count or duration that would go stale."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from microservices.ops.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
#: A citation of the shared contract file, which is not part of the repository.
EXTERNAL_CONTRACT = re.compile(r"\bSPEC\b")


def read(path: str) -> str:
    return (REPO / path).read_text(encoding="utf-8")


def every_help(parser: argparse.ArgumentParser) -> list[str]:
    """The help text of the parser and of every subcommand, at every level."""
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                texts += every_help(sub)
    return texts


def test_readme_docs_demo_and_help_cite_no_contract_outside_the_repository() -> None:
    for doc in ("README.md", "docs/P3.1_STEP1_STEP2_INTEGRATION.md"):
        assert EXTERNAL_CONTRACT.findall(read(doc)) == [], doc
    assert [text for text in every_help(build_parser()) if EXTERNAL_CONTRACT.search(text)] == []
    printed = [line for line in read("scripts/demo.py").splitlines() if "print(" in line]
    assert [line for line in printed if EXTERNAL_CONTRACT.search(line)] == []


def test_readme_names_each_system_tool_ci_installs_for_make_test() -> None:
    tools = re.findall(r"command -v (\S+) >/dev/null 2>&1 \|\| need\+=", read(".ci/run"))
    assert "systemd-analyze" in tools
    readme = read("README.md")
    assert [tool for tool in tools if f"`{tool}`" not in readme] == []


def test_readme_quotes_no_test_count_or_duration() -> None:
    assert re.findall(r"about [\d,]+ tests|\d+\s*[\u2013-]\s*\d+ minutes", read("README.md")) == []
