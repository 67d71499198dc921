"""The market-data state (exchange/node/market_data.py) against a naive model: for random sequences of log entries
(times that stand still, move on, jump days, or come from a log without time), the retained trades, the candles
of every interval and the ticker's 24 hours equal a brute-force recomputation over every trade; a snapshot
restores the same answers."""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange import engine as eng
from exchange.errors import OutOfRange
from exchange.node.market_data import (
    INTERVALS_MS,
    MINUTE_MS,
    TICKER_WINDOW_MINUTES,
    MarketData,
    PublicTrade,
    Tape,
)

START = 1_700_000_000_000

# One log entry: a time step (ms, or None: an entry of a log without time) and its trades (price, size, buy?).
Entries = list[tuple[int | None, list[tuple[int, int, bool]]]]
entries_strategy = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from([0, 1, 999, 59_999, 60_000, 3_600_000, 86_400_000, 2 * 86_400_000]),
                  st.integers(0, 5 * 60_000)),
        st.lists(st.tuples(st.integers(1, 50), st.integers(1, 9), st.booleans()), max_size=4),
    ),
    max_size=120,
)


def fill(seq: int, trade_id: int, price: int, size: int, buy: bool) -> eng.OrderFilled:
    side = eng.Side.BUY if buy else eng.Side.SELL
    return eng.OrderFilled("M", seq, trade_id, price, size, 1, seq, side, 0, 0)


def feed(tapes: list[Tape], entries: Entries) -> list[PublicTrade]:
    """Applies the entries to every tape; returns every trade as the model sees it (time: the last stamp)."""
    trades: list[PublicTrade] = []
    stamp, now, trade_id = START, 0, 1
    for seq, (step, fills) in enumerate(entries, start=1):
        if step is not None:
            stamp += step
        stamped = 0 if step is None else stamp  # no time in the entry: the previous entry's time
        now = max(now, stamped)
        events: list[eng.Event] = [eng.OrderAccepted("M", seq, seq, eng.Side.BUY, eng.OrderType.LIMIT, 1, 1)]
        for price, size, buy in fills:
            events.append(fill(seq, trade_id, price, size, buy))
            trades.append(PublicTrade(trade_id, seq, price, size, eng.Side.BUY if buy else eng.Side.SELL, now))
            trade_id += 1
        for tape in tapes:
            assert tape.apply(seq, stamped, events) == bool(fills)
    return trades


def naive_candles(trades: list[PublicTrade], length: int) -> list[list[int]]:
    groups: dict[int, list[PublicTrade]] = defaultdict(list)
    for trade in trades:
        groups[trade.time_ms - trade.time_ms % length].append(trade)
    return [[start, ts[0].price, max(t.price for t in ts), min(t.price for t in ts), ts[-1].price,
             sum(t.size for t in ts), len(ts)] for start, ts in sorted(groups.items())]


def as_rows(tape: Tape, interval: str, from_ms: int = 0, to_ms: int = 0, limit: int = 10**9) -> list[list[int]]:
    return [[c.start_ms, c.open, c.high, c.low, c.close, c.volume, c.trade_count]
            for c in tape.candles_between(interval, from_ms, to_ms, limit)]


