"""Totals of many int64 sizes (a level's open size, a day's volume) past int64: the answers still go out (found by
a review, 2026-12-02: two valid orders of the default market made GetOrderBook, GetTicker and GetCandles fail
INTERNAL for everyone)."""

from __future__ import annotations

import pytest

from exchange import engine as eng
from exchange.accounts import ACCOUNTS_PREFIX, Account, encode, key_hash, new_api_key
from exchange.engine.l2 import top_checksum
from exchange.node.auth import AccessControl, AccountRegistry
from exchange.node.book_stream import BookStreamRPCs
from exchange.node.lifecycle import SERVING, NodeState
from exchange.node.market_data_rpcs import MarketDataRPCs
from exchange.node.orders import OrderEntryRPCs
from exchange.node.reads import ReadRPCs
from exchange.node.replica import Replica
from exchange.node.sequencing import MarketPipeline
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import (
    SECRET,
    Aborted,
    FakeContext,
    InMemorySequencer,
    RecordingPeers,
    decoded,
    run_scenario,
    signed_entry,
)

M = "BTC-USD"
HALF = 2**62  # MarketConfig's default max_size: two such orders at one price make a level of 2**63 lots (> int64)
KEYS = {"alice": new_api_key(), "bob": new_api_key()}


def as_account(name: str) -> FakeContext:
    return FakeContext((("authorization", f"Bearer {KEYS[name]}"),))


def node(config: eng.MarketConfig) -> tuple[OrderEntryRPCs, ReadRPCs, MarketDataRPCs, MarketPipeline]:
    registry = AccountRegistry(SECRET)
    registry.update({ACCOUNTS_PREFIX + name: encode(SECRET, Account(name, True, (key_hash(key),)))
                     for name, key in KEYS.items()})
    state, replica, sequencer = NodeState("node-1", SERVING), Replica([config]), InMemorySequencer()
    pipeline = MarketPipeline(M, replica, sequencer, RecordingPeers(), "node-1")
    pipeline.start()
    orders = OrderEntryRPCs(state, replica, {M: pipeline}, sequencer, AccessControl(registry, None))
    reads = ReadRPCs(state, replica, {M: pipeline}, sequencer, RecordingPeers(), None)
    return orders, reads, MarketDataRPCs(state, replica), pipeline


def test_sizes_accepted_by_the_default_market_overflow_int64_in_the_book() -> None:
    """MarketConfig's default max_size (2**62) lets two accepted orders rest at one price whose level total,
    2**63, is no int64: GetOrderBook failed INTERNAL for everyone (CONTRACT 2: 'Prices and sizes are int64';
    5: 'Bad input never crashes a process and never changes a book'; PriceLevel.size is int64). It shows as
    int64's largest."""

    async def scenario() -> None:
        orders, reads, _, pipeline = node(eng.MarketConfig(M))
        try:
            for _ in range(2):
                placed = await orders.CreateOrder(pb.CreateOrderRequest(size=-(2**62), limit_price=100),
                                                  as_account("alice"))
                assert placed.status == pb.RESTING
            try:
                book = await reads.GetOrderBook(pb.GetOrderBookRequest(), FakeContext())
            except Aborted as error:
                pytest.fail(f"GetOrderBook failed after two accepted orders: {error}")
            assert book.asks[0].size == 2**63 - 1  # the total, 2**63, shown as int64's largest
        finally:
            await pipeline.stop()

    run_scenario(scenario())


def test_trades_of_accepted_sizes_overflow_int64_in_ticker_and_candles() -> None:
    """Two accepted trades of 2**62 lots (the default max_size) make the 24h volume and the candle volume 2**63:
    GetTicker and GetCandles failed INTERNAL for everyone (Ticker.volume_24h and Candle.volume are int64)."""

    async def scenario() -> None:
        orders, _, market_data, pipeline = node(eng.MarketConfig(M))
        try:
            for _ in range(2):
                await orders.CreateOrder(pb.CreateOrderRequest(size=-(2**62), limit_price=100), as_account("alice"))
                taken = await orders.CreateOrder(pb.CreateOrderRequest(size=2**62, limit_price=100), as_account("bob"))
                assert taken.status == pb.FILLED
            failures = []
            ticker = await market_data.GetTicker(pb.GetTickerRequest(), FakeContext())
            assert ticker.volume_24h == 2**63 - 1
            for name, call in (("GetTicker", lambda: market_data.GetTicker(pb.GetTickerRequest(), FakeContext())),
                               ("GetCandles", lambda: market_data.GetCandles(
                                   pb.GetCandlesRequest(interval="1m", limit=10), FakeContext()))):
                try:
                    await call()
                except Aborted as error:
                    failures.append(f"{name}: {error}")
            assert not failures, failures
        finally:
            await pipeline.stop()

    run_scenario(scenario())


