"""``p31ctl``: the operator's view of the P3.1 daemons, computed with the daemons' own code.

Subcommands: ``status``, ``explain SYMBOL``, ``report [proposer|governor] --since 1h [--prometheus URL]``,
``check-config FILE``, ``inject-efficiency``, ``inject-plan`` and ``env-template``. Each prints readable aligned
tables, or with ``--json`` one JSON document.
The Redis connection comes from ``--env-file FILE`` plus the environment exactly as the daemons read it
(:func:`microservices.core.settings.environment` and :func:`~microservices.core.settings.load_settings`), so
``REDIS_URL`` and friends mean the same here as there.

Exit status (sysexits): 0 success, 64 usage error, 69 Redis unreachable, 78 bad configuration.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

from redis.exceptions import ResponseError

from microservices.core.redis_client import REDIS_ERRORS, RedisClient, connect, describe_target
from microservices.core.settings import EX_CONFIG, CommonSettings, ConfigError, environment, load_settings
from microservices.core.usage import EX_USAGE, UsageParser
from microservices.core.version import build_info

PROG = "p31ctl"
S = TypeVar("S", bound=CommonSettings)
EX_OK = 0
EX_UNAVAILABLE = 69

#: The daemons an env file can belong to, as ``check-config --daemon`` and ``env-template`` name them.
DAEMON_NAMES = ("allocation-target", "governor")


class UsageError(Exception):
    """A command line that cannot be carried out as given: exit 64 with this message."""


#: argparse exits 2 on a usage error; p31ctl and the daemons exit 64 (:mod:`microservices.core.usage`).
_Parser = UsageParser


@dataclass(frozen=True)
class Context:
    """What every subcommand gets: its arguments, where to write, and the connection settings' source."""

    args: argparse.Namespace
    json: bool
    env_file: str | None
    out: TextIO
    err: TextIO

    def settings(self, cls: type[S]) -> S:
        """``cls`` loaded as the daemons load it: ``--env-file`` overridden by the environment."""
        return load_settings(cls, environment(self.env_file))

    @contextmanager
    def connect(self, settings: CommonSettings) -> Iterator[RedisClient]:
        """A client for the configured Redis, closed when the block ends."""
        client = connect(settings, client_name=PROG)
        try:
            yield client
        finally:
            client.close()

    def emit_json(self, document: object) -> None:
        json.dump(document, self.out, indent=2, sort_keys=False)
        self.out.write("\n")


Handler = Callable[[Context], int]


def _global_options() -> argparse.ArgumentParser:
    """Options accepted both before and after the subcommand (``p31ctl --json status`` = ``p31ctl status --json``).

    Their defaults are suppressed so that a value given before the subcommand is not reset by the subparser."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--env-file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="read settings (Redis connection, thresholds) from FILE as the daemons do; the environment wins",
    )
    parent.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document for machines"
    )
    return parent


def _add_governor_commands(sub: Any, common: Any) -> None:
    """``plan``, ``governor`` and ``dlq``: the governor's plans, queue and dead letters."""
    plan = sub.add_parser(
        "plan",
        parents=[common],
        help="one plan: its fields, outcome, deliveries, events and every governor check with its values",
        description="Find a plan by plan_id (its outcome marker, the newest entries of the plans, dead-letter and "
        "events streams) and show its outcome with each decision check of the governor, in order, with the value it "
        "looked at; a plan not decided yet shows what the governor would decide now.",
    )
    plan.add_argument("plan_id", metavar="PLAN_ID")
    plan.add_argument(
        "--search",
        type=int,
        default=10_000,
        metavar="N",
        help="newest entries of each stream searched (default %(default)s)",
    )
    plan.set_defaults(handler="microservices.ops.plan_view:run_plan")

    governor = sub.add_parser(
        "governor",
        parents=[common],
        help="the consumer group, kill switch, dead letters, outcomes by reason and each symbol's gate",
        description="The governor as a queue: consumers and their pending plans, oldest pending age and lag, the kill "
        "switch, the dead-letter stream, outcomes by event and reason over --since, and per symbol its cooldown "
        "left and permits in the last 5 minutes and hour.",
    )
    governor.add_argument(
        "--since", default="1h", metavar="DURATION", help="window of the outcomes: 30m, 1h, 2d (default %(default)s)"
    )
    governor.set_defaults(handler="microservices.ops.governor_view:run_governor")

    dlq = sub.add_parser(
        "dlq",
        parents=[common],
        help="list, show, requeue or drop the governor's dead letters",
        description="The dead-letter stream {STREAM_PLANS}.dlq. requeue puts a dead letter back on the plans stream "
        "as a new entry with the plan's own fields, at most once; drop deletes it; each action is recorded on "
        "{STREAM_PLANS}.dlq.actions.",
    )
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True, parser_class=_Parser)
    dlq_list = dlq_sub.add_parser("list", parents=[common], help="the newest dead letters")
    dlq_list.add_argument("--count", type=int, default=20, metavar="N", help="how many (default %(default)s)")
    dlq_show = dlq_sub.add_parser("show", parents=[common], help="every field of one dead letter")
    dlq_show.add_argument("id", metavar="ID")
    dlq_requeue = dlq_sub.add_parser("requeue", parents=[common], help="put dead letters back on the plans stream")
    dlq_requeue.add_argument("ids", nargs="+", metavar="ID")
    dlq_requeue.add_argument(
        "--force", action="store_true", help="requeue even a plan that would be invalid_plan again"
    )
    dlq_drop = dlq_sub.add_parser("drop", parents=[common], help="delete dead letters")
    dlq_drop.add_argument("ids", nargs="+", metavar="ID")
    dlq.set_defaults(handler="microservices.ops.dlq:run_dlq")