def check(tape: Tape, trades: list[PublicTrade], trade_retention: int, candle_retention: int) -> None:
    kept = trades[-trade_retention:]
    assert list(tape.trades) == kept
    assert tape.last_trade == (trades[-1] if trades else None)
    for name, length in INTERVALS_MS.items():
        expected = naive_candles(trades, length)
        assert as_rows(tape, name) == expected[-candle_retention:]
        evicted = len(expected) > candle_retention
        assert tape.retained_from_ms[name] == (expected[-candle_retention][0] if evicted else 0)
        middle = expected[len(expected) // 2][0] if expected else 0
        if middle:  # a range and a limit: the latest `limit` candles starting in [from, to) (to 0: no end)
            assert as_rows(tape, name, 0, middle, 2) == [c for c in expected[-candle_retention:] if c[0] < middle][-2:]
            assert as_rows(tape, name, middle, 0, 1) == expected[-1:]
    # GetTrades: every page, most recent first, paged back until the retention ends
    if kept:
        assert tape.trades_before("M", 0, 3) == kept[::-1][:3]
        for before in [1] + [t.trade_id for t in kept] + [kept[-1].trade_id + 5]:
            page = [t for t in kept[::-1] if t.trade_id < before][:2]
            if not page and kept[0].trade_id > 1 and before > 1:  # older trades existed: refused, not an empty page
                with pytest.raises(OutOfRange):
                    tape.trades_before("M", before, 2)
            else:
                assert tape.trades_before("M", before, 2) == page
    # StreamTrades: replay from every retained sequence, refusal before it
    for from_seq in range(max(1, tape.complete_from_seq), tape.seq + 2):  # every sequence it accepts: whole
        after = tape.stream_start("M", from_seq)
        assert tape.trades_after("M", after, 10**6) == [t for t in trades if t.seq >= from_seq]
    if tape.complete_from_seq > 1:
        with pytest.raises(OutOfRange):
            tape.stream_start("M", tape.complete_from_seq - 1)
        with pytest.raises(OutOfRange):
            tape.trades_after("M", kept[0].trade_id - 2, 10)


def naive_window(trades: list[PublicTrade], now: int) -> tuple[int, int, int, int, int]:
    bound = now - now % MINUTE_MS - (TICKER_WINDOW_MINUTES - 1) * MINUTE_MS
    inside = [t for t in trades if t.time_ms >= bound]
    if not inside:
        return (0, 0, 0, 0, 0)
    return (inside[0].price, max(t.price for t in inside), min(t.price for t in inside),
            sum(t.size for t in inside), len(inside))


@settings(max_examples=150, deadline=None)
@given(entries_strategy, st.integers(1, 6), st.integers(1, 4))
def test_trades_candles_and_ticker_equal_a_brute_force_recomputation(
    entries: Entries, trade_retention: int, candle_retention: int
) -> None:
    small = Tape(trade_retention, candle_retention)  # evicts: retention and its refusals
    full = MarketData(["M"]).tape("M")  # the service's bounds: the ticker's window is whole
    trades = feed([small, full], entries)
    check(small, trades, trade_retention, candle_retention)
    check(full, trades, 10**9, 10**9)
    assert full.seq == small.seq == len(entries)
    now = full.time_ms
    assert now == max([START + sum(s for s, _ in entries[:i + 1] if s is not None) for i, (s, _) in
                       enumerate(entries) if s is not None], default=0)
    window = full.window()
    assert (window.open, window.high, window.low, window.volume, window.trade_count) == naive_window(trades, now)


@settings(max_examples=50, deadline=None)
@given(entries_strategy, entries_strategy)
def test_a_snapshot_restores_the_same_answers_and_goes_on_the_same(first: Entries, then: Entries) -> None:
    data = MarketData(["M"], trade_retention=5)
    feed([data.tape("M")], first)
    restored = MarketData(["M"], trade_retention=5)
    last = data.tape("M").last_trade
    assert restored.restore(data.snapshot(), {"M": (len(first), last.trade_id + 1 if last else 1)}) == []
    assert restored.snapshot() == data.snapshot()
    shifted = [(step, fills) for step, fills in then]
    for tape in (data.tape("M"), restored.tape("M")):
        start_seq, trade_id = tape.seq, (tape.last_trade.trade_id if tape.last_trade else 0)
        for offset, (step, fills) in enumerate(shifted, start=1):
            seq = start_seq + offset
            events = []
            for price, size, buy in fills:
                trade_id += 1
                events.append(fill(seq, trade_id, price, size, buy))
            tape.apply(seq, tape.time_ms + (step or 0), events)
    assert restored.snapshot() == data.snapshot()


def test_a_snapshot_at_another_sequence_or_corrupt_starts_the_market_afresh_and_refuses_what_it_lacks() -> None:
    data = MarketData(["M"])
    feed([data.tape("M")], [(0, [(10, 1, True)]), (5, [(11, 2, False)])])
    for snapshot, position in ((data.snapshot(), 7), (b"not json", 2), (b"", 2)):
        restored = MarketData(["M"])
        assert restored.restore(snapshot, {"M": (position, 40)}) == ["M"]  # the engine's next trade id: 40
        tape = restored.tape("M")
        assert tape.seq == position and tape.last_trade is None
        with pytest.raises(OutOfRange):
            tape.stream_start("M", position)  # the trades of sequences it never saw
        with pytest.raises(OutOfRange):
            tape.trades_before("M", 3, 5)
        cursor = tape.stream_start("M", 0)
        assert cursor == 39
        tape.apply(position + 1, 0, [fill(position + 1, 40, 12, 3, True)])  # trade ids go on from the snapshot's
        assert [t.trade_id for t in tape.trades_after("M", cursor, 10)] == [40]
        assert tape.stream_start("M", position + 1) == 39


def test_the_ticker_window_needs_the_one_minute_candles_of_a_day() -> None:
    with pytest.raises(ValueError):
        MarketData(["M"], candle_retention=TICKER_WINDOW_MINUTES - 1)
