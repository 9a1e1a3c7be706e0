"""A git checkout of this working tree as an operator would clone it, for the tests of ``deploy/install.sh``.

The installer builds a release from a checkout and names it after its commit, so the tests need checkouts whose
commits they control: :func:`snapshot` commits the working tree as it is (tracked files and new ones git does not
ignore, uncommitted changes included) into a fresh repository, and :func:`with_commit` adds a commit on top — a later
release, or one broken on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from microservices.devtools.daemon_process import ROOT

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "p31 tests", "GIT_AUTHOR_EMAIL": "p31-tests@localhost",
    "GIT_COMMITTER_NAME": "p31 tests", "GIT_COMMITTER_EMAIL": "p31-tests@localhost",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}  # fmt: skip


def _git(repo: Path, *args: str) -> str:
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(repo), **_GIT_ENV}
    result = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True, timeout=60
    )  # fmt: skip
    return result.stdout


def snapshot(dest: Path, source: Path = ROOT) -> Path:
    """``dest``: a one-commit repository holding ``source``'s working tree as it is now."""
    listed = _git(source, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    for name in filter(None, listed.split("\0")):
        path = source / name
        if path.is_file():  # a file deleted but not yet committed is still listed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / name)
    _git(dest, "init", "--quiet")
    _git(dest, "add", "--all")
    _git(dest, "commit", "--quiet", "--message", "snapshot of the working tree")
    return dest


def with_commit(base: Path, dest: Path, changes: Mapping[str, str], message: str) -> Path:
    """``dest``: a copy of the repository ``base`` with one more commit writing ``changes`` (path -> content)."""
    shutil.copytree(base, dest, symlinks=True)
    for name, content in changes.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text(content, encoding="utf-8")
    _git(dest, "add", "--all")
    _git(dest, "commit", "--quiet", "--message", message)
    return dest


def commit_of(repo: Path) -> str:
    return _git(repo, "rev-parse", "HEAD").strip()
