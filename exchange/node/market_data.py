"""Public market data by Sequencer time: the trade tape, OHLCV candles and the 24-hour ticker of each market.

Pure and deterministic: `MarketData.apply` is fed every applied log entry (its sequence, the time the Sequencer
stamped on it, and the engine's events) and keeps bounded state from which every query is answered; no clock, no
I/O. Every node that has applied the same sequence therefore answers the same trades, candles and ticker; the
state travels in the node's snapshot (`snapshot` / `restore`), so a node restored from one answers the same too.

Time (UNIX milliseconds, `Command.time_ms`): an entry's time is max(its stamp, the market's previous time), so an
entry of a log written before time was stamped (stamp 0) gets the time of the entry before it (0 at first).

Bounds (per market, whatever the age of the exchange; docs/market-data.md):

* the last `trade_retention` trades (10,000): StreamTrades' replay and resumption, GetTrades' pages;
* the last `candle_retention` candles of each interval (2,000: 1m about 33 hours of trading, 1d over 5 years), at
  least the 1,440 one-minute candles the ticker's window needs;
* the last trade and the latest time.

What is no longer retained is refused (OUT_OF_RANGE) or flagged (`retained_from_ms`), never answered wrongly.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import NamedTuple

from exchange import engine as eng
from exchange.errors import OutOfRange

# Interval name -> its length in ms. Candles are aligned to the UNIX epoch: start = time - time % length.
INTERVALS_MS: dict[str, int] = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000, "1d": 86_400_000}
MINUTE_MS = INTERVALS_MS["1m"]
TICKER_WINDOW_MINUTES = 1_440  # the ticker's 24 hours: this many one-minute intervals up to the current one
TRADE_RETENTION = 10_000
CANDLE_RETENTION = 2_000
SNAPSHOT_VERSION = 1
OrderFilled = eng.OrderFilled


class PublicTrade(NamedTuple):
    """One trade as the public sees it: never an account or an order id."""

    trade_id: int
    seq: int
    price: int
    size: int
    aggressor: eng.Side  # the side of the incoming (taker) order
    time_ms: int


@dataclass(slots=True)
class Candle:
    start_ms: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    trade_count: int

    def add(self, price: int, size: int) -> None:
        if price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.close = price
        self.volume += size
        self.trade_count += 1


@dataclass(frozen=True, slots=True)
class Window:
    """The ticker's 24 hours of trades (all 0 without a trade in them)."""

    open: int = 0
    high: int = 0
    low: int = 0
    volume: int = 0
    trade_count: int = 0


