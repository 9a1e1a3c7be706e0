"""Step 1 proof, checks: what the shadow proposer made of the injected cases (SPEC §1, §2, §5, §6).

Waits until the proposer has ended two loops after the injection (so at least one whole loop saw every case), then
prints one ``PASS``/``FAIL`` line per case:

- one line per injected case: the shadow hash ``quantum:allocation:target:proposed:{symbol}`` holds exactly SPEC §2's
  fields with the expected values (multiplier, proposed target to the cent, reason, eff_stale ...);
- ``shadow-ttl``: each shadow hash expires, within ``PROPOSE_KEY_TTL``;
- ``live-target-unchanged``: each live target hash is byte for byte what was injected, and its TTL was not renewed;
- ``stream-entries``: every proposal stream entry for the run's symbols has exactly SPEC §2's fields and values;
- ``stream-one-per-loop``: each loop appended exactly one entry per symbol (entries come in symbol order, so a loop is
  a strictly increasing run of symbols; every run but the first and last must be the whole set, and one must exist);
- ``proposer-healthz``, ``metrics-multiplier``, ``metrics-proposed-total``: the HTTP endpoint.

Exit status 0 when every case passed, 1 otherwise.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from proof_p31_lib import (
    PROPOSALS,
    PROPOSER_LOOPS,
    Reporter,
    RunState,
    check_healthz,
    check_main,
    connect_from_env,
    entries_after,
    four,
    hex_hash,
    scrape,
    series,
    text_fields,
    wait_until,
)

from microservices.allocation_target.proposal import LAST_UPDATE_FIELD, PROPOSED_PREFIX
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.redis_client import RedisClient
from microservices.core.settings import load_settings
from microservices.ops.inject import live_target_key

#: SPEC §2: the stream entry's fields; the shadow hash has these and ``last_update_ts_epoch``.
STREAM_FIELDS = frozenset(
    {"ts_epoch", "symbol", "base_target", "proposed_target", "multiplier", "eff_score", "eff_confidence",
     "eff_stale", "reason", "mode"}
)  # fmt: skip
HASH_FIELDS = STREAM_FIELDS | {LAST_UPDATE_FIELD}
#: Loops that must end after the injection: the first may have begun before it.
LOOPS_WANTED = 2
#: ``ts_epoch`` may be this far before the injection started (it is an integer second) or after now.
TS_SLACK_SEC = 2
#: Clock and round-trip slack when comparing a key's expiry time before and after, seconds.
EXPIRY_SLACK_SEC = 0.5


def check(state: RunState, env: Mapping[str, str], url: str, timeout: float, reporter: Reporter) -> None:
    client = connect_from_env(env)
    settings = load_settings(ProposerSettings, env)

    check_healthz(reporter, "proposer-healthz", url)

    before = scrape(url)
    start = before.get(series(PROPOSER_LOOPS))
    ran, loops = wait_until(
        lambda: scrape(url).get(series(PROPOSER_LOOPS)),
        lambda value: start is not None and value is not None and value >= start + LOOPS_WANTED,
        timeout,
    )
    reporter.check(
        "proposer-loops", ran, f"{LOOPS_WANTED} loops ended within {timeout:g}s after the injection",
        f"{PROPOSER_LOOPS} {start} -> {loops}",
    )  # fmt: skip
    after = scrape(url)
    now = time.time()

    _check_shadow_hashes(client, state, settings, now, reporter)
    _check_live_targets(client, state, reporter)
    _check_stream(client, state, now, reporter)
    _check_metrics(state, before, after, reporter)


def _check_shadow_hashes(
    client: RedisClient, state: RunState, settings: ProposerSettings, now: float, reporter: Reporter
) -> None:
    ttl_problems: list[str] = []
    for case in state.cases:
        key = PROPOSED_PREFIX + case["symbol"]
        fields = text_fields(client.hgetall(key))
        expect: dict[str, object] = dict(case["expect"])
        problems = _ts_problems(fields, state.injected_at, now, with_last_update=True)
        got: dict[str, object] = dict(fields)
        if set(fields) != HASH_FIELDS:
            expect["<fields>"] = sorted(HASH_FIELDS)
            got["<fields>"] = sorted(fields)
        if problems:
            expect["<ts>"] = "ts_epoch and last_update_ts_epoch: the same integer second of the run"
            got["<ts>"] = "; ".join(problems)
        reporter.fields(case["case"], expect, got, f"{case['symbol']}: multiplier {fields.get('multiplier')}, "
                        f"proposed {fields.get('proposed_target')}, reason {fields.get('reason')}")  # fmt: skip
        ttl = int(client.ttl(key))
        if not 0 < ttl <= settings.key_ttl_sec:
            ttl_problems.append(f"{key} ttl {ttl}")
    reporter.check(
        "shadow-ttl", not ttl_problems, f"every shadow hash with a TTL in (0, {settings.key_ttl_sec}]",
        "; ".join(ttl_problems), f"{len(state.cases)} hashes",
    )  # fmt: skip


def _ts_problems(fields: dict[str, str], injected_at: float, now: float, *, with_last_update: bool) -> list[str]:
    ts = fields.get("ts_epoch", "")
    if not ts.isdigit():
        return [f"ts_epoch {ts!r} is not an integer"]
    problems = []
    if not injected_at - TS_SLACK_SEC <= int(ts) <= now + TS_SLACK_SEC:
        problems.append(f"ts_epoch {ts} outside the run ({injected_at:.0f}..{now:.0f})")
    if with_last_update and fields.get(LAST_UPDATE_FIELD) != ts:
        problems.append(f"{LAST_UPDATE_FIELD} {fields.get(LAST_UPDATE_FIELD)!r} != ts_epoch {ts}")
    return problems


def _check_live_targets(client: RedisClient, state: RunState, reporter: Reporter) -> None:
    """The proposer never writes a live target: each is byte for byte what the injection left, and its expiry (set by
    the injection) did not move: a renewed or removed TTL would be a write."""
    changed = []
    for symbol, snapshot in state.live_snapshot.items():
        key = live_target_key(symbol)
        now_fields = hex_hash(client, key)
        if now_fields != snapshot:
            changed.append(f"{key}: {_unhex(snapshot)} -> {_unhex(now_fields)}")
        pttl = int(client.pttl(key))
        expiry = time.time() + pttl / 1000
        recorded = state.live_expiry.get(symbol, 0.0)
        if pttl <= 0 or expiry > recorded + EXPIRY_SLACK_SEC:
            changed.append(f"{key}: pttl {pttl} ms, expiring at {expiry:.3f} (injected to expire at {recorded:.3f})")
    reporter.check(
        "live-target-unchanged", not changed and bool(state.live_snapshot), "every live target byte-exact as injected",
        "; ".join(changed) or "no live target recorded", f"{len(state.live_snapshot)} hashes",
    )  # fmt: skip


def _unhex(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {bytes.fromhex(k): bytes.fromhex(v) for k, v in fields.items()}


def _check_stream(client: RedisClient, state: RunState, now: float, reporter: Reporter) -> None:
    mark = state.streams[PROPOSALS]
    expected = {case["symbol"]: case["expect"] for case in state.cases}
    ours: list[tuple[str, dict[str, str]]] = []
    strays: list[str] = []
    for entry_id, fields in entries_after(client, mark.name, mark.last_id):
        symbol = fields.get("symbol", "")
        if symbol in expected:
            ours.append((entry_id, fields))
        elif any(symbol.endswith(":" + own) for own in expected):  # the old discovery bug: proposed:{symbol}
            strays.append(f"{entry_id} symbol {symbol!r}")

    wrong = list(strays)
    for entry_id, fields in ours:
        problems = _ts_problems(fields, state.injected_at, now, with_last_update=False)
        if set(fields) != STREAM_FIELDS:
            problems.append(f"fields {sorted(fields)}")
        want = expected[fields["symbol"]]
        problems += [f"{name}={fields.get(name)!r} (want {value!r})" for name, value in want.items()
                     if fields.get(name) != value]  # fmt: skip
        if problems:
            wrong.append(f"{entry_id} {fields['symbol']}: {', '.join(problems)}")
    reporter.check(
        "stream-entries", bool(ours) and not wrong, f"entries on {mark.name} with exactly SPEC §2's fields and values",
        "; ".join(wrong[:5]) or "no entry", f"{len(ours)} entries",
    )  # fmt: skip

    # One loop writes its symbols in sorted order, so a loop is a strictly increasing run of symbols. Only the loops
    # that started after the injection ended must be whole: those whose entries began before its end, the one loop
    # that may have straddled it (it came first after it) and the last one (read while being written) may be partial.
    injected = _entry_key(state.after_inject_ids.get(PROPOSALS, "0-0"))
    runs: list[list[str]] = []
    starts: list[tuple[int, int]] = []
    for entry_id, fields in ours:
        symbol = fields["symbol"]
        if not runs or symbol <= runs[-1][-1]:
            runs.append([])
            starts.append(_entry_key(entry_id))
        runs[-1].append(symbol)
    straddling = next((i for i, start in enumerate(starts) if start > injected), len(runs))
    everyone = sorted(expected)
    whole = [run for run in runs if run == everyone]
    broken = [run for i, run in enumerate(runs) if run != everyone and straddling < i < len(runs) - 1]
    reporter.check(
        "stream-one-per-loop", bool(whole) and not broken,
        f"each loop one entry per symbol ({len(everyone)}), at least one whole loop",
        f"{len(whole)} whole loop(s); after the injection, loops with {[len(run) for run in broken]} entries",
        f"{len(whole)} whole loop(s) of {len(everyone)} entries; loop sizes {[len(run) for run in runs]}",
    )  # fmt: skip


def _entry_key(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _check_metrics(state: RunState, before: dict[Any, float], after: dict[Any, float], reporter: Reporter) -> None:
    wrong = []
    for case in state.cases:
        value = after.get(series("p29_shadow_multiplier", symbol=case["symbol"]))
        if four(value) != case["expect"]["multiplier"]:
            wrong.append(f"{case['symbol']}: {four(value)} (want {case['expect']['multiplier']})")
    reporter.check(
        "metrics-multiplier", not wrong, "p29_shadow_multiplier{symbol} = the shadow hash's multiplier",
        "; ".join(wrong), f"{len(state.cases)} symbols",
    )  # fmt: skip

    per_reason = Counter(case["expect"]["reason"] for case in state.cases)
    short = []
    for reason, count in sorted(per_reason.items()):
        name = series("p29_shadow_proposed_total", reason=reason)
        grew = after.get(name, 0.0) - before.get(name, 0.0)
        if name not in after or grew < count:
            short.append(f"reason={reason}: +{grew:g} (want at least +{count})")
    reporter.check(
        "metrics-proposed-total", not short,
        "p29_shadow_proposed_total{reason} grown by at least one loop's proposals per reason", "; ".join(short),
        ", ".join(f"{reason} {count}" for reason, count in sorted(per_reason.items())),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return check_main(
        argv,
        doc=__doc__,
        checks=check,
        url_option="--proposer-url",
        default_url="http://127.0.0.1:8065",
        timeout=25.0,
        timeout_help="longest wait for two loops, seconds",
    )


if __name__ == "__main__":
    sys.exit(main())
