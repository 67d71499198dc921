"""Network namespaces for real partitions: `NetNamespaces` (one namespace per node) and its `ip`/`tc` helpers.

Used by `Cluster(..., netns=True)` (devtools/local_cluster.py) and the chaos checker's partition fault. Needs root
and iproute2; `NetNamespaces.unavailable_reason()` says why it cannot run here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
import uuid


class NetNamespaces:
    """One network namespace per node, for real partitions (`Cluster(..., netns=True)`; needs root and `ip`).

    Layout: a bridge in the root namespace holds the gateway address of a private /24 (Consul's HTTP API
    and the Sequencer listen there, in the root namespace); node i runs in its own namespace with the
    address .(i+2), on a veth pair whose root end is a port of the bridge. Cutting node i off is
    `ip link set <its root end> down`; `tc netem` on both ends adds loss and delay. Every name (namespaces,
    links) carries a per-run id and the subnet is one not in use, so parallel runs do not collide.
    """

    def __init__(self, count: int) -> None:
        self.run_id = uuid.uuid4().hex[:6]
        self.count = count
        self.bridge = f"pxb{self.run_id}"
        self.namespaces = [f"px-{self.run_id}-n{i + 1}" for i in range(count)]
        self.root_ends = [f"pxv{self.run_id}r{i + 1}" for i in range(count)]  # <= 15 characters
        self.ns_ends = [f"pxv{self.run_id}n{i + 1}" for i in range(count)]
        self.network = _free_subnet()
        self.created = False
        self.impaired: dict[int, str] = {}

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why namespaces cannot be used here, or None if they can."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "the `ip` command (iproute2) is missing"
        name = f"px-probe-{uuid.uuid4().hex[:6]}"
        probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if probe.returncode != 0:
            return f"`ip netns add` failed: {probe.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        return None

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    def address(self, index: int) -> str:
        return str(self.network.network_address + 2 + index)

    def exec_prefix(self, index: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[index]]

    def create(self) -> None:
        self.created = True  # from the first command on, destroy() has something to clean up
        prefix = self.network.prefixlen
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(self.count):
            ns, root_end, ns_end = self.namespaces[i], self.root_ends[i], self.ns_ends[i]
            _ip("netns", "add", ns)
            _ip("link", "add", root_end, "type", "veth", "peer", "name", ns_end)
            _ip("link", "set", ns_end, "netns", ns)
            _ip("link", "set", root_end, "master", self.bridge)
            _ip("link", "set", root_end, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/{prefix}", "dev", ns_end)
            _ip("-n", ns, "link", "set", ns_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, index: int) -> None:
        """Partitions node `index`: its link to the root namespace goes down."""
        _ip("link", "set", self.root_ends[index], "down")
        self.impaired[index] = "cut"

    def degrade(self, index: int, netem: list[str]) -> None:
        """Adds `tc netem` (e.g. ["delay", "100ms", "loss", "20%"]) to both ends of node `index`'s link."""
        _run(["tc", "qdisc", "replace", "dev", self.root_ends[index], "root", "netem", *netem])
        _run(["ip", "netns", "exec", self.namespaces[index],
              "tc", "qdisc", "replace", "dev", self.ns_ends[index], "root", "netem", *netem])
        self.impaired[index] = "netem " + " ".join(netem)

    def netem_available(self) -> bool:
        """Whether the kernel has `tc netem` (sch_netem), probed on the bridge (after create())."""
        probe = subprocess.run(["tc", "qdisc", "add", "dev", self.bridge, "root", "netem", "delay", "1ms"],
                               capture_output=True)
        _run(["tc", "qdisc", "del", "dev", self.bridge, "root"], check=False)
        return probe.returncode == 0

    def heal(self, index: int) -> None:
        """Undoes cut() and degrade() for node `index`."""
        _run(["tc", "qdisc", "del", "dev", self.root_ends[index], "root"], check=False)
        _run(["ip", "netns", "exec", self.namespaces[index],
              "tc", "qdisc", "del", "dev", self.ns_ends[index], "root"], check=False)
        _ip("link", "set", self.root_ends[index], "up")
        self.impaired.pop(index, None)

    def destroy(self) -> None:
        """Removes everything create() made (also a partial creation); never raises."""
        if not self.created:
            return
        for ns, root_end in zip(self.namespaces, self.root_ends, strict=True):
            _run(["ip", "link", "del", root_end], check=False)  # deletes its peer too
            _run(["ip", "netns", "del", ns], check=False)
        _run(["ip", "link", "del", self.bridge], check=False)
        self.created = False


def _run(command: list[str], check: bool = True) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that overlaps no address or route of the root namespace."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    addrs = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used = []
    for word in (routes + " " + addrs).split():
        with contextlib.suppress(ValueError):
            if word[0].isdigit() and "." in word:
                used.append(ipaddress.ip_network(word, strict=False))
    rng = uuid.uuid4().int
    for attempt in range(1000):
        value = (rng >> (attempt % 100)) + attempt
        candidate = ipaddress.IPv4Network(f"10.{value % 254 + 1}.{(value >> 8) % 254 + 1}.0/24")
        if not any(candidate.overlaps(u) for u in used if u.prefixlen > 0):
            return candidate
    raise RuntimeError("no free 10.x.y.0/24 subnet for the node namespaces")
