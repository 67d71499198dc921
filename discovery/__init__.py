"""Service discovery and the cluster's shared configuration: the interface, and (in `discovery.consul`, the
registry, and `discovery.consul_kv`, the KV store and sessions) the only code that knows Consul.

This module holds the interface the rest of the product depends on: the :class:`Registry` and
:class:`Watch` protocols, :class:`ServiceInstance` with its :class:`FrozenMeta`, the :class:`KeyValue`
store (Consul KV: the cluster-wide configuration, the account registry) with its :class:`KeyWatch`,
:class:`ReplicatedStore` (the same store as a replicated log needs it: versioned reads, blocking reads,
sessions and locks, atomic transactions fenced by a session; the Sequencer's HA mode) and
:class:`DiscoveryError`. It imports only the standard library; `discovery.consul` (the Consul
implementation, :class:`~discovery.consul.ConsulRegistry`, which production code imports from there)
imports this module, never the other way round. Nothing here starts processes: the Consul dev agent,
free ports and the in-memory StaticRegistry for tests live in the `devtools` package.

May import the standard library and py-consul (in `discovery.consul` and `discovery.consul_kv` only);
nothing of `exchange` or `sequencer` (devtools/layout.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class DiscoveryError(RuntimeError):
    """The discovery backend could not answer (e.g. Consul is unreachable). From a write: its outcome is
    unknown (it may or may not have been applied)."""


class AccessDenied(DiscoveryError):
    """The backend refused the request for want of permission (Consul ACLs: the token is missing, unknown,
    removed, or its policy does not allow it). Retrying will not help until an operator fixes the token."""


class TransactionConflict(DiscoveryError):
    """A transaction was refused and nothing of it was applied: a compare-and-set found another version, or a
    session check found the key held by another session (or by none)."""


class TransactionRejected(DiscoveryError):
    """A transaction the store will never apply as it is (malformed, too large): nothing of it was applied."""


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


@dataclass(frozen=True, slots=True)
class Versioned:
    """A key's value with its version (`index`: what a compare-and-set compares) and the session holding
    the key as a lock (None: not held)."""

    value: bytes
    index: int
    session: str | None = None


@dataclass(frozen=True, slots=True)
class CheckSession:
    """Transaction operation: fails the transaction unless `key` is held by `session`."""

    key: str
    session: str


@dataclass(frozen=True, slots=True)
class CompareAndSet:
    """Transaction operation: writes `key` only if its version is still `index` (0: only if it does not exist)."""

    key: str
    value: bytes
    index: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


TransactionOp = CheckSession | CompareAndSet | Put | Delete


@runtime_checkable
class KeyValue(Protocol):
    """The cluster's replicated key-value store. Every call raises DiscoveryError when it cannot answer."""

    def get(self, key: str) -> bytes | None:
        """The value of `key` (a consistent read), None if there is none."""
        ...

    def read(self, key: str, consistent: bool = False) -> Versioned | None:
        """The key's value and version (None if it does not exist); `consistent`: linearizable."""
        ...

    def create(self, key: str, value: bytes) -> bool:
        """Writes `key` only if it does not exist yet; returns whether this call created it."""
        ...

    def put(self, key: str, value: bytes) -> None: ...

    def transact(self, ops: Sequence[TransactionOp]) -> dict[str, int]:
        """Applies every operation or none, atomically (at most 64; a compare-and-set is one). Returns the new
        version of each key written. Raises TransactionConflict (nothing applied), TransactionRejected (nothing
        applied, never will be) or DiscoveryError (outcome unknown)."""
        ...

    def list(self, prefix: str) -> dict[str, bytes]:
        """Every key under `prefix` with its value."""
        ...

    def watch_prefix(self, prefix: str, on_change: Callable[[dict[str, bytes]], None] | None = None) -> KeyWatch:
        """Follows the keys under `prefix`; calls `on_change` (if given) with all of them on every change."""
        ...


@runtime_checkable
class ReplicatedStore(KeyValue, Protocol):
    """The replicated key-value store as a replicated log needs it (Consul KV and sessions).

    Every call raises DiscoveryError when the store cannot answer; for `transact` that means its outcome is
    unknown. A session is a lease: the store ends it when one of its health checks fails or when it is not
    renewed within its TTL, and then every lock it holds is released."""

    def keys(self, prefix: str) -> list[str]:
        """The keys under `prefix`, sorted."""
        ...

    def read_many(self, keys: Sequence[str]) -> dict[str, Versioned] | None:
        """Several keys in one read (at most 64); None if one of them does not exist."""
        ...

    def wait_prefix(self, prefix: str, index: int, wait_s: float) -> tuple[int, dict[str, Versioned]]:
        """The keys under `prefix` once the prefix's version passes `index` (at most `wait_s` later; 0: at once),
        with the new version to wait on next."""
        ...

    def create_session(self, name: str, checks: Sequence[str], ttl_s: float, lock_delay_s: float) -> str:
        """A new session tied to the named health checks of this agent's node, ended after `ttl_s` without a
        renewal; a lock it held cannot be taken for `lock_delay_s` after it ends."""
        ...

    def renew_session(self, session: str) -> bool:
        """Extends the session's TTL; False if the session has ended."""
        ...

    def destroy_session(self, session: str) -> None: ...

    def sessions(self, name: str) -> list[str]:
        """The ids of the live sessions named `name`."""
        ...

    def acquire(self, key: str, value: bytes, session: str) -> bool:
        """Takes `key` as a lock for `session` and writes `value`, if no session holds it; whether it did."""
        ...

    def release(self, key: str, session: str) -> bool: ...


__all__ = [
    "CheckSession",
    "CompareAndSet",
    "Delete",
    "DiscoveryError",
    "FrozenMeta",
    "KeyValue",
    "KeyWatch",
    "Put",
    "Registry",
    "ReplicatedStore",
    "ServiceInstance",
    "TransactionConflict",
    "TransactionOp",
    "TransactionRejected",
    "Versioned",
    "Watch",
]
