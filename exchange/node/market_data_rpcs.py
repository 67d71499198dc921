"""Public market data RPCs by Sequencer time: StreamTrades, GetTrades, GetCandles, GetTicker. For anyone: no key
is needed and no account is shown. A thin adapter over the replica's `MarketData` (market_data.py), which owns
what is retained and the refusals of what is not.

StreamTrades reads the market's retained trades through a cursor (the last trade id sent), never through a queue
of its own: a subscriber costs O(1) memory whatever its speed, and the replica only notifies the market's pulse
when an entry traded (exchange/node/pacing.py: the streams wake together at most every 50 ms, and those in step
send one shared message). A subscriber that falls further behind than the retained trades is ended with
OUT_OF_RANGE, like a resume from a sequence the node no longer retains.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import grpc

from exchange.errors import InvalidArgument, rpc
from exchange.node import order_messages
from exchange.node.lifecycle import NodeState
from exchange.node.market_data import INTERVALS_MS, Candle, PublicTrade, Tape
from exchange.node.pacing import Pulse, SharedMessages
from exchange.node.replica import Applied, Replica
from exchange.shared.markets import int64_total
from exchange.v1 import exchange_pb2 as pb

MAX_LIMIT = 1_000  # trades per GetTrades page, candles per GetCandles answer
STREAM_BATCH = 500  # trades a stream takes from the retained ones at a time: at most one message's


def public_trade(market: str, trade: PublicTrade) -> pb.PublicTrade:
    return pb.PublicTrade(market=market, trade_id=trade.trade_id, seq=trade.seq, price=trade.price, size=trade.size,
                          aggressor_side=order_messages.proto_side(trade.aggressor), time_ms=trade.time_ms)


def candle_message(candle: Candle) -> pb.Candle:
    return pb.Candle(start_ms=candle.start_ms, open=candle.open, high=candle.high, low=candle.low,
                     close=candle.close, volume=int64_total(candle.volume),
                     trade_count=candle.trade_count)


def check_limit(limit: int, what: str) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT} {what}, got {limit}")


class MarketDataRPCs:
    """The trades, candles and ticker RPCs of ExchangeNode (see exchange/node/service.py for the other parts)."""

    def __init__(self, node: NodeState, replica: Replica) -> None:
        self.node = node
        self.replica = replica
        # market -> what its StreamTrades subscribers wait on: notified when an entry traded
        self._traded = {market: Pulse() for market in replica.markets}
        # TradeBatch messages by (market, after trade id, last trade id), for the subscribers reading in step
        self._built = SharedMessages()
        for market in replica.markets:
            replica.on_applied(market, self._wake)

    def _wake(self, applied: Applied) -> None:
        if applied.traded:
            self._traded[applied.command.market].notify()

    def _market(self, name: str) -> str:
        return order_messages.resolve_market(self.replica.markets, name).symbol

    def _tape(self, market: str) -> Tape:
        return self.replica.market_data.tape(market)

    @rpc
    async def StreamTrades(
        self, request: pb.StreamTradesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TradeBatch | bytes]:
        """Yields TradeBatch messages, serialised once for the subscribers in step (exchange/runtime.py sends bytes
        as they are)."""
        market = self._market(request.market)
        if request.from_seq < 0:
            raise InvalidArgument(f"from_seq must be >= 0 (0: from now on), got {request.from_seq}")
        self.node.require_serving()
        pulse = self._traded[market]
        cursor = self._tape(market).stream_start(market, request.from_seq)
        while True:
            batch = self._tape(market).trades_after(market, cursor, STREAM_BATCH)
            if not batch:
                await pulse.wait()  # taken with no await since the read: no trade is missed
                continue
            if batch[0].seq >= request.from_seq:  # trades after `cursor`: the same message for every one in step
                yield self._built.get((market, cursor, batch[-1].trade_id),
                                      functools.partial(self._batch_message, market, batch))
            else:  # the first batch of a resume: only the trades from from_seq on
                trades = [public_trade(market, trade) for trade in batch if trade.seq >= request.from_seq]
                if trades:
                    yield pb.TradeBatch(market=market, trades=trades)
            cursor = batch[-1].trade_id
            if pulse.pending:  # trades came meanwhile: they merge until their pulse, in step with the others
                await pulse.wait()

    @staticmethod
    def _batch_message(market: str, batch: list[PublicTrade]) -> pb.TradeBatch:
        return pb.TradeBatch(market=market, trades=[public_trade(market, trade) for trade in batch])

    @rpc
    async def GetTrades(self, request: pb.GetTradesRequest, context: grpc.aio.ServicerContext) -> pb.GetTradesResponse:
        market = self._market(request.market)
        check_limit(request.limit, "trades per page")
        if request.before < 0:
            raise InvalidArgument(f"before must be a trade id (> 0), or 0 for the latest trades; got {request.before}")
        self.node.require_serving()
        tape = self._tape(market)
        trades = tape.trades_before(market, request.before, request.limit)
        return pb.GetTradesResponse(market=market, seq=tape.seq, trades=[public_trade(market, t) for t in trades],
                                    oldest_trade_id=tape.trades[0].trade_id if tape.trades else 0)

    @rpc
    async def GetCandles(
        self, request: pb.GetCandlesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCandlesResponse:
        market = self._market(request.market)
        if request.interval not in INTERVALS_MS:
            raise InvalidArgument(f"interval {request.interval!r} is not supported; use one of "
                                  f"{', '.join(INTERVALS_MS)}")
        if request.from_ms < 0 or request.to_ms < 0:
            raise InvalidArgument(f"from_ms and to_ms are UNIX milliseconds (>= 0; 0: unbounded), got "
                                  f"{request.from_ms} and {request.to_ms}")
        if request.to_ms and request.from_ms >= request.to_ms:
            raise InvalidArgument(f"from_ms {request.from_ms} must be before to_ms {request.to_ms}")
        check_limit(request.limit, "candles")
        self.node.require_serving()
        tape = self._tape(market)
        candles = tape.candles_between(request.interval, request.from_ms, request.to_ms, request.limit)
        return pb.GetCandlesResponse(market=market, interval=request.interval, seq=tape.seq,
                                     candles=[candle_message(c) for c in candles],
                                     retained_from_ms=tape.retained_from_ms[request.interval])

    @rpc
    async def GetTicker(self, request: pb.GetTickerRequest, context: grpc.aio.ServicerContext) -> pb.Ticker:
        market = self._market(request.market)
        self.node.require_serving()
        tape = self._tape(market)
        bids, asks = self.replica.depth(market, 1)  # the same sequence as the tape: no await in between
        window = tape.window()
        ticker = pb.Ticker(market=market, seq=tape.seq, time_ms=tape.time_ms, open_24h=window.open,
                           high_24h=window.high, low_24h=window.low,
                           volume_24h=int64_total(window.volume), trade_count_24h=window.trade_count)
        if tape.last_trade is not None:
            last = tape.last_trade
            ticker.last_price, ticker.last_size, ticker.last_trade_id = last.price, last.size, last.trade_id
            if window.trade_count:
                ticker.change_24h = last.price - window.open
        if bids:
            ticker.best_bid, ticker.best_bid_size = bids[0][0], int64_total(bids[0][1])
        if asks:
            ticker.best_ask, ticker.best_ask_size = asks[0][0], int64_total(asks[0][1])
        return ticker
