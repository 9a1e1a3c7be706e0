"""A local stack for trying the daemons by hand (``make dev``): a throwaway Redis on a free port, both daemons on it,
and a dev env file that points ``p31ctl`` (and anything else) at that Redis, never at the shared one on 6379.

The env file holds only the connection and a short loop interval, so a file of its own is what an operator's shell
uses: ``p31ctl --env-file .dev/p31.env status``. The daemons get the same variables in their environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from microservices.devtools.daemon_process import ROOT, DaemonProcess, daemon_env
from microservices.devtools.redis_server import RedisServer

DEV_DIR = ROOT / ".dev"
ENV_FILE = DEV_DIR / "p31.env"
#: A fast loop, so a change shows within a second or two.
DEV_SETTINGS = {"LOOP_INTERVAL_SEC": "2", "GOV_CONSUMER": "dev-governor"}
DAEMONS = ("microservices.allocation_target", "microservices.governor")


def env_file_text(redis_url: str, settings: Mapping[str, str] = DEV_SETTINGS) -> str:
    """The dev env file: the throwaway Redis and the dev settings, one ``NAME=value`` a line, no inline comments."""
    lines = [
        "# written by make dev: the throwaway Redis of this run (gone when make dev stops)",
        f"REDIS_URL={redis_url}",
    ]
    lines += [f"{name}={value}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DevStack:
    redis_url: str
    env_file: Path
    daemons: tuple[DaemonProcess, ...]


@contextmanager
def dev_stack(directory: Path = DEV_DIR) -> Iterator[DevStack]:
    """Redis, the env file and both daemons, stopped (daemons first) and the env file removed when the block ends."""
    directory.mkdir(exist_ok=True)
    env_file = directory / ENV_FILE.name
    with ExitStack() as stack, RedisServer() as server:
        env_file.write_text(env_file_text(server.url), encoding="utf-8")
        stack.callback(lambda: env_file.unlink(missing_ok=True))
        env = daemon_env(server.url, {**DEV_SETTINGS, "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        daemons = []
        for module in DAEMONS:
            daemon = DaemonProcess(module, env, directory / f"{module.rsplit('.', 1)[-1]}.log")
            stack.callback(daemon.close)
            daemons.append(daemon)
        yield DevStack(server.url, env_file, tuple(daemons))
