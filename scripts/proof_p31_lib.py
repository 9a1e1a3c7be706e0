"""What the P3.1 proof scripts share: the run's ledger, the PASS/FAIL report, Redis, streams and /metrics.

The proofs (``scripts/proof_p31_step1_allocation_shadow.sh``, ``scripts/proof_p31_step2_governor_downsize.sh``) may run
against production's Redis. The run's symbols and plan_ids are therefore recorded in a ledger, the :class:`RunState`
JSON file of the run, *before* anything is written under them, so that the cleanup (``proof_p31_run.py cleanup``, also
run from the shell's ``trap EXIT``) finds everything even when a step crashed half-way; and every key the daemons
write in response is derived from the run's own symbols, plan_ids and stream entries (:func:`owned_keys`,
:func:`is_owned_entry`), never found by a pattern that could match someone else's key.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from prometheus_client.parser import text_string_to_metric_families

from microservices.allocation_target.proposal import PROPOSED_PREFIX
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import efficiency_key
from microservices.core.redis_client import RedisClient, connect
from microservices.core.settings import CommonSettings, environment, load_settings
from microservices.devtools.daemon_process import http_get
from microservices.governor.gate import GATE_KEY_PREFIX
from microservices.governor.records import (
    ENTRY_OUTCOME_KEY_PREFIX,
    EVENTS_STREAM,
    block_key,
    outcome_key,
    permit_key,
)
from microservices.governor.settings import GovernorSettings
from microservices.ops.inject import live_target_key

#: Every symbol of a proof starts with this and ends with ``-<run>``: test-only symbols that no exchange lists (no
#: exchange symbol holds a ``-``), so that a permit for one that reaches the apply layer is refused there.
SYMBOL_PREFIX = "P31PROOF"
#: Entries are read from streams in pages of this many.
PAGE = 1000
#: How often a wait polls Redis or /metrics, seconds.
POLL_SEC = 0.1

#: The proposer's counter of ended loops: two more than at a moment means one whole loop began after it.
PROPOSER_LOOPS = "p29_shadow_loops_total"

#: Stream roles: the name of each comes from the same environment variables the daemons read.
PROPOSALS = "proposals"
PLANS = "plans"
EVENTS = "events"
DEAD_LETTERS = "dead_letters"

T = TypeVar("T")


# --- the ledger --------------------------------------------------------------------------------------------------


@dataclass
class StreamMark:
    """A stream as it was before the run: whether it existed, its last generated id (the run's entries come after
    it) and its consumer groups (a group that appears during a ``--spawn`` run was made by the spawned governor)."""

    name: str
    existed: bool
    last_id: str
    groups: list[str]


@dataclass
class RunState:
    """The ledger of one proof run, kept as JSON in the run's directory and shared by its steps."""

    step: int
    run: str
    spawn: bool
    #: ``GOV_CONSUMER`` of the spawned governor (step 2 with ``--spawn``), else None.
    consumer: str | None = None
    #: Streams whose names are the run's own (step 2 with ``--spawn``: its plans stream and that stream's dead
    #: letters): nobody else writes them, so the cleanup deletes them whole.
    private_streams: list[str] = field(default_factory=list)
    #: Streams by role (:data:`PROPOSALS` ...), as they were before the run.
    streams: dict[str, StreamMark] = field(default_factory=dict)
    symbols: list[str] = field(default_factory=list)
    plan_ids: list[str] = field(default_factory=list)
    #: Stream entry ids of the plans this run published.
    plan_entries: list[str] = field(default_factory=list)
    #: The cases as injected, with what the check expects of each (JSON objects, step-specific).
    cases: list[dict[str, Any]] = field(default_factory=list)
    #: Metric values read before the plans were published, by series.
    baselines: dict[str, float] = field(default_factory=dict)
    #: Live target hashes as injected: fields and values hex-encoded, so the comparison after is byte for byte.
    live_snapshot: dict[str, dict[str, str]] = field(default_factory=dict)
    #: When each live target was to expire right after the injection (epoch seconds): the proposer must not move it.
    live_expiry: dict[str, float] = field(default_factory=dict)
    #: Each stream's last generated id right after the injection, by role.
    after_inject_ids: dict[str, str] = field(default_factory=dict)
    #: Epoch time the injection started.
    injected_at: float = 0.0

    def save(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=1, sort_keys=True), encoding="utf-8")
        temporary.replace(path)  # atomic: a crash leaves the previous ledger, never half of one

    @classmethod
    def load(cls, path: Path) -> RunState:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["streams"] = {role: StreamMark(**mark) for role, mark in data["streams"].items()}
        return cls(**data)

    def stream(self, role: str) -> str:
        return self.streams[role].name


