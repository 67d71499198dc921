"""Totals of many int64 sizes (a level's open size, a day's volume) past int64: the answers still go out (found by
a review, 2026-12-02: two valid orders of the default market made GetOrderBook, GetTicker and GetCandles fail
INTERNAL for everyone)."""

from __future__ import annotations

import pytest

from exchange import engine as eng
from exchange.accounts import ACCOUNTS_PREFIX, Account, encode, key_hash, new_api_key
from exchange.node.auth import AccessControl, AccountRegistry
from exchange.node.lifecycle import SERVING, NodeState
from exchange.node.market_data_rpcs import MarketDataRPCs
from exchange.node.orders import OrderEntryRPCs
from exchange.node.reads import ReadRPCs
from exchange.node.replica import Replica
from exchange.node.sequencing import MarketPipeline
from exchange.v1 import exchange_pb2 as pb
from tests.unit.fakes import SECRET, Aborted, FakeContext, InMemorySequencer, RecordingPeers, run_scenario

M = "BTC-USD"
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
