"""Operating the cluster with Prometheus: the repository's configuration and alert rules (promtool), and a real
Prometheus finding every process of a real cluster through Consul and reading what they did."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from devtools.local_cluster import Cluster, wait_until
from devtools.prometheus import DEPLOY, PrometheusServer, find_prometheus
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prometheus_dir() -> Path:
    """Where prometheus and promtool are; skips without them, except in CI (CI=true), where that fails."""
    try:
        return find_prometheus()
    except FileNotFoundError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Prometheus is required in CI and could not be found: {error}")
        pytest.skip(str(error))


@pytest.fixture
def start_prometheus(prometheus_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
                     ) -> Iterator[Callable[[Cluster], PrometheusServer]]:
    """Starts a Prometheus scraping a cluster every second through its Consul; stopped at the end (its log
    printed if the test failed)."""
    servers: list[PrometheusServer] = []

    def start(cluster: Cluster) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(servers)}", cluster.consul_address, interval="1s",
                                  consul_token=cluster.consul_token("observer"))
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
            if getattr(getattr(request.node, "report_call", None), "failed", False):
                print(f"===== prometheus ({server.log_file}) =====\n{server.read_log()[-6000:]}")


def test_promtool_accepts_the_configuration_and_every_alert_passes_its_unit_tests(prometheus_dir: Path) -> None:
    for command in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([str(prometheus_dir / "promtool"), *command], cwd=DEPLOY, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(command)}:\n{done.stdout}\n{done.stderr}"


def total(prometheus: PrometheusServer, expr: str) -> float:
    return prometheus.value(f"sum({expr})") or 0.0


def test_prometheus_finds_every_process_through_consul_and_sees_the_orders_and_a_killed_node(
    make_cluster: Callable[..., Cluster], start_prometheus: Callable[[Cluster], PrometheusServer],
) -> None:
    cluster = make_cluster(nodes=3, metrics=True)
    cluster.start()
    prometheus = start_prometheus(cluster)

    def all_up() -> bool:
        return {up[0]["instance"] for up in prometheus.query('up{job="exchange"} == 1')} == {
            "node-1", "node-2", "node-3", "sequencer-1"}  # the Sequencer registers as sequencer-1 (its --id)

    wait_until(all_up, 60, "Prometheus to scrape every process it found in Consul", interval=0.5)
    accepted = 'exchange_orders_accepted_total{job="exchange"}'
    handled = 'grpc_server_handled_total{grpc_method="CreateOrder", grpc_code="OK"}'
    accepted_before, handled_before = total(prometheus, accepted), total(prometheus, handled)

    orders = 30
    for number in range(orders):  # spread over the nodes and both sides: some trade, some rest
        with cluster.channel(cluster.node_address(number % 3), account=cluster.trader(number)) as channel:
            side = 1 if number % 2 else -1
            exchange_pb2_grpc.ExchangeNodeStub(channel).CreateOrder(
                pb.CreateOrderRequest(size=side * (1 + number % 4), limit_price=100), timeout=10)
    cluster.wait_converged()

    def counted() -> bool:
        return (total(prometheus, accepted) == accepted_before + orders
                and total(prometheus, handled) == handled_before + orders
                and prometheus.value('max(exchange_replica_lag{job="exchange"})') == 0
                and prometheus.value('sum(exchange_pending_commands{job="exchange"})') == 0)

    wait_until(counted, 30, f"Prometheus to count the {orders} orders, with no lag and nothing pending", interval=0.5)
    assert total(prometheus, accepted) == accepted_before + orders  # exactly: each order counted by one node only
    assert {series["instance"] for series, _ in prometheus.query("exchange_book_checksum")} == {
        "node-1", "node-2", "node-3"}
    assert prometheus.query("ALERTS") == []
    # the nodes' calls to the Sequencer and to each other, as their client saw them, and the Sequencer's side
    # (each target is scraped on its own schedule: the Sequencer's scrape may come after the nodes')
    calls = ['grpc_client_msg_sent_total{grpc_method="SequenceStream"}',
             'grpc_client_msg_received_total{grpc_method="SequenceStream"}',
             'grpc_client_msg_sent_total{grpc_method="BroadcastOrderStream"}',
             'grpc_client_handled_total{grpc_method="GetSequence", grpc_code="OK"}',
             'grpc_server_msg_received_total{grpc_method="SequenceStream", service="sequencer"}']
    wait_until(lambda: all(total(prometheus, query) >= 1 for query in calls), 30,
               "the gRPC series of the gate and broadcast streams, on both sides", interval=0.5)

    cluster.nodes[2].kill()
    wait_until(lambda: prometheus.value('up{instance="node-3"}') == 0, 30, "node-3's target to go down",
               interval=0.5)
    assert prometheus.value('up{instance="node-1"}') == 1


def test_a_scrape_stays_small_with_a_thousand_subscribers(make_cluster: Callable[..., Cluster]) -> None:
    """No series per subscriber, account or order: 1,000 open StreamEvents add nothing but a gauge's value."""
    cluster = make_cluster(nodes=1, metrics=True)
    cluster.start()
    url = cluster.metrics_url("node-1")

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    with cluster.channel(cluster.node_address(0)) as channel:
        stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
        for number in range(20):
            stub.CreateOrder(pb.CreateOrderRequest(size=-1 - number, limit_price=100 + number), timeout=10)
        streams = [stub.StreamEvents(pb.StreamEventsRequest(market="BTC-USD" if n % 2 else "ETH-USD"))
                   for n in range(1000)]
        try:
            wait_until(lambda: 'exchange_stream_subscribers{kind="StreamEvents"} 1000.0' in scrape(), 60,
                       "the node to count 1,000 open StreamEvents", interval=0.5)
            body = scrape()
        finally:
            for stream in streams:
                stream.cancel()
    series = [line for line in body.splitlines() if line and not line.startswith("#")]
    assert len(body) < 64 * 1024, f"a scrape of {len(body)} bytes"
    assert len(series) < 800, f"{len(series)} series"
    assert not any("alice" in line or "trader" in line for line in series)


