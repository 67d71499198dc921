"""StreamTrades over a real replica, in-process: a subscriber reads the retained trades through a cursor, so one
that stops reading holds nothing while the replica applies on, and once it has fallen further behind than the
retained trades its stream ends with OUT_OF_RANGE (it may resume from a later sequence); live trades wake it."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from exchange import engine as eng
from exchange.node.lifecycle import SERVING, NodeState
from exchange.node.market_data import MarketData
from exchange.node.market_data_rpcs import MarketDataRPCs
from exchange.node.replica import Replica
from exchange.node.snapshots import adopt, replica_snapshot
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import Aborted, FakeContext, decoded, run_scenario, signed_entry

MARKET = "M"


class Feed:
    """Entries for the replica: each a resting sell and the buy that takes it (one trade per pair), stamped."""

    def __init__(self, replica: Replica) -> None:
        self.replica, self.seq = replica, 0

    def command(self, side: types_pb2.Side, account: str) -> None:
        self.seq += 1
        order = types_pb2.NewOrderCommand(side=side, order_type=types_pb2.LIMIT, size=1, price=10)
        command = types_pb2.Command(market=MARKET, account=account, time_ms=1_000 + self.seq, new_order=order)
        assert self.replica.offer(signed_entry(MARKET, self.seq, command))

    def trades(self, count: int) -> None:
        for _ in range(count):
            self.command(types_pb2.SELL, "maker")
            self.command(types_pb2.BUY, "taker")


def service(retention: int) -> tuple[Replica, MarketDataRPCs]:
    replica = Replica([eng.MarketConfig(MARKET)])
    replica.market_data = MarketData([MARKET], trade_retention=retention)
    node = NodeState("n")
    node.state = SERVING
    return replica, MarketDataRPCs(node, replica)


def test_a_subscriber_that_stops_reading_is_ended_out_of_range_once_the_trades_it_lacks_are_gone() -> None:
    async def scenario() -> None:
        replica, rpcs = service(retention=50)
        feed = Feed(replica)
        feed.trades(3)
        stream = rpcs.StreamTrades(pb.StreamTradesRequest(market=MARKET, from_seq=1), FakeContext())
        batch = decoded(await anext(stream), pb.TradeBatch)
        assert [t.trade_id for t in batch.trades] == [1, 2, 3], "what it lacks, in one message"
        first = batch.trades[0]
        assert (first.trade_id, first.seq, first.price, first.size, first.time_ms) == (1, 2, 10, 1, 1_002)
        assert first.aggressor_side == types_pb2.BUY
        feed.trades(200)  # the subscriber reads nothing meanwhile: 200 trades, 50 retained
        with pytest.raises(Aborted) as behind:
            await anext(stream)
        assert behind.value.code == grpc.StatusCode.OUT_OF_RANGE and "no longer retained" in behind.value.details
        with pytest.raises(Aborted) as resumed:  # and a resume from where it was
            await anext(rpcs.StreamTrades(pb.StreamTradesRequest(market=MARKET, from_seq=first.seq), FakeContext()))
        assert resumed.value.code == grpc.StatusCode.OUT_OF_RANGE

    run_scenario(scenario())


def test_a_live_subscriber_is_woken_by_the_next_trade_and_misses_none() -> None:
    async def scenario() -> None:
        replica, rpcs = service(retention=50)
        feed = Feed(replica)
        stream = rpcs.StreamTrades(pb.StreamTradesRequest(market=MARKET), FakeContext())
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        assert not waiting.done()
        feed.trades(2)  # both before the subscriber runs again: one message
        assert [t.trade_id for t in decoded(await asyncio.wait_for(waiting, 5), pb.TradeBatch).trades] == [1, 2]
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        feed.trades(1)
        assert [t.trade_id for t in decoded(await asyncio.wait_for(waiting, 5), pb.TradeBatch).trades] == [3]

    run_scenario(scenario())


@pytest.mark.parametrize("restored", [False, True])
def test_a_subscriber_from_now_that_falls_behind_is_ended_even_on_a_node_restored_without_market_data(
    restored: bool,
) -> None:
    """A node that adopted a snapshot without market data starts its tape afresh; its retained trades still start
    at a known trade id (the engine's next), so a "from now" subscriber that falls behind is ended OUT_OF_RANGE
    there too, not streamed the newest trades as if none were missed."""

    async def scenario() -> None:
        replica, rpcs = service(retention=5)
        feed = Feed(replica)
        if restored:
            source = Replica([eng.MarketConfig(MARKET)])
            Feed(source).trades(1)
            snapshot = replica_snapshot("peer", source)
            snapshot.market_data = b""  # a peer of an older version, or market data that did not decode
            assert adopt(replica, snapshot)
            feed.seq = 2
        stream = rpcs.StreamTrades(pb.StreamTradesRequest(market=MARKET, from_seq=0), FakeContext())
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)  # subscribed, waiting for the first trade
        assert not waiting.done()
        feed.trades(20)  # before the subscriber runs again: 20 trades, 5 retained
        with pytest.raises(Aborted) as behind:
            await asyncio.wait_for(waiting, 5)
        assert behind.value.code == grpc.StatusCode.OUT_OF_RANGE
        await stream.aclose()

    run_scenario(scenario())
