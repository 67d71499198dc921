"""The client library against a real 3-node cluster: typed results and errors, the L3 book, the L2 book
subscription under load (equal to the node's book, every message verified), the asyncio client, the CLI and
the examples."""

from __future__ import annotations

import random
import subprocess
import sys
import threading

import pytest

from devtools.local_cluster import ROOT, Cluster
from devtools.workload import Workload
from exchange import engine as eng
from exchange.client import AsyncClient, Book, Client, Connection, NewOrder, OrderResult, OrderStatus, OrderType, Side
from exchange.client.book import book_checksum
from exchange.errors import InvalidArgument, NotFound
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import run_scenario

pytestmark = pytest.mark.integration

CLUSTER_MARKETS = "BTC-USD,ETH-USD,SOL-USD,ADA-USD"  # SOL-USD: the examples' own market; ADA-USD: the CLI watch's
# crossing limit orders with some IOC and MARKET ones, so the book trades, rests and empties levels
LOAD = Workload(markets=("ETH-USD",), types={types_pb2.LIMIT: 8, types_pb2.IOC: 1, types_pb2.MARKET: 1})


def new_orders(count: int, seed: int, workload: Workload = LOAD) -> list[NewOrder]:
    """`count` orders of the project's random workload, as the client library takes them."""
    generator = workload.orders(random.Random(seed))
    orders = []
    for _ in range(count):
        request = generator.request()
        orders.append(NewOrder(Side(request.side), request.size, request.limit_price or None,
                               OrderType(request.order_type), request.market))
    return orders


def connection(cluster: Cluster, account: str = "alice") -> Connection:
    return Connection(api_key=cluster.api_keys[account])


def test_orders_and_errors_come_back_typed(module_cluster: Cluster) -> None:
    nodes = module_cluster.node_addresses
    with Client(nodes, connection=connection(module_cluster)) as client, \
            Client(nodes, connection=connection(module_cluster, "bob")) as other:
        rested = client.sell(10, 5000, market="BTC-USD")
        assert isinstance(rested, OrderResult) and rested.status is OrderStatus.RESTING and rested.remaining_size == 10
        taken = other.buy(4, 5000, market="BTC-USD", client_order_id="typed-1")
        assert taken.status is OrderStatus.FILLED and [(x.price, x.size) for x in taken.trades] == [(5000, 4)]
        again = other.buy(4, 5000, market="BTC-USD", client_order_id="typed-1")
        assert again.duplicate and again.order_id == taken.order_id, "a repeated id is the same order"
        amended = client.amend_order(rested.order_id, 3, 5001, market="BTC-USD")
        assert (amended.price, amended.remaining_size, amended.priority_kept) == (5001, 3, False)
        order = client.get_order(rested.order_id, market="BTC-USD")
        assert (order.side, order.remaining_size, order.filled_size) == (Side.SELL, 3, 4)
        cancelled = client.cancel_order(rested.order_id, market="BTC-USD")
        assert cancelled.cancelled_size == 3 and not cancelled.uncertain
        with pytest.raises(NotFound) as gone:
            client.cancel_order(rested.order_id, market="BTC-USD")
        assert gone.value.code.name == "NOT_FOUND" and not gone.value.retriable
        with pytest.raises(InvalidArgument, match="size must not be 0"):
            client.buy(0, 100, market="BTC-USD")
        with pytest.raises(NotFound, match="unknown market"):
            client.buy(1, 100, market="DOGE-USD")


def test_the_client_finds_the_nodes_through_consul(module_cluster: Cluster) -> None:
    with Client.from_consul(module_cluster.consul_address, connection=connection(module_cluster)) as client:
        assert client.buy(1, 10, market="BTC-USD").status is OrderStatus.RESTING
        assert sorted(client.nodes.addresses) == sorted(module_cluster.node_addresses)