def build_parser() -> argparse.ArgumentParser:
    common: Any = _global_options()  # argparse types parents= with the subparser class
    parser = _Parser(
        prog=PROG,
        description="Operate the P3.1 daemons: live status, per-symbol explanation, shadow report, config checks, "
        "test-data injection. Exit status: 0 ok, 64 usage, 69 Redis unreachable, 78 bad configuration.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {build_info().describe()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    status = sub.add_parser(
        "status",
        parents=[common],
        help="per symbol: score, reason, base, multiplier, proposed target now, last shadow proposal",
        description="One row per live allocation target (found with SCAN, as the proposer does): the efficiency "
        "reading, the multiplier and target the proposer would propose now, and its last shadow proposal.",
    )
    status.add_argument("--symbol", action="append", metavar="SYMBOL", help="only this symbol (repeatable)")
    status.set_defaults(handler="microservices.ops.status:run_status")

    explain = sub.add_parser(
        "explain",
        parents=[common],
        help="every check of the efficiency reading, multiplier and downsize hint for one symbol, with its values",
        description="Walk one symbol through the efficiency classification, the proposer's multiplier and the "
        "governor's downsize hint (docs/P3.1_STEP1_STEP2_INTEGRATION.md), naming the check that decided the reason.",
    )
    explain.add_argument("symbol", metavar="SYMBOL")
    explain.add_argument(
        "--governor-env-file",
        metavar="FILE",
        help="the governor's env file for its thresholds (default: --env-file); the environment wins",
    )
    explain.set_defaults(handler="microservices.ops.explain:run_explain")

    report = sub.add_parser(
        "report",
        parents=[common],
        help="what enforcing would change, per step: from Prometheus history, or from the streams",
        description="The proposer's shadow what-if (reasons, multipliers, USD change) or the governor's (outcomes, "
        "size enforce would remove, extra-cooldown blocks) over a window: from Prometheus with --prometheus, "
        "else from the streams, which are trimmed and say how far back they reach.",
    )
    report.add_argument(
        "step", nargs="?", choices=("proposer", "governor"), default="proposer", help="which step (default proposer)"
    )
    report.add_argument(
        "--since", default="1h", metavar="DURATION", help="window: 30m, 1h, 2d, 90s or plain seconds (default 1h)"
    )
    report.add_argument(
        "--prometheus",
        metavar="URL",
        help="answer from this Prometheus's history (query_range), e.g. http://127.0.0.1:9090",
    )
    report.set_defaults(handler="microservices.ops.report:run_report")

    check = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate an env file with the daemons' own code (exit 78 when invalid)",
        description="Validate FILE exactly as the daemon would read it (the caller's environment is ignored). The "
        "daemon is the one whose own variables the file sets; give --daemon when it sets none or both.",
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument("--daemon", choices=DAEMON_NAMES, help="which daemon reads FILE (default: inferred)")
    check.add_argument("--strict", action="store_true", help="variables the daemon does not read fail (exit 78)")
    check.set_defaults(handler="microservices.ops.check_config:run_check_config")

    inject_eff = sub.add_parser(
        "inject-efficiency",
        parents=[common],
        help="write an efficiency hash (and optionally a live target) for a test symbol",
        description="Replace quantum:capital:efficiency:SYMBOL with the given fields, written as given (so that "
        "malformed input can be injected too). With --target-usd also write a live target for the test symbol.",
    )
    inject_eff.add_argument("symbol", metavar="SYMBOL")
    inject_eff.add_argument("--score", required=True, metavar="S", help="efficiency_score, written as given")
    inject_eff.add_argument("--confidence", required=True, metavar="C", help="confidence, written as given")
    inject_eff.add_argument("--ts", metavar="T", help="ts field (default: now)")
    inject_eff.add_argument("--ttl", type=int, metavar="N", help="TTL of the keys written, seconds (default 3600)")
    inject_eff.add_argument(
        "--target-usd", metavar="X", help="also create quantum:allocation:target:SYMBOL (never overwrites one)"
    )
    inject_eff.add_argument("--force", action="store_true", help="write for a symbol that is not a test symbol")
    inject_eff.set_defaults(handler="microservices.ops.inject_commands:run_inject_efficiency")

    inject_plan = sub.add_parser(
        "inject-plan",
        parents=[common],
        help="append an execution plan to the plans stream",
        description="Append a plan to STREAM_PLANS (or --stream); fields are written as given.",
    )
    inject_plan.add_argument("--plan-id", required=True, metavar="ID", help="plan_id field (required)")
    inject_plan.add_argument(
        "--symbol", required=True, metavar="SYM", help="symbol field (required; a test symbol unless --force)"
    )
    inject_plan.add_argument("--action", default="OPEN_LONG", metavar="A", help="action field (default %(default)s)")
    inject_plan.add_argument("--decision", default="EXECUTE", metavar="D", help="decision field (default %(default)s)")
    inject_plan.add_argument(
        "--side", metavar="SIDE", help="side field (default: the side that carries out --action: SELL for CLOSE_LONG)"
    )
    inject_plan.add_argument("--qty", default="1.0", metavar="Q", help="qty field (default %(default)s)")
    inject_plan.add_argument("--reduce-only", metavar="V", help="reduceOnly field (true/1 makes the plan reducing)")
    inject_plan.add_argument("--kill-score", metavar="K", help="kill_score field (default: none)")
    inject_plan.add_argument("--timestamp", metavar="T", help="timestamp field (default: now)")
    inject_plan.add_argument(
        "--field", action="append", default=[], metavar="NAME=VALUE", help="any other field (repeatable)"
    )
    inject_plan.add_argument("--stream", metavar="NAME", help="stream to append to (default: STREAM_PLANS)")
    inject_plan.add_argument("--force", action="store_true", help="write for a symbol that is not a test symbol")
    inject_plan.set_defaults(handler="microservices.ops.inject_commands:run_inject_plan")

    _add_governor_commands(sub, common)

    template = sub.add_parser(
        "env-template",
        parents=[common],
        help="print the shipped env file of a daemon, generated from its settings",
        description="Print the env file documenting every variable DAEMON reads, with its default. The shipped "
        "deploy/allocation-target.env and deployment/config/governor.env are exactly this output.",
    )
    template.add_argument("daemon", choices=DAEMON_NAMES)
    template.set_defaults(handler="microservices.ops.env_template:run_env_template")
    return parser


