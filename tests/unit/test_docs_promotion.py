"""The promotion section's switch, run as written: its ``sed`` lines on a copy of the shipped governor env file, its
``check-config --strict`` through ``p31ctl``, and its restart naming the governor's shipped unit."""

from __future__ import annotations

import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from microservices.core.settings import environment, load_settings
from microservices.devtools.daemon_process import ROOT
from microservices.governor.settings import GovernorSettings
from microservices.ops.cli import main
from tests.unit.test_docs import INTEGRATION_DOC, Markdown, read

ENV_FILE = "/etc/quantum/p31/governor.env"
SHIPPED = ROOT / "deployment" / "config" / "governor.env"


def promotion_blocks() -> list[list[str]]:
    """The shell lines of each code block of the promotion section that edits the env file: the switch, the way back."""
    section = Markdown(read(INTEGRATION_DOC)).section(2, "Promotion: from shadow to enforce")
    blocks = [block.strip().splitlines() for block in re.findall(r"```\n(.*?)```", section, re.S)]
    return [block for block in blocks if block and block[0].startswith("sed -i")]


def run_as_written(block: list[str], env_file: Path) -> str:
    """Run the block's ``sed`` and ``check-config`` on ``env_file``; return the unit its last line restarts."""
    sed, check, restart = block
    subprocess.run([*shlex.split(sed.replace(ENV_FILE, str(env_file)))], check=True)
    argv = shlex.split(check.replace(ENV_FILE, str(env_file)))
    assert argv[:3] == ["sudo", "-u", "quantum-p31"] and argv[3].endswith("/p31ctl"), check
    out = io.StringIO()
    assert main(argv[4:], out=out, err=out) == 0, out.getvalue()
    assert restart.startswith("systemctl restart "), restart
    return restart.split()[-1]


@pytest.mark.parametrize(("index", "mode"), [(0, "enforce"), (1, "hint")])
def test_the_switch_and_the_way_back_work_as_written(index: int, mode: str, tmp_path: Path) -> None:
    blocks = promotion_blocks()
    assert len(blocks) == 2
    env_file = tmp_path / "governor.env"
    env_file.write_text(SHIPPED.read_text().replace("P31_GOV_MODE=hint", "P31_GOV_MODE=off"))  # neither mode yet
    unit = run_as_written(blocks[index], env_file)
    assert (ROOT / "deploy" / "systemd" / unit).is_file()
    settings = load_settings(GovernorSettings, environment(env_file, {"GOV_CONSUMER": "c"}))
    assert settings.mode == mode
