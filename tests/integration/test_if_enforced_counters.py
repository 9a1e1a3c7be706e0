"""The "if enforced" metrics move by exactly what the daemons decided: a proposer loop in process against the
suite's Redis, and a real governor process in ``hint`` mode fed plans whose effect is known in advance."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.allocation_target.proposer import Proposer
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.efficiency import efficiency_key
from microservices.core.settings import load_settings
from microservices.devtools.redis_server import RedisServer
from tests.daemons import Daemon, daemon_env
from tests.redis_util import hset_text
from tests.unit.test_if_enforced import samples


def test_a_proposer_loop_exports_its_live_and_proposed_usd_and_every_multiplier(r: redis.Redis) -> None:
    now = time.time()
    for symbol, target, score in (("AUSDT", "1000", "0.9"), ("BUSDT", "500", "0.3"), ("CUSDT", "200", None)):
        hset_text(r, f"quantum:allocation:target:{symbol}", {"target_usd": target})
        if score is not None:
            hset_text(r, efficiency_key(symbol), {"efficiency_score": score, "confidence": "0.9", "ts": str(now)})
    metrics = ProposerMetrics(CollectorRegistry(), 10)
    Proposer(r, load_settings(ProposerSettings, {}), metrics).run_loop(threading.Event())
    registry = metrics.registry
    live, proposed = samples(registry, "p29_shadow_live_usd"), samples(registry, "p29_shadow_proposed_usd")
    assert (live[("ok",)], live[("missing_eff",)]) == (1500.0, 200.0)
    assert (proposed[("ok",)], proposed[("missing_eff",)]) == pytest.approx((1000 * 1.4 + 500 * 0.8, 200.0))
    buckets = samples(registry, "p29_shadow_proposal_multiplier_bucket")
    assert (buckets[("0.7",)], buckets[("0.8",)], buckets[("1.0",)], buckets[("1.4",)]) == (0, 1, 2, 3)
    assert samples(registry, "p29_shadow_proposal_multiplier_sum")[()] == pytest.approx(3.2)


def test_a_governor_in_hint_mode_counts_what_enforce_would_change(
    r: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Score 0.3: factor 0.3 / 0.45 = 2/3 and 84 s of extra cooldown. With the base cooldown off, two opens are both
    permitted in hint mode; the second falls inside the first's extra cooldown, which enforce would apply."""
    hset_text(r, efficiency_key("SYM"), {"efficiency_score": "0.3", "confidence": "0.9", "ts": str(time.time())})
    for plan_id, action, qty in (("open-1", "OPEN_LONG", 3), ("open-2", "OPEN_LONG", 3), ("close", "CLOSE_LONG", 1)):
        fields = {"plan_id": plan_id, "symbol": "SYM", "action": action, "decision": "EXECUTE"}
        r.xadd("quantum:stream:apply.plan", fields | {"qty": str(qty), "notional": str(qty * 100)})  # type: ignore[arg-type]
    env = daemon_env(redis_server.url, {"GOV_CONSUMER": "if-enforced", "GOV_SYMBOL_COOLDOWN_SECONDS": "0"})
    governor = Daemon("microservices.governor", env, tmp_path / "governor.log")
    try:
        permits = 'event="permit",reason="permitted"'
        governor.wait_for(lambda: governor.metric("quantum_govern_outcomes_total", permits) == 3, what="3 permits")
        assert governor.metric("p32_eff_requested_size_total", 'unit="qty"') == 7.0
        assert governor.metric("p32_eff_requested_size_total", 'unit="notional"') == 700.0
        assert governor.metric("p32_eff_enforce_size_total", 'unit="qty"') == pytest.approx(6 * 2 / 3 + 1)
        assert governor.metric("p32_eff_enforce_size_total", 'unit="notional"') == pytest.approx(600 * 2 / 3 + 100)
        assert governor.metric("p32_eff_enforce_downsized_total") == 2.0
        assert governor.metric("p32_eff_extra_cooldown_blocks_total") == 1.0
    finally:
        governor.close()
