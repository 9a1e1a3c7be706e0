"""Start-up and shut-down of a daemon process: flags, logging, settings, the HTTP server and the loop runner."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from redis.backoff import AbstractBackoff

from microservices.core.http_server import HealthState, MetricsServer
from microservices.core.logs import LOG_FORMATS, setup_logging
from microservices.core.redis_client import REDIS_ERRORS, describe_target, reconnect_backoff
from microservices.core.runner import EX_OK, EX_UNAVAILABLE, ONCE_UNAVAILABLE_AFTER_SEC, LoopRunner, Step
from microservices.core.secrets import Redactor, secret_values
from microservices.core.settings import (
    EX_CONFIG,
    CommonSettings,
    ConfigError,
    environment,
    load_settings,
    unread_variables,
)
from microservices.core.stop_signal import StopSignal
from microservices.core.usage import UsageParser
from microservices.core.version import build_info

log = logging.getLogger(__name__)

S = TypeVar("S", bound=CommonSettings)

#: The metrics port could not be bound, or another start-up failure that a restart may cure.
EX_SOFTWARE = 70


class RedactingFormatter(logging.Formatter):
    """Wraps a formatter and blanks out every secret in what it produces: message, ``extra`` fields and traceback
    alike."""

    def __init__(self, inner: logging.Formatter, redact: Redactor) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))


def redact_logs(secrets: frozenset[str]) -> None:
    """Make every handler of the root logger blank out ``secrets``."""
    redact = Redactor(secrets)
    if not redact:
        return
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter(), redact))


@dataclass(frozen=True)
class DaemonArgs:
    once: bool
    env_file: str | None
    log_level: str
    log_format: str


def parse_args(prog: str, description: str, argv: Sequence[str] | None) -> DaemonArgs:
    parser = UsageParser(prog=prog, description=description)  # a usage error exits 64, as p31ctl's do
    parser.add_argument("--once", action="store_true", help="run one loop, then exit 0")
    parser.add_argument("--env-file", metavar="PATH", help="read variables from PATH (the environment wins)")
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    )
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS)
    parser.add_argument("--version", action="version", version=f"{prog} {build_info().describe()}")
    ns = parser.parse_args(argv)
    return DaemonArgs(once=ns.once, env_file=ns.env_file, log_level=ns.log_level, log_format=ns.log_format)


@dataclass
class Service:
    """What a daemon hands to the runner once Redis answers: its loop step, its health, and how to close it (its
    metrics come first, from the ``metrics`` factory of :func:`run_daemon`)."""

    step: Step
    ping: Callable[[], object]
    interval_sec: float
    health: HealthState
    close: Callable[[], None] = field(default=lambda: None)


class DaemonMetrics(Protocol):
    """What start-up needs of a daemon's metrics: the registry to serve, and the counter of failed Redis calls."""

    registry: CollectorRegistry
    redis_errors: Counter


M = TypeVar("M", bound=DaemonMetrics)


def _build_once_redis_answers(
    build: Callable[[], Service],
    *,
    once: bool,
    backoff: AbstractBackoff,
    health: HealthState,
    metrics: DaemonMetrics,
    stop: threading.Event,
) -> Service | int:
    """The service, or the exit status if it never came to be. Building sends nothing to a single Redis, but a Redis
    Cluster client asks the cluster for its slots as it is built: while the cluster cannot be reached this retries
    with the reconnect backoff, as the loop runner would. A stop (SIGTERM/SIGINT) ends the wait (exit 0), and one
    that came while the service was being built closes it again; ``--once`` gives up after 10 s (exit 69)."""
    started, failures = time.monotonic(), 0
    while not stop.is_set():
        try:
            service = build()
        except REDIS_ERRORS as exc:
            failures += 1
            health.mark_error(type(exc).__name__)
            metrics.redis_errors.inc()
            waited = time.monotonic() - started
            if failures == 1:
                log.warning("Redis cannot be reached to start (%s: %s); retrying with backoff", type(exc).__name__, exc)
            if once and waited >= ONCE_UNAVAILABLE_AFTER_SEC:
                log.error("Redis unreachable for %.0fs in --once mode: giving up", waited)
                return EX_UNAVAILABLE
            stop.wait(backoff.compute(failures))
            continue
        if not stop.is_set():
            return service
        service.close()
    return EX_OK


def run_daemon(
    *,
    prog: str,
    description: str,
    settings_class: type[S],
    metrics: Callable[[S], M],
    build: Callable[[S, DaemonArgs, M], Service],
    stop: StopSignal,
    argv: Sequence[str] | None = None,
) -> int:
    """Run a daemon to completion and return its exit status (78 for bad configuration). ``stop`` is the process's
    stop signal, installed by its ``main`` before anything else (:mod:`microservices.core.stop_signal`).

    The metrics come first and are served from the start: a Redis Cluster client asks the cluster for its slots as
    it is built, so while no node answers the service cannot be built, and meanwhile ``/metrics`` shows the failures
    (and a last success of 0, which the alerts see) and ``/healthz`` answers 503 (SPEC §5: keep serving metrics)."""
    args = parse_args(prog, description, argv)
    setup_logging(args.log_level, args.log_format)
    try:
        env = environment(args.env_file)
        redact_logs(secret_values(env))
        settings = load_settings(settings_class, env)
    except ConfigError as exc:
        log.error("%s", exc)
        return EX_CONFIG
    for unread in unread_variables(settings_class, env):
        log.warning("%s", unread.message(prog), extra={"variable": unread.name, "closest": unread.closest})
    # secrets redacted; with --log-format json the settings are an object: `jq .settings.P31_GOV_MODE` reads one
    shown = settings.as_environment()
    log.info(
        "%s %s starting: Redis at %s; settings %s",
        prog, build_info().describe(), describe_target(settings), " ".join(f"{k}={v}" for k, v in shown.items()),
        extra={"settings": shown, "redis": describe_target(settings), "version": build_info().describe()},
    )  # fmt: skip
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
    daemon_metrics = metrics(settings)
    waiting = HealthState(prog, max_age_sec=1.0)  # never marked successful: 503 until the service takes over
    try:
        server = MetricsServer(settings.metrics_addr, settings.metrics_port, daemon_metrics.registry, waiting).start()
    except OSError as exc:
        log.error("cannot serve metrics on %s:%d: %s", settings.metrics_addr, settings.metrics_port, exc)
        return EX_SOFTWARE
    host, port = server.address
    log.info("serving /metrics and /healthz on http://%s:%d", host, port)
    try:
        service = _build_once_redis_answers(
            lambda: build(settings, args, daemon_metrics),
            once=args.once,
            backoff=reconnect_backoff(settings),
            health=waiting,
            metrics=daemon_metrics,
            stop=stop.event,
        )
    except BaseException:
        server.close()
        raise
    if isinstance(service, int):
        server.close()
        if stop.stopped_by is not None:
            log.info("received %s while starting; stopping", stop.stopped_by)
        return service
    server.serve(daemon_metrics.registry, service.health)
    runner = LoopRunner(
        step=service.step,
        ping=service.ping,
        interval_sec=service.interval_sec,
        health=service.health,
        backoff=reconnect_backoff(settings),
        on_redis_error=lambda _exc: daemon_metrics.redis_errors.inc(),
        once=args.once,
        stop=stop,
    )
    try:
        status = runner.run()
    finally:
        server.close()
        service.close()
    log.info("%s stopped with exit status %d", prog, status)
    return status
