"""Benchmark of the daemons on the topologies of SPEC §9 (issue 14), as ratios against a reference timed in the same
run: these machines are shared and noisy, so an absolute figure from one run says little, a ratio between neighbours
more.

Three measurements, each on throwaway ``redis-server`` processes on loopback (never the machine's own Redis):

1. **Governor burst.** ``--burst`` plans (default 20,000, so that a drain lasts seconds, not a fraction of one; the
   mix of :func:`~microservices.devtools.plans.plan_fields` over ``BURST_SYMBOLS`` symbols with fresh efficiency
   scores: opening and closing plans, some HOLD; every plan_id unique, so one event each) are published in
   pipelined chunks while 1, 2 or 3 governor replicas (real processes, each its own ``GOV_CONSUMER``, started and
   waiting in their reads beforehand) consume them; the figure is the drain time, from the first XADD to the moment the
   group has every entry acknowledged. On one Redis (:class:`~microservices.devtools.redis_server.RedisServer`) and on
   a three-master cluster with a replica each (:class:`~microservices.devtools.redis_cluster.RedisCluster`,
   ``REDIS_CLUSTER=1``). Reference: one governor on one Redis, in the same round. ``--rounds`` rounds (default 2), the
   order of the configurations reversed every other round (ABBA); the ratio shown is the median over the rounds of the
   ratio within a round: **speed** = reference drain time / this drain time (above 1: faster than the reference).
2. **Proposer loop.** ``--sizes`` symbols (default 10,000 and 100,000; the same seeding as ``bench_proposer.py``) on
   one Redis and on the cluster; the proposer's own ``Proposer.run_loop`` in this process (client from
   ``microservices.core.redis_client.connect``, as the daemon's), one warm-up loop each, then ``TIMED_LOOPS`` timed
   loops (one above 10,000 symbols) alternating one Redis / cluster. Figure: median wall time of a loop; ratio
   **cluster / one Redis**, median of the paired ratios.
3. **``GOV_MIN_REPLICAS`` latency.** A master with one replica (a second ``RedisServer`` with ``--replicaof``), one
   governor; plans published one at a time at ``RATE`` per second (absolute schedule) for ``--latency-sec`` seconds,
   each on a symbol of its own so that every plan is permitted. Latency: from the producer's ``time.time()`` right
   before the XADD to the arrival of the permit key's keyspace notification (``notify-keyspace-events K$``) at a
   subscriber thread of this process. ``GOV_MIN_REPLICAS=0`` and ``=1`` alternate (``--rounds`` each); p50 and p99
   (nearest rank) over each variant's plans, and their ratio 1 / 0.

Progress goes to stderr, results to stdout; the exit status is 0 unless a run failed (a measurement, not a test).
``--quick``: 1 round, a 1,000-plan burst, 10,000 symbols only, 4 s of latency.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis
from bench_proposer import seed as seed_proposer
from prometheus_client import CollectorRegistry
from redis.cluster import RedisCluster as ClusterClient

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.allocation_target.proposer import Proposer
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.redis_client import connect
from microservices.core.settings import load_settings
from microservices.devtools.daemon_process import DaemonProcess, daemon_env
from microservices.devtools.plans import EVENTS, GROUP, PLANS, plan_fields, seed_efficiency, settled
from microservices.devtools.redis_cluster import RedisCluster
from microservices.devtools.redis_server import RedisServer

GOVERNOR = "microservices.governor"
BURST_SYMBOLS = 500
BURST_CHUNK = 500
REPLICAS = (1, 2, 3)
TIMED_LOOPS = 3
RATE = 200
DRAIN_TIMEOUT_SEC = 300.0
#: The governors' GOV_EVENTS_MAXLEN default: the events stream is trimmed to about this many.
EVENTS_MAXLEN = 10_000
SINGLE = "one Redis"
CLUSTER = "cluster 3x2"

AnyClient = redis.Redis | ClusterClient


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def nearest_rank(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Topology:
    """Where the daemons run: its name, the URL and extra settings they get, and a client of this process."""

    name: str
    url: str
    env: dict[str, str]
    client: AnyClient
    flush: Callable[[], None]

    @property
    def as_redis(self) -> redis.Redis:
        """The client where the plan tools want one: every command they send exists on both kinds."""
        return cast(redis.Redis, self.client)


@contextmanager
def topologies() -> Iterator[tuple[Topology, Topology]]:
    """One Redis and a three-master cluster, both empty, for the duration."""
    with RedisServer() as single, RedisCluster() as cluster:
        single_client = single.client()
        cluster_client = cluster.client()

        def flush_single() -> None:
            single_client.flushall()

        def flush_cluster() -> None:
            for master in cluster.masters:
                master.client().flushall()

        yield (
            Topology(SINGLE, single.url, {}, single_client, flush_single),
            Topology(CLUSTER, cluster.url, {"REDIS_CLUSTER": "1"}, cluster_client, flush_cluster),
        )


# --- 1. governor burst ------------------------------------------------------------------------------------------------


def start_governors(stack: ExitStack, url: str, env: dict[str, str], count: int, logs: Path) -> list[DaemonProcess]:
    governors = []
    for k in range(count):
        settings = {"GOV_CONSUMER": f"bench-{k}", "PERMIT_TTL_SEC": "900", "LOG_LEVEL": "WARNING", **env}
        governor = DaemonProcess(GOVERNOR, daemon_env(url, settings), logs / f"gov-{k}.log", start_timeout=30)
        stack.callback(governor.close)
        governors.append(governor)
    return governors


def wait_for_group(client: AnyClient, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (client.exists(PLANS) and any(g["name"] == GROUP.encode() for g in client.xinfo_groups(PLANS))):
        if time.monotonic() > deadline:
            raise RuntimeError("the governors never created their group")
        time.sleep(0.02)


def burst_once(topology: Topology, replicas: int, plans: int, logs: Path) -> float:
    """Drain time of ``plans`` published at once while ``replicas`` governors consume them, seconds."""
    topology.flush()
    client = topology.client
    rng = random.Random(14)
    seed_efficiency(topology.as_redis, BURST_SYMBOLS, rng)
    with ExitStack() as stack:
        governors = start_governors(stack, topology.url, topology.env, replicas, logs)
        wait_for_group(client)
        started = time.monotonic()
        for first in range(0, plans, BURST_CHUNK):
            pipe = client.pipeline(transaction=False)
            for i in range(first, min(plans, first + BURST_CHUNK)):
                pipe.xadd(PLANS, plan_fields(rng, i, rng.random(), symbols=BURST_SYMBOLS, prefix="b"))
            pipe.execute()
        deadline = started + DRAIN_TIMEOUT_SEC
        while not settled(topology.as_redis):
            if time.monotonic() > deadline or not all(g.running for g in governors):
                raise RuntimeError(f"{topology.name}, {replicas} governors: no drain; {governors[0].log()[-2000:]}")
            time.sleep(0.01)
        drained = time.monotonic() - started
    events = int(client.xlen(EVENTS))
    if events < min(plans, EVENTS_MAXLEN) * 0.95:  # every plan has a unique plan_id: one event each, trimmed ~
        raise RuntimeError(f"{topology.name}, {replicas} governors: {events} events for {plans} plans")
    return drained


def bench_burst(single: Topology, cluster: Topology, plans: int, rounds: int, logs: Path) -> None:
    configs = [(topology, n) for topology in (single, cluster) for n in REPLICAS]
    times: dict[tuple[str, int], list[float]] = {(t.name, n): [] for t, n in configs}
    speed: dict[tuple[str, int], list[float]] = {(t.name, n): [] for t, n in configs}
    for r in range(rounds):
        order = configs if r % 2 == 0 else list(reversed(configs))
        measured: dict[tuple[str, int], float] = {}
        for topology, n in order:
            progress(f"burst round {r + 1}/{rounds}: {plans} plans, {topology.name}, {n} governor(s)")
            measured[topology.name, n] = burst_once(topology, n, plans, logs)
        reference = measured[SINGLE, 1]
        for key, seconds in measured.items():
            times[key].append(seconds)
            speed[key].append(reference / seconds)
    print(f"\n## Governor burst: {plans} plans published at once, drain time ({rounds} round(s))")
    print("reference: 1 governor on one Redis; speed = reference drain time / drain time (median of per-round ratios)")
    print(f"{'topology':<12} {'governors':>9} {'drain s':>8} {'plans/s':>8} {'speed':>6}")
    for topology, n in configs:
        seconds, ratio = median(times[topology.name, n]), median(speed[topology.name, n])
        print(f"{topology.name:<12} {n:>9} {seconds:>8.2f} {plans / seconds:>8.0f} {ratio:>6.2f}")


# --- 2. proposer loop -------------------------------------------------------------------------------------------------


def proposer_step(topology: Topology) -> Callable[[], float]:
    env = {"REDIS_URL": topology.url, "METRICS_PORT": "0", "PROPOSE_STREAM_MAXLEN": "1000", **topology.env}
    settings = load_settings(ProposerSettings, env)
    client = connect(settings, client_name="bench-topologies")
    proposer = Proposer(client, settings, ProposerMetrics(CollectorRegistry(), settings.metrics_max_symbols))
    stop = threading.Event()

    def step() -> float:
        started = time.perf_counter()
        summary = proposer.run_loop(stop)
        took = time.perf_counter() - started
        if sum(summary.proposed.values()) == 0:
            raise RuntimeError(f"the proposer wrote nothing on {topology.name}: {summary}")
        return took

    return step


def bench_proposer(single: Topology, cluster: Topology, sizes: Sequence[int]) -> None:
    rows = []
    for size in sizes:
        for topology in (single, cluster):
            topology.flush()
            progress(f"proposer: seeding {size} symbols on {topology.name}")
            seed_proposer(topology.as_redis, size, time.time())
        steps = {topology.name: proposer_step(topology) for topology in (single, cluster)}
        for name, step in steps.items():
            progress(f"proposer: warm-up loop, {size} symbols, {name}")
            step()
        timed: dict[str, list[float]] = {SINGLE: [], CLUSTER: []}
        loops = TIMED_LOOPS if size <= 10_000 else 1
        for r in range(loops):
            order = (SINGLE, CLUSTER) if r % 2 == 0 else (CLUSTER, SINGLE)
            for name in order:
                timed[name].append(steps[name]())
        progress(f"proposer: {size} symbols timed")
        ratios = [c / s for s, c in zip(timed[SINGLE], timed[CLUSTER], strict=True)]
        rows.append((size, loops, median(timed[SINGLE]), median(timed[CLUSTER]), median(ratios)))
    print("\n## Proposer loop (Proposer.run_loop in-process, median of the timed loops after one warm-up)")
    print(f"{'symbols':>8} {'loops':>5} {'one Redis s':>12} {'cluster s':>10} {'cluster / one':>14}")
    for size, loops, single_s, cluster_s, ratio in rows:
        print(f"{size:>8} {loops:>5} {single_s:>12.2f} {cluster_s:>10.2f} {ratio:>14.2f}")


# --- 3. GOV_MIN_REPLICAS latency --------------------------------------------------------------------------------------


class PermitArrivals:
    """A subscriber to the permit keys' keyspace notifications: when each permit key was first set."""

    def __init__(self, server: RedisServer) -> None:
        self.arrived: dict[str, float] = {}
        self._client = server.client()
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.psubscribe("__keyspace@0__:quantum:permit:*")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="permit-arrivals", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        prefix = len("__keyspace@0__:quantum:permit:")
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is not None and message.get("data") == b"set":
                at = time.time()
                self.arrived.setdefault(message["channel"].decode()[prefix:], at)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self._client.close()


