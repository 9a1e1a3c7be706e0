"""The governor as a daemon: its metrics, its service built once Redis answers, and its run."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry

from microservices.core.daemon import DaemonArgs, Service, run_daemon
from microservices.core.http_server import HealthState
from microservices.core.redis_client import RedisClient, connect
from microservices.core.stop_signal import StopSignal
from microservices.governor.consumer import Governor
from microservices.governor.metrics import GovernorMetrics
from microservices.governor.settings import HEALTH_MAX_AGE_SEC, GovernorSettings

PROG = "governor"


def make_metrics(settings: GovernorSettings) -> GovernorMetrics:
    return GovernorMetrics(CollectorRegistry(), settings.mode, settings.metrics_max_symbols)


def _close(*clients: RedisClient) -> None:
    for client in clients:
        client.close()


def build(settings: GovernorSettings, args: DaemonArgs, metrics: GovernorMetrics) -> Service:
    client = connect(settings, client_name=PROG)
    # the blocking read for new plans has a client of its own, with a socket timeout that outlasts the block
    reader = connect(settings, client_name=PROG, socket_timeout=settings.socket_timeout_sec)
    health = HealthState(PROG, HEALTH_MAX_AGE_SEC)
    governor = Governor(client, settings, metrics, reader=reader, health=health)

    def close() -> None:
        try:
            governor.stop()
        finally:
            _close(client, reader)

    return Service(
        step=governor.drain if args.once else governor.poll,
        ping=client.ping,
        interval_sec=0.0,
        health=health,
        close=close,
    )


def run(argv: Sequence[str] | None, stop: StopSignal) -> int:
    """The daemon's life, once ``main`` has installed the stop signal."""
    return run_daemon(
        prog=PROG,
        description="P3.1 Step 2: consume execution plans and write a permit, with a downsize hint, for each.",
        settings_class=GovernorSettings,
        metrics=make_metrics,
        build=build,
        stop=stop,
        argv=argv,
    )