def stream_names(env: Mapping[str, str]) -> dict[str, str]:
    """The streams the proofs read and clean, by role, named from the environment exactly as the daemons name them."""
    proposer = load_settings(ProposerSettings, env)
    governor = load_settings(GovernorSettings, env)
    return {
        PROPOSALS: proposer.stream_name,
        PLANS: governor.plans_stream,
        EVENTS: EVENTS_STREAM,
        DEAD_LETTERS: governor.dead_letter_stream,
    }


def proof_symbol(step: int, tag: str, run: str) -> str:
    return f"{SYMBOL_PREFIX}{step}{tag}USDT-{run}"


# --- the environment -----------------------------------------------------------------------------------------------


def add_env_file_option(parser: argparse.ArgumentParser) -> None:
    """``--env-file FILE``, which the shell passes on to every helper as to a spawned daemon. A helper reads its
    settings from ``microservices.core.settings.environment(env_file)``, as a daemon does: the file parsed, never
    executed (a ``$`` or backtick in a password stays as it is), overridden by the process environment; variables
    set in neither keep the settings' own defaults."""
    parser.add_argument(
        "--env-file", metavar="FILE", help="read the daemons' variables from FILE too (the environment wins)"
    )


# --- Redis -------------------------------------------------------------------------------------------------------


def connect_from_env(env: Mapping[str, str]) -> RedisClient:
    """A client for the Redis the daemons use: ``REDIS_URL`` (or ``REDIS_HOST`` ...), read and checked as they do."""
    return connect(load_settings(CommonSettings, env), client_name="p31-proof")


def text(raw: object) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def text_fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(name): text(value) for name, value in raw.items()}


def mark_stream(client: RedisClient, name: str) -> StreamMark:
    """The stream as it is now: existence, last generated id (``0-0`` when absent) and group names."""
    if not client.exists(name):
        return StreamMark(name, existed=False, last_id="0-0", groups=[])
    info = client.xinfo_stream(name)
    groups = [text(group["name"]) for group in client.xinfo_groups(name)]
    return StreamMark(name, existed=True, last_id=text(info["last-generated-id"]), groups=groups)


