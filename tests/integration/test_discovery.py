"""ConsulRegistry against a real `consul agent -dev` and a real grpc health server."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devtools.consul_agent import ConsulDevAgent, find_consul_binary
from devtools.ports import free_port
from discovery import DiscoveryError, ServiceInstance
from discovery.consul import ConsulRegistry

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def ids(instances: list[ServiceInstance]) -> list[str]:
    return [i.instance_id for i in instances]


@pytest.fixture
def consul_agent(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ConsulDevAgent]:
    try:
        binary = find_consul_binary()
    except FileNotFoundError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Consul binary missing in CI: {e}")
        pytest.skip(str(e))
    agent = ConsulDevAgent(binary=binary, data_dir=tmp_path / "consul", log_file=tmp_path / "consul.log")
    failed_before = request.session.testsfailed
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
        if request.session.testsfailed > failed_before:
            print(f"---- consul log ({agent.log_file}) ----\n{agent.read_log()}")


class HealthServer:
    def __init__(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.set(SERVING)

    def set(self, status: int) -> None:
        # Consul's gRPC check (no "/service" suffix in the target) asks for the "" service.
        self.health.set("", status)

    def stop(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    hs = HealthServer()
    yield hs
    hs.stop()


@pytest.fixture
def registry(consul_agent: ConsulDevAgent) -> Iterator[ConsulRegistry]:
    reg = ConsulRegistry(port=consul_agent.http_port, check_interval="500ms", recovery_grace=3.0)
    yield reg
    reg.close()


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, instances: list[ServiceInstance]) -> None:
        with self.lock:
            self.calls.append(ids(instances))


def test_watch_follows_health_and_deregistration(
    registry: ConsulRegistry, health_server: HealthServer
) -> None:
    rec = Recorder()
    watch = registry.watch("peer-server", rec)
    wait_for(lambda: len(rec.calls) >= 1, what="the initial watch callback")
    assert rec.calls[0] == [] and watch.current() == []

    registry.register("peer-server", "node-1", "127.0.0.1", health_server.port, {"node_id": "node-1"})
    wait_for(lambda: ids(watch.current()) == ["node-1"], what="node-1 passing")
    [inst] = watch.current()
    assert inst.target == f"127.0.0.1:{health_server.port}"
    assert inst.meta == {"node_id": "node-1"}
    assert ids(registry.healthy("peer-server")) == ["node-1"]
    assert rec.calls[-1] == ["node-1"]

    health_server.set(NOT_SERVING)
    wait_for(lambda: watch.current() == [], what="node-1 dropped when NOT_SERVING")
    assert registry.healthy("peer-server") == []

    health_server.set(SERVING)
    wait_for(lambda: ids(watch.current()) == ["node-1"], what="node-1 back when SERVING")

    registry.deregister("node-1")
    wait_for(lambda: watch.current() == [], what="node-1 gone after deregister")
    registry.deregister("node-1")  # idempotent

    t = time.monotonic()
    watch.stop()  # the thread sits in a 30 s blocking query: stopping must not wait for it to end
    assert time.monotonic() - t < 10, "stopping a watch waited for its blocking query"


def test_instances_lists_every_registration_with_whether_it_passes(
    registry: ConsulRegistry, health_server: HealthServer
) -> None:
    """What a view of the cluster shows (exchange-web): a failing instance stays listed, marked, until it is gone."""
    registry.register("peer-server", "node-1", "127.0.0.1", health_server.port)
    registry.register("peer-server", "node-2", "127.0.0.1", free_port())  # nothing listens there
    wait_for(lambda: [(i.instance_id, ok) for i, ok in registry.instances("peer-server")] ==
             [("node-1", True), ("node-2", False)], what="node-2 critical, node-1 passing")
    assert ids(registry.healthy("peer-server")) == ["node-1"]
    registry.deregister("node-2")
    wait_for(lambda: [i.instance_id for i, _ in registry.instances("peer-server")] == ["node-1"],
             what="node-2 gone after deregister")


def test_consul_restart_reregisters_and_watch_keeps_last_known_set(
    consul_agent: ConsulDevAgent, registry: ConsulRegistry, health_server: HealthServer
) -> None:
    other = HealthServer()
    try:
        registry.register("sequencer", "seq-1", "127.0.0.1", other.port)  # registered, never watched
        registry.register("peer-server", "node-1", "127.0.0.1", health_server.port)
        watch = registry.watch("peer-server", Recorder())
        wait_for(lambda: ids(watch.current()) == ["node-1"], what="node-1 passing")

        consul_agent.stop()
        with pytest.raises(DiscoveryError):
            registry.healthy("peer-server")
        # Consul is away: the watch keeps what it knew (give the watch time to notice and retry).
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert ids(watch.current()) == ["node-1"]
            time.sleep(0.05)

        consul_agent.start()  # same ports, empty state (dev mode)
        wait_for(
            lambda: ids(_healthy_or_empty(registry, "peer-server")) == ["node-1"],
            timeout=15,
            what="node-1 re-registered after the Consul restart",
        )
        wait_for(
            lambda: ids(_healthy_or_empty(registry, "sequencer")) == ["seq-1"],
            timeout=15,
            what="seq-1 (no watch) re-registered by the keeper",
        )
        assert ids(watch.current()) == ["node-1"]
        # After the grace period the watch shows Consul's real answer again.
        health_server.set(NOT_SERVING)
        wait_for(lambda: watch.current() == [], timeout=10, what="node-1 dropped after restart")
    finally:
        other.stop()


def _healthy_or_empty(registry: ConsulRegistry, service: str) -> list[ServiceInstance]:
    try:
        return registry.healthy(service)
    except DiscoveryError:
        return []


def test_registry_tolerates_consul_down() -> None:
    port = free_port()  # nothing listens here
    reg = ConsulRegistry(port=port)
    reg.register("peer-server", "node-1", "127.0.0.1", 1)  # deferred, not raised
    rec = Recorder()
    watch = reg.watch("peer-server", rec)
    time.sleep(0.3)
    assert watch.current() == [] and rec.calls == []
    with pytest.raises(DiscoveryError):
        reg.healthy("peer-server")
    reg.deregister("node-1")  # logged, not raised
    t = time.monotonic()
    reg.close()
    assert time.monotonic() - t < 10, "closing waited for a blocking query or a retry to end"


def test_registration_made_while_consul_down_happens_when_it_starts(
    consul_agent: ConsulDevAgent, health_server: HealthServer
) -> None:
    consul_agent.stop()
    reg = ConsulRegistry(port=consul_agent.http_port, check_interval="500ms")
    try:
        reg.register("peer-server", "early", "127.0.0.1", health_server.port)
        consul_agent.start()
        wait_for(
            lambda: ids(_healthy_or_empty(reg, "peer-server")) == ["early"],
            timeout=15,
            what="deferred registration made by the keeper",
        )
    finally:
        reg.close()
