"""Fixtures that run real clusters (Consul, Sequencer, nodes) on free loopback ports.

Every process a test starts is stopped when it ends, also on failure; the servers' logs are printed
when a test fails. Without a Consul binary the tests skip, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pluggy import Result

from devtools.consul_agent import find_consul_binary
from devtools.local_cluster import DEFAULT_MARKETS, Cluster
from exchange.v1 import exchange_pb2_grpc


def consul_or_skip(what: str = "these tests", how: str = "") -> str:
    """The Consul binary; without one `what` is skipped saying why and how to run it (`how`: the command),
    except in CI (CI=true), where that fails."""
    try:
        return find_consul_binary()
    except FileNotFoundError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Consul is required in CI and could not be found: {error}")
        pytest.skip(f"{what} need a real Consul agent and were skipped: {error}" + (f", then {how}" if how else ""))


@pytest.fixture(scope="session")
def consul_binary() -> str:
    """The Consul binary (see consul_or_skip)."""
    return consul_or_skip()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"report_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture
def make_cluster(
    tmp_path: Path, request: pytest.FixtureRequest, consul_binary: str
) -> Iterator[Callable[..., Cluster]]:
    """Builds clusters (not started) in tmp_path; stops them all at the end, dumping logs on failure."""
    clusters: list[Cluster] = []

    def build(**options: Any) -> Cluster:  # Cluster's keyword arguments
        cluster = Cluster(tmp_path / f"cluster-{len(clusters)}", **options)
        clusters.append(cluster)
        return cluster

    try:
        yield build
    finally:
        for cluster in clusters:
            if _failed(request):
                cluster.dump_tasks()
                print(cluster.logs(tail=20000))
            cluster.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A started 3-node cluster trading BTC-USD (default) and ETH-USD."""
    running = make_cluster()
    running.start()
    return running


# Whose key each of the `stubs` carries: node 1 and node 3 trade as alice, node 2 as bob, so orders placed on
# different nodes can trade with each other (an account's own orders never do).
STUB_ACCOUNTS = ("alice", "bob", "alice")


@pytest.fixture
def stubs(cluster: Cluster) -> Iterator[list[exchange_pb2_grpc.ExchangeNodeStub]]:
    """One stub per node, with the API key of STUB_ACCOUNTS[node]."""
    addresses = cluster.node_addresses
    channels = [cluster.channel(address, STUB_ACCOUNTS[index % 3]) for index, address in enumerate(addresses)]
    yield [exchange_pb2_grpc.ExchangeNodeStub(channel) for channel in channels]
    for channel in channels:
        channel.close()


@pytest.fixture(scope="module")
def module_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, consul_binary: str
) -> Iterator[Cluster]:
    """One started 3-node cluster shared by a module's tests (markets: the module's CLUSTER_MARKETS, if any).
    No process may die while the module uses it."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), markets=getattr(request.module, "CLUSTER_MARKETS",
                                                                          DEFAULT_MARKETS))
    try:
        cluster.start()
    except BaseException:
        print(cluster.logs())
        raise
    yield cluster
    crashed = [process.name for process in cluster.processes() if not process.running]
    if crashed:
        print(cluster.logs())
    cluster.stop()
    assert not crashed, f"processes died while the module's tests ran: {crashed}"


@pytest.fixture(autouse=True)
def _module_cluster_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "module_cluster" in request.fixturenames and _failed(request):
        print(request.getfixturevalue("module_cluster").logs())
