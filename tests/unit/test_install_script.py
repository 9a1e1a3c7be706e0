"""``deploy/install.sh`` and its helper, without a systemd: the script is shellcheck-clean and parses its arguments;
the helper names releases, compares env files and finds the /healthz URL. Their behaviour under a real systemd is
``tests/integration/test_deploy_systemd.py``."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import zipfile
from pathlib import Path
from types import ModuleType

from microservices.devtools.daemon_process import ROOT

INSTALL = ROOT / "deploy" / "install.sh"


def load_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_helper", ROOT / "deploy" / "install_helper.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helper = load_helper()


def test_install_sh_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    # a tool make test needs, as promtool is: missing, the check fails rather than vanish (.ci/run installs it)
    assert shellcheck is not None, "shellcheck is not installed: apt-get install shellcheck (.ci/run installs it)"
    result = subprocess.run([shellcheck, str(INSTALL)], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_sh_help_and_a_wrong_argument() -> None:
    shown = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, check=False, timeout=30)
    assert shown.returncode == 0
    assert "install|rollback|uninstall|status" in shown.stdout
    wrong = subprocess.run(["bash", str(INSTALL), "upgrade"], capture_output=True, text=True, check=False, timeout=30)
    assert wrong.returncode == 64
    assert "unknown argument: upgrade" in wrong.stderr


def wheel(tmp_path: Path, version: str, commit_id: str | None, extra: str = "") -> Path:
    path = tmp_path / f"p31_efficiency_daemons-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(helper.BUILD_MODULE, f"__version__ = version = {version!r}\ncommit_id = {commit_id!r}\n")
        archive.writestr("microservices/extra.py", extra)
    return path


def test_a_release_is_named_after_its_version_and_commit(tmp_path: Path) -> None:
    assert helper.release_name(wheel(tmp_path, "0.1.1.dev5+gabc1234", "gabc1234")) == "0.1.1.dev5+gabc1234-abc1234"


def test_a_build_of_uncommitted_changes_is_told_apart_by_its_content(tmp_path: Path) -> None:
    version = "0.1.1.dev5+gabc1234.d20261202"
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    one = helper.release_name(wheel(tmp_path / "1", version, "gabc1234", "a = 1"))
    two = helper.release_name(wheel(tmp_path / "2", version, "gabc1234", "a = 2"))
    assert one.startswith(f"{version}-abc1234-") and two.startswith(f"{version}-abc1234-")
    assert one != two


def test_a_build_without_git_metadata_is_named_by_date(tmp_path: Path) -> None:
    name = helper.release_name(wheel(tmp_path, "0.1.0", None))
    assert name.startswith("0.1.0-20") and len(name) == len("0.1.0-20261202070000")


def test_env_diff_lists_the_variables_that_differ_and_hides_secrets(tmp_path: Path) -> None:
    existing, shipped = tmp_path / "existing.env", tmp_path / "shipped.env"
    existing.write_text("# mine\nREDIS_URL=redis://u:pw@10.0.0.1/0\nP31_MIN_CONF=0.7\nLOOP_INTERVAL_SEC=10\n")
    shipped.write_text("# shipped\nREDIS_HOST=localhost\nP31_MIN_CONF=0.65\nLOOP_INTERVAL_SEC=10\n")
    lines = helper.env_diff(existing, shipped)
    assert lines == [
        "P31_MIN_CONF: '0.7' here, shipped default '0.65'",
        "REDIS_HOST: not set here; shipped default 'localhost'",
        "REDIS_URL: set here (<redacted>), not in the shipped file (a variable it ignores?)",
    ]
    assert not any("pw" in line for line in lines)


def test_healthz_url_follows_the_env_file(tmp_path: Path) -> None:
    env = tmp_path / "governor.env"
    assert helper.healthz_url(env, 8044) == "http://127.0.0.1:8044/healthz"
    env.write_text("METRICS_ADDR=::1\nMETRICS_PORT=9000\n")
    assert helper.healthz_url(env, 8044) == "http://[::1]:9000/healthz"
