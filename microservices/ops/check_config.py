"""``p31ctl check-config FILE``: is this env file one the daemon will start with?

The file is judged by the very code the daemon runs at start-up (:func:`read_env_file`, then :func:`load_settings`
of its settings class), never by a second validator, and by its content alone: the caller's environment, which
the daemon on the VPS will not have, is left out. On top of what the daemon checks, a variable the daemon does not
read is reported, since it is most likely a typo of one it does.

Which daemon reads the file: the one whose own variables (those the other daemon does not read) it sets. A file
that sets own variables of both, or of neither, needs ``--daemon``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from microservices.core.settings import EX_CONFIG, ConfigError, env_file_errors, settings_errors
from microservices.ops.daemons import DAEMONS, DaemonInfo

if TYPE_CHECKING:
    from microservices.ops.cli import Context


class AmbiguousDaemonError(Exception):
    """The file does not say which daemon reads it."""


def own_variables(daemon: DaemonInfo) -> frozenset[str]:
    """The variables only ``daemon`` reads: what tells its env file from the other's."""
    others = frozenset().union(*(d.variables for d in DAEMONS.values() if d is not daemon))
    return daemon.variables - others


def infer_daemon(variables: Collection[str]) -> DaemonInfo:
    """The daemon whose own variables ``variables`` include; else :class:`AmbiguousDaemonError`."""
    present = set(variables)
    matches = [d for d in DAEMONS.values() if present & own_variables(d)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = "; ".join(f"{d.name}: {', '.join(sorted(present & own_variables(d)))}" for d in matches)
        raise AmbiguousDaemonError(f"it sets variables of both daemons ({shown})")
    raise AmbiguousDaemonError("it sets no variable that only one daemon reads")


@dataclass(frozen=True)
class ConfigCheck:
    """The verdict on one env file: every bad value in it, so that it is fixed in one pass."""

    path: str
    daemon: str | None
    errors: tuple[ConfigError, ...]
    #: Variables in the file that the daemon does not read, sorted.
    unknown: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error(self) -> ConfigError | None:
        """The first bad value: the one the daemon would stop at."""
        return self.errors[0] if self.errors else None


def check_env_file(path: str, daemon_name: str | None = None) -> ConfigCheck:
    """Read ``path`` as systemd and the daemon would, and judge every value with the daemon's settings code."""
    values, line_errors = env_file_errors(path)
    if not values and line_errors:
        return ConfigCheck(path, daemon_name, tuple(line_errors), ())
    daemon = DAEMONS[daemon_name] if daemon_name is not None else infer_daemon(values)
    unknown = tuple(sorted(set(values) - daemon.variables))
    refused = {error.variable for error in line_errors}
    judged = {name: value for name, value in values.items() if name not in refused}
    errors = [*line_errors, *settings_errors(daemon.settings_class, judged)]
    return ConfigCheck(path, daemon.name, tuple(errors), unknown)


def run_check_config(ctx: Context) -> int:
    from microservices.ops.cli import UsageError

    path: str = ctx.args.file
    if ctx.env_file is not None:  # it was ignored: FILE alone is judged, so a second file is a mistake to say
        raise UsageError(
            f"check-config judges FILE alone and ignores --env-file {ctx.env_file}: "
            f"give the file to check as FILE (p31ctl check-config {ctx.env_file})"
        )
    try:
        result = check_env_file(path, ctx.args.daemon)
    except AmbiguousDaemonError as exc:
        raise UsageError(
            f"cannot tell which daemon reads {path}: {exc}; pass --daemon allocation-target|governor"
        ) from None
    failed = not result.ok or (ctx.args.strict and bool(result.unknown))
    if ctx.json:
        ctx.emit_json(
            {
                "file": path,
                "daemon": result.daemon,
                "ok": not failed,
                "error": None if result.error is None else str(result.error),
                "variable": None if result.error is None else result.error.variable,
                "errors": [{"variable": e.variable, "error": str(e)} for e in result.errors],
                "unknown_variables": list(result.unknown),
            }
        )
    else:
        for name in result.unknown:
            print(f"warning: {path}: {name} is not read by {result.daemon} (a typo?)", file=ctx.err)
        for error in result.errors:
            print(str(error), file=ctx.err)
        if result.ok and failed:
            print(f"invalid configuration: {path}: variables {result.daemon} does not read (--strict)", file=ctx.err)
        elif result.ok:
            print(f"OK: {path} ({result.daemon})", file=ctx.out)
    return EX_CONFIG if failed else 0
