"""The proposer as a daemon: its metrics, its service built once Redis answers, and its run."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from microservices.allocation_target.metrics import ProposerMetrics
from microservices.allocation_target.proposer import Proposer
from microservices.allocation_target.settings import ProposerSettings
from microservices.core.daemon import DaemonArgs, Service, run_daemon
from microservices.core.http_server import HealthState
from microservices.core.redis_client import RedisClient, connect
from microservices.core.stop_signal import StopSignal

PROG = "allocation-target"


def make_metrics(settings: ProposerSettings) -> ProposerMetrics:
    metrics = ProposerMetrics(CollectorRegistry(), settings.metrics_max_symbols)
    metrics.loop_interval.set(settings.loop_interval_sec)
    return metrics


def build(settings: ProposerSettings, _args: DaemonArgs, metrics: ProposerMetrics) -> Service:
    client = connect(settings, client_name=PROG)
    proposer = Proposer(client, settings, metrics)
    return Service(
        step=proposer.run_loop,
        ping=client.ping,
        interval_sec=settings.loop_interval_sec,
        health=HealthState(PROG, settings.health_max_age_sec),
        close=lambda: _close(proposer, client),
    )


def _close(proposer: Proposer, client: RedisClient) -> None:
    """On the way out (SIGTERM, SIGINT, the end of ``--once``): give the lease up, then the connections."""
    try:
        proposer.release()
    finally:
        client.close()


def run(argv: Sequence[str] | None, stop: StopSignal) -> int:
    """The daemon's life, once ``main`` has installed the stop signal."""
    return run_daemon(
        prog=PROG,
        description="P3.1 Step 1: propose, in shadow, an efficiency-scaled allocation target for every symbol.",
        settings_class=ProposerSettings,
        metrics=make_metrics,
        build=build,
        stop=stop,
        argv=argv,
    )