def entries_after(client: RedisClient, stream: str, last_id: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Every entry of ``stream`` after ``last_id`` (exclusive), oldest first, as text; nothing when it is absent.
    Pages start at the last id seen, inclusive, and skip it: exclusive ranges need Redis 6.2."""
    if text(client.type(stream)) != "stream":
        return
    start = last_id
    while True:
        page = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream, min=start, max="+", count=PAGE))
        fresh = [(text(entry_id), fields) for entry_id, fields in page if text(entry_id) != start]
        for entry_id, fields in fresh:
            yield entry_id, text_fields(fields)
        if not fresh or len(page) < PAGE:
            return
        start = fresh[-1][0]


def hex_hash(client: RedisClient, key: str) -> dict[str, str]:
    """A hash's fields and values hex-encoded: comparable byte for byte, and storable as JSON."""
    raw: Mapping[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
    return {name.hex(): value.hex() for name, value in raw.items()}


def owned_keys(state: RunState) -> list[str]:
    """Every key the run or the daemons (in response to it) may have written, derived from the run's own names:
    efficiency hashes, live targets, shadow proposals, gates, permits, blocks and outcome markers."""
    keys: list[str] = []
    for symbol in state.symbols:
        keys += [efficiency_key(symbol), live_target_key(symbol), PROPOSED_PREFIX + symbol, GATE_KEY_PREFIX + symbol]
    for plan_id in state.plan_ids:
        keys += [permit_key(plan_id), block_key(plan_id), outcome_key(plan_id)]
    keys += [ENTRY_OUTCOME_KEY_PREFIX + entry_id for entry_id in state.plan_entries]
    return keys


def is_owned_entry(state: RunState, entry_id: str, fields: Mapping[str, str]) -> bool:
    """Whether a stream entry was written by the run or for it: a plan it published, an event or dead letter of
    one (``source_id``), or a proposal for one of its symbols (also under a prefix, as the old proposer's
    ``proposed:{symbol}`` bug wrote)."""
    if entry_id in state.plan_entries or fields.get("source_id") in state.plan_entries:
        return True
    if fields.get("plan_id") in state.plan_ids:
        return True
    symbol = fields.get("symbol", "")
    return symbol in state.symbols or any(symbol.endswith(":" + own) for own in state.symbols)


# --- the report ----------------------------------------------------------------------------------------------------


class Reporter:
    """Prints ``PASS <case>`` or ``FAIL <case>: expected ... got ...`` per case and appends each line to the run's
    results file, from which ``proof_p31_run.py summary`` counts them."""

    def __init__(self, results: Path | None) -> None:
        self.results = results
        self.failures = 0
        self.passes = 0

    def _emit(self, line: str) -> None:
        print(line, flush=True)
        if self.results is not None:
            with self.results.open("a", encoding="utf-8") as out:
                out.write(line + "\n")

    def check(self, case: str, ok: bool, expected: object, got: object, detail: str = "") -> bool:
        if ok:
            self.passes += 1
            self._emit(f"PASS {case}" + (f" ({detail})" if detail else ""))
        else:
            self.failures += 1
            self._emit(f"FAIL {case}: expected {expected} got {got}")
        return ok

    def fields(self, case: str, expected: Mapping[str, object], got: Mapping[str, object], detail: str = "") -> bool:
        """Pass when every expected field has exactly the expected value; a failure names only the fields that
        differ."""
        wrong = {name: value for name, value in expected.items() if got.get(name) != value}
        return self.check(
            case, not wrong, _show(wrong), _show({name: got.get(name, "<absent>") for name in wrong}), detail
        )


def _show(values: Mapping[str, object]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in values.items()) or "{}"


#: A step's checks: the run's ledger, its environment (``environment(--env-file)``), the daemon's base URL, the longest
#: wait for its work, and where to report.
Checks = Callable[[RunState, Mapping[str, str], str, float, Reporter], None]


def check_main(
    argv: list[str] | None, *, doc: str | None, checks: Checks, url_option: str, default_url: str, timeout: float,
    timeout_help: str,
) -> int:  # fmt: skip
    """The command line of a step's check script (``--state``, ``--results``, the daemon's URL, ``--timeout``,
    ``--env-file``): run ``checks``; exit status 0 when every case passed, 1 otherwise."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_env_file_option(parser)
    parser.add_argument("--state", required=True, help="the run's ledger")
    parser.add_argument("--results", help="append the PASS/FAIL lines here too")
    parser.add_argument(url_option, dest="url", default=default_url)
    parser.add_argument("--timeout", type=float, default=timeout, help=timeout_help)
    args = parser.parse_args(argv)
    reporter = Reporter(Path(args.results) if args.results else None)
    checks(RunState.load(Path(args.state)), environment(args.env_file), args.url, args.timeout, reporter)
    return 0 if reporter.failures == 0 else 1


# --- /metrics and /healthz -----------------------------------------------------------------------------------------

Series = tuple[str, frozenset[tuple[str, str]]]


def scrape(base_url: str) -> dict[Series, float]:
    """Every sample of ``{base_url}/metrics``, by name and labels; empty when the page cannot be fetched."""
    try:
        status, body = http_get(base_url.rstrip("/") + "/metrics")
    except OSError:
        return {}
    if status != 200:
        return {}
    samples: dict[Series, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def series(name: str, **labels: str) -> Series:
    return name, frozenset(labels.items())


def series_key(name: str, **labels: str) -> str:
    """A series as one text, for the ledger's baselines."""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def healthz(base_url: str) -> tuple[int, dict[str, Any] | None, str]:
    """Status, the JSON object of the body (None when it is not one) and the raw body; status 0 when unreachable."""
    try:
        status, body = http_get(base_url.rstrip("/") + "/healthz")
    except OSError as exc:
        return 0, None, str(exc)
    try:
        parsed = json.loads(body)
    except ValueError:
        return status, None, body
    return status, (parsed if isinstance(parsed, dict) else None), body


def check_healthz(reporter: Reporter, case: str, base_url: str) -> None:
    """The case that the daemon's /healthz answers 200 with a JSON object whose status is ok."""
    status, body, raw = healthz(base_url)
    reporter.check(
        case, status == 200 and body is not None and body.get("status") == "ok",
        "200 with a JSON object, status ok", f"{status} {raw[:200]!r}",
    )  # fmt: skip


def four(value: float | None) -> str:
    """A metric value as the daemons write the same number into Redis (``%.4f``), or ``<absent>``."""
    return "<absent>" if value is None or not math.isfinite(value) else f"{value:.4f}"


# --- waiting -------------------------------------------------------------------------------------------------------


def wait_until(probe: Callable[[], T], done: Callable[[T], bool], timeout: float) -> tuple[bool, T]:
    """Call ``probe`` until ``done`` holds for its value or ``timeout`` passes; whether it held, and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return True, value
        if time.monotonic() >= deadline:
            return False, value
        time.sleep(POLL_SEC)