def latency_once(master: RedisServer, min_replicas: int, seconds: float, tag: str, logs: Path) -> list[float]:
    client = master.client()
    client.flushall()
    arrivals = PermitArrivals(master)
    sent: dict[str, float] = {}
    try:
        with ExitStack() as stack:
            env = {"GOV_MIN_REPLICAS": str(min_replicas), "GOV_SYMBOL_COOLDOWN_SECONDS": "0"}
            governors = start_governors(stack, master.url, env, 1, logs)
            wait_for_group(client)
            started = time.monotonic()
            count = int(seconds * RATE)
            for i in range(count):
                wait = started + i / RATE - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                plan_id = f"{tag}-{i}"
                fields: dict[Any, Any] = {"plan_id": plan_id, "symbol": f"L{tag}{i}", "decision": "EXECUTE",
                                          "action": "CLOSE_LONG" if i % 2 else "OPEN_LONG", "qty": "1"}  # fmt: skip
                sent[plan_id] = time.time()
                client.xadd(PLANS, fields)
            deadline = time.monotonic() + 30
            while len(arrivals.arrived) < count and time.monotonic() < deadline and governors[0].running:
                time.sleep(0.05)
            if len(arrivals.arrived) < count:
                raise RuntimeError(f"{count - len(arrivals.arrived)} permits never came: {governors[0].log()[-2000:]}")
    finally:
        arrivals.close()
        client.close()
    return [(arrivals.arrived[plan_id] - at) * 1000.0 for plan_id, at in sent.items()]