@dataclass(slots=True)
class Tape:
    """One market's market-data state (see the module docstring)."""

    trade_retention: int
    candle_retention: int
    seq: int = 0  # the last entry applied
    time_ms: int = 0  # its time: the latest log time of the market
    # Every trade of a sequence >= complete_from_seq, and every trade id >= first_trade_id, is retained (a state
    # started afresh at a snapshot's sequence: from the engine's next trade id; None in a snapshot written before
    # it was kept: from whichever trade comes next).
    complete_from_seq: int = 1
    first_trade_id: int | None = 1
    last_trade: PublicTrade | None = None
    trades: deque[PublicTrade] = field(default_factory=deque)
    candles: dict[str, deque[Candle]] = field(default_factory=lambda: {name: deque() for name in INTERVALS_MS})
    retained_from_ms: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INTERVALS_MS, 0))
    # The fast path of a trade in the same minute as the last one (every interval is a whole number of minutes,
    # aligned to the epoch: the same minute is the same candle of every interval): the last candle of each
    # interval, and the end of the last 1m candle (0: take the slow path). Derived, not in the snapshot.
    _last_candles: list[Candle] = field(default_factory=list)
    _minute_end: int = 0

    def apply(self, seq: int, time_ms: int, events: Iterable[eng.Event]) -> bool:
        """Notes entry `seq` (stamped `time_ms`) and its events; returns whether it made trades."""
        self.seq = seq
        now = self.time_ms = max(self.time_ms, time_ms)
        traded = False
        for event in events:
            if type(event) is not OrderFilled:
                continue
            trade = PublicTrade(event.trade_id, seq, event.price, event.size, event.taker_side, now)
            self._add_trade(trade)
            traded = True
        return traded

    def _add_trade(self, trade: PublicTrade) -> None:
        trades = self.trades
        if len(trades) >= self.trade_retention:
            gone = trades.popleft()
            self.complete_from_seq = gone.seq + 1
            self.first_trade_id = gone.trade_id + 1
        elif self.first_trade_id is None:
            self.first_trade_id = trade.trade_id
        trades.append(trade)
        self.last_trade = trade
        if trade.time_ms < self._minute_end:
            for candle in self._last_candles:
                candle.add(trade.price, trade.size)
            return
        for name, length in INTERVALS_MS.items():
            start = trade.time_ms - trade.time_ms % length
            candles = self.candles[name]
            if candles and candles[-1].start_ms == start:
                candles[-1].add(trade.price, trade.size)
                continue
            if len(candles) >= self.candle_retention:
                candles.popleft()
                self.retained_from_ms[name] = candles[0].start_ms if candles else start
            candles.append(Candle(start, trade.price, trade.price, trade.price, trade.price, trade.size, 1))
        self._last_candles = [candles[-1] for candles in self.candles.values()]
        self._minute_end = self._last_candles[0].start_ms + MINUTE_MS

    # -- queries ------------------------------------------------------------------------------------

    def _out_of_range(self, market: str, what: str) -> OutOfRange:
        oldest = f"sequence {self.complete_from_seq} (trade id {self.first_trade_id})" \
            if self.first_trade_id is not None else f"sequence {self.complete_from_seq}"
        return OutOfRange(
            f"{what} of {market} are no longer retained by this node (it keeps the last {self.trade_retention:,} "
            f"trades; complete from {oldest} on): resume from a later sequence, or from 0 (now)")

    def stream_start(self, market: str, from_seq: int) -> int:
        """The trade id a stream from `from_seq` (0: from now on) resumes after (-1: whichever trade comes next).
        OUT_OF_RANGE if trades of `from_seq` may no longer be retained."""
        if from_seq:
            if from_seq < self.complete_from_seq:
                raise self._out_of_range(market, f"trades from sequence {from_seq}")
            for trade in self.trades:  # the first retained trade of a sequence >= from_seq
                if trade.seq >= from_seq:
                    return trade.trade_id - 1
        if self.last_trade is not None:
            return self.last_trade.trade_id
        return -1 if self.first_trade_id is None else self.first_trade_id - 1

    def trades_after(self, market: str, trade_id: int, limit: int) -> list[PublicTrade]:
        """At most `limit` retained trades with ids after `trade_id`, oldest first. OUT_OF_RANGE if some of
        them are no longer retained (a reader that fell behind)."""
        trades = self.trades
        if not trades or trades[-1].trade_id <= trade_id:
            return []
        first = trades[0].trade_id
        if 0 <= trade_id < first - 1:
            raise self._out_of_range(market, f"trades after trade id {trade_id}")
        start = max(0, trade_id + 1 - first)
        newer = len(trades) - start
        if newer <= start:  # nearer the newest end (a reader keeping up): walked from there, not from the oldest
            batch = list(islice(reversed(trades), newer))
            batch.reverse()
            return batch[:limit]
        return list(islice(trades, start, start + limit))

    def trades_before(self, market: str, before: int, limit: int) -> list[PublicTrade]:
        """At most `limit` trades with ids below `before` (0: the latest), most recent first. OUT_OF_RANGE if
        `before` reaches below what is retained and older trades existed."""
        trades = self.trades
        if not trades:
            if before > 1 and self.first_trade_id != 1:
                raise self._out_of_range(market, f"trades before trade id {before}")
            return []
        first, last = trades[0].trade_id, trades[-1].trade_id
        end = len(trades) if before == 0 or before > last else before - first
        if end <= 0:
            if first == 1 or before == 1:  # retained from the first trade, or asked before it: nothing is older
                return []
            raise self._out_of_range(market, f"trades before trade id {before}")
        return [trades[i] for i in range(end - 1, max(end - limit, 0) - 1, -1)]

    def candles_between(self, interval: str, from_ms: int, to_ms: int, limit: int) -> list[Candle]:
        """The latest `limit` candles of `interval` starting in [from_ms, to_ms) (to_ms 0: no end), oldest first."""
        found: list[Candle] = []
        for candle in reversed(self.candles[interval]):
            if candle.start_ms < from_ms or len(found) == limit:
                break
            if to_ms == 0 or candle.start_ms < to_ms:
                found.append(candle)
        found.reverse()
        return found

    def window(self) -> Window:
        """The ticker's 24 hours: the last TICKER_WINDOW_MINUTES one-minute intervals up to the one holding the
        latest log time."""
        bound = self.time_ms - self.time_ms % MINUTE_MS - (TICKER_WINDOW_MINUTES - 1) * MINUTE_MS
        inside = []
        for candle in reversed(self.candles["1m"]):
            if candle.start_ms < bound:
                break
            inside.append(candle)
        if not inside:
            return Window()
        return Window(inside[-1].open, max(c.high for c in inside), min(c.low for c in inside),
                      sum(c.volume for c in inside), sum(c.trade_count for c in inside))

    # -- snapshot -----------------------------------------------------------------------------------

    def encode(self) -> dict[str, object]:
        return {
            "seq": self.seq, "time_ms": self.time_ms, "complete_from_seq": self.complete_from_seq,
            "first_trade_id": self.first_trade_id,
            "last_trade": None if self.last_trade is None else _trade_row(self.last_trade),
            "trades": [_trade_row(t) for t in self.trades],
            "candles": {name: [[c.start_ms, c.open, c.high, c.low, c.close, c.volume, c.trade_count] for c in cs]
                        for name, cs in self.candles.items()},
            "retained_from_ms": self.retained_from_ms,
        }

    @classmethod
    def decode(cls, data: Mapping[str, object], trade_retention: int, candle_retention: int) -> Tape:
        """Raises ValueError (or KeyError/TypeError) for a malformed state."""
        tape = cls(trade_retention, candle_retention)
        tape.seq, tape.time_ms = _int(data["seq"]), _int(data["time_ms"])
        tape.complete_from_seq = _int(data["complete_from_seq"])
        first = data["first_trade_id"]
        tape.first_trade_id = None if first is None else _int(first)
        last = data["last_trade"]
        tape.last_trade = None if last is None else _trade(last)
        tape.trades = deque(_trade(row) for row in _list(data["trades"])[-trade_retention:])
        candles = data["candles"]
        retained = data["retained_from_ms"]
        if not isinstance(candles, dict) or not isinstance(retained, dict):
            raise ValueError("candles and retained_from_ms must be objects")
        for name in INTERVALS_MS:
            rows = _list(candles[name])[-candle_retention:]
            tape.candles[name] = deque(Candle(*(_int(v) for v in _list(row))) for row in rows)
            tape.retained_from_ms[name] = _int(retained[name])
        return tape


