"""The chaos run's load: plans published at a rate that keeps changing, and a market that keeps moving (efficiency
readings of every kind, live targets changed, added and removed), both seeded.

Plans are :func:`~microservices.devtools.plans.publish`'s mix (opening and closing, some HOLD, some without
plan_id, some republished plan_ids), published in chunks: each chunk draws its own rate (2 to ``max_rate`` a second,
log-uniform, so quiet stretches and bursts alternate) and how many symbols it spreads over, through a producer that
never gives a plan up. The market writer records what it last wrote to each live target, so the run can check at the
end that nobody else (the proposer above all) wrote there.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter

import redis

from microservices.allocation_target.proposal import LIVE_TARGET_PREFIX, TARGET_FIELD
from microservices.core.efficiency import EFFICIENCY_KEY_PREFIX
from microservices.devtools.background import Background, Producer
from microservices.devtools.plans import publish
from microservices.devtools.rotating_password import RotatingPassword, patient_client

#: Each chunk of plans lasts this long at its rate, seconds (uniform).
CHUNK_SEC = (1.0, 6.0)
MIN_RATE = 2.0
#: Between two market changes, seconds (uniform).
CHANGE_EVERY_SEC = (0.05, 0.5)


def symbol(i: int) -> str:
    """The run's symbols, ``S0``.., shared with the plan mix (whose plans name ``S0``..``S{n-1}``)."""
    return f"S{i}"


class PlanLoad(Producer):
    """A thread publishing plans in chunks of varying rate and spread until :meth:`stop`."""

    def __init__(self, port: int, password: RotatingPassword, *, seed: int, symbols: int, max_rate: float) -> None:
        super().__init__("plan-load", "the plan load")
        self.client = patient_client(port, password, self._stop)
        self._rng = random.Random(seed)
        self._symbols = symbols
        self._max_rate = max_rate
        self.chunks = 0

    def _produce(self) -> None:
        rng = self._rng
        while not self._stop.is_set():
            rate = math.exp(rng.uniform(math.log(MIN_RATE), math.log(self._max_rate)))
            count = max(1, round(rate * rng.uniform(*CHUNK_SEC)))
            spread = rng.randint(2, self._symbols)
            prefix = f"c{self.chunks}-"
            publish(self.client, count, symbols=spread, seed=rng.randrange(2**32), prefix=prefix, pause=1 / rate)
            self.chunks += 1


def efficiency_fields(rng: random.Random, now: float, stale_sec: float) -> dict[str, str] | None:
    """A reading of one of SPEC §1's kinds: mostly ok (any score), else stale, low confidence, invalid (a score out
    of range or not a number, a time in the future), in milliseconds, or absent (None)."""
    score, confidence, ts = f"{rng.random():.4f}", f"{rng.uniform(0.66, 1.0):.3f}", f"{now:.3f}"
    kind = rng.random()
    if kind < 0.08:
        return None
    if kind < 0.16:
        ts = f"{now - 3 * stale_sec:.3f}"
    elif kind < 0.24:
        confidence = "0.300"
    elif kind < 0.32:
        score = rng.choice(["nan", "1.5", "-0.2", "abc", "inf"])
    elif kind < 0.36:
        ts = f"{now + 3600:.3f}"
    elif kind < 0.42:
        ts = str(int(now * 1000))
    return {"efficiency_score": score, "confidence": confidence, "ts": ts}


def target_value(rng: random.Random) -> str:
    """A live ``target_usd``: mostly a usable amount (cents), sometimes one the proposer must skip."""
    if rng.random() < 0.1:
        return rng.choice(["-5", "abc", "inf", "nan", ""])
    return f"{rng.uniform(0, 20000):.2f}"


class MarketChurn(Background):
    """A thread changing one efficiency reading or live target at a time until :meth:`stop`.

    :attr:`written` holds each live target as its last acknowledged write left it (None: deleted); a symbol whose
    last write may or may not have landed (the connection died before the reply) is in :attr:`unsure` until a later
    write is acknowledged."""

    def __init__(self, client: redis.Redis, *, seed: int, symbols: int, stale_sec: float) -> None:
        super().__init__("market-churn")
        self._client = client
        self._rng = random.Random(seed)
        self._symbols = [symbol(i) for i in range(symbols)]
        self._stale_sec = stale_sec
        self.written: dict[str, dict[str, str] | None] = {}
        self.unsure: set[str] = set()
        self.changes: Counter[str] = Counter()
        self.refused = 0

    def seed(self) -> None:
        """Before the daemons start: two thirds of the symbols live, every one with a reading."""
        for name in self._symbols:
            self._write_efficiency(name)
            if self._rng.random() < 2 / 3:
                self._write_target(name, f"{self._rng.uniform(10, 20000):.2f}")

    def _run(self) -> None:
        rng = self._rng
        while not self._stop.wait(rng.uniform(*CHANGE_EVERY_SEC)):
            name = rng.choice(self._symbols)
            kind = rng.random()
            if kind < 0.6:
                self._write_efficiency(name)
            elif kind < 0.8:
                self._write_target(name, target_value(rng))
            elif self.written.get(name) is None:
                self._write_target(name, f"{rng.uniform(10, 20000):.2f}")  # a symbol appears
            else:
                self._write_target(name, None)  # a symbol disappears

    def _write_efficiency(self, name: str) -> None:
        fields = efficiency_fields(self._rng, time.time(), self._stale_sec)
        key = EFFICIENCY_KEY_PREFIX + name
        tx = self._client.pipeline(transaction=True)
        tx.delete(key)
        if fields is not None:
            tx.hset(key, mapping=fields)  # type: ignore[arg-type]
        try:
            tx.execute()
            self.changes["efficiency"] += 1
        except redis.RedisError:
            self.refused += 1  # whatever it was, the next change of this symbol replaces it

    def _write_target(self, name: str, value: str | None) -> None:
        key = LIVE_TARGET_PREFIX + name
        tx = self._client.pipeline(transaction=True)
        tx.delete(key)
        if value is not None:
            tx.hset(key, TARGET_FIELD, value)
        try:
            tx.execute()
        except (redis.ConnectionError, redis.TimeoutError):
            self.refused += 1
            self.unsure.add(name)  # the EXEC may have run: this symbol's target is not known now
            return
        except redis.RedisError:
            self.refused += 1  # refused as a whole (OOM, READONLY): nothing written
            return
        self.written[name] = None if value is None else {TARGET_FIELD: value}
        self.unsure.discard(name)
        self.changes["target" if value is not None else "target removed"] += 1