def bench_min_replicas(seconds: float, rounds: int, logs: Path) -> None:
    latencies: dict[int, list[float]] = {0: [], 1: []}
    with ExitStack() as stack:
        master = stack.enter_context(RedisServer(["--notify-keyspace-events", "K$"]))
        replica = stack.enter_context(RedisServer(["--replicaof", "127.0.0.1", str(master.port)]))
        probe = replica.client()
        deadline = time.monotonic() + 30
        while probe.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica never synced")
            time.sleep(0.05)
        probe.close()
        for r in range(rounds):
            for n in (0, 1) if r % 2 == 0 else (1, 0):
                progress(f"GOV_MIN_REPLICAS={n}: {RATE} plans/s for {seconds:g}s (round {r + 1}/{rounds})")
                latencies[n] += latency_once(master, n, seconds, f"r{r}n{n}", logs)
    p = {n: (nearest_rank(v, 0.5), nearest_rank(v, 0.99)) for n, v in latencies.items()}
    print(f"\n## GOV_MIN_REPLICAS: XADD to permit at {RATE} plans/s, one governor, a master with one replica")
    print(f"{'GOV_MIN_REPLICAS':>16} {'plans':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for n in (0, 1):
        print(f"{n:>16} {len(latencies[n]):>6} {p[n][0]:>8.2f} {p[n][1]:>8.2f}")
    print(f"ratio 1 / 0: p50 {p[1][0] / p[0][0]:.2f}, p99 {p[1][1] / p[0][1]:.2f}")


# --- main -------------------------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 round, a 1,000-plan burst, 10,000 symbols, 4 s")
    parser.add_argument("--burst", type=int, default=20_000, help="plans per governor burst")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the burst and latency measurements")
    parser.add_argument("--sizes", type=parse_sizes, default=[10_000, 100_000], help="proposer sizes, e.g. 10000")
    parser.add_argument("--latency-sec", type=float, default=8.0, help="seconds of plans per latency run")
    args = parser.parse_args(argv)
    if args.quick:
        args.burst, args.rounds, args.sizes, args.latency_sec = 1_000, 1, [10_000], 4.0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-topologies-") as tmp:
        logs = Path(tmp)
        with topologies() as (single, cluster):
            bench_burst(single, cluster, args.burst, args.rounds, logs)
            bench_proposer(single, cluster, args.sizes)
        bench_min_replicas(args.latency_sec, args.rounds, logs)
    print(f"\n(total {time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
