"""StaticRegistry: an in-memory discovery Registry for tests of other parts (no Consul, no threads).

It implements the product's `discovery.Registry` protocol; the product itself only uses
`discovery.consul.ConsulRegistry`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping

from discovery import ServiceInstance

log = logging.getLogger(__name__)


class _StaticWatch:
    def __init__(
        self, registry: StaticRegistry, service: str, on_change: Callable[[list[ServiceInstance]], None]
    ) -> None:
        self._registry = registry
        self.service = service
        self._on_change = on_change
        self._current: list[ServiceInstance] = []
        self._stopped = False

    def current(self) -> list[ServiceInstance]:
        return list(self._current)

    def stop(self) -> None:
        self._stopped = True
        self._registry._remove_watch(self)

    def _publish(self, instances: list[ServiceInstance]) -> None:
        if self._stopped:
            return
        self._current = list(instances)
        try:
            self._on_change(list(instances))
        except Exception:
            log.exception("discovery watch callback for %r failed", self.service)


class StaticRegistry:
    """Registry backed by an in-memory list.

    Unlike ConsulRegistry, watch callbacks run synchronously in the thread that made the
    change (deterministic for tests). ``set_healthy`` simulates a failing health check.
    """

    def __init__(self, instances: Iterable[ServiceInstance] = ()) -> None:
        self._lock = threading.RLock()
        self._instances: dict[str, ServiceInstance] = {}
        self._unhealthy: set[str] = set()
        self._watches: list[_StaticWatch] = []
        for inst in instances:
            self._instances[inst.instance_id] = inst

    def register(
        self,
        service: str,
        instance_id: str,
        address: str,
        port: int,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        inst = ServiceInstance(service, instance_id, address, port, meta or {})
        with self._lock:
            old = self._instances.get(instance_id)
            self._instances[instance_id] = inst
            self._notify({inst.service} | ({old.service} if old else set()))

    def deregister(self, instance_id: str) -> None:
        with self._lock:
            old = self._instances.pop(instance_id, None)
            self._unhealthy.discard(instance_id)
            if old is not None:
                self._notify({old.service})

    def set_healthy(self, instance_id: str, healthy: bool) -> None:
        """Mark an instance passing / not passing (like its health check flipping)."""
        with self._lock:
            before = instance_id in self._unhealthy
            if healthy:
                self._unhealthy.discard(instance_id)
            else:
                self._unhealthy.add(instance_id)
            inst = self._instances.get(instance_id)
            if inst is not None and before == healthy:
                self._notify({inst.service})

    def healthy(self, service: str) -> list[ServiceInstance]:
        with self._lock:
            return sorted(
                (
                    i
                    for i in self._instances.values()
                    if i.service == service and i.instance_id not in self._unhealthy
                ),
                key=lambda i: i.instance_id,
            )

    def watch(self, service: str, on_change: Callable[[list[ServiceInstance]], None]) -> _StaticWatch:
        w = _StaticWatch(self, service, on_change)
        with self._lock:
            self._watches.append(w)
            w._publish(self.healthy(service))
        return w

    def close(self) -> None:
        with self._lock:
            watches, self._watches = self._watches, []
        for w in watches:
            w._stopped = True

    def _remove_watch(self, w: _StaticWatch) -> None:
        with self._lock:
            if w in self._watches:
                self._watches.remove(w)

    def _notify(self, services: set[str]) -> None:
        for w in list(self._watches):
            if w.service in services:
                w._publish(self.healthy(w.service))
