"""Hosts with network stacks of their own, on one bridge, and links that break for real.

A :class:`Network` is a Linux bridge in the root namespace plus one network namespace
per "host", joined to the bridge by a veth pair. The bridge carries the service
addresses (the CouchDB test server, the RabbitMQ relay); each host has its own address
and, for the processes started in it, its own host name (``unshare --uts``).

Faults are real packet loss, never a refused connection:

* :meth:`Network.cut` disables the host's switch port (the bridge end of its veth):
  every packet to or from the host vanishes; open TCP connections hang, new ones get
  no answer.
* :meth:`Network.blackhole` makes one service address unreachable from one host only,
  by pinning that address to a MAC address nobody has (a static ARP entry inside the
  host's namespace): frames for it are flooded by the bridge and dropped by everyone.
  No firewall is needed (these machines have neither nft nor iptables).

Everything lives in this machine: the subnet is a 10.x one, routed only to the bridge.
Names carry a per-run prefix, so parallel test runs do not collide.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: A MAC address no interface has (locally administered): frames sent to it vanish.
NOWHERE_MAC = "02:00:00:00:de:ad"


def ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    """Run ``ip ARGS`` (inside ``namespace`` if given); return its output."""
    inside = [] if namespace is None else ["ip", "netns", "exec", namespace]
    command = [*inside, "ip", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class Host:
    name: str  # also its host name
    namespace: str
    port: str  # the veth end on the bridge: the host's switch port
    address: str


class Network:
    """A bridge and its hosts; :meth:`close` removes all of it (idempotent)."""

    def __init__(self, prefix: str, subnet: str) -> None:
        self.prefix = prefix  # short: interface names have at most 15 characters
        self.subnet = subnet  # "10.a.b", a /24
        self.bridge = f"{prefix}br"
        self.hosts: dict[str, Host] = {}
        self.services: list[str] = []
        self._made_bridge = False

    def address(self, last: int) -> str:
        return f"{self.subnet}.{last}"

    def create(self, service_addresses: int) -> list[str]:
        """Make the bridge with ``service_addresses`` addresses; return them."""
        ip("link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        self.services = [self.address(n) for n in range(1, service_addresses + 1)]
        for address in self.services:
            ip("addr", "add", f"{address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self.services

    def add_host(self, name: str) -> Host:
        number = len(self.hosts) + 1
        host = Host(
            name=name,
            namespace=f"{self.prefix}-{name}",
            port=f"{self.prefix}p{number}",
            address=self.address(100 + number),
        )
        self.hosts[name] = host
        ip("netns", "add", host.namespace)
        peer = ["peer", "name", "eth0", "netns", host.namespace]
        ip("link", "add", host.port, "type", "veth", *peer)
        ip("link", "set", host.port, "master", self.bridge, "up")
        ip("addr", "add", f"{host.address}/24", "dev", "eth0", namespace=host.namespace)
        ip("link", "set", "eth0", "up", namespace=host.namespace)
        ip("link", "set", "lo", "up", namespace=host.namespace)
        return host

    def command(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace with its own host name."""
        namespace = self.hosts[host].namespace
        return [
            "ip", "netns", "exec", namespace,
            "unshare", "--uts", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', host, *argv,
        ]  # fmt: skip

    # -- faults -----------------------------------------------------------------------

    def cut(self, host: str) -> None:
        """Disable ``host``'s switch port: all its packets vanish."""
        ip("link", "set", self.hosts[host].port, "down")

    def heal(self, host: str) -> None:
        ip("link", "set", self.hosts[host].port, "up")

    def blackhole(self, host: str, address: str) -> None:
        """From ``host``, packets to ``address`` vanish; everything else still flows."""
        ip(
            "neigh", "replace", address, "lladdr", NOWHERE_MAC, "dev", "eth0", "nud", "permanent",
            namespace=self.hosts[host].namespace,
        )  # fmt: skip

    def unblackhole(self, host: str, address: str) -> None:
        ip("neigh", "del", address, "dev", "eth0", namespace=self.hosts[host].namespace)

    # -- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        """Remove the namespaces, links and bridge (processes must be stopped first)."""
        for host in self.hosts.values():
            ip("netns", "del", host.namespace, check=False)
            ip("link", "del", host.port, check=False)
        if self._made_bridge:
            ip("link", "del", self.bridge, check=False)
        self.hosts.clear()


def leftovers(prefix: str) -> list[str]:
    """Namespaces and links whose names start with ``prefix`` (should be none after close)."""
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in ip("-o", "link", "show").splitlines()
        if ":" in line
    ]
    return [name for name in names + links if name.startswith(prefix)]


@functools.cache
def can_build_networks() -> str | None:
    """None if this process can build namespaces and bridges, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges and veth pairs)"
    for tool in ("ip", "unshare", "hostname"):
        if not any(Path(d, tool).exists() for d in os.environ.get("PATH", "").split(":")):
            return f"needs the {tool!r} command"
    probe = f"dfaprobe{os.getpid() % 100000}"
    with contextlib.suppress(RuntimeError):
        ip("netns", "add", probe)
        ip("netns", "del", probe)
        return None
    return "cannot create network namespaces here (ip netns add failed)"
