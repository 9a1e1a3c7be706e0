"""A network namespace of the run's own, so that firewall rules (packet loss) touch nothing but its loopback.

``unshare --net`` (root) gives a process a fresh namespace holding only a loopback interface, which starts down. The
chaos run re-executes itself inside one, brings ``lo`` up, and then adds its nftables rules there: they die with the
namespace, whatever way the run ends, and no other process on the machine ever meets them. Inside, ephemeral ports
are moved out of the range the run's servers listen on, so a restarted Redis always finds its port free.

Packet loss: an nftables rule ``numgen random mod 100 < N drop`` on one TCP port, both ways. (``tc netem`` would do
loss and delay in one, but this kernel is built without it; delay is :mod:`~microservices.devtools.latency_proxy`.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

#: Set in the environment of the re-executed process: it runs in its private namespace.
INSIDE = "P31_PRIVATE_NETNS"
#: Ephemeral (outgoing, and port 0) ports inside the namespace; listening ports are chosen below it.
EPHEMERAL_PORTS = (30000, 60999)
LISTEN_PORTS = (20000, 29999)
TABLE = "p31_chaos"


class NamespaceUnavailableError(RuntimeError):
    """The private namespace, or nftables inside it, cannot be had here (not root, tools missing)."""


def missing_tools() -> list[str]:
    return [tool for tool in ("unshare", "ip", "nft") if shutil.which(tool) is None]


def why_unavailable() -> str | None:
    """Why the run cannot have a private namespace with packet loss here, or None when it can."""
    if os.geteuid() != 0:
        return "not root: unshare --net and nftables need root"
    missing = missing_tools()
    if missing:
        return f"missing {', '.join(missing)} (apt-get install util-linux iproute2 nftables)"
    return None


def inside() -> bool:
    return os.environ.get(INSIDE) == "1"


def reexec_inside(argv: Sequence[str]) -> None:
    """Replace this process by ``python argv...`` in a fresh network namespace (same pid, same stdio)."""
    env = {**os.environ, INSIDE: "1"}
    os.execvpe("unshare", ["unshare", "--net", "--", sys.executable, *argv], env)


def set_up() -> None:
    """Inside the namespace: check it is a fresh one (nothing but ``lo``: rules here touch no real interface), bring
    ``lo`` up and move the ephemeral ports out of :data:`LISTEN_PORTS`."""
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        raise NamespaceUnavailableError(f"not a private network namespace: interfaces {interfaces}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    Path("/proc/sys/net/ipv4/ip_local_port_range").write_text(f"{EPHEMERAL_PORTS[0]} {EPHEMERAL_PORTS[1]}\n")


def listen_port(offset: int) -> int:
    """A port for a server of the run, outside the ephemeral range: nothing else can take it while it restarts."""
    return LISTEN_PORTS[0] + offset


class PacketLoss:
    """Drops ``percent`` % of the TCP packets to and from ``port`` on loopback, at random (nftables ``numgen``).
    Only inside the private namespace: :meth:`set` refuses to run outside it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.percent = 0

    def set(self, percent: int) -> None:
        if not inside():
            raise NamespaceUnavailableError("packet loss is only set inside the run's private network namespace")
        rules = [f"add table inet {TABLE}", f"flush table inet {TABLE}"]
        if percent > 0:
            chance = "" if percent >= 100 else f"numgen random mod 100 < {percent} "
            rules += [
                f"add chain inet {TABLE} input {{ type filter hook input priority 0; policy accept; }}",
                f"add rule inet {TABLE} input tcp dport {self.port} {chance}drop",
                f"add rule inet {TABLE} input tcp sport {self.port} {chance}drop",
            ]
        script = "\n".join(rules) + "\n"
        done = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"nft refused the packet-loss rules: {done.stderr.strip()}")
        self.percent = percent

    def clear(self) -> None:
        self.set(0)