def test_the_l3_book_lists_each_levels_orders_in_priority_order_and_no_owner(module_cluster: Cluster) -> None:
    assert [f.name for f in pb.LevelOrder.DESCRIPTOR.fields] == ["order_id", "size"], "public data: no owner"
    with Client(module_cluster.node_address(0), connection=connection(module_cluster)) as client, \
            Client(module_cluster.node_address(2)) as reader:  # market data: no key
        ids = [client.buy(size, 3000 + size % 2, market="BTC-USD", client_order_id=f"l3-{size}").order_id
               for size in (1, 2, 3, 4)]
        module_cluster.wait_converged()
        book = reader.get_book("BTC-USD", all_levels=True, include_orders=True)
        level = {lvl.price: lvl for lvl in book.bids}
        assert [o.order_id for o in level[3001].orders] == [ids[0], ids[2]], "FIFO within the level"
        assert [o.order_id for o in level[3000].orders] == [ids[1], ids[3]]
        for lvl in (*book.bids, *book.asks):
            assert lvl.size == sum(o.size for o in lvl.orders) and lvl.order_count == len(lvl.orders)
        orders = [[(o.order_id, lvl.price, o.size) for lvl in side for o in lvl.orders]
                  for side in (book.bids, book.asks)]
        assert book_checksum(*orders) == book.checksum, "the L3 answer is exactly what the checksum covers"
        plain = reader.get_book("BTC-USD", depth=1)
        assert len(plain.bids) == 1 and plain.bids[0].orders == () and plain.bids[0].price == book.bids[0].price


def same_view(local: Book, node: Book) -> bool:
    """The subscription's view equals the node's GetOrderBook levels at the same seq."""
    return (local.seq, local.bids, local.asks) == (node.seq, node.bids, node.asks)


def test_a_book_subscription_stays_equal_to_the_nodes_book_and_verified_under_load(module_cluster: Cluster) -> None:
    addresses = module_cluster.node_addresses
    with Client(addresses[1]) as watcher, Client(addresses, connection=connection(module_cluster)) as trader, \
            Client(addresses, connection=connection(module_cluster, "bob")) as other, \
            watcher.subscribe_book("ETH-USD", depth=10) as subscription, \
            watcher.subscribe_book("ETH-USD", depth=25) as deep:
        results: list = []
        writers = [threading.Thread(target=lambda seed=seed, client=client: results.extend(
            client.submit_many(new_orders(1500, seed), batch_size=25, window=200)))
            for seed, client in ((1, trader), (2, other))]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        assert all(isinstance(r, OrderResult) for r in results) and len(results) == 3000
        module_cluster.wait_converged()
        for view, depth in ((subscription, 10), (deep, 25)):
            node_book = watcher.get_book("ETH-USD", depth)
            assert view.wait_for(node_book.seq), view.stats  # an update without levels says so within 1 s
            assert same_view(view.book(), node_book)
            stats = view.stats
            assert stats.resyncs == 0 and stats.verified == stats.updates + 1 and stats.updates > 0, stats


def test_a_book_subscription_finds_a_divergence_and_resynchronises(module_cluster: Cluster) -> None:
    with Client(module_cluster.node_addresses, connection=connection(module_cluster)) as client:
        client.submit_many(new_orders(200, 7))
        with client.subscribe_book("ETH-USD", depth=10) as subscription:
            with subscription._changed:  # damage the local copy, as a lost update would
                book = subscription._tracker.book
                assert book is not None
                ask = book.top(eng.Side.SELL, 1)
                assert ask, "the workload leaves asks"
                book.set(eng.Side.SELL, ask[0][0], (ask[0][1] + 1, ask[0][2]))
            best_bid = client.get_book("ETH-USD", 1).best_bid or 1000
            client.buy(1, best_bid, market="ETH-USD")  # changes the view, not the damaged level
            assert subscription.wait_until(lambda: subscription._tracker.stats.resyncs >= 1)
            assert subscription.stats.resyncs_by_reason == {"checksum": 1}, subscription.stats
            module_cluster.wait_converged()
            with Client(subscription.address or "") as same_node:
                node_book = same_node.get_book("ETH-USD", 10)
            assert subscription.wait_for(node_book.seq)
            assert same_view(subscription.book(), node_book)


