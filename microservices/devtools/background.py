"""The devtools' background threads (producers, loads, observers): one daemon thread from :meth:`Background.start`
until :meth:`Background.stop`; a producer's (:class:`Producer`) must not die unnoticed."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Self

from microservices.devtools.patient_clients import PatientClient, ProducerStoppedError


class Background(ABC):
    """:meth:`_run` in a daemon thread named ``name``; :meth:`stop` sets ``_stop`` and waits for it (30 s at most)."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @abstractmethod
    def _run(self) -> None:
        """The thread's work, until ``_stop`` is set."""

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class Producer(Background):
    """A background producer through a patient ``client`` (it ends with :class:`ProducerStoppedError` once stopped):
    :meth:`stop` closes the client and raises what ended :meth:`_produce` otherwise, or that it did not stop; a
    producer that died would make the test vacuous. ``what`` names it in those errors."""

    client: PatientClient

    def __init__(self, name: str, what: str) -> None:
        super().__init__(name)
        self._what = what
        self.error: BaseException | None = None

    @abstractmethod
    def _produce(self) -> None:
        """The producer's work; a :class:`ProducerStoppedError` out of it is its normal end."""

    def _run(self) -> None:
        try:
            self._produce()
        except ProducerStoppedError:
            pass
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        super().stop()
        self.client.close()
        if self.error is not None:
            raise RuntimeError(f"{self._what} failed: {self.error!r}") from self.error
        if self._thread.is_alive():
            raise RuntimeError(f"{self._what} did not stop")