def offer(replica: Replica, seq: int, side: types_pb2.Side, size: int, price: int, account: str = "a",
          time_ms: int = 1_700_000_000_000) -> None:
    command = types_pb2.Command(market=M, account=account, time_ms=time_ms, new_order=types_pb2.NewOrderCommand(
        side=side, order_type=types_pb2.LIMIT, size=size, price=price))
    assert replica.offer(signed_entry(M, seq, command))


def replica_with_a_level_past_int64() -> Replica:
    """Two accepted asks of the default market at one price: the level's total is 2**63 lots."""
    replica = Replica([eng.MarketConfig(M)])
    offer(replica, 1, types_pb2.SELL, HALF, 100)
    offer(replica, 2, types_pb2.SELL, HALF, 100)
    assert replica.depth(M, 1)[1] == [(100, 2**63, 2)]
    return replica


def test_get_ticker_answers_when_the_best_levels_total_passes_int64() -> None:
    """CONTRACT 5: 'Bad input never crashes ... anything unexpected INTERNAL' - here two *accepted* orders make
    GetTicker fail INTERNAL for everyone: market_data_rpcs.GetTicker copies the engine's raw level total into the
    int64 best_ask_size without order_messages.int64_total (GetOrderBook and the candles/ticker volumes clamp)."""

    async def scenario() -> None:
        rpcs = MarketDataRPCs(NodeState("n", SERVING), replica_with_a_level_past_int64())
        try:
            ticker = await rpcs.GetTicker(pb.GetTickerRequest(), FakeContext())
        except Aborted as error:
            pytest.fail(f"GetTicker failed after two accepted orders: {error}")
        assert ticker.best_ask == 100 and ticker.best_ask_size == 2**63 - 1

    run_scenario(scenario())


def test_get_order_book_with_orders_answers_when_a_levels_total_passes_int64() -> None:
    """reads._orders_by_level sums `level.size += order.remaining` into the protobuf int64 field itself: the
    second 2**62 order raises ValueError -> INTERNAL (the plain GetOrderBook clamps through book_levels)."""

    async def scenario() -> None:
        reads = ReadRPCs(NodeState("n", SERVING), replica_with_a_level_past_int64(), {}, InMemorySequencer(),
                         RecordingPeers(), None)
        try:
            book = await reads.GetOrderBook(pb.GetOrderBookRequest(include_orders=True), FakeContext())
        except Aborted as error:
            pytest.fail(f"GetOrderBook(include_orders) failed after two accepted orders: {error}")
        assert book.asks[0].size == 2**63 - 1 and len(book.asks[0].orders) == 2

    run_scenario(scenario())


def test_stream_book_checksum_is_reproducible_from_the_levels_it_sends() -> None:
    """CONTRACT 8: a client recomputes the top-10 checksum from the levels it was sent and resubscribes when it
    does not reproduce it. book_stream.book_update clamps each level's size to INT64_MAX (int64_total), but the
    checksum (l2.LevelBook.checksum / BookFeed.checksum) is over the unclamped 2**63: no client can ever reproduce
    it, so every subscriber (exchange-cli book --watch, the web feed) resubscribes forever."""

    async def scenario() -> None:
        rpcs = BookStreamRPCs(NodeState("n", SERVING), replica_with_a_level_past_int64())
        stream = rpcs.StreamBook(pb.StreamBookRequest(market=M, depth=10), FakeContext())
        snapshot = decoded(await anext(stream), pb.BookUpdate)
        await stream.aclose()
        assert snapshot.snapshot and [(x.price, x.size) for x in snapshot.asks] == [(100, 2**63 - 1)]
        local = top_checksum([(x.price, x.size) for x in snapshot.asks], [(x.price, x.size) for x in snapshot.bids])
        assert snapshot.checksum == local, "the checksum covers sizes the message does not carry"

    run_scenario(scenario())
