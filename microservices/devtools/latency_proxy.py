"""A TCP proxy on loopback that delays every chunk it forwards, each way, by a delay that can change at run time.

The chaos run puts it between the daemons and Redis to add latency, because ``tc netem`` is not available on every
kernel (this one is built without ``CONFIG_NET_SCH_NETEM``). A chunk read at time t is written at t + the delay in
force when it was read, in the order it was read (a shorter delay set later never overtakes bytes already queued), so
a connection sees what a slow link shows: every round trip longer by twice the delay, bytes intact and in order.
Either side closing or failing closes the other, as a TCP connection through a middlebox does.

A connection's upstream-to-client direction can also be *held*: what Redis sends is kept in the proxy, not forwarded,
until it is released, and is lost if the connection closes first. The Sentinel topology puts its master behind this
proxy and holds the replication links, so that writes reach the master and not its replicas, as a replica that has
fallen behind sees it: unlike a SIGSTOP of the replica (the kernel keeps the stream for it), a master killed while held
takes those writes with it.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Collection
from types import TracebackType
from typing import Self

CHUNK = 65536
#: How long the proxy waits for Redis to accept a connection it forwards: a stopped Redis refuses at once.
CONNECT_TIMEOUT_SEC = 2.0

#: What a reader queues when its side has closed: the writer then closes the other side's direction.
_End = None


class _Link:
    """One proxied connection: two directions, each a reader thread that stamps chunks and a writer thread that
    sends them when due."""

    def __init__(self, client: socket.socket, upstream: socket.socket, proxy: LatencyProxy) -> None:
        self._sockets = (client, upstream)
        self._proxy = proxy
        self._lock = threading.Lock()
        self._closed = False
        self._directions_done = 0
        #: Set while upstream-to-client bytes are kept back; notified when released or closed.
        self._held = False
        self._release = threading.Condition(self._lock)
        #: The proxy's own port on its connection to the upstream: how the upstream (CLIENT LIST) names this link.
        self.upstream_local_port = int(upstream.getsockname()[1])
        for source, dest in ((client, upstream), (upstream, client)):
            chunks: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()
            threading.Thread(target=self._read, args=(source, chunks), name="proxy-read", daemon=True).start()
            threading.Thread(target=self._write, args=(dest, chunks), name="proxy-write", daemon=True).start()

    def _read(self, source: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes] | None]) -> None:
        try:
            while data := source.recv(CHUNK):
                chunks.put((time.monotonic() + self._proxy.delay_sec, data))
        except OSError:
            self.close()
        chunks.put(_End)

    def _write(self, dest: socket.socket, chunks: queue.SimpleQueue[tuple[float, bytes] | None]) -> None:
        try:
            while (item := chunks.get()) is not _End:
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if dest is self._sockets[0] and not self._wait_released():
                    return  # closed while held: what was kept back is dropped
                dest.sendall(data)
            dest.shutdown(socket.SHUT_WR)  # the other side's end of stream, passed on after the same delay
        except OSError:
            self.close()
            return
        with self._lock:
            self._directions_done += 1
            both = self._directions_done == 2
        if both:  # each side has closed its end: the connection is over
            self.close()

    def hold(self, held: bool) -> None:
        """Keep back (or, with ``False``, forward again) what the upstream sends from the next chunk on."""
        with self._release:
            self._held = held
            self._release.notify_all()

    def _wait_released(self) -> bool:
        """Block while held; whether the link is still open (a chunk read after :meth:`hold` is never sent)."""
        with self._release:
            while self._held and not self._closed:
                self._release.wait()
            return not self._closed

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._release.notify_all()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._proxy.forget(self)


class LatencyProxy:
    """``with LatencyProxy(upstream_port) as proxy:`` — clients connect to ``127.0.0.1:proxy.port`` and reach
    ``127.0.0.1:upstream_port``; :attr:`delay_sec` (0 at first) is added to each direction from the next chunk on."""

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self._delay = 0.0
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._listener = socket.create_server(("127.0.0.1", port), backlog=64)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="latency-proxy", daemon=True)
        #: Connections accepted since the start, and those that could not reach the upstream (Redis down).
        self.accepted = 0
        self.refused_upstream = 0

    @property
    def delay_sec(self) -> float:
        return self._delay

    @delay_sec.setter
    def delay_sec(self, value: float) -> None:
        self._delay = max(0.0, value)

    def start(self) -> Self:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=CONNECT_TIMEOUT_SEC)
            except OSError:
                self.refused_upstream += 1
                client.close()  # as a refused connection looks through a middlebox: closed at once
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._stop.is_set():
                    client.close()
                    upstream.close()
                    return
                self._links.add(_Link(client, upstream, self))

    def hold(self, upstream_local_ports: Collection[int]) -> int:
        """Keep back what the upstream sends on the open links it knows by these client ports (its CLIENT LIST
        ``addr``), until :meth:`release` or the link's end; links opened later are not held. How many were held."""
        with self._lock:
            links = [link for link in self._links if link.upstream_local_port in upstream_local_ports]
        for link in links:
            link.hold(True)
        return len(links)

    def release(self) -> None:
        """Forward, in order, everything kept back, and hold nothing more."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.hold(False)

    def forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept: a listener closed under it keeps listening
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
