"""Public market data RPCs by Sequencer time: StreamTrades, GetTrades, GetCandles, GetTicker. For anyone: no key
is needed and no account is shown. A thin adapter over the replica's `MarketData` (market_data.py), which owns
what is retained and the refusals of what is not.

StreamTrades reads the market's retained trades through a cursor (the last trade id sent), never through a queue
of its own: a subscriber costs O(1) memory whatever its speed, and the replica only wakes the waiting streams
(one event per entry that traded). A subscriber that falls further behind than the retained trades is ended with
OUT_OF_RANGE, like a resume from a sequence the node no longer retains.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from exchange.errors import InvalidArgument, rpc
from exchange.node import order_messages
from exchange.node.lifecycle import NodeState
from exchange.node.market_data import INTERVALS_MS, Candle, PublicTrade, Tape
from exchange.node.replica import Applied, Replica
from exchange.v1 import exchange_pb2 as pb

MAX_LIMIT = 1_000  # trades per GetTrades page, candles per GetCandles answer
STREAM_BATCH = 500  # trades a stream takes from the retained ones at a time: at most one message's
BUILT_BATCHES = 64  # TradeBatch messages kept for subscribers reading in step (oldest dropped first)


def public_trade(market: str, trade: PublicTrade) -> pb.PublicTrade:
    return pb.PublicTrade(market=market, trade_id=trade.trade_id, seq=trade.seq, price=trade.price, size=trade.size,
                          aggressor_side=order_messages.proto_side(trade.aggressor), time_ms=trade.time_ms)


def candle_message(candle: Candle) -> pb.Candle:
    return pb.Candle(start_ms=candle.start_ms, open=candle.open, high=candle.high, low=candle.low,
                     close=candle.close, volume=candle.volume, trade_count=candle.trade_count)


def check_limit(limit: int, what: str) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT} {what}, got {limit}")


class MarketDataRPCs:
    """The trades, candles and ticker RPCs of ExchangeNode (see exchange/node/service.py for the other parts)."""

    def __init__(self, node: NodeState, replica: Replica) -> None:
        self.node = node
        self.replica = replica
        # market -> the event StreamTrades subscribers wait on; set (and replaced) when an entry traded
        self._traded = {market: asyncio.Event() for market in replica.markets}
        self._built: dict[tuple[str, int, int], pb.TradeBatch] = {}  # (market, after id, last id) -> message
        for market in replica.markets:
            replica.on_applied(market, self._wake)

    def _wake(self, applied: Applied) -> None:
        if applied.traded:
            market = applied.command.market
            event, self._traded[market] = self._traded[market], asyncio.Event()
            event.set()

    def _market(self, name: str) -> str:
        return order_messages.resolve_market(self.replica.markets, name).symbol

    def _tape(self, market: str) -> Tape:
        return self.replica.market_data.tape(market)

    @rpc
    async def StreamTrades(
        self, request: pb.StreamTradesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TradeBatch]:
        market = self._market(request.market)
        if request.from_seq < 0:
            raise InvalidArgument(f"from_seq must be >= 0 (0: from now on), got {request.from_seq}")
        self.node.require_serving()
        cursor = self._tape(market).stream_start(market, request.from_seq)
        while True:
            batch = self._tape(market).trades_after(market, cursor, STREAM_BATCH)
            if not batch:
                await self._traded[market].wait()  # taken with no await since the read: no trade is missed
                continue
            if batch[0].seq >= request.from_seq:
                yield self._batch_message(market, cursor, batch)
            else:  # the first batch of a resume: only the trades from from_seq on
                trades = [public_trade(market, trade) for trade in batch if trade.seq >= request.from_seq]
                if trades:
                    yield pb.TradeBatch(market=market, trades=trades)
            cursor = batch[-1].trade_id

    def _batch_message(self, market: str, cursor: int, batch: list[PublicTrade]) -> pb.TradeBatch:
        """The message of the trades after `cursor` up to the batch's last, built once for every subscriber that
        reads in step (most do: they wait on the same wake-up): building the trades' messages was most of a
        reader's cost. Keeps the last BUILT_BATCHES messages."""
        key = (market, cursor, batch[-1].trade_id)
        message = self._built.get(key)
        if message is None:
            message = pb.TradeBatch(market=market, trades=[public_trade(market, trade) for trade in batch])
            self._built[key] = message
            while len(self._built) > BUILT_BATCHES:
                del self._built[next(iter(self._built))]
        return message

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
                           high_24h=window.high, low_24h=window.low, volume_24h=window.volume,
                           trade_count_24h=window.trade_count)
        if tape.last_trade is not None:
            last = tape.last_trade
            ticker.last_price, ticker.last_size, ticker.last_trade_id = last.price, last.size, last.trade_id
            if window.trade_count:
                ticker.change_24h = last.price - window.open
        if bids:
            ticker.best_bid, ticker.best_bid_size = bids[0][0], bids[0][1]
        if asks:
            ticker.best_ask, ticker.best_ask_size = asks[0][0], asks[0][1]
        return ticker
