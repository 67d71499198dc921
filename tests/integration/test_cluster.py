"""The cluster end to end: real Consul, Sequencer and three nodes on free loopback ports."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from devtools.local_cluster import Cluster
from devtools.verify import read_log, replay_cluster
from devtools.workload import Workload
from exchange.cluster_common import peer_token
from exchange.runtime import SERVICE_GRPC_ENV
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, types_pb2

pytestmark = pytest.mark.integration


def books(stubs: list[exchange_pb2_grpc.ExchangeNodeStub], market: str = "") -> list[pb.GetOrderBookResponse]:
    return [stub.GetOrderBook(pb.GetOrderBookRequest(market=market, depth=1000), timeout=5) for stub in stubs]


def test_sell_on_node1_then_crossing_buy_on_node2_trades_at_resting_price_everywhere(
    cluster: Cluster, stubs: list[exchange_pb2_grpc.ExchangeNodeStub]
) -> None:
    sell = stubs[0].CreateOrder(pb.CreateOrderRequest(size=-10, limit_price=100), timeout=10)
    assert (sell.status, sell.remaining_size, sell.side) == (pb.RESTING, 10, types_pb2.SELL)

    buy = stubs[1].CreateOrder(pb.CreateOrderRequest(size=15, limit_price=101), timeout=10)

    assert buy.status == pb.RESTING
    assert (buy.filled_size, buy.remaining_size) == (10, 5)
    assert [(t.price, t.size, t.maker_order_id, t.taker_order_id) for t in buy.trades] == [
        (100, 10, sell.order_id, buy.order_id)
    ]
    cluster.wait_converged()
    seen = books(stubs)
    for book in seen:
        assert (book.seq, book.checksum) == (seen[0].seq, seen[0].checksum)
        assert [(level.price, level.size, level.order_count) for level in book.bids] == [(101, 5, 1)]
        assert list(book.asks) == []


# Every order type, two thirds of them on BTC-USD, prices around 100: the clients cross the book often.
ORDERS = Workload(markets=("BTC-USD", "BTC-USD", "ETH-USD"), types={
    types_pb2.LIMIT: 65, types_pb2.MARKET: 10, types_pb2.IOC: 10, types_pb2.FOK: 5, types_pb2.POST_ONLY: 10})


def test_concurrent_clients_on_all_nodes_never_abort_and_match_a_replay_of_the_log(cluster: Cluster) -> None:
    clients_per_node, orders_per_client = 4, 60
    results: list[pb.CreateOrderResponse] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        orders = ORDERS.orders(random.Random(number), ids=f"c{number}-")
        with cluster.channel(cluster.node_address(number % 3), cluster.trader(number)) as channel:
            stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
            for _ in range(orders_per_client):
                try:
                    response = stub.CreateOrder(orders.request(), timeout=30)
                except grpc.RpcError as error:
                    with lock:
                        errors.append(f"{error.code().name}: {error.details()}")
                    continue
                with lock:
                    results.append(response)

    with ThreadPoolExecutor(clients_per_node * 3) as pool:
        list(pool.map(client, range(clients_per_node * 3)))

    assert errors == [], "no order may fail without a fault (see docs/architecture.md, \"The sequencing protocol\")"
    assert len(results) == clients_per_node * 3 * orders_per_client
    view = cluster.wait_converged()
    replay = replay_cluster(cluster)
    for market, (seq, checksum) in view.items():
        assert replay.engine.last_seq(market) == seq
        assert replay.engine.checksum(market) == checksum
    for response in results:
        assert response == replay.expected_answer(response), "every answer equals the log's replay"
    assert sum(len(r.trades) for r in results) == sum(len(replay.trades(m)) for m in view)
    assert sum(len(r.trades) for r in results) > 50, "the workload should cross the book often"


def test_cancel_and_amend_are_sequenced_and_replicated(
    cluster: Cluster, stubs: list[exchange_pb2_grpc.ExchangeNodeStub]
) -> None:
    first = stubs[0].CreateOrder(pb.CreateOrderRequest(size=5, limit_price=90), timeout=10)
    second = stubs[1].CreateOrder(pb.CreateOrderRequest(size=7, limit_price=90), timeout=10)

    amended = stubs[2].AmendOrder(pb.AmendOrderRequest(order_id=first.order_id, size=3), timeout=10)
    assert (amended.remaining_size, amended.price, amended.priority_kept) == (3, 90, True)
    cancelled = stubs[1].CancelOrder(pb.CancelOrderRequest(order_id=second.order_id), timeout=10)
    assert cancelled.cancelled_size == 7

    # Once node 1 has applied bob's cancel, the order no longer rests anywhere: NOT_FOUND to anyone (before
    # that, node 1 would rightly answer alice PERMISSION_DENIED for an order of bob's that still rests there).
    cluster.wait_converged()
    for stub in stubs[:2]:
        with pytest.raises(grpc.RpcError) as again:
            stub.CancelOrder(pb.CancelOrderRequest(order_id=second.order_id), timeout=10)
        assert again.value.code() == grpc.StatusCode.NOT_FOUND
    for book in books(stubs):
        assert [(level.price, level.size, level.order_count) for level in book.bids] == [(90, 3, 1)]
    order = stubs[1].GetOrder(pb.GetOrderRequest(order_id=second.order_id), timeout=5)  # bob's order
    assert order.status == pb.CANCELLED


def test_stream_events_replays_history_then_follows_live(
    cluster: Cluster, stubs: list[exchange_pb2_grpc.ExchangeNodeStub]
) -> None:
    stubs[0].CreateOrder(pb.CreateOrderRequest(size=-4, limit_price=100), timeout=10)
    stream = stubs[2].StreamEvents(pb.StreamEventsRequest(from_seq=1), timeout=20)
    stubs[1].CreateOrder(pb.CreateOrderRequest(size=4, limit_price=100), timeout=10)
    kinds = [(event.seq, event.WhichOneof("event")) for _, event in zip(range(4), stream, strict=False)]
    stream.cancel()
    assert kinds == [(1, "order_accepted"), (1, "order_rested"), (2, "order_accepted"), (2, "trade")]


def test_broadcast_stream_ignores_known_entries_and_ends_at_a_forged_one_without_applying_it(cluster: Cluster) -> None:
    stubs = [exchange_pb2_grpc.ExchangeNodeStub(cluster.channel(a)) for a in cluster.node_addresses]
    for price in (101, 102):
        stubs[0].CreateOrder(pb.CreateOrderRequest(size=-3, limit_price=price), timeout=10)
    before = cluster.wait_converged()
    genuine = read_log(cluster, "BTC-USD")
    forged = types_pb2.SequencedCommand()
    forged.CopyFrom(genuine[-1])
    forged.seq += 1  # the next number, with a command and MAC the Sequencer never gave it
    token = (("x-cluster-token", peer_token(cluster.secret.encode())),)

    response = stubs[1].BroadcastOrderStream(
        iter([pb.BroadcastOrderRequest(origin_node="test", commands=genuine)]), metadata=token, timeout=10
    )
    assert response.accepted == 0, "entries already applied are no-ops"

    stream = iter([pb.BroadcastOrderRequest(origin_node="test", commands=genuine),
                   pb.BroadcastOrderRequest(origin_node="test", commands=[forged])])
    with pytest.raises(grpc.RpcError) as refused:
        stubs[1].BroadcastOrderStream(stream, metadata=token, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not signed by the Sequencer" in refused.value.details()

    with pytest.raises(grpc.RpcError) as anonymous:
        stubs[1].BroadcastOrderStream(iter([pb.BroadcastOrderRequest(commands=genuine)]), timeout=10)
    assert anonymous.value.code() == grpc.StatusCode.PERMISSION_DENIED

    after = books(stubs, "BTC-USD")
    assert {(b.seq, b.checksum) for b in after} == {before["BTC-USD"]}, "no replica changed"
    stubs[2].CreateOrder(pb.CreateOrderRequest(size=3, limit_price=101), timeout=10)  # replication still works
    assert cluster.wait_converged()["BTC-USD"][0] == before["BTC-USD"][0] + 1


def test_every_service_runs_with_the_cluster_grpc_transport_and_says_so(cluster: Cluster) -> None:
    expected = f"GRPC_EXPERIMENTS={SERVICE_GRPC_ENV['GRPC_EXPERIMENTS']}"
    assert cluster.sequencer is not None
    for service in [cluster.sequencer, *cluster.nodes]:
        assert expected in service.read_log(), f"{service.name} does not log {expected}"
        # what grpc really read at import: the running process's own environment, not only what it logs
        environ = Path(f"/proc/{service.pid}/environ").read_bytes().split(b"\0")
        assert expected.encode() in environ, f"{service.name} (pid {service.pid}) does not run with {expected}"


def test_an_idle_cluster_keeps_its_streams_and_replicates_the_next_order_by_broadcast(
    make_cluster: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Channels ping while idle; servers must accept it. With grpc's server defaults an idle long-lived
    stream was ended by GOAWAY too_many_pings after a few pings, and the next broadcast failed (its entry
    reached the peers only through the gap filler)."""
    monkeypatch.setenv("EXCHANGE_KEEPALIVE_MS", "1000")  # every process of the cluster pings every 1 s
    c = make_cluster()
    c.start()
    with c.channel(c.node_address(0)) as channel:
        stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
        stub.CreateOrder(pb.CreateOrderRequest(size=1, limit_price=100), timeout=10)  # streams open
        c.wait_converged()
        received = [c.status(i).counters["broadcast_entries_received"] for i in (1, 2)]
        time.sleep(8)  # idle for 8 keepalive periods
        stub.CreateOrder(pb.CreateOrderRequest(size=1, limit_price=101), timeout=10)
    c.wait_converged()
    after = [c.status(i).counters["broadcast_entries_received"] for i in (1, 2)]
    assert [a - b for a, b in zip(after, received, strict=True)] == [1, 1], "both peers got it by broadcast"
    for process in [c.sequencer, *c.nodes]:
        assert process is not None
        log = process.read_log()
        for sign in ("too_many_pings", "GOAWAY", "broadcast stream to"):
            assert sign not in log, f"{process.name}: {sign!r} in its log"