@pytest.mark.timeout(300)
def test_ha_a_killed_leader_shows_in_the_role_and_the_leader_changes(
    make_cluster: Callable[..., Cluster], start_prometheus: Callable[[Cluster], PrometheusServer],
) -> None:
    cluster = make_cluster(nodes=1, ha=True, metrics=True)
    cluster.start()
    prometheus = start_prometheus(cluster)
    leader = cluster.leader_index()
    assert leader is not None
    old, new = cluster.sequencer_name(leader), cluster.sequencer_name(1 - leader)

    def roles() -> dict[str, float]:
        leading = prometheus.query('exchange_sequencer_role{role="leader"}')
        return {series["instance"]: value for series, value in leading}

    wait_until(lambda: roles() == {old: 1.0, new: 0.0}, 60, f"Prometheus to see {old} lead and {new} stand by",
               interval=0.5)
    assert prometheus.value(f'exchange_sequencer_leader_changes_total{{instance="{new}"}}') == 0

    cluster.sequencers[leader].kill()
    wait_until(lambda: roles() == {new: 1.0}, 90, f"Prometheus to see {new} lead, {old} gone", interval=0.5)
    assert prometheus.value(f'exchange_sequencer_leader_changes_total{{instance="{new}"}}') == 1
    assert prometheus.value(f'up{{instance="{old}"}}') == 0
    with cluster.channel(cluster.node_address(0)) as channel:  # and the cluster still takes orders
        stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
        wait_until(lambda: _places(stub), 60, "an order to be placed after the failover", interval=0.5)


def _places(stub: exchange_pb2_grpc.ExchangeNodeStub) -> bool:
    try:
        stub.CreateOrder(pb.CreateOrderRequest(size=1, limit_price=90), timeout=5)
        return True
    except grpc.RpcError:
        return False


def test_json_logs_one_object_per_line_naming_the_process_node_and_market(
    make_cluster: Callable[..., Cluster],
) -> None:
    json_logs = ["--log-format", "json"]
    cluster = make_cluster(nodes=1, extra_node_args=json_logs, extra_sequencer_args=json_logs)
    cluster.start()
    with cluster.channel(cluster.node_address(0)) as channel:
        stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
        stub.CreateOrder(pb.CreateOrderRequest(size=1, limit_price=90), timeout=10)
    cluster.stop()
    node = [json.loads(line) for line in cluster.nodes[0].read_log().splitlines()]
    sequencer = [json.loads(line) for line in cluster.sequencers[0].read_log().splitlines()]
    assert {(entry["process"], entry.get("node")) for entry in node} == {("node", "node-1")}
    assert {(entry["process"], entry.get("node")) for entry in sequencer} == {("sequencer", "sequencer-1")}
    caught_up = [entry for entry in node if entry["message"].startswith("BTC-USD: caught up")]
    assert caught_up and caught_up[0]["market"] == "BTC-USD" and isinstance(caught_up[0]["seq"], int)
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in node + sequencer)
