"""A cluster with mutual TLS on every gRPC connection: it forms, Consul's checks pass, orders replicate;
only clients with a certificate of the cluster's CA get in (grpcurl included)."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from devtools.certs import make_identity
from devtools.local_cluster import Cluster, serving, wait_until
from devtools.verify import replay_cluster
from exchange.runtime import sync_channel
from exchange.shared.tls import TlsConfig
from exchange.shared.wire import PEER_SERVICE, SEQUENCER_SERVICE
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc
from tests.integration.test_grpcurl import GRPCURL
from tests.integration.test_ha import wait_standby_current

pytestmark = pytest.mark.integration


def passing(cluster: Cluster, service: str) -> list[str]:
    url = f"http://{cluster.consul_address}/v1/health/service/{service}?passing=true"
    with urllib.request.urlopen(url, timeout=5) as response:
        return sorted(entry["Service"]["ID"] for entry in json.loads(response.read()))


def test_a_mutual_tls_cluster_trades_and_admits_only_certificates_of_its_ca(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    c = make_cluster(tls=True)
    c.start()
    with c.channel(c.node_address(0)) as channel:
        stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
        sell = stub.CreateOrder(pb.CreateOrderRequest(size=-5, limit_price=100), timeout=10)
    with c.channel(c.node_address(1), "bob") as channel:
        buy = exchange_pb2_grpc.ExchangeNodeStub(channel).CreateOrder(
            pb.CreateOrderRequest(size=5, limit_price=100), timeout=10)
    assert [(t.maker_order_id, t.size) for t in buy.trades] == [(sell.order_id, 5)]
    views = c.wait_converged()
    replay = replay_cluster(c)
    assert {m: (replay.engine.last_seq(m), replay.engine.checksum(m)) for m in views} == views

    # Consul's gRPC health checks pass over TLS (GRPCUseTLS, the agent presenting its certificate)
    assert passing(c, PEER_SERVICE) == ["node-1", "node-2", "node-3"]
    assert passing(c, SEQUENCER_SERVICE) == ["sequencer-1"]

    # no certificate at all: the TLS handshake fails
    plain_tls = grpc.ssl_channel_credentials(root_certificates=c.client_tls.ca if c.client_tls else None)
    with grpc.secure_channel(c.node_address(0), plain_tls) as channel, pytest.raises(grpc.RpcError) as refused:
        exchange_pb2_grpc.ExchangeNodeStub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # a plaintext client is refused too
    with grpc.insecure_channel(c.node_address(0)) as channel, pytest.raises(grpc.RpcError) as plaintext:
        exchange_pb2_grpc.ExchangeNodeStub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    # a certificate of another CA
    stranger = TlsConfig.load(make_identity(tmp_path / "other-ca", "stranger", ["127.0.0.1"]))
    other = TlsConfig(stranger.directory, c.client_tls.ca if c.client_tls else b"", stranger.cert, stranger.key)
    with sync_channel(c.node_address(0), other) as channel, pytest.raises(grpc.RpcError) as foreign:
        exchange_pb2_grpc.ExchangeNodeStub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)
    assert foreign.value.code() == grpc.StatusCode.UNAVAILABLE

    # grpcurl with the cluster's CA and a client certificate
    assert GRPCURL is not None and c.client_tls_dir is not None
    tls_dir = c.client_tls_dir
    result = subprocess.run(
        [GRPCURL, "-cacert", str(tls_dir / "ca.pem"), "-cert", str(tls_dir / "cert.pem"), "-key",
         str(tls_dir / "key.pem"), "-d", '{"depth": 5}', c.node_address(2), "exchange.v1.ExchangeNode/GetOrderBook"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["seq"] == str(views["BTC-USD"][0])
    without_cert = subprocess.run(
        [GRPCURL, "-cacert", str(tls_dir / "ca.pem"), c.node_address(2), "list"],
        capture_output=True, text=True, timeout=30,
    )
    assert without_cert.returncode != 0


def test_the_services_talk_to_consul_over_https_and_trust_only_the_clusters_ca(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    c = make_cluster(tls=True, nodes=1)
    c.start()
    address = c.consul_address_for(0)
    assert address.startswith("https://") and c.nodes[0].env["CONSUL_HTTP_ADDR"] == address
    assert c.status(0).state == "SERVING"  # it read the markets and the registry over HTTPS
    assert c.client_tls_dir is not None
    trusting = ssl.create_default_context(cafile=str(c.client_tls_dir / "ca.pem"))
    with urllib.request.urlopen(f"{address}/v1/status/leader", timeout=5, context=trusting) as response:
        assert json.loads(response.read())  # Consul's certificate is of the cluster's CA
    # a node given another CA does not trust that Consul: it never reads the cluster's markets, and says why
    c.nodes[0].stop()
    stranger = make_identity(tmp_path / "other-ca", "node-1", ["127.0.0.1"])
    process = c.make_node(0)
    process.args[process.args.index("--tls-dir") + 1] = str(stranger)
    c.nodes[0] = process
    process.start()
    wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in process.read_log(), 30, "the node to refuse Consul's certificate")
    assert not serving(c.node_address(0), c.client_tls)


def test_the_replicated_log_commits_and_follows_over_https(make_cluster: Callable[..., Cluster]) -> None:
    """HA mode with TLS: the replicated log's own keep-alive connection to its agent (the leader's transactions,
    the standby's blocking and batch reads) speaks HTTPS with the cluster's CA and certificates."""
    c = make_cluster(tls=True, ha=True, nodes=1)
    c.start()
    leader = c.leader_index()
    assert leader is not None and c.consul_address_for(0).startswith("https://")
    with c.channel(c.node_address(0)) as channel:
        stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
        for price in (100, 101, 102):
            stub.CreateOrder(pb.CreateOrderRequest(size=-1, limit_price=price), timeout=10)
    views = c.wait_converged()
    assert views["BTC-USD"][0] == 3
    wait_standby_current(c, 1 - leader)
    assert c.sequencer_view(1 - leader, "BTC-USD") == ("standby", 3)
