"""SPEC §1 and §2 end to end: ``python -m microservices.allocation_target --once`` as a process against real Redis."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import redis

from microservices.devtools.redis_server import RedisServer
from tests.daemons import run_once
from tests.redis_util import hset_text, stream_entries, text_hash

MODULE = "microservices.allocation_target"
LIVE = "quantum:allocation:target:"
PROPOSED = "quantum:allocation:target:proposed:"
EFF = "quantum:capital:efficiency:"
STREAM = "quantum:stream:allocation.target.proposed"
HASH_FIELDS = {
    "ts_epoch", "symbol", "base_target", "proposed_target", "multiplier", "eff_score", "eff_confidence", "eff_stale",
    "reason", "mode", "last_update_ts_epoch",
}  # fmt: skip


def seed(r: redis.Redis, now: float) -> dict[str, tuple[str, str, str, str, str, str]]:
    """Seed one symbol per case; returns symbol -> expected (reason, multiplier, proposed, score, conf, stale)."""
    iso = datetime.fromtimestamp(now - 30, UTC).replace(tzinfo=None).isoformat()
    cases: dict[str, tuple[str, dict[str, str] | None, tuple[str, str, str, str, str, str]]] = {
        # symbol: (target_usd, efficiency hash, expected)
        "OKHIGH": ("1000", {"efficiency_score": "0.9", "confidence": "0.9", "ts": f"{now - 10}"},
                   ("ok", "1.4000", "1400.00", "0.9000", "0.900", "0")),
        "OKLOW": ("1000", {"efficiency_score": "0.3", "confidence": "0.8", "ts": f"{int(now) - 10}"},
                  ("ok", "0.8000", "800.00", "0.3000", "0.800", "0")),
        "CLAMPTOP": ("10", {"efficiency_score": "1", "confidence": "1", "ts": f"{now}"},
                     ("ok", "1.5000", "15.00", "1.0000", "1.000", "0")),
        "MISSING": ("250.5", None, ("missing_eff", "1.0000", "250.50", "", "", "0")),
        "NANSCORE": ("100", {"efficiency_score": "nan", "confidence": "0.9", "ts": f"{now}"},
                     ("invalid_eff", "1.0000", "100.00", "", "0.900", "0")),
        "TEXTSCORE": ("100", {"efficiency_score": "high", "confidence": "0.9", "ts": f"{now}"},
                      ("invalid_eff", "1.0000", "100.00", "", "0.900", "0")),
        "RANGE": ("100", {"efficiency_score": "1.5", "confidence": "0.9", "ts": f"{now}"},
                  ("invalid_eff", "1.0000", "100.00", "1.5000", "0.900", "0")),
        "NOCONF": ("100", {"efficiency_score": "0.9", "ts": f"{now}"},
                   ("invalid_eff", "1.0000", "100.00", "0.9000", "", "0")),
        "NOTS": ("100", {"efficiency_score": "0.9", "confidence": "0.9"},
                 ("invalid_eff", "1.0000", "100.00", "0.9000", "0.900", "0")),
        "FUTURE": ("100", {"efficiency_score": "0.9", "confidence": "0.9", "ts": f"{now + 3600}"},
                   ("invalid_eff", "1.0000", "100.00", "0.9000", "0.900", "0")),
        "FUTUREMS": ("100", {"efficiency_score": "0.9", "confidence": "0.9", "ts": f"{int((now + 3600) * 1000)}"},
                     ("invalid_eff", "1.0000", "100.00", "0.9000", "0.900", "0")),
        "BADTS": ("100", {"efficiency_score": "0.9", "confidence": "0.9", "ts": "yesterday", "timestamp": f"{now}"},
                  ("invalid_eff", "1.0000", "100.00", "0.9000", "0.900", "0")),
        "MILLIS": ("100", {"efficiency_score": "0.9", "confidence": "0.9", "ts": f"{int((now - 20) * 1000)}"},
                   ("ok", "1.4000", "140.00", "0.9000", "0.900", "0")),
        "STALEMS": ("100", {"efficiency_score": "0.9", "confidence": "0.9", "ts": f"{int((now - 700) * 1000)}"},
                    ("stale_eff", "1.0000", "100.00", "0.9000", "0.900", "1")),
        "ISO": ("100", {"efficiency_score": "0.3", "confidence": "0.9", "timestamp": iso},
                ("ok", "0.8000", "80.00", "0.3000", "0.900", "0")),
        "STALE": ("100", {"efficiency_score": "0.9", "confidence": "0.9", "ts": f"{now - 700}"},
                  ("stale_eff", "1.0000", "100.00", "0.9000", "0.900", "1")),
        "NEARSTALE": ("100", {"efficiency_score": "0.9", "confidence": "0.9", "ts": f"{now - 540}"},
                      ("ok", "1.4000", "140.00", "0.9000", "0.900", "0")),
        "LOWCONF": ("100", {"efficiency_score": "0.9", "confidence": "0.64", "ts": f"{now}"},
                    ("low_conf", "1.0000", "100.00", "0.9000", "0.640", "0")),
        "CONFEDGE": ("100", {"efficiency_score": "0.9", "confidence": "0.65", "ts": f"{now}"},
                     ("ok", "1.4000", "140.00", "0.9000", "0.650", "0")),
        "STALELOW": ("100", {"efficiency_score": "0.9", "confidence": "0.1", "ts": f"{now - 700}"},
                     ("stale_eff", "1.0000", "100.00", "0.9000", "0.100", "1")),
        "ZERO": ("0", {"efficiency_score": "0.9", "confidence": "0.9", "ts": f"{now}"},
                 ("ok", "1.4000", "0.00", "0.9000", "0.900", "0")),
        "WRONGTYPE": ("100", None, ("redis_error", "1.0000", "100.00", "", "", "0")),
    }  # fmt: skip
    expected = {}
    for symbol, (target, eff, outcome) in cases.items():
        r.hset(LIVE + symbol, mapping={"target_usd": target, "note": "owned by the allocator"})
        if eff is not None:
            hset_text(r, EFF + symbol, dict(eff, unrelated="x" * 100))
        expected[symbol] = outcome
    r.rpush(EFF + "WRONGTYPE", "not", "a", "hash")
    return expected


def seed_unusable_targets(r: redis.Redis) -> set[str]:
    r.hset(LIVE + "BADTARGET", "target_usd", "abc")
    r.hset(LIVE + "NEGTARGET", "target_usd", "-5")
    r.hset(LIVE + "NANTARGET", "target_usd", "NaN")
    r.hset(LIVE + "NOTARGET", "other", "1")
    r.set(LIVE + "LIVESTRING", "500")
    for symbol in ("BADTARGET", "NEGTARGET", "NANTARGET", "NOTARGET", "LIVESTRING"):
        r.hset(EFF + symbol, mapping={"efficiency_score": "0.9", "confidence": "0.9", "ts": str(time.time())})
    return {"BADTARGET", "NEGTARGET", "NANTARGET", "NOTARGET", "LIVESTRING"}


def proposed_symbols(r: redis.Redis) -> set[str]:
    return {key.decode()[len(PROPOSED) :] for key in r.scan_iter(match=PROPOSED + "*")}


def test_every_reason_and_boundary_gives_its_exact_proposal(r: redis.Redis, redis_server: RedisServer) -> None:
    expected = seed(r, time.time())
    skipped = seed_unusable_targets(r)
    result = run_once(MODULE, redis_server.url)
    assert result.returncode == 0, result.stderr
    assert proposed_symbols(r) == set(expected)
    for symbol, (reason, multiplier, proposed, score, conf, stale) in expected.items():
        fields = text_hash(r, PROPOSED + symbol)
        assert set(fields) == HASH_FIELDS, symbol
        assert fields["ts_epoch"] == fields["last_update_ts_epoch"]
        assert abs(int(fields["ts_epoch"]) - time.time()) < 60
        got = (fields["reason"], fields["multiplier"], fields["proposed_target"], fields["eff_score"],
               fields["eff_confidence"], fields["eff_stale"])  # fmt: skip
        assert got == (reason, multiplier, proposed, score, conf, stale), symbol
        assert (fields["symbol"], fields["mode"]) == (symbol, "shadow")
        assert 0 < r.ttl(PROPOSED + symbol) <= 600
    assert skipped.isdisjoint(proposed_symbols(r))
    assert "no proposal, invalid_target: 4 symbol(s) this loop, e.g. BADTARGET (target_usd 'abc'" in result.stderr


def test_stream_gets_one_entry_per_proposal_with_the_spec_fields(r: redis.Redis, redis_server: RedisServer) -> None:
    expected = seed(r, time.time())
    assert run_once(MODULE, redis_server.url).returncode == 0
    entries = stream_entries(r, STREAM)
    assert len(entries) == len(expected)
    by_symbol = {fields["symbol"]: fields for fields in entries}
    assert set(by_symbol) == set(expected)
    okhigh = by_symbol["OKHIGH"]
    assert set(okhigh) == HASH_FIELDS - {"last_update_ts_epoch"}
    assert (okhigh["multiplier"], okhigh["proposed_target"], okhigh["reason"]) == ("1.4000", "1400.00", "ok")


def test_live_targets_are_never_written_and_proposed_keys_never_reprocessed(
    r: redis.Redis, redis_server: RedisServer
) -> None:
    expected = seed(r, time.time())
    skipped = seed_unusable_targets(r)
    r.expire(LIVE + "OKHIGH", 5000)
    live_keys = [LIVE + s for s in (*expected, *skipped)]
    before = {key: (r.type(key), r.dump(key), r.ttl(key)) for key in live_keys}

    for _ in range(2):
        assert run_once(MODULE, redis_server.url).returncode == 0

    for key, (kind, dumped, ttl) in before.items():
        assert r.type(key) == kind, key
        assert r.dump(key) == dumped, key
        if ttl == -1:
            assert r.ttl(key) == -1, key
        else:
            assert ttl - 60 < r.ttl(key) <= ttl, key
    assert proposed_symbols(r) == set(expected)
    assert not list(r.scan_iter(match=PROPOSED + "proposed:*"))
    assert r.xlen(STREAM) == 2 * len(expected)


def test_other_keys_under_the_prefix_are_not_symbols(r: redis.Redis, redis_server: RedisServer) -> None:
    r.hset(LIVE + "BTC", "target_usd", "10")
    r.hset(LIVE + "a:b", "target_usd", "10")
    r.hset(PROPOSED + "GHOST", mapping={"target_usd": "10", "symbol": "GHOST"})
    assert run_once(MODULE, redis_server.url).returncode == 0
    assert proposed_symbols(r) == {"BTC", "GHOST"}
    assert r.hget(PROPOSED + "GHOST", "reason") is None  # left as it was, not proposed for
    assert r.xlen(STREAM) == 1


def test_an_invalid_target_harms_no_other_symbol(r: redis.Redis, redis_server: RedisServer) -> None:
    now = time.time()
    for i in range(1500):  # more than one batch, with bad targets spread across both
        target = "junk" if i % 7 == 0 else str(i)
        r.hset(f"{LIVE}S{i:04d}", "target_usd", target)
        r.hset(f"{EFF}S{i:04d}", mapping={"efficiency_score": "0.9", "confidence": "0.9", "ts": str(now)})
    result = run_once(MODULE, redis_server.url)
    assert result.returncode == 0
    bad = {f"S{i:04d}" for i in range(1500) if i % 7 == 0}
    assert proposed_symbols(r) == {f"S{i:04d}" for i in range(1500)} - bad
    assert r.hget(f"{PROPOSED}S0001", "proposed_target") == b"1.40"
    # one line for the whole loop, naming the first few, not one line per symbol
    assert result.stderr.count("no proposal, invalid_target") == 1
    assert "no proposal, invalid_target: 215 symbol(s) this loop, e.g. S0000 (target_usd 'junk'" in result.stderr


def test_odd_symbol_names_round_trip_exactly(r: redis.Redis, redis_server: RedisServer) -> None:
    odd = [b"\xff\xfeBIN", "ÉTH-€".encode(), b"X" * 2000, b"sp ace", b"*?[glob]"]
    for raw in odd:
        r.hset(LIVE.encode() + raw, "target_usd", "7")
    assert run_once(MODULE, redis_server.url).returncode == 0
    for raw in odd:
        assert r.hget(PROPOSED.encode() + raw, "symbol") == raw
        assert r.hget(PROPOSED.encode() + raw, "reason") == b"missing_eff"


@pytest.mark.parametrize("ttl", ["1", "42"])
def test_shadow_key_ttl_follows_the_setting(r: redis.Redis, redis_server: RedisServer, ttl: str) -> None:
    r.hset(LIVE + "BTC", "target_usd", "10")
    assert run_once(MODULE, redis_server.url, {"PROPOSE_KEY_TTL": ttl}).returncode == 0
    assert 0 < r.ttl(PROPOSED + "BTC") <= int(ttl)


def test_custom_multiplier_settings_and_stream_trimming(r: redis.Redis, redis_server: RedisServer) -> None:
    now = time.time()
    for i in range(300):
        r.hset(f"{LIVE}S{i:03d}", "target_usd", "100")
        r.hset(f"{EFF}S{i:03d}", mapping={"efficiency_score": "0.6", "confidence": "0.9", "ts": str(now)})
    env = {"P31_BASE": "1.1", "P31_SCALE": "2", "P31_MAX_MULT": "1.25", "PROPOSE_STREAM_MAXLEN": "10",
           "PROPOSE_STREAM_NAME": "custom:stream"}  # fmt: skip
    for _ in range(3):
        assert run_once(MODULE, redis_server.url, env).returncode == 0
    assert r.hget(f"{PROPOSED}S000", "multiplier") == b"1.2500"
    assert r.hget(f"{PROPOSED}S000", "proposed_target") == b"125.00"
    assert 10 <= r.xlen("custom:stream") < 900  # approximate trimming: bounded, not exact
    assert r.xlen(STREAM) == 0


def test_a_foreign_key_under_a_shadow_name_fails_alone(r: redis.Redis, redis_server: RedisServer) -> None:
    for symbol in ("AAA", "BBB", "CCC"):
        r.hset(LIVE + symbol, "target_usd", "100")
    r.set(PROPOSED + "BBB", "someone else's string")
    result = run_once(MODULE, redis_server.url)
    assert result.returncode == 0, result.stderr
    assert proposed_symbols(r) == {"AAA", "BBB", "CCC"}
    assert r.type(PROPOSED + "BBB") == b"string"
    assert r.get(PROPOSED + "BBB") == b"someone else's string"
    assert r.ttl(PROPOSED + "BBB") == -1  # its TTL untouched: the EXPIRE never ran for a key that is not ours
    assert text_hash(r, PROPOSED + "AAA")["reason"] == "missing_eff"
    assert 0 < r.ttl(PROPOSED + "CCC") <= 600
    assert {entry["symbol"] for entry in stream_entries(r, STREAM)} == {"AAA", "CCC"}
    assert "no proposal, redis_error: 1 symbol(s) this loop, e.g. BBB (writing the shadow hash failed: WRONGTYPE" in (
        result.stderr
    )


def test_a_live_key_that_is_not_a_hash_is_not_a_symbol(r: redis.Redis, redis_server: RedisServer) -> None:
    r.hset(LIVE + "BTC", "target_usd", "10")
    r.set(LIVE + "STR", "500")
    r.rpush(LIVE + "LIST", "500")
    result = run_once(MODULE, redis_server.url)
    assert result.returncode == 0
    assert proposed_symbols(r) == {"BTC"}
    assert "loop: 1 symbols" in result.stderr
    assert "redis_error" not in result.stderr.split("loop: ", 1)[1]
