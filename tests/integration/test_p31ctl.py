"""The real ``p31ctl`` against a real Redis with seeded data: exact numbers, in tables and in ``--json``."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from microservices.devtools.daemon_process import ROOT
from microservices.devtools.redis_server import RedisServer, free_port
from microservices.ops.cli import main
from microservices.ops.report import read_window
from tests.daemons import Daemon, daemon_env, run_once
from tests.redis_util import hset_text, stream_entries, text_hash

P31CTL = Path(sys.executable).parent / "p31ctl"
STREAM = "quantum:stream:allocation.target.proposed"
PROPOSER = "microservices.allocation_target"


def p31ctl(
    redis_url: str | None, *args: str, extra: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed console script, in a clean environment."""
    return subprocess.run(
        [str(P31CTL), *args], env=daemon_env(redis_url, extra), cwd=ROOT, capture_output=True, text=True,
        check=False, timeout=60,
    )  # fmt: skip


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def seed_symbols(r: redis.Redis, now: float) -> None:
    """BTC ok 0.9, ETH stale, SOL ok 0.2, XRP an invalid target, ADA low confidence."""
    targets = {"BTC": "1000", "ETH": "500", "SOL": "200", "XRP": "abc", "ADA": "300"}
    for symbol, target in targets.items():
        hset_text(r, f"quantum:allocation:target:{symbol}", {"target_usd": target})
    effs = {"BTC": ("0.9", "0.8", now), "ETH": ("0.3", "0.9", now - 1000), "SOL": ("0.2", "0.9", now),
            "XRP": ("0.7", "0.9", now), "ADA": ("1.0", "0.3", now)}  # fmt: skip
    for symbol, (score, conf, ts) in effs.items():
        hset_text(
            r, f"quantum:capital:efficiency:{symbol}", {"efficiency_score": score, "confidence": conf, "ts": str(ts)}
        )


def rows_by_symbol(document: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["symbol"]: row for row in document["rows"]}


