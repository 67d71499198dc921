"""OrderEntry, the bidirectional streaming order entry, against a real 3-node cluster."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from devtools.local_cluster import Cluster
from devtools.verify import replay_cluster
from devtools.workload import SIZE_ZERO, UNKNOWN_MARKET, Workload
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, types_pb2

pytestmark = pytest.mark.integration

SERVICE = "/exchange.v1.ExchangeNode"
METHOD = f"{SERVICE}/OrderEntry"


# About one order in ten invalid (size 0: INVALID_ARGUMENT, unknown market: NOT_FOUND), some MARKET and IOC,
# three in ten with a client_order_id, on the default market ("") and both named ones.
MIXED = Workload(markets=("", "BTC-USD", "ETH-USD"), types={types_pb2.LIMIT: 8, types_pb2.MARKET: 1, types_pb2.IOC: 1},
                 invalid_share=0.1, invalid=(SIZE_ZERO, UNKNOWN_MARKET), id_share=0.3)


def mixed_orders(rng: random.Random, stream: int, count: int) -> tuple[list[pb.CreateOrderRequest], list[str]]:
    """`count` orders of MIXED; returns them with the error code expected for each ("" = ok)."""
    orders = MIXED.orders(rng, ids=f"s{stream}-")
    drawn = [orders.next() for _ in range(count)]
    return [order.request for order in drawn], [order.error for order in drawn]


def entry(cluster: Cluster, address: str, requests: list[pb.CreateOrderRequest], account: str = "alice"
          ) -> list[pb.OrderEntryResult]:
    with cluster.channel(address, account) as channel:
        return list(exchange_pb2_grpc.ExchangeNodeStub(channel).OrderEntry(iter(requests), timeout=60))


def test_a_stream_answers_every_order_in_order_with_per_order_errors_and_replicates(cluster: Cluster) -> None:
    rng = random.Random(11)
    streams = [mixed_orders(rng, number, 100) for number in range(3)]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(entry, [cluster] * 3, cluster.node_addresses, [requests for requests, _ in streams],
                                [cluster.trader(number) for number in range(3)]))

    responses: list[pb.CreateOrderResponse] = []
    for (requests, expected), results in zip(streams, answers, strict=True):
        assert len(results) == len(requests), "exactly one result per request"
        assert sum(1 for code in expected if code) >= 5, "the workload must hold invalid orders"
        for request, code, result in zip(requests, expected, results, strict=True):
            if code:
                assert result.HasField("error") and not result.HasField("order")
                assert result.error.code == code, result.error.message
                assert result.error.message
            else:
                assert result.HasField("order") and not result.HasField("error"), result.error
                assert result.order.seq > 0 and result.order.order_id == result.order.seq
                assert result.order.market == (request.market or "BTC-USD")
                responses.append(result.order)
        # in request order: within a market, one stream's orders are sequenced in the order sent
        for market in ("BTC-USD", "ETH-USD"):
            seqs = [r.order.seq for r in results if r.HasField("order") and r.order.market == market]
            assert seqs == sorted(seqs)

    view = cluster.wait_converged()
    replay = replay_cluster(cluster)
    for market, (seq, checksum) in view.items():
        assert (replay.engine.last_seq(market), replay.engine.checksum(market)) == (seq, checksum)
    for response in responses:
        assert response == replay.expected_answer(response), "every answer equals the log's replay"
    assert sum(len(r.trades) for r in responses) == sum(len(replay.trades(m)) for m in view)
    assert sum(len(r.trades) for r in responses) > 20, "the workload should cross the book"


def test_a_client_order_id_repeated_within_a_stream_is_one_order(cluster: Cluster) -> None:
    order = pb.CreateOrderRequest(size=3, limit_price=50, client_order_id="twice")
    other = pb.CreateOrderRequest(size=-2, limit_price=500)
    results = entry(cluster, cluster.node_address(1), [order, other, order, other])

    assert [r.HasField("order") for r in results] == [True] * 4
    first, again = results[0].order, results[2].order
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.order_id == first.order_id and again.seq == first.seq
    assert results[1].order.order_id != results[3].order.order_id
    # and later, on another node, it is still the same order
    later = entry(cluster, cluster.node_address(2), [order])
    assert later[0].order.duplicate and later[0].order.order_id == first.order_id
    view = cluster.wait_converged()
    assert view["BTC-USD"][0] == 3


def test_an_undecodable_stream_item_is_an_error_result_and_the_stream_goes_on(cluster: Cluster) -> None:
    good = pb.CreateOrderRequest(size=1, limit_price=10).SerializeToString()
    with cluster.channel(cluster.node_address(0)) as channel:
        call = channel.stream_stream(METHOD, request_serializer=lambda raw: raw,
                                     response_deserializer=pb.OrderEntryResult.FromString)
        results = list(call(iter([good, b"\xff\xff\xff", good]), timeout=30))

    assert [r.HasField("order") for r in results] == [True, False, True]
    assert results[1].error.code == "INVALID_ARGUMENT"
    assert "not a valid CreateOrderRequest" in results[1].error.message
    assert results[2].order.seq == results[0].order.seq + 1


def entry_batches(cluster: Cluster, address: str, batches: list[list[pb.CreateOrderRequest]],
                  account: str = "alice") -> list[pb.OrderBatchResult]:
    with cluster.channel(address, account) as channel:
        stub = exchange_pb2_grpc.ExchangeNodeStub(channel)
        return list(stub.OrderEntryBatch(iter([pb.OrderBatch(orders=b) for b in batches]), timeout=60))


def test_batched_entry_answers_each_order_of_each_batch_like_order_entry(cluster: Cluster) -> None:
    rng = random.Random(12)
    requests, expected = mixed_orders(rng, 7, 120)
    batches = [requests[i:i + 17] for i in range(0, len(requests), 17)]
    answers = entry_batches(cluster, cluster.node_address(2), batches)

    assert [len(a.results) for a in answers] == [len(b) for b in batches], "one result per order, per batch"
    results = [r for a in answers for r in a.results]
    responses = []
    for request, code, result in zip(requests, expected, results, strict=True):
        if code:
            assert result.error.code == code and result.error.message and not result.HasField("order")
        else:
            assert result.HasField("order") and result.order.market == (request.market or "BTC-USD")
            responses.append(result.order)
    for market in ("BTC-USD", "ETH-USD"):
        seqs = [r.seq for r in responses if r.market == market]
        assert seqs == sorted(seqs), "a stream's orders are sequenced in the order sent"
    cluster.wait_converged()
    replay = replay_cluster(cluster)
    for response in responses:
        assert response == replay.expected_answer(response)


def test_an_oversized_or_undecodable_batch_gets_error_results_and_the_stream_goes_on(cluster: Cluster) -> None:
    good = pb.OrderBatch(orders=[pb.CreateOrderRequest(size=1, limit_price=10)])
    too_big = pb.OrderBatch(orders=[pb.CreateOrderRequest(size=1, limit_price=10)] * 1001)
    with cluster.channel(cluster.node_address(0)) as channel:
        call = channel.stream_stream(f"{SERVICE}/OrderEntryBatch", request_serializer=lambda raw: raw,
                                     response_deserializer=pb.OrderBatchResult.FromString)
        raw = [good.SerializeToString(), too_big.SerializeToString(), b"\xff\xff\xff", good.SerializeToString()]
        answers = list(call(iter(raw), timeout=30))

    assert [len(a.results) for a in answers] == [1, 1001, 1, 1]
    first, refused, undecodable, last = answers
    assert {r.error.code for r in refused.results} == {"INVALID_ARGUMENT"}
    assert "at most 1000 orders" in refused.results[0].error.message
    assert undecodable.results[0].error.code == "INVALID_ARGUMENT"
    assert last.results[0].order.seq == first.results[0].order.seq + 1, "nothing of the refused batches was placed"
