"""Step 2 proof, checks: what the governor made of the published plans (SPEC §3, §5, §6).

Waits until every plan has its event on the events stream (the governor writes a plan's outcome, its event and the
``XACK`` together), then prints one ``PASS``/``FAIL`` line per case:

- one line per plan: its event and reason (``source_id`` is the plan's stream entry); for a permit, the P3.1 fields
  of ``quantum:permit:{plan_id}`` (DOWNSIZE with 0.4444 and 96 at score 0.2, neutral otherwise, ``reduce_only`` for a
  reducing plan); for an invalid plan, its dead letter on ``{STREAM_PLANS}.dlq`` with reason ``invalid_plan``; no
  permit where none is due;
- ``permit-schema``: every permit is a JSON object with every SPEC §3 key, of the right type;
- ``permit-ttl``: every permit expires, within ``PERMIT_TTL_SEC``;
- ``metrics-eff-apply``: ``p32_eff_apply_total{action="DOWNSIZE",reason="ok"}`` grew by exactly the number of
  downsized permits; ``metrics-eff-factor``: ``p32_eff_factor{symbol}`` of the downsized symbol is 0.4444;
- ``governor-healthz``: ``/healthz`` answers 200 with a JSON object.

Exit status 0 when every case passed, 1 otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from proof_p31_lib import (
    DEAD_LETTERS,
    EVENTS,
    Reporter,
    RunState,
    check_healthz,
    check_main,
    connect_from_env,
    entries_after,
    four,
    scrape,
    series,
    series_key,
    text,
    wait_until,
)

from microservices.core.redis_client import RedisClient
from microservices.core.settings import load_settings
from microservices.governor.records import permit_key
from microservices.governor.settings import GovernorSettings

#: SPEC §3: a permit's keys and the JSON types each must have (``bool`` is not a number here).
PERMIT_TYPES: dict[str, tuple[type, ...]] = {
    "granted": (bool,), "plan_id": (str,), "symbol": (str,), "decision": (str,), "action": (str,),
    "computed_qty": (float, int), "computed_notional": (float, int), "created_at": (float,), "consumed": (bool,),
    "eff_score": (str,), "eff_confidence": (str,), "eff_stale": (str,), "eff_factor": (str,), "eff_action": (str,),
    "eff_reason": (str,), "downsize_factor": (str,), "extra_cooldown_sec": (str,),
}  # fmt: skip
#: SPEC §3: the values a permit's fixed keys must have.
PERMIT_LITERALS: dict[str, object] = {"granted": True, "consumed": False, "decision": "EXECUTE"}
EFF_APPLY = ("p32_eff_apply_total", {"action": "DOWNSIZE", "reason": "ok"})
#: After the last event, how long the governor's /metrics may take to show the batch, seconds.
METRICS_SETTLE_SEC = 5.0
#: Once the count is reached, it is read again after this long, seconds.
METRICS_RECHECK_SEC = 0.3


def check(state: RunState, env: Mapping[str, str], url: str, timeout: float, reporter: Reporter) -> None:
    client = connect_from_env(env)
    settings = load_settings(GovernorSettings, env)

    check_healthz(reporter, "governor-healthz", url)

    wanted = {case["entry_id"] for case in state.cases}
    decided, events = wait_until(lambda: _events(client, state), lambda found: wanted <= set(found), timeout)
    reporter.check(
        "governor-decided", decided, f"an event for each of the {len(wanted)} plans within {timeout:g}s",
        f"events for {len(wanted & set(events))}", f"{len(wanted)} plans",
    )  # fmt: skip
    dead_letters = _by_source(client, state, DEAD_LETTERS)

    permits: dict[str, tuple[dict[str, Any] | None, str]] = {}
    for case in state.cases:
        permit, raw_permit = _permit(client, case["plan_id"])
        if case["permit"] is not None:
            permits[case["case"]] = (permit, raw_permit)
        _check_case(case, events.get(case["entry_id"]), permit, dead_letters.get(case["entry_id"]), reporter)

    _check_permit_schema(client, state, permits, settings, reporter)
    _check_metrics(state, url, reporter)


def _events(client: RedisClient, state: RunState) -> dict[str, dict[str, str]]:
    return _by_source(client, state, EVENTS)


def _by_source(client: RedisClient, state: RunState, role: str) -> dict[str, dict[str, str]]:
    """The entries of a stream since the run began whose ``source_id`` is one of the run's plans, by plan entry."""
    mark = state.streams[role]
    ours = set(state.plan_entries)
    return {
        fields["source_id"]: fields
        for _entry_id, fields in entries_after(client, mark.name, mark.last_id)
        if fields.get("source_id") in ours
    }


def _permit(client: RedisClient, plan_id: str | None) -> tuple[dict[str, Any] | None, str]:
    if plan_id is None:
        return None, ""
    raw = client.get(permit_key(plan_id))
    if raw is None:
        return None, "<absent>"
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None, text(raw)
    return (parsed if isinstance(parsed, dict) else None), text(raw)


