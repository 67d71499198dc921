"""StreamBook against real clusters: bad requests get a clear error; a client's L2 book survives a node restart
and a forced gap (it resubscribes by itself and stays verified); a subscriber that stops reading holds no
order back."""

from __future__ import annotations

import random
from collections.abc import Callable

import grpc
import pytest

from devtools.local_cluster import Cluster, wait_until
from devtools.workload import Workload
from exchange.client import Book, Client, Connection, NewOrder, OrderType, Side
from exchange.client.book import GAP, STREAM_ENDED
from exchange.errors import InvalidArgument, NotFound
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, types_pb2

pytestmark = pytest.mark.integration

LOAD = Workload(markets=("ETH-USD",), types={types_pb2.LIMIT: 8, types_pb2.IOC: 1, types_pb2.MARKET: 1})


def new_orders(count: int, seed: int) -> list[NewOrder]:
    generator = LOAD.orders(random.Random(seed))
    orders = []
    for _ in range(count):
        request = generator.request()
        orders.append(NewOrder(Side(request.side), request.size, request.limit_price or None,
                               OrderType(request.order_type), request.market))
    return orders


def levels(book: Book) -> tuple:
    return book.seq, book.bids, book.asks


def test_bad_requests_get_a_clear_error(cluster: Cluster) -> None:
    """Depth 10 to 1000 (the checksum covers the top 10 levels a side): a shallower view is refused, saying what to
    do instead, and nothing else changes."""
    stub = exchange_pb2_grpc.ExchangeNodeStub(cluster.channel(cluster.node_address(0), None))
    before = stub.GetStatus(pb.GetStatusRequest(), timeout=10).markets
    for depth in (0, -1, 5, 9, 1001, 2**31 - 1):
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(stub.StreamBook(pb.StreamBookRequest(market="ETH-USD", depth=depth), timeout=10)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "depth must be 10 to 1000" in refused.value.details()
        assert "read the first N levels of a depth-10 view" in refused.value.details()
    with pytest.raises(grpc.RpcError) as unknown:
        next(iter(stub.StreamBook(pb.StreamBookRequest(market="DOGE-USD", depth=10), timeout=10)))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "unknown market" in unknown.value.details()
    with Client(cluster.node_address(0)) as client:
        with pytest.raises(InvalidArgument):
            client.subscribe_book("ETH-USD", depth=0)
        with pytest.raises(InvalidArgument, match="depth-10 view"):
            client.subscribe_book("ETH-USD", depth=5)
        with pytest.raises(NotFound):
            client.subscribe_book("DOGE-USD", depth=10)
        first = next(iter(stub.StreamBook(pb.StreamBookRequest(market="", depth=10), timeout=10)))
        assert first.snapshot and first.market == "BTC-USD" and first.first_seq == first.last_seq, "default market"
    assert stub.GetStatus(pb.GetStatusRequest(), timeout=10).markets == before, "nothing else changed"


def test_an_l2_book_survives_a_node_restart_and_a_forced_gap(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster()
    cluster.start()
    followed = cluster.node_address(1)
    trader = Client(cluster.node_address(0), connection=Connection(api_key=cluster.api_keys["alice"]))
    other = Client(cluster.node_address(2), connection=Connection(api_key=cluster.api_keys["bob"]))
    with trader, other, Client(followed) as reader, reader.subscribe_book("ETH-USD", 10, timeout=90) as book:
        trader.submit_many(new_orders(300, 1))
        other.submit_many(new_orders(300, 2))
        cluster.nodes[1].kill()
        trader.submit_many(new_orders(200, 3))  # the market moves while the followed node is down
        cluster.start_node(1)
        assert book.wait_until(lambda: book._tracker.stats.snapshots >= 2 and book._tracker.book is not None, 60)
        assert book.stats.resyncs_by_reason.get(STREAM_ENDED, 0) >= 1, book.stats
        other.submit_many(new_orders(200, 4))

        dropped: list[int] = []  # force a gap: the client loses the next update
        on_message = book._tracker.on_message

        def lose_one(message: pb.BookUpdate) -> None:
            if not dropped and not message.snapshot:
                dropped.append(message.last_seq)
                return
            on_message(message)

        book._tracker.on_message = lose_one  # type: ignore[method-assign]  # the fault: an update lost
        for seed in range(5, 25):
            trader.submit_many(new_orders(50, seed))
            if book.wait_until(lambda: book._tracker.stats.resyncs_by_reason.get(GAP, 0) >= 1, 1):
                break
        assert dropped and book.wait_until(lambda: book._tracker.stats.resyncs_by_reason.get(GAP, 0) == 1, 30), \
            (dropped, book.stats, book.seq)
        other.submit_many(new_orders(100, 11))
        cluster.wait_converged()
        node_book = reader.get_book("ETH-USD", 10)
        assert book.wait_for(node_book.seq, 30), book.stats
        assert levels(book.book()) == levels(node_book)
        stats = book.stats
        assert stats.snapshots == 1 + stats.resyncs and stats.verified == stats.snapshots + stats.updates, stats
        assert stats.reconnects >= 1, stats


def test_a_subscriber_that_stops_reading_holds_no_order_back(cluster: Cluster) -> None:
    """A StreamBook reader that never reads: orders keep flowing on its node, which stays converged, and a
    reader that does read keeps getting updates."""
    address = cluster.node_address(0)
    channel = grpc.insecure_channel(address) if cluster.client_tls is None else cluster.channel(address, None)
    stuck = exchange_pb2_grpc.ExchangeNodeStub(channel).StreamBook(pb.StreamBookRequest(market="ETH-USD", depth=1000))
    next(stuck)  # the snapshot, then never again
    with Client(address, connection=Connection(api_key=cluster.api_keys["alice"])) as trader, \
            Client(cluster.node_address(2), connection=Connection(api_key=cluster.api_keys["bob"])) as other, \
            Client(address) as reader, reader.subscribe_book("ETH-USD", 10) as live:
        for seed in range(4):
            results = (trader if seed % 2 else other).submit_many(new_orders(500, 20 + seed))
            assert all(not isinstance(r, Exception) for r in results)
        cluster.wait_converged()
        node_book = reader.get_book("ETH-USD", 10)
        assert live.wait_for(node_book.seq) and levels(live.book()) == levels(node_book)
        wait_until(lambda: cluster.status(0).markets[1].lag == 0, 30, "node 1 at the head")
    stuck.cancel()
    channel.close()
