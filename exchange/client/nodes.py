"""Which node a client calls: where the addresses come from (a fixed list, or Consul's passing `peer-server`
instances: the client's one lookup besides its calls), the retry policy's timings, and the set of nodes with
the one in use and those being avoided after failures (docs/client.md)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from exchange.errors import Unavailable
from exchange.shared.wire import PEER_SERVICE

# -- which nodes -------------------------------------------------------------------------------------------


class NodeSource(Protocol):
    """Where the node addresses come from; asked again when every known node has failed (and now and then)."""

    def addresses(self) -> list[str]: ...


@dataclass(frozen=True)
class StaticNodes:
    nodes: tuple[str, ...]

    def addresses(self) -> list[str]:
        return list(self.nodes)


@dataclass(frozen=True)
class ConsulNodes:
    """The passing instances of the nodes' Consul service (`peer-server`), through the product's registry."""

    consul: str = "127.0.0.1:8500"  # the Consul agent's HTTP address
    service: str = PEER_SERVICE

    def addresses(self) -> list[str]:
        from discovery.consul import ConsulRegistry  # only clients that use Consul need py-consul

        host, _, port = self.consul.rpartition(":")
        registry = ConsulRegistry(host or "127.0.0.1", int(port or 8500))
        try:
            return [instance.target for instance in registry.healthy(self.service)]
        finally:
            registry.close()


def node_source(nodes: str | Sequence[str] | NodeSource) -> NodeSource:
    """A source for a node list ("host:port,host:port" or a sequence of addresses) or a source as it is."""
    if isinstance(nodes, str):
        nodes = [part.strip() for part in nodes.split(",") if part.strip()]
    if isinstance(nodes, Sequence):
        if not nodes:
            raise ValueError("no node address given")
        return StaticNodes(tuple(nodes))
    return nodes


@dataclass
class RetryPolicy:
    """The rules of retrying. `timeout`: an operation's deadline when the caller gives none (seconds);
    `attempt_timeout`: the longest one attempt may take; backoff between attempts grows from `backoff_initial`
    by `backoff_multiplier` up to `backoff_max`, with +-`jitter` of it at random; a failed node is avoided for
    `node_backoff_initial`, doubling per failure up to `node_backoff_max`; the node source is asked again at
    most every `refresh_interval` seconds."""

    timeout: float = 30.0
    attempt_timeout: float = 5.0
    backoff_initial: float = 0.05
    backoff_max: float = 1.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.2
    node_backoff_initial: float = 0.2
    node_backoff_max: float = 5.0
    refresh_interval: float = 5.0

    def backoff(self, failures: int, rng: random.Random) -> float:
        """The pause after the `failures`-th failure in a row (from 1)."""
        base = min(self.backoff_max, self.backoff_initial * self.backoff_multiplier ** max(0, failures - 1))
        return base * (1 + self.jitter * (2 * rng.random() - 1))


@dataclass
class ClientStats:
    """What a client went through, for a trader's monitoring (counts since the client was made)."""

    attempts: int = 0  # calls and streams opened
    retries: int = 0  # attempts that followed a failed one of the same operation
    node_failures: int = 0  # a node not answering (UNAVAILABLE, DEADLINE_EXCEEDED, a dropped stream)
    resent_orders: int = 0  # orders of submit_many sent again (a broken stream, a retriable per-order error)
    paced_orders: int = 0  # orders of submit_many sent again after the rate limit's "retry in N ms"
    paced_seconds: float = 0.0  # time submit_many held orders back for the rate limit


@dataclass
class _NodeHealth:
    failures: int = 0
    down_until: float = 0.0


class NodeSet:
    """The known nodes, the one in use, and which are being avoided after failures."""

    def __init__(self, source: NodeSource, policy: RetryPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.policy = policy
        self.clock = clock
        self.addresses: list[str] = []
        self.current = 0
        self.health: dict[str, _NodeHealth] = {}
        self.stats = ClientStats()
        self._refreshed_at: float | None = None
        # the sync client is used from several threads (a subscription's, the caller's); never held across I/O
        # other than the node source's own lookup
        self._lock = threading.RLock()

    def _refresh(self, force: bool) -> None:
        now = self.clock()
        if not force and self._refreshed_at is not None and now - self._refreshed_at < self.policy.refresh_interval:
            return
        self._refreshed_at = now
        try:
            addresses = self.source.addresses()
        except Exception:  # noqa: BLE001 - a source that cannot answer leaves the last known nodes in use
            if self.addresses:
                return
            raise
        if addresses:
            in_use = self.addresses[self.current] if self.addresses else None
            self.addresses = list(addresses)
            self.current = self.addresses.index(in_use) if in_use in self.addresses else 0

    def pick(self) -> tuple[str, float]:
        """(address, how long to wait before calling it): the node in use unless it is being avoided, else the
        next one that is not, else (every node avoided) the one that comes back first."""
        with self._lock:
            return self._pick()

    def _pick(self) -> tuple[str, float]:
        if not self.addresses or all(self._down(a) for a in self.addresses):
            self._refresh(force=not self.addresses)
        if not self.addresses:
            raise Unavailable(f"no node to call: {self.source} lists none")
        now = self.clock()
        count = len(self.addresses)
        for step in range(count):
            index = (self.current + step) % count
            if not self._down(self.addresses[index]):
                self.current = index
                return self.addresses[index], 0.0
        index = min(range(count), key=lambda i: self.health[self.addresses[i]].down_until)
        self.current = index
        address = self.addresses[index]
        return address, max(0.0, self.health[address].down_until - now)

    def _down(self, address: str) -> bool:
        health = self.health.get(address)
        return health is not None and health.down_until > self.clock()

    def failed(self, address: str) -> None:
        """The node did not answer (UNAVAILABLE, DEADLINE_EXCEEDED, a dropped stream): avoid it for a while and
        move on to the next."""
        with self._lock:
            self.stats.node_failures += 1
            health = self.health.setdefault(address, _NodeHealth())
            health.failures += 1
            pause = self.policy.node_backoff_initial * 2 ** (health.failures - 1)
            health.down_until = self.clock() + min(self.policy.node_backoff_max, pause)
            if self.addresses and self.addresses[self.current] == address:
                self.current = (self.current + 1) % len(self.addresses)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self.health.pop(address, None)
