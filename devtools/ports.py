"""Free loopback ports for the processes a harness starts (see `free_port`)."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port(udp: bool = False) -> int:
    """A loopback TCP port that is free right now (and free for UDP too if ``udp``).

    Ports are drawn below the kernel's ephemeral range when it says where that is: a port the kernel
    hands out for ``bind(0)`` lies inside that range, where any outgoing connection of any process may
    take it before the process it was meant for binds it. A port is never handed out twice by one
    process, so ports picked for processes that have not bound them yet (a cluster picks all its ports,
    then starts Consul, the Sequencer and the nodes) cannot collide. A race with other processes that
    pick ports remains; callers that start processes should retry on "address in use".
    """
    candidates = _below_ephemeral_range()
    for _ in range(500):
        port = random.choice(candidates) if candidates else 0
        if port in _HANDED_OUT:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
                port = s.getsockname()[1]
            if udp:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
        except OSError:
            continue
        if port in _HANDED_OUT:  # the kernel's choice (no candidates) may repeat
            continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("could not find a free loopback port")


_HANDED_OUT: set[int] = set()  # every port free_port returned in this process


def _below_ephemeral_range() -> range:
    """Ports 10000 up to the start of the kernel's ephemeral range (empty if it cannot be read)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    return range(10_000, low) if low > 11_000 else range(0)
