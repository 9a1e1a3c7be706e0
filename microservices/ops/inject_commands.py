"""``p31ctl inject-efficiency`` and ``inject-plan``: thin wrappers over :mod:`microservices.ops.inject`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from microservices.core.settings import CommonSettings
from microservices.governor.settings import GovernorSettings
from microservices.ops.inject import (
    DEFAULT_INJECT_TTL_SEC,
    PlanSpec,
    inject_efficiency,
    inject_live_target,
    inject_plan,
)

if TYPE_CHECKING:
    from microservices.ops.cli import Context


def run_inject_efficiency(ctx: Context) -> int:
    from microservices.ops.cli import UsageError

    args = ctx.args
    ttl = DEFAULT_INJECT_TTL_SEC if args.ttl is None else args.ttl
    if ttl <= 0:
        raise UsageError("--ttl must be a positive number of seconds")
    settings: CommonSettings = ctx.settings(CommonSettings)
    client = ctx.connect(settings)
    try:
        written = {
            "efficiency_key": inject_efficiency(
                client, args.symbol, score=args.score, confidence=args.confidence, ts=args.ts, ttl_sec=ttl
            )
        }
        if args.target_usd is not None:
            written["live_target_key"] = inject_live_target(client, args.symbol, args.target_usd, ttl_sec=ttl)
    finally:
        client.close()
    if ctx.json:
        ctx.emit_json({"symbol": args.symbol, "ttl_sec": ttl, **written})
    else:
        for key in written.values():
            print(f"wrote {key} (TTL {ttl} s)", file=ctx.out)
    return 0


def run_inject_plan(ctx: Context) -> int:
    from microservices.ops.cli import UsageError

    args = ctx.args
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
        side=args.side,
        qty=args.qty,
        reduce_only=args.reduce_only,
        kill_score=args.kill_score,
        timestamp=args.timestamp,
        extra=extra,
    )
    settings: GovernorSettings = ctx.settings(GovernorSettings)
    stream: str = args.stream or settings.plans_stream
    client = ctx.connect(settings)
    try:
        entry_id = inject_plan(client, stream, plan)
        written: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream, entry_id, entry_id)  # type: ignore[assignment]
    finally:
        client.close()
    fields = {_text(k): _text(v) for k, v in written[0][1].items()} if written else {}
    if ctx.json:
        ctx.emit_json({"stream": stream, "entry_id": entry_id, "fields": fields})
    else:
        shown = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"appended to {stream} as entry {entry_id}: {shown}", file=ctx.out)
    return 0


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")