@pytest.mark.slow
def test_status_shows_what_the_proposer_proposes_and_its_last_shadow_proposal(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    seed_symbols(r, time.time())
    assert run_once(PROPOSER, redis_server.url).returncode == 0

    table = p31ctl(redis_server.url, "status")
    assert table.returncode == 0, table.stderr
    btc = next(line for line in table.stdout.splitlines() if line.startswith("BTC "))
    assert btc.split() == ["BTC", "0.9000", "0.800", btc.split()[3], "ok", "1,000.00", "1.4000", "1,400.00",
                           "1,400.00", btc.split()[9]]  # fmt: skip

    document = as_json(p31ctl(redis_server.url, "status", "--json"))
    rows = rows_by_symbol(document)
    # the proposer's own shadow keys are not symbols
    assert sorted(rows) == ["ADA", "BTC", "ETH", "SOL", "XRP"]
    assert document["symbols"] == 5
    btc_row = rows["BTC"]
    assert (btc_row["reason"], btc_row["base_target"], btc_row["multiplier"]) == ("ok", 1000.0, pytest.approx(1.4))
    assert btc_row["proposed_target"] == pytest.approx(1000.0 * 1.4)
    assert btc_row["shadow_proposed_target"] == 1400.0
    assert 0 <= btc_row["shadow_age_sec"] < 60
    assert rows["SOL"]["multiplier"] == pytest.approx(0.7)
    assert rows["SOL"]["proposed_target"] == pytest.approx(140.0)
    assert (rows["ETH"]["reason"], rows["ETH"]["multiplier"]) == ("stale_eff", 1.0)
    assert rows["ETH"]["age_sec"] == pytest.approx(1000, abs=30)
    assert (rows["ADA"]["reason"], rows["ADA"]["multiplier"]) == ("low_conf", 1.0)
    assert (rows["XRP"]["reason"], rows["XRP"]["eff_reason"], rows["XRP"]["base_target"]) == (
        "invalid_target", "ok", None,
    )  # fmt: skip
    assert rows["XRP"]["shadow_proposed_target"] is None

    only = as_json(p31ctl(redis_server.url, "--json", "status", "--symbol", "SOL", "--symbol", "NOPE"))
    assert [row["symbol"] for row in only["rows"]] == ["SOL"]
    assert only["no_live_target"] == ["NOPE"]


def test_status_settings_come_from_env_file_and_environment(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    seed_symbols(r, time.time())
    env_file = tmp_path / "p.env"
    env_file.write_text(f"REDIS_URL={redis_server.url}\nP31_SCALE=2\n")
    rows = rows_by_symbol(as_json(p31ctl(None, "status", "--json", "--env-file", str(env_file))))
    assert rows["BTC"]["multiplier"] == 1.5  # 1 + 2 x 0.4 = 1.8, clamped to P31_MAX_MULT
    rows = rows_by_symbol(
        as_json(p31ctl(None, "--env-file", str(env_file), "status", "--json", extra={"P31_MAX_MULT": "1.7"}))
    )
    assert rows["BTC"]["multiplier"] == pytest.approx(1.7)  # the environment wins over the file


def test_explain_of_a_stale_symbol_names_stale_eff_as_deciding_and_shows_the_age(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    seed_symbols(r, time.time())
    result = p31ctl(redis_server.url, "explain", "ETH")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ETH: reason stale_eff (decided by 'not stale')\n")
    stale = next(line for line in result.stdout.splitlines() if " not stale " in line)
    assert re.search(r"FAIL +age 10\d\d\.\ds; stale when > 600s -> stale_eff", stale), stale

    document = as_json(p31ctl(redis_server.url, "explain", "ETH", "--json"))
    assert (document["reason"], document["decided_by"]) == ("stale_eff", "not stale")
    assert document["age_sec"] == pytest.approx(1000, abs=30)
    statuses = [(c["check"], c["status"]) for c in document["checks"] if c["section"] == "§1 efficiency"]
    assert statuses == [
        ("read ok", "pass"), ("key present", "pass"), ("score usable", "pass"), ("confidence usable", "pass"),
        ("timestamp usable", "pass"), ("not in the future", "pass"), ("not stale", "FAIL"),
        ("confidence high enough", "not reached"),
    ]  # fmt: skip
    assert document["proposal"] == {"base_target": 500.0, "multiplier": 1.0, "proposed_target": 500.0}


def test_explain_substitutes_the_numbers_into_both_formulas(r: redis.Redis, redis_server: RedisServer) -> None:
    seed_symbols(r, time.time())
    document = as_json(p31ctl(redis_server.url, "explain", "SOL", "--json"))
    checks = {c["check"]: c["value"] for c in document["checks"]}
    assert document["decided_by"] is None
    assert checks["multiplier formula"] == "P31_BASE + P31_SCALE x (score - 0.5) = 1 + 1 x (0.2 - 0.5) = 0.7000"
    assert checks["proposed target"] == "base x multiplier = 200.00 x 0.7000 = 140.00"
    assert checks["downsize factor"].endswith("= max(0.25, 0.2 / 0.45) = 0.4444")
    assert checks["extra cooldown"].endswith("= round((1 - 0.2) x 120) = 96 s")
    assert document["governor"] == {
        "reason": "ok", "eff_action": "DOWNSIZE", "factor": pytest.approx(0.4444, abs=1e-4),
        "extra_cooldown_sec": 96, "eff_reason": "ok",
    }  # fmt: skip


def test_explain_of_an_unknown_symbol_is_missing_eff(r: redis.Redis, redis_server: RedisServer) -> None:
    document = as_json(p31ctl(redis_server.url, "explain", "NOPE", "--json"))
    assert (document["reason"], document["decided_by"]) == ("missing_eff", "key present")
    assert document["skip"]["reason"] == "invalid_target"


def seed_proposals(r: redis.Redis, now: float) -> None:
    """Six proposals in the window (A twice) and one older than it."""
    old_id = f"{int((now - 7200) * 1000)}-0"
    r.xadd(STREAM, proposal("Z", 999.0, 1.5, "ok"), id=old_id)
    for symbol, base, mult, reason in [
        ("A", 1000.0, 1.4, "ok"), ("B", 500.0, 0.8, "ok"), ("C", 200.0, 1.0, "stale_eff"),
        ("D", 100.0, 1.0, "missing_eff"), ("A", 1000.0, 1.2, "ok"), ("E", 300.0, 0.5, "ok"),
    ]:  # fmt: skip
        r.xadd(STREAM, proposal(symbol, base, mult, reason))


def proposal(symbol: str, base: float, mult: float, reason: str) -> dict[Any, Any]:
    return {
        "ts_epoch": str(int(time.time())), "symbol": symbol, "base_target": f"{base:.2f}",
        "proposed_target": f"{base * mult:.2f}", "multiplier": f"{mult:.4f}", "eff_score": "", "eff_confidence": "",
        "eff_stale": "0", "reason": reason, "mode": "shadow",
    }  # fmt: skip


def test_report_gives_exact_shares_percentiles_and_usd_change(r: redis.Redis, redis_server: RedisServer) -> None:
    seed_proposals(r, time.time())
    document = as_json(p31ctl(redis_server.url, "report", "--since", "1h", "--json"))
    assert (document["proposals"], document["symbols"], document["unreadable"]) == (6, 5, 0)
    assert document["reasons"] == [
        {"reason": "ok", "count": 4, "share_pct": pytest.approx(200 / 3)},
        {"reason": "missing_eff", "count": 1, "share_pct": pytest.approx(100 / 6)},
        {"reason": "stale_eff", "count": 1, "share_pct": pytest.approx(100 / 6)},
    ]
    dist = document["multipliers"]
    assert [dist[k] for k in ("min", "p10", "p50", "p90", "max")] == pytest.approx([0.5, 0.65, 1.0, 1.3, 1.4])
    assert [b["count"] for b in dist["buckets"]] == [1, 0, 0, 1, 0, 2, 0, 1, 0, 1]
    assert (document["base_total"], document["proposed_total"], document["change_total"]) == (2100.0, 2050.0, -50.0)
    assert document["change_pct"] == pytest.approx(-50 / 2100 * 100)
    assert [(m["symbol"], m["change"]) for m in document["up"]] == [("A", 200.0)]
    assert [(m["symbol"], m["change"]) for m in document["down"]] == [("E", -150.0), ("B", -100.0)]

    table = p31ctl(redis_server.url, "report", "--since", "1h")
    assert table.returncode == 0, table.stderr
    assert "6 proposals over 5 symbols" in table.stdout
    assert "ok                   4  66.7%" in table.stdout
    assert "0.5000  0.6500  1.0000  1.3000  1.4000" in table.stdout
    assert "2,100.00            2,050.00      -50.00  -2.38%" in table.stdout

    # a window reaching back 3 hours takes in the old proposal too
    wider = as_json(p31ctl(redis_server.url, "report", "--since", "3h", "--json"))
    assert (wider["proposals"], wider["symbols"]) == (7, 6)


def test_report_says_when_the_stream_was_trimmed_inside_the_window(r: redis.Redis, redis_server: RedisServer) -> None:
    now = time.time()
    seed_proposals(r, now)
    assert not as_json(p31ctl(redis_server.url, "report", "--since", "3h", "--json"))["partial"]
    r.xtrim(STREAM, maxlen=3, approximate=False)  # as MAXLEN ~ does to a busy stream: the oldest entries are gone
    document = as_json(p31ctl(redis_server.url, "report", "--since", "1h", "--json"))
    assert document["partial"] and document["proposals"] == 3
    first: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange(STREAM, count=1)  # type: ignore[assignment]
    assert document["covered_from"] == int(first[0][0].split(b"-")[0]) / 1000
    assert "PARTIAL: the stream is trimmed" in p31ctl(redis_server.url, "report", "--since", "1h").stdout


def test_report_of_an_empty_window_says_so(r: redis.Redis, redis_server: RedisServer) -> None:
    result = p31ctl(redis_server.url, "report", "--since", "30m")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "no proposals in this window"
    document = as_json(p31ctl(redis_server.url, "report", "--since", "30m", "--json"))
    assert (document["proposals"], document["multipliers"], document["since_sec"]) == (0, None, 1800.0)


def test_the_window_is_read_in_pages(r: redis.Redis) -> None:
    now = time.time()
    for i in range(7):
        r.xadd(STREAM, {"symbol": f"S{i}"}, id=f"{int(now * 1000)}-{i + 1}")
    entries = list(read_window(r, STREAM, now - 60, page_size=3))
    assert [fields["symbol"] for _, fields in entries] == [f"S{i}" for i in range(7)]


def test_inject_efficiency_and_plan_print_what_they_wrote(r: redis.Redis, redis_server: RedisServer) -> None:
    result = p31ctl(
        redis_server.url, "inject-efficiency", "P31TESTUSDT", "--score", "0.2", "--confidence", "0.9", "--ts", "123",
        "--ttl", "100", "--target-usd", "50",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "wrote quantum:capital:efficiency:P31TESTUSDT (TTL 100 s)\n"
        "wrote quantum:allocation:target:P31TESTUSDT (TTL 100 s)\n"
    )
    assert text_hash(r, "quantum:capital:efficiency:P31TESTUSDT") == {
        "efficiency_score": "0.2",
        "confidence": "0.9",
        "ts": "123",
    }
    assert text_hash(r, "quantum:allocation:target:P31TESTUSDT") == {"target_usd": "50"}
    assert 0 < r.ttl("quantum:capital:efficiency:P31TESTUSDT") <= 100

    document = as_json(p31ctl(
        redis_server.url, "inject-plan", "--plan-id", "p-1", "--symbol", "P31TESTUSDT", "--reduce-only", "true",
        "--field", "note=x", "--stream", "test:plans", "--json",
    ))  # fmt: skip
    entries = stream_entries(r, "test:plans")
    assert len(entries) == 1
    written: list[tuple[bytes, dict[bytes, bytes]]] = r.xrange("test:plans")  # type: ignore[assignment]
    assert document["entry_id"] == written[0][0].decode()
    assert document["fields"] == entries[0]
    assert (entries[0]["plan_id"], entries[0]["reduceOnly"], entries[0]["note"]) == ("p-1", "true", "x")
    plain = p31ctl(redis_server.url, "inject-plan", "--plan-id", "p-2", "--symbol", "P31TESTUSDT")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.startswith("appended to quantum:stream:apply.plan as entry ")
    assert len(stream_entries(r, "quantum:stream:apply.plan")) == 1


def test_injectors_write_only_for_test_symbols_and_never_over_a_live_target(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    """Against production a typo must not corrupt a real score, overwrite (or set to expire) a real allocation
    target, or publish a plan the apply layer would execute."""
    hset_text(r, "quantum:allocation:target:BTCUSDT", {"target_usd": "250000", "owner": "risk"})
    hset_text(r, "quantum:capital:efficiency:BTCUSDT", {"efficiency_score": "0.7", "confidence": "0.9", "ts": "1"})
    before = (text_hash(r, "quantum:allocation:target:BTCUSDT"), text_hash(r, "quantum:capital:efficiency:BTCUSDT"))
    for command in (
        ["inject-efficiency", "BTCUSDT", "--score", "0.1", "--confidence", "0.9", "--target-usd", "5"],
        ["inject-plan", "--plan-id", "typo-1", "--symbol", "BTCUSDT"],
    ):
        refused = p31ctl(redis_server.url, *command)
        assert refused.returncode == 64, refused.stderr
        assert "'BTCUSDT' is not a test symbol" in refused.stderr and "--force" in refused.stderr
    # forced, the efficiency hash is written (that is what --force is for), but a live target is never overwritten
    forced = p31ctl(
        redis_server.url, "inject-efficiency", "BTCUSDT", "--score", "0.1", "--confidence", "0.9", "--target-usd", "5",
        "--force",
    )  # fmt: skip
    assert forced.returncode == 64
    assert "quantum:allocation:target:BTCUSDT exists" in forced.stderr
    assert text_hash(r, "quantum:allocation:target:BTCUSDT") == before[0]
    assert r.ttl("quantum:allocation:target:BTCUSDT") == -1
    assert r.xlen("quantum:stream:apply.plan") == 0
    # nor through the back door of an extra field that replaces a named one
    smuggled = p31ctl(redis_server.url, "inject-plan", "--plan-id", "x1", "--symbol", "P31TESTUSDT",
                      "--field", "symbol=BTCUSDT")  # fmt: skip
    assert smuggled.returncode == 64 and "may not replace named ones: symbol" in smuggled.stderr
    assert r.xlen("quantum:stream:apply.plan") == 0
    # and a refused live target leaves the efficiency hash untouched too
    assert text_hash(r, "quantum:capital:efficiency:BTCUSDT") == before[1]


@pytest.mark.slow
def test_exit_statuses_unreachable_bad_config_usage() -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    result = p31ctl(nowhere, "status")
    assert result.returncode == 69, result.stderr
    assert result.stderr.startswith(f"p31ctl: Redis unreachable at {nowhere}: ConnectionError"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    bad = p31ctl(nowhere, "status", extra={"P31_MIN_CONF": "abc"})
    assert (bad.returncode, bad.stderr) == (
        78,
        "p31ctl: invalid configuration: P31_MIN_CONF='abc': is not a finite number\n",
    )
    usage = p31ctl(nowhere, "report", "--since", "soon")
    assert (usage.returncode, usage.stderr) == (
        64, "p31ctl: error: --since: 'soon' is not a duration such as 90, 90s, 30m, 1h or 2d\n",
    )  # fmt: skip


@pytest.mark.parametrize(
    "command", [["report"], ["explain", "BTC"], ["inject-plan", "--plan-id", "p", "--symbol", "P31TEST1"],
                ["inject-efficiency", "P31TEST1", "--score", "1", "--confidence", "1"]],
)  # fmt: skip
def test_every_redis_command_exits_69_with_one_line_when_unreachable(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("REDIS_URL", nowhere)
    err = io.StringIO()
    assert main(command, out=io.StringIO(), err=err) == 69
    assert err.getvalue().startswith(f"p31ctl: Redis unreachable at {nowhere}: ConnectionError")
    assert len(err.getvalue().splitlines()) == 1


@pytest.mark.parametrize("usage", [["frobnicate"], ["explain"], ["check-config"], ["status", "--symbol"], []])
def test_usage_errors_exit_64(usage: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(usage)
    assert exit_info.value.code == 64
    assert re.search(r"^p31ctl( [a-z-]+)?: error: ", capsys.readouterr().err, re.MULTILINE)


def test_status_of_an_unknown_symbol_says_it_has_no_live_target_and_names_the_closest(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    """Issue 12: "no live allocation targets" was printed while five existed."""
    seed_symbols(r, time.time())
    result = p31ctl(redis_server.url, "status", "--symbol", "btc")
    assert (result.returncode, result.stdout) == (0, f"{NO_LEADER}\n")
    assert result.stderr == (
        "btc: no live target quantum:allocation:target:btc (5 symbol(s) have one; symbols are case-sensitive; "
        "did you mean BTC?)\n"
    )
    nothing = p31ctl(redis_server.url, "status", "--symbol", "NOPE")
    assert nothing.stderr.endswith("(5 symbol(s) have one; symbols are case-sensitive)\n")


NO_LEADER = "proposer leader: none (no proposer holds the lease quantum:allocation_target:leader)"


def test_status_names_the_proposer_leading_and_its_lease_left(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    """SPEC §9: who writes proposals, from the lease; none before a proposer runs and after it stopped."""
    seed_symbols(r, time.time())
    assert p31ctl(redis_server.url, "status").stdout.splitlines()[0] == NO_LEADER
    env = daemon_env(redis_server.url, {"LOOP_INTERVAL_SEC": "0.5"})
    proposer = Daemon(PROPOSER, env, tmp_path / "proposer.log")
    try:
        proposer.wait_for(lambda: proposer.metric("p29_shadow_leader") == 1, what="the proposer leading")
        table = p31ctl(redis_server.url, "status")
        assert table.returncode == 0, table.stderr
        leads = re.fullmatch(
            r"proposer leader: ([^:]+):(\d+):[0-9a-f]{8} \(lease quantum:allocation_target:leader, ([\d.]+) s left\)",
            table.stdout.splitlines()[0],
        )
        assert leads is not None, table.stdout
        assert int(leads.group(2)) == proposer.process.pid
        assert 0 < float(leads.group(3)) <= 1.5  # 3 x LOOP_INTERVAL_SEC
        assert any(line.startswith("BTC ") for line in table.stdout.splitlines())
        leader = as_json(p31ctl(redis_server.url, "status", "--json"))["leader"]
        assert leader["key"] == "quantum:allocation_target:leader"
        assert leader["holder"].split(":")[1] == str(proposer.process.pid)
        assert 0 < leader["ttl_sec"] <= 1.5
        assert proposer.terminate()[0] == 0  # gives the lease up
    finally:
        proposer.close()
    assert p31ctl(redis_server.url, "status").stdout.splitlines()[0] == NO_LEADER
    assert as_json(p31ctl(redis_server.url, "status", "--json"))["leader"] == {
        "key": "quantum:allocation_target:leader", "holder": None, "ttl_sec": None,
    }  # fmt: skip
    r.set("quantum:allocation_target:leader", "by-hand")  # no TTL: it would never expire
    assert p31ctl(redis_server.url, "status").stdout.splitlines()[0] == (
        "proposer leader: by-hand (lease quantum:allocation_target:leader has no TTL: it never expires)"
    )


def test_explain_of_a_symbol_without_live_target_says_so_and_names_the_closest(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    """Issue 12: explain walked through missing_eff with no hint that the symbol has no live target."""
    seed_symbols(r, time.time())
    result = p31ctl(redis_server.url, "explain", "sol")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sol: reason missing_eff")
    assert result.stderr == (
        "note: sol: no live target quantum:allocation:target:sol (5 symbol(s) have one; symbols are case-sensitive; "
        "did you mean SOL?): the proposer does not see it\n"
    )
    document = as_json(p31ctl(redis_server.url, "explain", "sol", "--json"))
    assert (document["live_target"], document["did_you_mean"]) == (False, "SOL")
    known = as_json(p31ctl(redis_server.url, "explain", "SOL", "--json"))
    assert (known["live_target"], known["did_you_mean"]) == (True, None)


@pytest.mark.parametrize(
    ("action", "side"), [("OPEN_LONG", "BUY"), ("CLOSE_LONG", "SELL"), ("OPEN_SHORT", "SELL"), ("CLOSE_SHORT", "BUY")]
)
def test_inject_plan_sends_the_side_that_carries_out_its_action(
    action: str, side: str, r: redis.Redis, redis_server: RedisServer
) -> None:
    """Issue 12: ``--action CLOSE_LONG`` still sent ``side=BUY``."""
    document = as_json(p31ctl(redis_server.url, "inject-plan", "--plan-id", "p", "--symbol", "P31TESTA",
                              "--action", action, "--json"))  # fmt: skip
    assert document["fields"]["side"] == side
    forced = as_json(p31ctl(redis_server.url, "inject-plan", "--plan-id", "q", "--symbol", "P31TESTA",
                            "--action", action, "--side", "BUY", "--json"))  # fmt: skip
    assert forced["fields"]["side"] == "BUY"


def test_inject_plan_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12: ``inject-plan --help`` hid its defaults."""
    with pytest.raises(SystemExit):
        main(["inject-plan", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for default in ("action field (default OPEN_LONG)", "decision field (default EXECUTE)", "qty field (default 1.0)",
                    "side field (default: the side that carries out --action: SELL for CLOSE_LONG)",
                    "timestamp field (default: now)", "stream to append to (default: STREAM_PLANS)"):  # fmt: skip
        assert default in shown
