"""A producer that never gives up a plan: a thread publishing :func:`~microservices.devtools.plans.publish`'s mix
through a :mod:`patient client <microservices.devtools.patient_clients>` of the current master (one Redis, the master
the sentinels name, a Redis Cluster: ``connect``), at a pause or a rate, until stopped."""

from __future__ import annotations

import itertools
import time

from microservices.devtools.background import Producer
from microservices.devtools.patient_clients import Connect
from microservices.devtools.plans import Published, publish


class PlanProducer(Producer):
    """A thread publishing the plan mix over ``symbols`` symbols until :meth:`stop`: one XADD every ``pause`` seconds,
    or ``rate`` a second on an absolute schedule; with ``republish=False`` every plan_id is new (3 % of the entries
    still have none). :attr:`published` grows as Redis acknowledges each entry."""

    def __init__(
        self,
        connect: Connect,
        *,
        symbols: int,
        seed: int,
        pause: float | None = None,
        rate: float | None = None,
        prefix: str = "p",
        republish: bool = True,
    ) -> None:
        super().__init__("plan-producer", "the producer")
        self.client = connect(self._stop)
        self._symbols, self._seed, self._pause, self._rate = symbols, seed, pause, rate
        self._prefix, self._republish = prefix, republish
        self.published: list[Published] = []

    def _produce(self) -> None:
        publish(
            self.client, None, symbols=self._symbols, seed=self._seed, prefix=self._prefix, pause=self._pause,
            rate=self._rate, republish=self._republish, stop=self._stop, into=self.published,
        )  # fmt: skip

    def plan_ids(self, within: float | None = None) -> list[str]:
        """Every plan_id published so far (or in the last ``within`` seconds), once each, in order."""
        published = list(self.published)
        if within is not None:  # the newest first, up to the first one older
            cutoff = time.time() - within
            published = list(reversed(list(itertools.takewhile(lambda p: p.at >= cutoff, reversed(published)))))
        return [plan_id for plan_id in dict.fromkeys(p.plan_id for p in published) if plan_id]
