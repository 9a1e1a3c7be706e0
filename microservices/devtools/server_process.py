"""What every throwaway server of the devtools shares: a private temporary directory, one child process, and the
way both are given back (stop, then remove the directory), so that ``with`` never leaves either behind; and the
``with`` of anything started and closed (:class:`StartedAndClosed`: a server, a topology of several)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self


class StartedAndClosed(ABC):
    """What ``with`` starts and, however the block ends (or if it never came up), closes: a server, a topology."""

    @abstractmethod
    def start(self) -> Self:
        """Bring it up and return once it serves."""

    @abstractmethod
    def close(self) -> None:
        """Stop it and give back all it holds; safe on what was started only in part."""

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ServerProcess(StartedAndClosed):
    """A server run as a child process in its own temporary directory; :meth:`start` is the subclass's to write.

    ``with Server(...) as server:`` starts it and, however the block ends (or if it never came up), stops it and
    removes the directory.
    """

    def __init__(self, dir_prefix: str) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix=dir_prefix))
        self._process: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def start(self) -> Self:
        """Launch the process (with :meth:`_launch`) and return once it serves."""

    def _launch(self, args: Sequence[str], output: Path, ready: Callable[[], Self], **popen: Any) -> Self:
        """Run ``args`` with stdout and stderr into ``output``, then return ``ready()`` (which waits until it serves);
        a server that failed to come up is not left running."""
        with output.open("wb") as out:
            self._process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **popen)
        try:
            return ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate the process (kill it if it ignores that for 10 s); the directory is kept, so it can restart."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would end it (no shutdown of its own); the directory is kept, so it can restart."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
