"""The service registry backed by a Consul agent (py-consul), with blocking-query watches, and the Consul
connection both it and the KV store (`discovery.consul_kv`) use: HTTPS, ACL tokens, what a failure says, on
py-consul's keep-alive transport (`discovery.consul_http`).

Resilience rules (Consul may be down or restarted at any time, a ``-dev`` restart loses all state):
- a watch keeps its last known set while Consul is unreachable, and for ``recovery_grace``
  after Consul comes back it only adds instances (others re-register during that time), so
  peers are not dropped because of a Consul restart;
- every registration made through this registry is remembered and re-registered when Consul
  comes back (detected by watches and by a keeper thread polling the local agent).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import consul
from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ClientError, NotFound

from discovery import (
    AccessDenied,
    DiscoveryError,
    ServiceInstance,
    consul_http,
)

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.2
BACKOFF_MAX = 2.0


@dataclass
class _Registration:
    service: str
    instance_id: str
    address: str
    port: int
    meta: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_entries(service: str, entries: list[dict[str, Any]] | None) -> list[ServiceInstance]:
    out: dict[str, ServiceInstance] = {}
    for e in entries or []:
        svc = e.get("Service") or {}
        node = e.get("Node") or {}
        address = svc.get("Address") or node.get("Address") or ""
        inst = ServiceInstance(
            service=svc.get("Service") or service,
            instance_id=svc.get("ID") or "",
            address=address,
            port=int(svc.get("Port") or 0),
            meta=svc.get("Meta") or {},
        )
        out[inst.instance_id] = inst
    return sorted(out.values(), key=lambda i: i.instance_id)


@dataclass(frozen=True)
class ConsulHttps:
    """HTTPS to the Consul agent: the CA file its certificate must be of, and this process's certificate and key
    (presented when the agent asks for one)."""

    ca_file: str
    cert_file: str
    key_file: str


def consul_client(host: str, port: int, token: str | None, timeout: float | None,
                  https: ConsulHttps | None = None) -> consul_http.Consul:
    """A py-consul client sending `token` (None or "": Consul's anonymous token), over HTTPS with `https`, on one
    keep-alive connection (`discovery.consul_http`: calls are serialized; a thread with blocking queries has a
    client of its own). py-consul would let CONSUL_HTTP_TOKEN override the token it is given; here the caller's
    token wins (the processes' flags read that variable as their default)."""
    client = consul_http.Consul(host=host, port=port, connections_timeout=timeout,
                                scheme="https" if https else "http", verify=https.ca_file if https else True,
                                cert=(https.cert_file, https.key_file) if https else None)
    client.token = token or None
    return client


def acl_refused(error: BaseException) -> bool:
    """Whether Consul refused a request for want of permission (HTTP 403: an unknown or removed token, or a
    policy that does not allow it)."""
    return isinstance(error, (ACLPermissionDenied, AccessDenied))


def describe_failure(error: BaseException, token: str | None) -> str:
    """What went wrong with a Consul request, in words an operator can act on."""
    if acl_refused(error):
        whose = "the token given (--consul-token / CONSUL_HTTP_TOKEN)" if token else \
            "the anonymous token (no --consul-token / CONSUL_HTTP_TOKEN given)"
        return (f"Consul's ACLs refused {whose}: it is unknown, was removed, or its policy does not allow this "
                f"({error}); see docs/security.md")
    return f"unreachable: {error}"


class ConsulRegistry:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8500,
        check_interval: str = "1s",
        deregister_after: str = "24h",
        *,
        check_timeout: str | None = None,
        wait: str = "30s",
        keeper_interval: float = 1.0,
        recovery_grace: float = 5.0,
        request_timeout: float = 5.0,
        grpc_tls: bool = False,
        token: str | None = None,
        https: ConsulHttps | None = None,
    ) -> None:
        """Never contacts Consul: constructing it works while Consul is still down.

        ``grpc_tls``: the registered services serve gRPC over TLS, so Consul's health check connects with
        TLS (the agent needs the cluster's CA, and a client certificate when the services require one:
        ``enable_agent_tls_for_checks``).

        ``token``: the Consul ACL token every request carries (None: the anonymous token); ``https``: talk to
        the agent over HTTPS.

        ``deregister_after``: Consul reaps a service whose check stays critical that long
        (Consul enforces a minimum of 1 minute and reaps every ~30 s). Long by default: a crashed process
        must stay a scrape target found through Consul, or its down alert resolves by itself while it is
        down (a process stopped on purpose deregisters itself).
        """
        self.host = host
        self.port = port
        self.check_interval = check_interval
        self.deregister_after = deregister_after
        self.check_timeout = check_timeout
        self.wait = wait
        self.keeper_interval = keeper_interval
        self.recovery_grace = recovery_grace
        self.request_timeout = request_timeout
        self.grpc_tls = grpc_tls
        self.token = token
        self.https = https
        self._lock = threading.RLock()
        self._client = self._new_client(request_timeout)
        self._registrations: dict[str, _Registration] = {}
        self._watches: list[ConsulWatch] = []
        self._closed = threading.Event()
        self._keeper: threading.Thread | None = None
        self._keeper_outage = False

    def _new_client(self, timeout: float | None) -> consul_http.Consul:
        return consul_client(self.host, self.port, self.token, timeout, self.https)

    # -- registration -----------------------------------------------------------------------
    def register(
        self,
        service: str,
        instance_id: str,
        address: str,
        port: int,
        meta: Mapping[str, str] | None = None,
    ) -> None:
        """Register (or update) with a gRPC health check on ``address:port``.

        If Consul is unreachable the registration is kept and made as soon as Consul answers
        (a warning is logged). If Consul's ACLs refuse it, it is kept and retried the same way, with an
        error logged: a Consul agent may refuse a valid token for up to its token TTL (30 s by default)
        after a Consul server restarted (it caches the "ACL not found" a server answered while catching
        up), and a fixed token or policy takes effect without a restart. Consul rejecting the request
        itself (another 4xx) raises DiscoveryError.
        """
        reg = _Registration(
            service, instance_id, address, int(port), {str(k): str(v) for k, v in (meta or {}).items()}
        )
        with self._lock:
            self._registrations[instance_id] = reg
            try:
                self._put(reg)
            except (consul.ConsulException, OSError) as e:
                if acl_refused(e):
                    log.error("could not register %s/%s, retrying every %g s: %s", service, instance_id,
                              self.keeper_interval, describe_failure(e, self.token))
                elif _is_client_error(e):
                    self._registrations.pop(instance_id, None)
                    raise DiscoveryError(f"Consul rejected registration of {instance_id}: {e}") from e
                else:
                    log.warning("Consul at %s:%s unreachable, will register %s/%s when it answers: %s",
                                self.host, self.port, service, instance_id, e)
        self._ensure_keeper()

    def _put(self, reg: _Registration) -> None:
        check = consul.Check.grpc(
            f"{reg.address}:{reg.port}",
            self.check_interval,
            timeout=self.check_timeout,
            deregister=self.deregister_after,
        )
        # Callers register only once they serve (and re-registration after a Consul restart is for
        # a live process), so start passing instead of Consul's default "critical until the first
        # check run": peers see a new node at once rather than up to one check interval later.
        check["Status"] = "passing"
        if self.grpc_tls:
            # py-consul's Check.grpc(use_tls=...) writes a field Consul 1.8.7 does not know; this is the API's
            check["GRPCUseTLS"] = True
        self._client.agent.service.register(
            reg.service,
            service_id=reg.instance_id,
            address=reg.address,
            port=reg.port,
            meta=reg.meta or None,
            check=check,
        )

    def deregister(self, instance_id: str) -> None:
        """Forget and deregister; idempotent; never raises (logs if Consul is unreachable)."""
        with self._lock:
            self._registrations.pop(instance_id, None)
            try:
                self._client.agent.service.deregister(instance_id)
            except Exception as e:  # shutdown must not crash
                log.warning(
                    "could not deregister %s from Consul at %s:%s: %s", instance_id, self.host, self.port, e
                )

    def _reregister_missing(self) -> None:
        """Re-register every remembered registration the local agent does not know (any more)."""
        with self._lock:
            if not self._registrations:
                return
            try:
                known = self._client.agent.services() or {}
            except Exception as e:
                log.debug("Consul still unreachable while re-registering: %s", e)
                return
            for reg in list(self._registrations.values()):
                if reg.instance_id in known:
                    continue
                try:
                    self._put(reg)
                    log.info("registered %s/%s in Consul (again or deferred)", reg.service, reg.instance_id)
                except Exception as e:
                    log.log(logging.ERROR if acl_refused(e) else logging.WARNING,
                            "re-registering %s in Consul failed: %s", reg.instance_id, describe_failure(e, self.token))

    def _ensure_keeper(self) -> None:
        with self._lock:
            if self._keeper is not None or self._closed.is_set():
                return
            self._keeper = threading.Thread(target=self._keep, name="consul-registry-keeper", daemon=True)
            self._keeper.start()

    def _keep(self) -> None:
        """Notice Consul restarts even without watches, and put our registrations back."""
        client = self._new_client(self.request_timeout)
        while not self._closed.wait(self.keeper_interval):
            try:
                known = client.agent.services() or {}
            except Exception as e:
                if not self._keeper_outage:
                    log.log(logging.ERROR if acl_refused(e) else logging.WARNING, "Consul at %s:%s %s",
                            self.host, self.port, describe_failure(e, self.token))
                    self._keeper_outage = True
                continue
            if self._keeper_outage:
                log.info("Consul at %s:%s reachable again", self.host, self.port)
                self._keeper_outage = False
            with self._lock:
                missing = any(i not in known for i in self._registrations)
            if missing:
                self._reregister_missing()

    # -- queries ----------------------------------------------------------------------------
    def healthy(self, service: str) -> list[ServiceInstance]:
        try:
            with self._lock:
                _, entries = self._client.health.service(service, passing=True)
        except Exception as e:
            error = AccessDenied if acl_refused(e) else DiscoveryError
            raise error(f"Consul at {self.host}:{self.port}: {describe_failure(e, self.token)}") from e
        return _parse_entries(service, entries)

    def instances(self, service: str) -> list[tuple[ServiceInstance, bool]]:
        """Every registered instance of ``service``, passing or not, and whether all its checks pass (a killed
        process stays registered, critical, until Consul reaps it): what a view of the cluster shows."""
        try:
            with self._lock:
                _, entries = self._client.health.service(service)
        except Exception as e:
            error = AccessDenied if acl_refused(e) else DiscoveryError
            raise error(f"Consul at {self.host}:{self.port}: {describe_failure(e, self.token)}") from e
        passing = {(e.get("Service") or {}).get("ID") or "": all(c.get("Status") == "passing"
                                                               for c in e.get("Checks") or [])
                   for e in entries or []}
        return [(instance, passing.get(instance.instance_id, False)) for instance in _parse_entries(service, entries)]

    def watch(self, service: str, on_change: Callable[[list[ServiceInstance]], None]) -> ConsulWatch:
        w = ConsulWatch(self, service, on_change)
        with self._lock:
            self._watches.append(w)
        w._start()
        return w

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            watches, self._watches = self._watches, []
        for w in watches:
            w.stop()
        keeper = self._keeper
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(timeout=1.0)

    def __enter__(self) -> ConsulRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forget_watch(self, w: ConsulWatch) -> None:
        with self._lock:
            if w in self._watches:
                self._watches.remove(w)


def _is_client_error(e: BaseException) -> bool:
    """Consul answered 4xx: our request is wrong, retrying later will not help."""
    return isinstance(e, (BadRequest, ClientError, ACLDisabled, ACLPermissionDenied, NotFound))


class ConsulWatch:
    """Blocking-query loop on /v1/health/service/<name>?passing in a daemon thread."""

    def __init__(
        self, registry: ConsulRegistry, service: str, on_change: Callable[[list[ServiceInstance]], None]
    ) -> None:
        self._registry = registry
        self.service = service
        self._on_change = on_change
        self._current: list[ServiceInstance] = []
        self._published: list[ServiceInstance] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"consul-watch-{service}", daemon=True)

    def current(self) -> list[ServiceInstance]:
        return list(self._current)  # a read of the cached list, never a Consul request

    def stop(self) -> None:
        """Returns at once, without joining: the thread is a daemon that may sit in a blocking query for
        up to ``wait``; once stopped it never publishes again, so nothing is gained by waiting for it
        (and callers on an event loop must not block)."""
        self._stop.set()
        self._registry._forget_watch(self)

    def _start(self) -> None:
        self._thread.start()

    def _publish(self, instances: list[ServiceInstance]) -> None:
        if self._stop.is_set() or instances == self._published:
            return
        self._published = instances
        self._current = instances
        try:
            self._on_change(list(instances))
        except Exception:
            log.exception("discovery watch callback for %r failed", self.service)

    def _run(self) -> None:
        reg = self._registry
        client = reg._new_client(reg.request_timeout)
        index = 0  # 0: non-blocking query
        backoff = BACKOFF_MIN
        outage = False
        grace_until = 0.0
        held: dict[str, ServiceInstance] = {}  # the set before an outage, kept during the grace
        while not self._stop.is_set():
            wait = reg.wait
            now = time.monotonic()
            if grace_until > now:
                wait = f"{max(1, int((grace_until - now) * 1000))}ms"
            started = now
            try:
                new_index, entries = client.health.service(
                    self.service, passing=True, index=index or None, wait=wait
                )
                new_index = int(new_index)
            except Exception as e:
                if self._stop.is_set():
                    break
                if not outage:
                    log.log(
                        logging.ERROR if acl_refused(e) else logging.WARNING,
                        "Consul at %s:%s: watch %r keeps its %d known instance(s): %s",
                        reg.host,
                        reg.port,
                        self.service,
                        len(self._current),
                        describe_failure(e, reg.token),
                    )
                    outage = True
                    held = {i.instance_id: i for i in self._current}
                index = 0
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if self._stop.is_set():
                break
            restarted = index and new_index < index  # the index went backwards: a new Consul state
            if outage or restarted:
                log.info(
                    "Consul at %s:%s answers again (%s), re-registering",
                    reg.host,
                    reg.port,
                    "index reset" if restarted and not outage else "after outage",
                )
                if restarted and not outage:
                    held = {i.instance_id: i for i in self._current}
                outage = False
                backoff = BACKOFF_MIN
                reg._reregister_missing()
                grace_until = time.monotonic() + reg.recovery_grace
                index = 0  # re-query: the answer we got predates our re-registration
                continue
            instances = _parse_entries(self.service, entries)
            if grace_until > time.monotonic():
                merged = dict(held)
                merged.update({i.instance_id: i for i in instances})
                instances = sorted(merged.values(), key=lambda i: i.instance_id)
            else:
                held = {}
                grace_until = 0.0
            self._publish(instances)
            if new_index == index and time.monotonic() - started < 0.05:
                self._stop.wait(0.05)  # rate limit if Consul answers immediately with no change
            index = max(new_index, 1)


def session_checks(instance_id: str) -> list[str]:
    """The health checks a session of a service registered by ConsulRegistry should be tied to: the agent's
    node (serfHealth, Consul's default) and the service's own gRPC check."""
    return ["serfHealth", f"service:{instance_id}"]
