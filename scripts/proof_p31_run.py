"""The steps of a P3.1 proof run that are not a step's own cases: called by the two proof shell scripts.

- ``prepare``: record the streams as they are before the run (the ledger); with ``--spawn``, refuse where a spawned
  daemon would act on someone else's data, and print a free loopback port for its METRICS_PORT;
  with ``--private-plans`` (step 2 with ``--spawn``), record ``STREAM_PLANS`` and its dead letters as the run's own;
- ``wait-health``: wait for a daemon's /healthz to answer 200 with a JSON object;
- ``cleanup``: delete everything the run wrote or caused, then check that nothing is left (case ``cleanup``).

Every command reads the settings as the daemons do, from ``--env-file FILE`` (given before the command) overridden by
the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from proof_p31_lib import (
    DEAD_LETTERS,
    EVENTS,
    PLANS,
    PROPOSALS,
    PROPOSER_LOOPS,
    Reporter,
    RunState,
    add_env_file_option,
    connect_from_env,
    entries_after,
    healthz,
    is_owned_entry,
    mark_stream,
    owned_keys,
    scrape,
    series,
    stream_names,
    text,
    wait_until,
)
from redis.client import Pipeline
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from microservices.allocation_target.proposal import LIVE_TARGET_PREFIX, symbols_from_live_keys
from microservices.core.efficiency import efficiency_key
from microservices.core.redis_client import RedisClient
from microservices.core.settings import EX_CONFIG, ConfigError, environment
from microservices.devtools.redis_server import free_port
from microservices.ops.inject import live_target_key

EX_USAGE = 2
#: Cleanup passes: a daemon may still write for the run right after a pass (a plan read just before its entry was
#: deleted), so a pass that leaves something is repeated after a pause.
CLEANUP_PASSES = 3
CLEANUP_PAUSE_SEC = 1.0


# --- prepare -------------------------------------------------------------------------------------------------------


def prepare(args: argparse.Namespace) -> int:
    try:  # what a daemon would refuse to start with (exit 78) stops the run before it writes anything
        env = environment(args.env_file)
        client = connect_from_env(env)
        names = stream_names(env)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    roles = [PROPOSALS] if args.step == 1 else [PLANS, EVENTS, DEAD_LETTERS]
    state = RunState(step=args.step, run=args.run, spawn=args.spawn, consumer=args.consumer)
    state.streams = {role: mark_stream(client, names[role]) for role in roles}
    if args.private_plans:
        state.private_streams = [names[PLANS], names[DEAD_LETTERS]]
    refusal = _refusal(client, state) if args.spawn or args.private_plans else None
    if refusal:
        print(f"refusing --spawn: {refusal}", file=sys.stderr)
        return EX_USAGE
    state.save(Path(args.state))
    if args.spawn:
        print(free_port())
    return 0


def _refusal(client: RedisClient, state: RunState) -> str | None:
    """Why a spawned daemon would act on data that is not the run's, or the cleanup would delete some, or None.

    A spawned proposer writes shadow proposals for every live target it finds. A spawned governor reads a plans stream
    private to the run (``--private-plans``), in a group of its own: it cannot decide anyone else's plan, but the
    cleanup deletes that stream and its dead letters whole, so neither may exist yet."""
    if state.step == 1:
        keys = client.scan_iter(match=LIVE_TARGET_PREFIX.encode() + b"*", count=1000, _type="hash")
        foreign = sorted(symbols_from_live_keys(keys))
        if foreign:
            return (
                f"{len(foreign)} live allocation target(s) exist (e.g. {', '.join(foreign[:3])}): a spawned proposer "
                "would write shadow proposals for them. Run against the running service (no --spawn) instead."
            )
        return None
    if not state.private_streams:
        return "the spawned governor needs a plans stream of the run's own (--private-plans)"
    taken = [name for name in state.private_streams if client.exists(name)]
    if taken:
        return f"{', '.join(taken)} already exist(s): the run's private streams must be new"
    return None


# --- wait-health ---------------------------------------------------------------------------------------------------


def wait_health(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    status, body, raw = 0, None, ""
    while time.monotonic() < deadline:
        status, body, raw = healthz(args.url)
        if status == 200 and body is not None:
            return 0
        if args.pid and not _alive(args.pid):
            print(f"the daemon (pid {args.pid}) exited before /healthz answered", file=sys.stderr)
            return 1
        time.sleep(0.1)
    print(f"{args.url}/healthz did not answer 200 within {args.timeout:g}s: last {status} {raw[:200]}", file=sys.stderr)
    return 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- cleanup -------------------------------------------------------------------------------------------------------


def cleanup(args: argparse.Namespace) -> int:
    path = Path(args.state)
    if not path.exists():  # the run stopped before it wrote anything
        return 0
    state = RunState.load(path)
    client = connect_from_env(environment(args.env_file))
    reporter = Reporter(Path(args.results) if args.results else None)
    leftovers: list[str] = []
    for attempt in range(CLEANUP_PASSES):
        if attempt:
            time.sleep(CLEANUP_PAUSE_SEC)
        _remove_inputs(client, state)
        if attempt == 0 and args.proposer_url:
            _let_proposer_settle(args.proposer_url, args.quiesce_timeout)
        _remove_outputs(client, state)
        leftovers = _leftovers(client, state)
        if not leftovers:
            break
    reporter.check(
        "cleanup",
        not leftovers,
        "no key, stream entry, stream, group or consumer of the run left",
        "; ".join(leftovers),
        f"{len(state.symbols)} symbols, {len(state.plan_entries)} plans, {len(owned_keys(state))} keys checked",
    )
    return 0 if not leftovers else 1


def _remove_inputs(client: RedisClient, state: RunState) -> None:
    """First what makes the daemons act: the plans (so no governor takes one up; a private plans stream goes whole,
    with its group and dead letters), the efficiency hashes and the live targets (so no proposer loop discovers the
    run's symbols again)."""
    if state.private_streams:
        client.delete(*state.private_streams)
    if PLANS in state.streams:
        _xdel_owned(client, state, PLANS)
    pipe = client.pipeline(transaction=False)
    for symbol in state.symbols:
        pipe.delete(live_target_key(symbol))
        pipe.delete(efficiency_key(symbol))
    pipe.execute()


def _let_proposer_settle(url: str, timeout: float) -> None:
    """A running proposer may be in a loop that discovered the run's symbols before their live targets went: wait
    until two more loops have ended, so that none writes a shadow proposal after the cleanup."""
    before = scrape(url).get(series(PROPOSER_LOOPS))
    if before is None:  # no proposer answers: nothing is writing
        return
    wait_until(lambda: scrape(url).get(series(PROPOSER_LOOPS)), lambda now: now is None or now >= before + 2, timeout)


def _remove_outputs(client: RedisClient, state: RunState) -> None:
    pipe = client.pipeline(transaction=False)
    for key in [*owned_keys(state), *state.private_streams]:
        pipe.delete(key)
    pipe.execute()
    for role, mark in state.streams.items():
        _xdel_owned(client, state, role)
        if not mark.existed:
            _delete_if_empty(client, mark.name)
        elif state.spawn:
            _undo_groups(client, state, role)


def _xdel_owned(client: RedisClient, state: RunState, role: str) -> None:
    mark = state.streams[role]
    owned = [e for e, f in entries_after(client, mark.name, mark.last_id) if is_owned_entry(state, e, f)]
    if owned:
        client.xdel(mark.name, *owned)


def _delete_if_empty(client: RedisClient, name: str) -> None:
    """A stream the run created (by its entries, or its spawned governor's group) goes once it holds nothing; under
    WATCH, so that an entry someone adds meanwhile is never deleted with it (a cluster client has no WATCH: there
    the check and the delete are two commands)."""
    if isinstance(client, RedisCluster):
        if text(client.type(name)) == "stream" and not int(client.xlen(name)):
            client.delete(name)
        return

    def delete_when_empty(pipe: Pipeline) -> None:
        if text(pipe.type(name)) == "stream" and not int(pipe.xlen(name)):
            pipe.multi()
            pipe.delete(name)

    client.transaction(delete_when_empty, name)  # retried, and so checked again, when the stream changed meanwhile


def _undo_groups(client: RedisClient, state: RunState, role: str) -> None:
    """With ``--spawn``: the groups the spawned governor created, and its consumer in the groups that were there."""
    mark = state.streams[role]
    if text(client.type(mark.name)) != "stream":
        return
    for group in client.xinfo_groups(mark.name):
        name = text(group["name"])
        try:
            if name not in mark.groups:
                client.xgroup_destroy(mark.name, name)
            elif state.consumer:
                client.xgroup_delconsumer(mark.name, name, state.consumer)
        except ResponseError:  # gone meanwhile
            continue


def _leftovers(client: RedisClient, state: RunState) -> list[str]:
    """What the run left behind, described."""
    left = [f"key {key}" for key in owned_keys(state) if client.exists(key)]
    left += [f"stream {name}, private to the run" for name in state.private_streams if client.exists(name)]
    for mark in state.streams.values():
        owned = [e for e, f in entries_after(client, mark.name, mark.last_id) if is_owned_entry(state, e, f)]
        if owned:
            left.append(f"{len(owned)} entries in {mark.name} ({', '.join(owned[:3])})")
        exists = text(client.type(mark.name)) == "stream"
        if not mark.existed and exists and not int(client.xlen(mark.name)):
            left.append(f"stream {mark.name}, which the run created")
        if state.spawn and mark.existed and exists:
            for group in client.xinfo_groups(mark.name):
                name = text(group["name"])
                if name not in mark.groups:
                    left.append(f"group {name} on {mark.name}, which the run created")
                elif state.consumer and any(
                    text(c["name"]) == state.consumer for c in client.xinfo_consumers(mark.name, name)
                ):
                    left.append(f"consumer {state.consumer} in group {name} on {mark.name}")
    return left


# --- command line --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_env_file_option(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("prepare", help="record the streams before the run; refuse an unsafe --spawn; print a port")
    p.add_argument("--step", type=int, choices=(1, 2), required=True)
    p.add_argument("--run", required=True, help="the run's suffix, part of every symbol and plan_id")
    p.add_argument("--state", required=True, help="the ledger file to create")
    p.add_argument("--spawn", action="store_true", help="the proof spawns the daemon: check it may, print a free port")
    p.add_argument("--consumer", help="GOV_CONSUMER of the spawned governor")
    p.add_argument(
        "--private-plans", action="store_true",
        help="STREAM_PLANS (and so its dead-letter stream) is the run's own: refuse if it exists, delete it at cleanup",
    )  # fmt: skip
    p.set_defaults(func=prepare)

    p = commands.add_parser("wait-health", help="wait for /healthz 200 with a JSON body")
    p.add_argument("--url", required=True, help="the daemon's base URL, e.g. http://127.0.0.1:8065")
    p.add_argument("--pid", type=int, default=0, help="fail as soon as this process has exited")
    p.add_argument("--timeout", type=float, default=20.0)
    p.set_defaults(func=wait_health)

    p = commands.add_parser("cleanup", help="delete what the run wrote or caused, and check nothing is left")
    p.add_argument("--state", required=True)
    p.add_argument("--results", help="append the cleanup case's PASS/FAIL line here")
    p.add_argument("--proposer-url", help="a running proposer: wait for its loops to pass the run's symbols by")
    p.add_argument("--quiesce-timeout", type=float, default=25.0)
    p.set_defaults(func=cleanup)

    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