# --- subcommands ---------------------------------------------------------------------------------------------------


def resolve_handler(target: str) -> Handler:
    """The function a ``"module:function"`` handler names, imported only now: a run loads only its own
    subcommand's dependencies (the daemons' modules, prometheus_client), and ``--help`` none of them."""
    module_name, _, function = target.partition(":")
    handler: Handler = getattr(importlib.import_module(module_name), function)
    return handler


# --- entry point ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``p31ctl`` and return its exit status; a failure is one line on stderr, never a traceback."""
    ns = build_parser().parse_args(argv)
    ctx = Context(
        args=ns,
        json=bool(getattr(ns, "json", False)),
        env_file=getattr(ns, "env_file", None),
        out=out or sys.stdout,
        err=err or sys.stderr,
    )
    handler = resolve_handler(ns.handler)
    try:
        return handler(ctx)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=ctx.err)
        return EX_USAGE
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=ctx.err)
        return EX_CONFIG
    except REDIS_ERRORS as exc:
        what = "command failed" if isinstance(exc, ResponseError) else "unreachable"
        print(f"{PROG}: Redis {what}{_where(ctx)}: {type(exc).__name__}: {exc}", file=ctx.err)
        return EX_UNAVAILABLE


def _where(ctx: Context) -> str:
    """Where the connection went, for the one-line failure: never the password."""
    try:
        return " at " + describe_target(ctx.settings(CommonSettings))
    except ConfigError:
        return ""


if __name__ == "__main__":
    # Run as ``python -m``, this file is ``__main__``, a second copy of the module: the subcommands raise
    # ``microservices.ops.cli.UsageError``, which that copy's ``except UsageError`` would not catch.
    from microservices.ops.cli import main as _main

    sys.exit(_main())
