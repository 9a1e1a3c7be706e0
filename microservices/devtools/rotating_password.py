"""The Redis password of a run whose password is rotated while it runs, and clients that follow the rotation.

redis-py asks a client's credential provider for the password each time it opens a connection, so a client built with
:class:`RotatingPassword` presents the new password on its first connection after a rotation, with no rebuilding.
The daemons do not follow it (their password is in ``REDIS_URL``, as deployed): they are restarted with the new one.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.retry import Retry

from microservices.devtools.patient_clients import PatientRedis


class RotatingPassword(CredentialProvider):
    def __init__(self, password: str) -> None:
        self._password = password
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        with self._lock:
            return self._password

    def rotate(self, new: str) -> None:
        with self._lock:
            self._password = new

    def get_credentials(self) -> tuple[str]:
        return (self.current,)

    def url(self, port: int) -> str:
        """A ``REDIS_URL`` with the current password (the run's passwords are hex: nothing to escape)."""
        return f"redis://:{self.current}@127.0.0.1:{port}/0"


def client(port: int, password: RotatingPassword, *, socket_timeout: float = 5.0, **options: Any) -> redis.Redis:
    """A client of the run's Redis that follows rotations; no retries inside redis-py (the caller decides)."""
    return redis.Redis(
        host="127.0.0.1", port=port, protocol=2, credential_provider=password, socket_timeout=socket_timeout,
        socket_connect_timeout=2, retry=Retry(NoBackoff(), 0), **options,
    )  # fmt: skip


def patient_client(port: int, password: RotatingPassword, stop: threading.Event) -> PatientRedis:
    """A producer's :class:`~microservices.devtools.patient_clients.PatientRedis` that follows rotations: the provider
    goes into the pool's connection options before the first connection is made, so every connection asks it."""
    patient = PatientRedis(stop, port=port)
    patient.connection_pool.connection_kwargs["credential_provider"] = password
    return patient
