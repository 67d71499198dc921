"""The L2 book stream's rules (exchange/engine/l2.py) against the engine itself: for random command sequences,
a snapshot plus every update equals the engine's top `depth` levels at the update's last_seq, for several
depths, with each update's checksum equal to one computed from that book; a subscriber that reads rarely
(merged updates) ends in the same book; what a subscriber that never reads holds stays bounded; and a view
shallower than the checksum's 10 levels is refused."""

from __future__ import annotations

import random
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.engine import Engine, MarketConfig, OrderType, PlaceOrder, SelfTradePrevention, Side
from exchange.engine.l2 import BookFeed, L2Update, LevelBook, ViewDiff, depth_problem, top_checksum
from tests.unit.test_engine_properties import ACCOUNTS, IDS, MODES, SIZES, M, build, cancel

DEPTHS = (10, 11, 13, 1000)  # 10 is the least a view may be: the checksum covers the top 10 levels per side
# the engine properties' commands over a wider range of prices, after a ladder of 15 levels a side: a side has more
# levels than most views, and levels cross the views' boundaries
WIDE_PRICES = st.integers(min_value=80, max_value=120)
wide_submit = st.tuples(st.just("submit"), st.sampled_from(Side), st.sampled_from(OrderType), SIZES, WIDE_PRICES,
                        ACCOUNTS, MODES)
wide_amend = st.tuples(st.just("amend"), IDS, st.integers(min_value=-1, max_value=8), st.none() | WIDE_PRICES,
                       ACCOUNTS)
LADDER = [("submit", side, OrderType.LIMIT, 1 + level % 4, price, "", SelfTradePrevention.CANCEL_TAKER)
          for level in range(15) for side, price in ((Side.BUY, 99 - level), (Side.SELL, 101 + level))]
OPS = st.lists(st.one_of(wide_submit, wide_submit, wide_submit, cancel, wide_amend), min_size=1, max_size=80).map(
    lambda ops: LADDER + ops)


def engine_top(engine: Engine, depth: int) -> tuple[list, list]:
    bids, asks = engine.depth(M, depth)
    return bids, asks


def checksum_of(bids: list, asks: list) -> int:
    """The checksum rule written out again, independently of l2.py: the best 10 levels per side."""
    words = [f"{p}:{s}" for p, s, _ in asks[:10]] + [f"{p}:{s}" for p, s, _ in bids[:10]]
    return zlib.crc32(":".join(words).encode())


class Subscriber:
    """What a client does with the stream: a LevelBook from the snapshot, then every update."""

    def __init__(self, snapshot: L2Update) -> None:
        self.book = LevelBook.of(snapshot.bids, snapshot.asks)
        self.seq = snapshot.last_seq

    def apply(self, update: L2Update) -> None:
        assert update.first_seq == self.seq + 1, "each update starts right after the previous message"
        for side, levels in ((Side.BUY, update.bids), (Side.SELL, update.asks)):
            for price, size, count in levels:
                self.book.set(side, price, (size, count))
        self.seq = update.last_seq


def test_the_checksum_rule_has_the_docs_example() -> None:
    assert top_checksum([(101, 5), (102, 7)], [(100, 3)]) == zlib.crc32(b"101:5:102:7:100:3") == 3788934575
    assert top_checksum([], []) == zlib.crc32(b"") == 0
    eleven = [(100 + i, 1) for i in range(11)]
    assert top_checksum(eleven, []) == zlib.crc32(":".join(f"{100 + i}:1" for i in range(10)).encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.integers(min_value=0, max_value=40), st.randoms(use_true_random=False))
def test_snapshot_plus_updates_equal_the_engines_book_at_every_last_seq(ops: list[tuple], start: int,
                                                                      rng: random.Random) -> None:
    """Slow subscribers read about every fifth command; the feed's log is short (8 levels), so they also take
    the path of a view the log has moved past."""
    engine = Engine([MarketConfig(M)])
    feed: BookFeed | None = None
    views: dict[int, tuple[ViewDiff, Subscriber]] = {}
    twins: dict[int, tuple[ViewDiff, Subscriber]] = {}  # as `views`, in step with them: they share updates
    slow: dict[int, tuple[ViewDiff, Subscriber]] = {}
    for seq, op in enumerate(ops, start=1):
        if seq == min(start, len(ops)) or feed is None and seq == 1 and start == 0:
            feed = BookFeed(engine, M, log_limit=8)  # subscribers arrive once some book exists
            for depth in DEPTHS:
                for group in (views, twins, slow):
                    view = feed.subscribe(depth)
                    group[depth] = view, Subscriber(view.snapshot(feed))
        command = build(op, seq)
        hint = feed.before(command) if feed else None
        events = engine.apply(command)
        if feed is None:
            continue
        feed.after(command, events, hint)
        bids, asks = engine.depth(M, 2**31)
        assert feed.book.top(Side.BUY, 2**31) == bids and feed.book.top(Side.SELL, 2**31) == asks
        quiet = rng.random() < 0.1
        for group, every in ((views, True), (twins, True), (slow, rng.random() < 0.2)):
            if not every:
                continue
            for depth, (view, subscriber) in group.items():
                update = view.take(feed, even_unchanged=quiet)
                if update is None:
                    continue
                subscriber.apply(update)
                top_bids, top_asks = engine_top(engine, depth)
                assert subscriber.book.top(Side.BUY, depth + 5) == top_bids, (depth, seq)
                assert subscriber.book.top(Side.SELL, depth + 5) == top_asks, (depth, seq)
                assert update.last_seq == engine.last_seq(M)
                assert update.checksum == checksum_of(top_bids, top_asks) == subscriber.book.checksum()
    if feed is None:
        return
    for group in (views, twins, slow):  # the end: every subscriber, having read what is left, holds the same book
        for depth, (view, subscriber) in group.items():
            update = view.take(feed)
            if update is not None:
                subscriber.apply(update)
            top_bids, top_asks = engine_top(engine, depth)
            assert (subscriber.book.top(Side.BUY, 2**31), subscriber.book.top(Side.SELL, 2**31)) == (top_bids, top_asks)
            assert subscriber.book.checksum() == checksum_of(top_bids, top_asks)


