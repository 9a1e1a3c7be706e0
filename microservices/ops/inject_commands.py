"""``p31ctl inject-efficiency`` and ``inject-plan``: thin wrappers over :mod:`microservices.ops.inject`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from microservices.core.settings import CommonSettings
from microservices.governor.settings import GovernorSettings
from microservices.ops.inject import (
    DEFAULT_INJECT_TTL_SEC,
    TEST_SYMBOL_PREFIXES,
    LiveTargetExistsError,
    PlanSpec,
    inject_efficiency,
    inject_live_target,
    inject_plan,
    is_test_symbol,
    side_for,
)

if TYPE_CHECKING:
    from microservices.ops.cli import Context


def _only_test_symbols(symbol: str, force: bool) -> None:
    """The injectors write what upstream services write: for a real symbol that is a corrupted efficiency score or a
    plan the apply layer would execute. Test symbols only, unless the operator insists."""
    from microservices.ops.cli import UsageError

    if not force and not is_test_symbol(symbol):
        prefixes = " or ".join(TEST_SYMBOL_PREFIXES)
        raise UsageError(f"{symbol!r} is not a test symbol (a name starting with {prefixes}); --force writes it anyway")


def run_inject_efficiency(ctx: Context) -> int:
    from microservices.ops.cli import UsageError

    args = ctx.args
    _only_test_symbols(args.symbol, args.force)
    ttl = DEFAULT_INJECT_TTL_SEC if args.ttl is None else args.ttl
    if ttl <= 0:
        raise UsageError("--ttl must be a positive number of seconds")
    settings: CommonSettings = ctx.settings(CommonSettings)
    try:
        with ctx.connect(settings) as client:
            # the live target first: when one exists already, nothing at all is written
            live = None
            if args.target_usd is not None:
                live = inject_live_target(client, args.symbol, args.target_usd, ttl_sec=ttl)
            written = {
                "efficiency_key": inject_efficiency(
                    client, args.symbol, score=args.score, confidence=args.confidence, ts=args.ts, ttl_sec=ttl
                )
            }
    except LiveTargetExistsError as exc:
        raise UsageError(str(exc)) from exc
    if live is not None:
        written["live_target_key"] = live
    if ctx.json:
        ctx.emit_json({"symbol": args.symbol, "ttl_sec": ttl, **written})
    else:
        for key in written.values():
            print(f"wrote {key} (TTL {ttl} s)", file=ctx.out)
    return 0


def run_inject_plan(ctx: Context) -> int:
    from microservices.ops.cli import UsageError

    args = ctx.args
    _only_test_symbols(args.symbol, args.force)
    extra: dict[str, str] = {}
    for item in args.field:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--field {item!r}: expected NAME=VALUE")
        extra[name] = value
    plan = PlanSpec(
        plan_id=args.plan_id,
        symbol=args.symbol,
        action=args.action,
        decision=args.decision,
        side=args.side if args.side is not None else side_for(args.action),
        qty=args.qty,
        reduce_only=args.reduce_only,
        kill_score=args.kill_score,
        timestamp=args.timestamp,
        extra=extra,
    )
    try:
        plan.fields()  # refused before connecting: a --field may not replace a named one (--field symbol=REAL...)
    except ValueError as exc:
        raise UsageError(f"--field: {exc}") from exc
    settings: GovernorSettings = ctx.settings(GovernorSettings)
    stream: str = args.stream or settings.plans_stream
    with ctx.connect(settings) as client:
        entry_id = inject_plan(client, stream, plan)
        written: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream, entry_id, entry_id)  # type: ignore[assignment]
    fields = {_text(k): _text(v) for k, v in written[0][1].items()} if written else {}
    if ctx.json:
        ctx.emit_json({"stream": stream, "entry_id": entry_id, "fields": fields})
    else:
        shown = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"appended to {stream} as entry {entry_id}: {shown}", file=ctx.out)
    return 0


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")