def _check_case(
    case: dict[str, Any],
    event: dict[str, str] | None,
    permit: dict[str, Any] | None,
    dead_letter: dict[str, str] | None,
    reporter: Reporter,
) -> None:
    expected: dict[str, object] = {"event": case["event"], "reason": case["reason"], "symbol": case["symbol"]}
    got: dict[str, object] = dict(event or {"event": "<no event>"})
    if case["plan_id"] is not None and case["dead_letter"] is None:
        expected["plan_id"] = case["plan_id"]
    if case["permit"] is not None:
        expected |= {f"permit.{name}": value for name, value in case["permit"].items()}
        expected |= {f"permit.{name}": case[name] for name in ("plan_id", "symbol", "action")}
        got |= {f"permit.{name}": value for name, value in (permit or {"<permit>": "absent"}).items()}
    else:
        expected["permit"] = "absent"
        got["permit"] = "absent" if permit is None else "present"
    if case["dead_letter"] is not None:
        expected |= {"dead_letter.reason": case["dead_letter"], "dead_letter.symbol": case["symbol"]}
        got |= {f"dead_letter.{name}": value for name, value in (dead_letter or {"<entry>": "absent"}).items()}
    detail = f"{case['symbol']} plan {case['plan_id']!r} -> {got.get('event')} {got.get('reason')}"
    if permit is not None:
        detail += f", {permit.get('eff_action')} {permit.get('eff_factor')} +{permit.get('extra_cooldown_sec')}s"
    reporter.fields(case["case"], expected, got, detail)


def _check_permit_schema(
    client: RedisClient,
    state: RunState,
    permits: dict[str, tuple[dict[str, Any] | None, str]],
    settings: GovernorSettings,
    reporter: Reporter,
) -> None:
    problems = []
    for name, (permit, raw) in permits.items():
        if permit is None:
            problems.append(f"{name}: not a JSON object: {raw[:100]!r}")
            continue
        missing = sorted(set(PERMIT_TYPES) - set(permit))
        mistyped = [f"{key}={permit[key]!r}" for key, types in PERMIT_TYPES.items()
                    if key in permit and not _has_type(permit[key], types)]  # fmt: skip
        literal = [f"{key}={permit.get(key)!r}" for key, value in PERMIT_LITERALS.items() if permit.get(key) != value]
        if missing or mistyped or literal:
            problems.append(f"{name}: missing {missing}, wrong type {mistyped}, wrong value {literal}")
    reporter.check(
        "permit-schema", bool(permits) and not problems, "every permit a JSON object with every SPEC §3 key and type",
        "; ".join(problems) or "no permit", f"{len(permits)} permits, {len(PERMIT_TYPES)} keys each",
    )  # fmt: skip

    ttls = []
    for case in state.cases:
        if case["permit"] is None:
            continue
        ttl = int(client.ttl(permit_key(case["plan_id"])))
        if not 0 < ttl <= settings.permit_ttl_sec:
            ttls.append(f"{case['plan_id']}: ttl {ttl}")
    reporter.check(
        "permit-ttl", bool(permits) and not ttls, f"every permit with a TTL in (0, {settings.permit_ttl_sec}]",
        "; ".join(ttls) or "no permit", f"{len(permits)} permits",
    )  # fmt: skip


def _has_type(value: object, types: tuple[type, ...]) -> bool:
    """``isinstance``, except that a JSON ``true``/``false`` is not a number (``bool`` is an ``int`` in Python)."""
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _check_metrics(state: RunState, url: str, reporter: Reporter) -> None:
    name, labels = EFF_APPLY
    key = series_key(name, **labels)
    downsized = sum(1 for case in state.cases if (case["permit"] or {}).get("eff_action") == "DOWNSIZE")
    baseline = state.baselines.get(key)
    target = None if baseline is None else baseline + downsized
    grown, value = wait_until(
        lambda: scrape(url).get(series(name, **labels)),
        lambda now: target is None or (now is not None and now >= target),
        METRICS_SETTLE_SEC,
    )
    if grown:  # once there, read again: a permit counted twice may show a moment later
        time.sleep(METRICS_RECHECK_SEC)
        value = scrape(url).get(series(name, **labels))
    exact = target is not None and value == target
    reporter.check(
        "metrics-eff-apply", exact, f"{key} grown by exactly {downsized} from {baseline}", f"{value}",
        f"{baseline:g} -> {value:g}" if exact and baseline is not None and value is not None else "",
    )  # fmt: skip

    downsize_cases = [case for case in state.cases if (case["permit"] or {}).get("eff_action") == "DOWNSIZE"]
    samples = scrape(url)
    wrong = []
    for case in downsize_cases:
        factor = samples.get(series("p32_eff_factor", symbol=case["symbol"]))
        if four(factor) != case["permit"]["eff_factor"]:
            wrong.append(f"{case['symbol']}: {four(factor)} (want {case['permit']['eff_factor']})")
    reporter.check(
        "metrics-eff-factor", bool(downsize_cases) and not wrong, "p32_eff_factor{symbol} = the permit's eff_factor",
        "; ".join(wrong) or "no downsized plan", f"{len(downsize_cases)} symbol(s)",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return check_main(
        argv,
        doc=__doc__,
        checks=check,
        url_option="--governor-url",
        default_url="http://127.0.0.1:8044",
        timeout=15.0,
        timeout_help="longest wait for the plans' outcomes, seconds",
    )


if __name__ == "__main__":
    sys.exit(main())
