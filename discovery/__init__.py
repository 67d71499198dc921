"""Service discovery and the cluster's shared configuration: the interface, and (in `discovery.consul`)
the only code that knows Consul.

This module holds the interface the rest of the product depends on: the :class:`Registry` and
:class:`Watch` protocols, :class:`ServiceInstance` with its :class:`FrozenMeta`, the :class:`KeyValue`
store (Consul KV: the cluster-wide configuration, the account registry) with its :class:`KeyWatch`, and
:class:`DiscoveryError`. It imports only the standard library; `discovery.consul` (the Consul
implementation, :class:`~discovery.consul.ConsulRegistry`, which production code imports from there)
imports this module, never the other way round. Nothing here starts processes: the Consul dev agent,
free ports and the in-memory StaticRegistry for tests live in the `devtools` package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class DiscoveryError(RuntimeError):
    """The discovery backend could not answer (e.g. Consul is unreachable)."""


class FrozenMeta(Mapping[str, str]):
    """An immutable, hashable ``str -> str`` mapping (so ServiceInstance stays hashable)."""

    __slots__ = ("_items", "_hash")

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = {str(k): str(v) for k, v in (items or {}).items()}
        self._hash: int | None = None

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._items.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._items == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMeta({self._items!r})"

    def to_dict(self) -> dict[str, str]:
        return dict(self._items)


@dataclass(frozen=True, slots=True)
class ServiceInstance:
    """One registration of a service: where to reach it and its metadata."""

    service: str  # e.g. "peer-server"
    instance_id: str  # unique id of this registration, e.g. the node id
    address: str  # host
    port: int
    meta: Mapping[str, str] = field(default_factory=FrozenMeta)

    def __post_init__(self) -> None:
        if not isinstance(self.meta, FrozenMeta):
            object.__setattr__(self, "meta", FrozenMeta(self.meta))
        object.__setattr__(self, "port", int(self.port))

    @property
    def target(self) -> str:
        """``host:port`` as grpc wants it (IPv6 literals bracketed)."""
        host = self.address
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"


@runtime_checkable
class Watch(Protocol):
    def current(self) -> list[ServiceInstance]:
        """Latest known passing set; never blocks; ``[]`` before the first answer."""
        ...

    def stop(self) -> None: ...


@runtime_checkable
class Registry(Protocol):
    def register(
        self,
        service: str,
        instance_id: str,
        address: str,
        port: int,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Register with a health check (gRPC grpc.health.v1 against address:port)."""
        ...

    def deregister(self, instance_id: str) -> None: ...

    def healthy(self, service: str) -> list[ServiceInstance]:
        """One-shot: the instances passing now. Raises DiscoveryError if the backend is down."""
        ...

    def watch(self, service: str, on_change: Callable[[list[ServiceInstance]], None]) -> Watch:
        """Call ``on_change`` with the full passing set once at start and on every change."""
        ...

    def close(self) -> None:
        """Stop watches and background threads; does NOT deregister."""
        ...


@runtime_checkable
class KeyWatch(Protocol):
    """A prefix of the key-value store, followed with blocking queries."""

    def current(self) -> dict[str, bytes] | None:
        """The latest known keys (full key -> value) under the prefix; None before the first answer. While
        the store is unreachable this stays the last answer (see `fresh`)."""
        ...

    def fresh(self) -> bool:
        """Whether the last attempt to follow the prefix succeeded (False while the store is unreachable)."""
        ...

    def stop(self) -> None: ...


@runtime_checkable
class KeyValue(Protocol):
    """The cluster's replicated key-value store. Every call raises DiscoveryError when it cannot answer."""

    def get(self, key: str) -> bytes | None:
        """The value of `key` (a consistent read), None if there is none."""
        ...

    def create(self, key: str, value: bytes) -> bool:
        """Writes `key` only if it does not exist yet; returns whether this call created it."""
        ...

    def get_versioned(self, key: str) -> tuple[bytes, int] | None:
        """The value of `key` and its version (for `replace`), None if there is none."""
        ...

    def replace(self, key: str, value: bytes, version: int) -> bool:
        """Writes `key` only if it is still at `version`; returns whether it was."""
        ...

    def put(self, key: str, value: bytes) -> None: ...

    def put_all(self, entries: Mapping[str, bytes]) -> None:
        """Writes every key of `entries` at once: a reader sees all of them or none (at most 64)."""
        ...

    def list(self, prefix: str) -> dict[str, bytes]:
        """Every key under `prefix` with its value."""
        ...

    def watch_prefix(self, prefix: str, on_change: Callable[[dict[str, bytes]], None] | None = None) -> KeyWatch:
        """Follows the keys under `prefix`; calls `on_change` (if given) with all of them on every change."""
        ...


__all__ = [
    "DiscoveryError",
    "FrozenMeta",
    "KeyValue",
    "KeyWatch",
    "Registry",
    "ServiceInstance",
    "Watch",
]