def test_a_subscriber_that_never_reads_holds_a_bounded_view_while_orders_flow() -> None:
    """Prices walk across a wide range, so levels keep entering and leaving every view: a subscriber that stopped
    reading holds at most its view (2 x depth levels), the shared log stays within its limit, and the stuck
    subscriber's next read is one update that brings it exactly to the book (by comparing its whole view)."""
    engine = Engine([MarketConfig(M)])
    feed = BookFeed(engine, M, log_limit=16)
    depth = 10
    view = feed.subscribe(depth)
    subscriber = Subscriber(view.snapshot(feed))
    rng = random.Random(3)
    for seq in range(1, 20_001):
        mid = 1000 + (seq // 50) % 400  # the market drifts: old levels leave views, new ones enter
        side = rng.choice((Side.BUY, Side.SELL))
        price = mid - rng.randint(1, 30) if side is Side.BUY else mid + rng.randint(1, 30)
        kind = OrderType.LIMIT if rng.random() < 0.8 else OrderType.IOC
        command = PlaceOrder(M, seq, side, kind, rng.randint(1, 9), price)
        hint = feed.before(command)
        feed.after(command, engine.apply(command), hint)
        if seq == 1000:  # it read once, with a full book in view, and never again
            update = view.take(feed)
            assert update is not None
            subscriber.apply(update)
        assert view.held_levels() <= 2 * depth and len(feed._touched) <= feed.log_limit
    assert len(feed.book) > 100
    full_diffs = view.full_diffs
    update = view.take(feed)
    assert update is not None and (update.first_seq, update.last_seq) == (1001, 20_000), "one merged update"
    assert view.full_diffs == full_diffs + 1, "the log had moved past it"
    subscriber.apply(update)
    bids, asks = engine.depth(M, depth)
    assert (subscriber.book.top(Side.BUY, 99), subscriber.book.top(Side.SELL, 99)) == (bids, asks)


def test_a_view_shallower_than_the_checksum_is_refused_with_what_to_do_instead() -> None:
    """CONTRACT section 8: the checksum covers the best 10 levels of each side, so every view holds them."""
    feed = BookFeed(Engine([MarketConfig(M)]), M)
    for depth in (-1, 0, 1, 5, 9, 1001):
        problem = depth_problem(depth)
        assert problem and f"got {depth}" in problem and "read the first N levels of a depth-10 view" in problem
        with pytest.raises(ValueError, match="depth must be 10 to 1000"):
            ViewDiff(feed, depth)
    assert depth_problem(10) is None and depth_problem(1000) is None
    assert feed.subscribe(10).held_levels() == 0


def test_a_maker_reduced_by_self_trade_prevention_without_a_trade_changes_its_level() -> None:
    """No event of a DECREMENT names the maker's price: the feed still re-reads that level."""
    from exchange.engine import SelfTradePrevention

    engine = Engine([MarketConfig(M)])
    feed = BookFeed(engine, M)
    view = feed.subscribe(10)
    commands = [PlaceOrder(M, 1, Side.SELL, OrderType.LIMIT, 5, 101, "a"),
                PlaceOrder(M, 2, Side.SELL, OrderType.LIMIT, 4, 102, "b"),
                PlaceOrder(M, 3, Side.BUY, OrderType.LIMIT, 2, 101, "a", SelfTradePrevention.DECREMENT)]
    for command in commands:
        hint = feed.before(command)
        feed.after(command, engine.apply(command), hint)
    update = view.take(feed)
    assert update is not None and update.asks == ((101, 3, 1), (102, 4, 1)) and update.bids == ()
    assert update.checksum == zlib.crc32(b"101:3:102:4")