def test_the_asyncio_client_places_streams_and_subscribes(module_cluster: Cluster) -> None:
    async def run() -> None:
        async with AsyncClient(module_cluster.node_addresses, connection=connection(module_cluster)) as client:
            first = await client.sell(2, 7000, market="BTC-USD")
            assert first.status is OrderStatus.RESTING
            results = await client.submit_many(new_orders(300, 11), batch_size=20, window=60)
            assert all(isinstance(r, OrderResult) for r in results)
            async with await client.subscribe_book("ETH-USD", depth=10) as subscription:
                await client.submit_many(new_orders(300, 12))
                async with AsyncClient(subscription.address or "") as same_node:
                    for _ in range(100):  # the node the subscription follows may lag a moment: converge
                        node_book = await same_node.get_book("ETH-USD", 10)
                        if await subscription.wait_for(node_book.seq, timeout=3) and \
                                same_view(subscription.book(), node_book):
                            break
                    assert same_view(subscription.book(), node_book)
                assert subscription.stats.resyncs == 0 and subscription.stats.updates > 0
            events = []
            async for event in client.events("BTC-USD", from_seq=first.seq):
                events.append(event)
                if len(events) == 2:
                    break
            assert [e.kind for e in events] == ["order_accepted", "order_rested"]

    run_scenario(run(), timeout_s=120)  # a real cluster on a busy machine


def test_the_cli_places_orders_and_checks_the_cluster_through_the_library(module_cluster: Cluster) -> None:
    cli = [sys.executable, "-m", "exchange.cli", "--node", ",".join(module_cluster.node_addresses),
           "--api-key", module_cluster.api_keys["alice"]]
    placed = subprocess.run([*cli, "--market", "BTC-USD", "sell", "3", "--price", "9000"], capture_output=True,
                            text=True, timeout=60)
    assert placed.returncode == 0 and ": RESTING  filled 0  resting 3" in placed.stdout, placed
    module_cluster.wait_converged()
    status = subprocess.run([*cli, "status", *module_cluster.node_addresses], capture_output=True, text=True,
                            timeout=60)
    assert status.returncode == 0 and "replicas agree" in status.stdout, status
    refused = subprocess.run([*cli, "cancel", "999999"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stderr.startswith("NOT_FOUND: "), refused


def test_the_cli_watches_the_l2_book_with_size_bars_and_its_checksum_status(module_cluster: Cluster) -> None:
    with Client(module_cluster.node_addresses, connection=connection(module_cluster)) as client:
        client.sell(4, 8100, market="ADA-USD")
        client.buy(2, 7900, market="ADA-USD")
    watch = subprocess.Popen([sys.executable, "-m", "exchange.cli", "--node", module_cluster.node_address(0),
                              "--market", "ADA-USD", "book", "--watch", "--depth", "5"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            watch.communicate(timeout=4)  # it keeps watching
    finally:
        watch.kill()
        output, _ = watch.communicate(timeout=30)
    assert "top-10 checksum" in output and "verified" in output, output
    assert "ask         8100            4      1  " + "#" * 30 in output, output
    assert "bid         7900            2      1  " + "#" * 15 in output, output


def test_the_examples_trade_against_the_cluster(module_cluster: Cluster) -> None:
    nodes = module_cluster.node_addresses
    maker = subprocess.Popen([sys.executable, str(ROOT / "examples" / "market_maker.py"), *nodes, "--market",
                              "SOL-USD", "--mid", "20000", "--duration", "6",
                              "--api-key", module_cluster.api_keys["alice"]], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        with Client(nodes) as client:  # wait for both quotes
            for _ in range(100):
                book = client.get_book("SOL-USD", depth=1)
                if book.best_bid == 19999 and book.best_ask == 20001:
                    break
                threading.Event().wait(0.1)
        taker = subprocess.run([sys.executable, str(ROOT / "examples" / "taker.py"), *nodes, "--market", "SOL-USD",
                                "--orders", "6", "--interval", "0.3", "--size", "5",
                                "--api-key", module_cluster.api_keys["bob"]], capture_output=True, text=True,
                               timeout=90)
        maker_output, _ = maker.communicate(timeout=60)
    finally:
        maker.kill()
    assert taker.returncode == 0, taker.stdout + taker.stderr
    assert "done: " in taker.stdout and " 0 lots filled" not in taker.stdout, taker.stdout
    assert maker.returncode == 0, maker_output
    assert "re-quote" in maker_output and "done: " in maker_output, maker_output
