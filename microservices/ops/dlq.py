"""``p31ctl dlq list|show|requeue|drop``: the governor's dead letters, handled as a job queue's dead set is.

A dead letter (``{STREAM_PLANS}.dlq``) is a plan the governor gave up on: malformed (``invalid_plan``) or delivered
too often (``max_deliveries``). Once its cause is fixed it can be **requeued** — a new entry on the plans stream with
the plan's own fields (the dead letter's ``reason``, ``source_id`` and ``deliveries`` left out), decided afresh — or
**dropped** (deleted from the dead-letter stream).

A dead letter is requeued at most once: the requeue is recorded against the dead letter's id in
``quantum:governor:dlq-requeued:{dlq_id}`` in the same ``MULTI``/``EXEC`` as the new plan entry (with that key and the
dead-letter stream ``WATCH``-ed, so two operators racing cannot both win; under Redis Cluster, where the keys cannot
share a transaction, a ``SET NX`` of that key comes first). Every action is appended to the documented stream
``{STREAM_PLANS}.dlq.actions`` (``action``, ``dlq_id``, ``plan_id``, ``symbol``, ``by``, ``ts``; for a requeue the new
``entry_id`` once known is in the requeue key) — not to the governor's events stream, whose readers count exactly
one event per plan outcome.

A plan whose fields would still be a dead letter ``invalid_plan`` is not requeued without ``--force``: it would only
come back.
"""

from __future__ import annotations

import getpass
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from redis.exceptions import WatchError

from microservices.core.redis_client import RedisClient
from microservices.core.usage import EX_USAGE
from microservices.governor.plan import InvalidPlan, entry_time, parse_plan
from microservices.governor.records import DEAD_LETTER_ADDED_FIELDS
from microservices.governor.settings import GovernorSettings
from microservices.ops import streams
from microservices.ops.tables import format_table

if TYPE_CHECKING:
    from microservices.ops.cli import Context

REQUEUED_KEY_PREFIX = "quantum:governor:dlq-requeued:"
ACTIONS_MAXLEN = 10_000
MAX_ATTEMPTS = 5
DEFAULT_LIST_COUNT = 20


def requeued_key(dlq_id: str) -> str:
    return REQUEUED_KEY_PREFIX + dlq_id


def actions_stream(settings: GovernorSettings) -> str:
    """The stream where every ``dlq requeue`` and ``dlq drop`` is recorded."""
    return settings.dead_letter_stream + ".actions"


def plan_fields(dead_letter: dict[str, str]) -> dict[str, str]:
    """The plan's own fields: the dead letter's, without those the governor added to say why it is there."""
    return {k: v for k, v in dead_letter.items() if k not in DEAD_LETTER_ADDED_FIELDS}


def still_invalid(entry: streams.Entry) -> str | None:
    """Why the plan would be a dead letter ``invalid_plan`` again if requeued as it is, or None."""
    dlq_id, fields = entry
    plan = parse_plan(dlq_id, plan_fields(fields))
    return plan.detail if isinstance(plan, InvalidPlan) else None


class Result(StrEnum):
    REQUEUED = "requeued"
    DROPPED = "dropped"
    ALREADY_REQUEUED = "already_requeued"
    NOT_FOUND = "not_found"
    STILL_INVALID = "still_invalid"


@dataclass(frozen=True)
class Action:
    """What became of one dead letter id, and why: a value the printer and the exit status read."""

    dlq_id: str
    result: Result
    detail: str = ""
    entry_id: str | None = None

    @property
    def done(self) -> bool:
        return self.result in (Result.REQUEUED, Result.DROPPED)