def _trade_row(trade: PublicTrade) -> list[int]:
    return [trade.trade_id, trade.seq, trade.price, trade.size, int(trade.aggressor), trade.time_ms]


def _trade(row: object) -> PublicTrade:
    values = [_int(v) for v in _list(row)]
    if len(values) != 6:
        raise ValueError(f"a trade has 6 fields, got {len(values)}")
    return PublicTrade(values[0], values[1], values[2], values[3], eng.Side(values[4]), values[5])


def _int(value: object) -> int:
    if type(value) is not int:
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    return value


class MarketData:
    """Every market's `Tape` (see the module docstring)."""

    def __init__(self, markets: Iterable[str], trade_retention: int = TRADE_RETENTION,
                 candle_retention: int = CANDLE_RETENTION) -> None:
        if candle_retention < TICKER_WINDOW_MINUTES:
            raise ValueError(f"candle_retention must be at least {TICKER_WINDOW_MINUTES} (the ticker's window)")
        self.trade_retention = trade_retention
        self.candle_retention = candle_retention
        self.tapes = {market: Tape(trade_retention, candle_retention) for market in markets}

    def apply(self, market: str, seq: int, time_ms: int, events: Iterable[eng.Event]) -> bool:
        return self.tapes[market].apply(seq, time_ms, events)

    def tape(self, market: str) -> Tape:
        return self.tapes[market]

    def snapshot(self) -> bytes:
        return json.dumps({"version": SNAPSHOT_VERSION,
                           "markets": {m: tape.encode() for m, tape in self.tapes.items()}},
                          separators=(",", ":"), sort_keys=True).encode()

    def restore(self, data: bytes, positions: Mapping[str, tuple[int, int]]) -> list[str]:
        """Takes each market's state from a snapshot made at `positions` (the engine's sequence and next trade id
        of each market); a market the snapshot lacks, or holds at another sequence, starts afresh there (its
        history before is not known; its retained trades start at that next trade id). Returns the markets
        started afresh."""
        found: dict[str, object] = {}
        if data:
            try:
                decoded = json.loads(data)
                if decoded.get("version") == SNAPSHOT_VERSION:
                    found = dict(decoded["markets"])
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # RecursionError: nested too deep
                found = {}
        fresh = []
        for market, (position, next_trade_id) in positions.items():
            tape: Tape | None = None
            state = found.get(market)
            if isinstance(state, dict):
                try:
                    tape = Tape.decode(state, self.trade_retention, self.candle_retention)
                except (ValueError, KeyError, TypeError):
                    tape = None
            if tape is None or tape.seq != position:
                tape = Tape(self.trade_retention, self.candle_retention, seq=position,
                            complete_from_seq=position + 1, first_trade_id=next_trade_id)
                fresh.append(market)
            self.tapes[market] = tape
        return fresh
