"""Public market data by Sequencer time, for both clients: the typed results (ints for prices, sizes and UNIX
millisecond times), the operations (GetTrades, GetCandles, GetTicker) and how a StreamTrades subscription resumes.

Trade ids and sequences are the cluster's, the same on every node, so a broken trade stream resumes on any node:
from the sequence of the last trade seen, skipping the trades of that sequence already seen (one command may
make several trades, and a stream may break between them).
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange.client.core import Operation
from exchange.client.types import Side, request
from exchange.v1 import exchange_pb2 as pb

INTERVALS = ("1m", "5m", "15m", "1h", "1d")


@dataclass(frozen=True, slots=True)
class PublicTrade:
    """One trade of the public tape: no account, no order id."""

    market: str
    trade_id: int
    seq: int
    price: int
    size: int
    aggressor_side: Side  # the incoming order's side: BUY lifted an ask, SELL hit a bid
    time_ms: int  # Sequencer time, UNIX ms


@dataclass(frozen=True, slots=True)
class TradesPage:
    """Recent trades, most recent first; `oldest_trade_id`: the oldest the node still retains (0: none)."""

    market: str
    seq: int
    trades: list[PublicTrade]
    oldest_trade_id: int


@dataclass(frozen=True, slots=True)
class Candle:
    start_ms: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    trade_count: int


@dataclass(frozen=True, slots=True)
class Candles:
    """Candles oldest first; candles starting before `retained_from_ms` may no longer be retained (0: all are)."""

    market: str
    interval: str
    seq: int
    candles: list[Candle]
    retained_from_ms: int


@dataclass(frozen=True, slots=True)
class Ticker:
    """Last trade, best bid and ask (None: that side is empty) and the 24 hours up to `time_ms` (Sequencer time)."""

    market: str
    seq: int
    time_ms: int
    last_price: int | None
    last_size: int
    last_trade_id: int
    best_bid: int | None
    best_bid_size: int
    best_ask: int | None
    best_ask_size: int
    open_24h: int
    high_24h: int
    low_24h: int
    volume_24h: int
    trade_count_24h: int
    change_24h: int


def public_trade_from_pb(message: pb.PublicTrade) -> PublicTrade:
    return PublicTrade(message.market, message.trade_id, message.seq, message.price, message.size,
                       Side(message.aggressor_side), message.time_ms)


def ticker_from_pb(m: pb.Ticker) -> Ticker:
    return Ticker(m.market, m.seq, m.time_ms, m.last_price if m.last_trade_id else None, m.last_size,
                  m.last_trade_id, m.best_bid if m.best_bid_size else None, m.best_bid_size,
                  m.best_ask if m.best_ask_size else None, m.best_ask_size, m.open_24h, m.high_24h, m.low_24h,
                  m.volume_24h, m.trade_count_24h, m.change_24h)


def get_trades(market: str = "", limit: int = 100, before: int = 0) -> Operation[TradesPage]:
    return Operation("GetTrades", request(pb.GetTradesRequest, market=market, limit=limit, before=before),
                     lambda m: TradesPage(m.market, m.seq, [public_trade_from_pb(t) for t in m.trades],
                                          m.oldest_trade_id))


def get_candles(market: str = "", interval: str = "1m", from_ms: int = 0, to_ms: int = 0,
                limit: int = 100) -> Operation[Candles]:
    message = request(pb.GetCandlesRequest, market=market, interval=interval, from_ms=from_ms, to_ms=to_ms,
                      limit=limit)
    return Operation("GetCandles", message, lambda m: Candles(
        m.market, m.interval, m.seq,
        [Candle(c.start_ms, c.open, c.high, c.low, c.close, c.volume, c.trade_count) for c in m.candles],
        m.retained_from_ms))


def get_ticker(market: str = "") -> Operation[Ticker]:
    return Operation("GetTicker", request(pb.GetTickerRequest, market=market), ticker_from_pb)


@dataclass
class TradePosition:
    """Where a StreamTrades subscription is: the last trade seen (see the module docstring)."""

    from_seq: int  # what the first stream asks for (0: from now on)
    seq: int = 0  # the last trade seen (0: none yet)
    trade_id: int = 0

    def request(self, market: str) -> pb.StreamTradesRequest:
        """The request to (re)open the stream with."""
        return request(pb.StreamTradesRequest, market=market, from_seq=self.seq if self.trade_id else self.from_seq)

    def accept(self, message: pb.PublicTrade) -> bool:
        """Whether a trade is new (then it counts as seen)."""
        if message.trade_id <= self.trade_id:
            return False
        self.seq, self.trade_id = message.seq, message.trade_id
        return True