def operator() -> str:
    """Who acted, for the actions stream: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _action_fields(action: str, dlq_id: str, fields: dict[str, str], now: float) -> dict[str, str]:
    return {
        "action": action,
        "dlq_id": dlq_id,
        "plan_id": fields.get("plan_id", ""),
        "symbol": fields.get("symbol", ""),
        "by": operator(),
        "ts": f"{now:.3f}",
    }


def requeue(client: RedisClient, s: GovernorSettings, dlq_id: str, *, force: bool, now: float) -> Action:
    """Put dead letter ``dlq_id`` back on the plans stream, at most once (see the module's docstring)."""
    marker = requeued_key(dlq_id)
    for _ in range(MAX_ATTEMPTS):
        with client.pipeline(transaction=not s.redis_cluster) as tx:
            try:
                if not s.redis_cluster:
                    tx.watch(marker, s.dead_letter_stream)
                done = client.get(marker)
                if done is not None:
                    return Action(dlq_id, Result.ALREADY_REQUEUED, f"requeued before: {streams.text(done)}")
                found = streams.entry(client, s.dead_letter_stream, dlq_id)
                if found is None:
                    return Action(dlq_id, Result.NOT_FOUND, f"no entry {dlq_id} in {s.dead_letter_stream}")
                problem = still_invalid(found)
                if problem is not None and not force:
                    return Action(
                        dlq_id, Result.STILL_INVALID, f"it would be invalid_plan again ({problem}); --force requeues it"
                    )
                claim = f"{now:.3f} {operator()}"
                if s.redis_cluster and not client.set(marker, claim, nx=True):
                    continue  # another operator claimed it first: the next attempt reports it
                if not s.redis_cluster:
                    tx.multi()
                tx.xadd(s.plans_stream, plan_fields(found[1]))  # type: ignore[arg-type]
                if not s.redis_cluster:
                    tx.set(marker, claim)
                action = _action_fields("requeue", dlq_id, found[1], now)
                tx.xadd(actions_stream(s), action, maxlen=ACTIONS_MAXLEN, approximate=True)  # type: ignore[arg-type]
                replies = tx.execute()
            except WatchError:
                continue
        entry_id = streams.text(replies[0])
        client.set(marker, f"{claim} {entry_id}")  # the new entry's id, for `dlq list` (the guard is the key itself)
        return Action(dlq_id, Result.REQUEUED, f"as entry {entry_id} of {s.plans_stream}", entry_id)
    return Action(dlq_id, Result.ALREADY_REQUEUED, "the dead-letter stream kept changing; try again")


def drop(client: RedisClient, s: GovernorSettings, dlq_id: str, *, now: float) -> Action:
    """Delete dead letter ``dlq_id`` (and its requeue record), recording the action."""
    for _ in range(MAX_ATTEMPTS):
        with client.pipeline(transaction=not s.redis_cluster) as tx:
            try:
                if not s.redis_cluster:
                    tx.watch(s.dead_letter_stream)
                found = streams.entry(client, s.dead_letter_stream, dlq_id)
                if found is None:
                    return Action(dlq_id, Result.NOT_FOUND, f"no entry {dlq_id} in {s.dead_letter_stream}")
                if not s.redis_cluster:
                    tx.multi()
                tx.xdel(s.dead_letter_stream, dlq_id)
                tx.delete(requeued_key(dlq_id))
                action = _action_fields("drop", dlq_id, found[1], now)
                tx.xadd(actions_stream(s), action, maxlen=ACTIONS_MAXLEN, approximate=True)  # type: ignore[arg-type]
                tx.execute()
            except WatchError:
                continue
        return Action(dlq_id, Result.DROPPED, f"deleted from {s.dead_letter_stream}")
    return Action(dlq_id, Result.NOT_FOUND, "the dead-letter stream kept changing; try again")


# --- list and show -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    entry: streams.Entry
    #: The requeue record (``<ts> <user@host> [<new entry id>]``), or None when never requeued.
    requeued: str | None

    def as_json(self, now: float) -> dict[str, Any]:
        dlq_id, fields = self.entry
        return {
            "id": dlq_id,
            "age_sec": now - entry_time(dlq_id),
            "fields": fields,
            "requeued": self.requeued,
            "would_be_invalid": still_invalid(self.entry),
        }


def read_dead_letters(client: RedisClient, s: GovernorSettings, entries: Sequence[streams.Entry]) -> list[DeadLetter]:
    pipe = client.pipeline(transaction=False)
    for dlq_id, _ in entries:
        pipe.get(requeued_key(dlq_id))
    marks = pipe.execute(raise_on_error=False) if entries else []
    return [
        DeadLetter(entry, streams.text(mark) if isinstance(mark, bytes) else None)
        for entry, mark in zip(entries, marks, strict=True)
    ]


def render_list(letters: Sequence[DeadLetter], total: int, stream: str, now: float) -> str:
    rows = [
        [
            i, f"{now - entry_time(i):.0f}", f.get("reason", ""), f.get("plan_id", ""), f.get("symbol", ""),
            f.get("deliveries", ""), f.get("source_id", ""), "yes" if d.requeued else "no",
        ]
        for d in letters
        for i, f in [d.entry]
    ]  # fmt: skip
    head = f"{stream}: {total} dead letters, newest {len(letters)} shown\n"
    headers = ("id", "age s", "reason", "plan_id", "symbol", "deliveries", "source_id", "requeued")
    return head + format_table(headers, rows)


def render_show(letter: DeadLetter, now: float) -> str:
    dlq_id, fields = letter.entry
    lines = [f"dead letter {dlq_id} ({now - entry_time(dlq_id):.0f}s old)"]
    lines += [f"  {k} = {v}" for k, v in fields.items()]
    lines.append(f"requeued: {letter.requeued or 'no'}")
    problem = still_invalid(letter.entry)
    lines.append(f"requeue would give: {'invalid_plan again (' + problem + ')' if problem else 'a new plan entry'}")
    return "\n".join(lines) + "\n"


def run_dlq(ctx: Context) -> int:
    from microservices.ops.cli import UsageError

    args = ctx.args
    settings: GovernorSettings = ctx.settings(GovernorSettings)
    stream = settings.dead_letter_stream
    with ctx.connect(settings) as client:
        now = time.time()
        if args.dlq_command == "list":
            if args.count < 1:
                raise UsageError("--count must be at least 1")
            total = int(client.xlen(stream))
            letters = read_dead_letters(client, settings, list(streams.newest(client, stream, args.count)))
            if ctx.json:
                ctx.emit_json({"stream": stream, "total": total, "entries": [d.as_json(now) for d in letters]})
            else:
                ctx.out.write(render_list(letters, total, stream, now))
            return 0
        if args.dlq_command == "show":
            found = streams.entry(client, stream, args.id)
            if found is None:
                raise UsageError(f"no entry {args.id} in {stream} (see p31ctl dlq list)")
            letter = read_dead_letters(client, settings, [found])[0]
            if ctx.json:
                ctx.emit_json(letter.as_json(now))
            else:
                ctx.out.write(render_show(letter, now))
            return 0
        if args.dlq_command == "requeue":
            actions = [requeue(client, settings, i, force=args.force, now=now) for i in args.ids]
        else:
            actions = [drop(client, settings, i, now=now) for i in args.ids]
    if ctx.json:
        ctx.emit_json(
            {
                "actions_stream": actions_stream(settings),
                "results": [
                    {"id": a.dlq_id, "result": a.result.value, "detail": a.detail, "entry_id": a.entry_id}
                    for a in actions
                ],
            }
        )
    for a in actions:
        if not ctx.json:
            print(f"{a.dlq_id}: {a.result.value}: {a.detail}", file=ctx.out if a.done else ctx.err)
    return 0 if all(a.done for a in actions) else EX_USAGE
