"""The aggregated book (L2) and its stream: levels, the top-10 checksum, and each subscriber's view and diff.

Pure (no I/O, no clocks), shared by the node (StreamBook), the client library (its local L2 book) and the
tests, so the rules below have one home (docs/market-data.md, CONTRACT section 8).

* ``top_checksum``: CRC32 of ``ask:ask...:bid...`` where each level is ``price:size``, the best 10 asks
  lowest first then the best 10 bids highest first, all joined by ``:`` (an empty book: CRC32 of b"").
* ``LevelBook``: price -> (size, order count) per side, ordered best first; the node's copy of every level
  (one per market, kept only while someone subscribes) and the client's copy of its view.
* ``BookFeed``: keeps a market's ``LevelBook`` equal to the engine's book from each command's events (a rest
  adds to its level, a fill or a cancel takes from it; the few levels no event prices are read again from the
  engine), and notes when each level was last touched: the last ``log_limit`` distinct levels, in the order of
  their last touch, one record for all subscribers.
* ``ViewDiff``: one subscriber's view (its ``depth`` best levels per side) and what it holds (``sent``: at most
  ``depth`` levels per side). ``take`` gives one update covering every sequence since the previous one: the
  levels touched since then (from the feed's record) whose value in the view differs from what the subscriber
  holds, plus the levels that crossed the view's boundary (entered because better ones left, or pushed out by
  better ones), all with their absolute value now (so changes merge: a level changed ten times is sent once, a
  level that came and went in between is not sent). A subscriber that does not read costs nothing more the
  longer it waits: nothing is queued for it; once the feed has forgotten touches it needs, its next ``take``
  compares its whole view (``2 x depth`` levels) instead. Per subscriber: at most ``2 x depth`` levels plus a
  constant.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from sortedcontainers import SortedList

from exchange.engine.engine import Engine
from exchange.engine.model import (
    AmendOrder,
    CancelOrder,
    CancelReason,
    Command,
    Event,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderFilled,
    OrderReduced,
    OrderRested,
    Side,
)
from exchange.shared.markets import int64_total

CHECKSUM_LEVELS = 10  # levels per side the top checksum covers
# the views a StreamBook subscriber may ask for: at least the levels the checksum covers (CONTRACT section 8: the
# checksum is over the best 10 levels of each side, so a view must hold them; Kraken's minimum is 10 too)
MIN_STREAM_DEPTH = CHECKSUM_LEVELS
MAX_STREAM_DEPTH = 1000
Level = tuple[int, int, int]  # (price, total open size, order count)
Value = tuple[int, int]  # (total open size, order count); (0, 0): no level
GONE: Value = (0, 0)
SIDES = (Side.BUY, Side.SELL)
_INF = float("inf")


def depth_problem(depth: int) -> str | None:
    """Why a StreamBook `depth` is refused (None: it is accepted), in words a person can act on."""
    if MIN_STREAM_DEPTH <= depth <= MAX_STREAM_DEPTH:
        return None
    return (f"depth must be {MIN_STREAM_DEPTH} to {MAX_STREAM_DEPTH}, got {depth}: the checksum covers the top "
            f"{CHECKSUM_LEVELS} levels per side; for fewer levels, read the first N levels of a depth-"
            f"{MIN_STREAM_DEPTH} view")


def top_checksum(asks: Iterable[tuple[int, int]], bids: Iterable[tuple[int, int]]) -> int:
    """CONTRACT section 8's checksum of the first 10 (price, size) of `asks` (lowest price first) and of
    `bids` (highest price first): unsigned CRC32 of their decimal ``price:size`` joined by ``:``."""
    parts: list[str] = []
    for side in (asks, bids):
        for count, (price, size) in enumerate(side):
            if count == CHECKSUM_LEVELS:
                break
            parts += (str(price), str(int64_total(size)))
    return zlib.crc32(":".join(parts).encode("ascii"))


class _Side:
    __slots__ = ("levels", "keys", "sign")

    def __init__(self, side: Side) -> None:
        self.levels: dict[int, Value] = {}
        self.keys = SortedList()  # sign * price: best (smallest) first
        self.sign = -1 if side is Side.BUY else 1


class LevelBook:
    """Price levels of one book, per side: price -> (size, order count), readable best first."""

    __slots__ = ("_sides",)

    def __init__(self) -> None:
        self._sides = {side: _Side(side) for side in SIDES}

    @classmethod
    def of(cls, bids: Iterable[Level], asks: Iterable[Level]) -> LevelBook:
        book = cls()
        for side, levels in ((Side.BUY, bids), (Side.SELL, asks)):
            for price, size, count in levels:
                book.set(side, price, (size, count))
        return book

    def set(self, side: Side, price: int, value: Value) -> None:
        """Sets one level's absolute (size, count); a size of 0 removes it."""
        book = self._sides[side]
        if value[0] <= 0:
            if book.levels.pop(price, None) is not None:
                book.keys.remove(book.sign * price)
            return
        if price not in book.levels:
            book.keys.add(book.sign * price)
        book.levels[price] = value

    def add(self, side: Side, price: int, size: int, count: int) -> None:
        """Adds `size` and `count` (negative: takes away) to one level; a level left with no size goes."""
        book = self._sides[side]
        held = book.levels.get(price)
        if held is None:
            if size > 0:
                book.levels[price] = (size, count)
                book.keys.add(book.sign * price)
            return
        total = held[0] + size
        if total > 0:
            book.levels[price] = (total, held[1] + count)
        else:
            del book.levels[price]
            book.keys.remove(book.sign * price)

    def get(self, side: Side, price: int) -> Value:
        return self._sides[side].levels.get(price, GONE)

    def __len__(self) -> int:
        return sum(len(book.levels) for book in self._sides.values())

    def count(self, side: Side) -> int:
        return len(self._sides[side].levels)

    def top(self, side: Side, depth: int) -> list[Level]:
        """The best `depth` levels of `side`, best first."""
        book = self._sides[side]
        return [(book.sign * key, *book.levels[book.sign * key]) for key in book.keys.islice(0, max(depth, 0))]

    def prices(self, side: Side) -> Iterator[int]:
        """Every price of `side`, best first."""
        book = self._sides[side]
        return (book.sign * key for key in book.keys)

    def best(self, side: Side) -> int | None:
        book = self._sides[side]
        return book.sign * book.keys[0] if book.keys else None

    def checksum(self) -> int:
        """`top_checksum` of this book's best 10 levels per side."""
        n = CHECKSUM_LEVELS
        return top_checksum([(p, s) for p, s, _ in self.top(Side.SELL, n)],
                            [(p, s) for p, s, _ in self.top(Side.BUY, n)])

    # -- what a view's boundary needs (keys: sign * price, smaller is better) -----------------------------

    def key(self, side: Side, price: int) -> int:
        return self._sides[side].sign * price

    def limit(self, side: Side, depth: int) -> float:
        """The key of the `depth`-th best level of `side` (infinity if there are fewer): a level is in a view
        of `depth` levels exactly when its key is at most this."""
        keys = self._sides[side].keys
        return keys[depth - 1] if len(keys) >= depth else _INF

    def prices_between(self, side: Side, low: float, high: float) -> Iterator[int]:
        """Prices of `side` whose key is in (low, high] (`low` finite)."""
        book = self._sides[side]
        maximum = None if high == _INF else high
        return (book.sign * key for key in book.keys.irange(low, maximum, inclusive=(False, True)))


@dataclass(frozen=True, slots=True)
class L2Update:
    """Changes within one view over sequences first_seq..last_seq: (price, size, count) per side, size 0 = the
    level left the view; `checksum`: top checksum of the view after them."""

    first_seq: int
    last_seq: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    checksum: int


class ViewDiff:
    """One subscriber's view of `depth` levels per side: what it holds (`sent`) and how to bring it up to date
    (module docstring). Its changes are not kept per subscriber: `take` reads, from its feed, the levels touched
    since its previous update."""

    __slots__ = ("depth", "sent", "limits", "sent_seq", "seen_seq", "position", "full_diffs")

    def __init__(self, feed: BookFeed, depth: int) -> None:
        problem = depth_problem(depth)
        if problem:
            raise ValueError(problem)
        book = feed.book
        self.depth = depth
        self.sent: dict[Side, dict[int, Value]] = {
            side: {p: (s, n) for p, s, n in book.top(side, depth)} for side in SIDES}
        self.limits = {side: book.limit(side, depth) for side in SIDES}  # at `seen_seq`
        self.sent_seq = feed.seq  # the last sequence of the last message: what the subscriber's view reflects
        self.seen_seq = feed.seq  # the last sequence compared with the view (no change since sent_seq: not sent)
        self.position = feed.clock  # the feed's touch clock at `seen_seq`
        self.full_diffs = 0  # takes that had to compare the whole view (the feed had forgotten touches it needed)

    def snapshot(self, feed: BookFeed) -> L2Update:
        """The view as first sent (the feed must be where the view was made)."""
        bids, asks = feed.book.top(Side.BUY, self.depth), feed.book.top(Side.SELL, self.depth)
        return L2Update(self.sent_seq, self.sent_seq, tuple(bids), tuple(asks), feed.checksum())

    def held_levels(self) -> int:
        return sum(len(s) for s in self.sent.values())

    def take(self, feed: BookFeed, even_unchanged: bool = False) -> L2Update | None:
        """The view's changes since its last update, as one update covering every sequence since then (None if
        none of its levels changed, unless `even_unchanged` and sequences passed: an update without levels).
        Reads only the levels the feed says were touched since, and those that crossed the view's boundary; a view
        so far behind that the feed has forgotten touches it needs compares its whole view instead."""
        seq = feed.seq
        if seq == self.seen_seq:
            if not even_unchanged or self.sent_seq == seq:
                return None
            quiet = L2Update(self.sent_seq + 1, seq, (), (), feed.checksum())
            self.sent_seq = seq
            return quiet
        # views of one depth at the same place (they subscribed together, read in step) get the same update: the
        # first one computes it, the others only apply it to what they hold
        key = (self.depth, self.sent_seq, self.seen_seq, even_unchanged)
        shared = feed.takes.get(key)
        if shared is not None:
            update, limits = shared
            if update is not None:
                for side, levels in ((Side.BUY, update.bids), (Side.SELL, update.asks)):
                    held = self.sent[side]
                    for price, size, count in levels:
                        if size:
                            held[price] = (size, count)
                        else:
                            held.pop(price, None)
                self.sent_seq = seq
            self.limits = dict(limits)
            self.seen_seq, self.position = seq, feed.clock
            return update
        computed = self._compute(feed, even_unchanged)
        feed.takes[key] = (computed, dict(self.limits))
        return computed

    def _compute(self, feed: BookFeed, even_unchanged: bool) -> L2Update | None:
        book, seq = feed.book, feed.seq
        touched = feed.touched_since(self.position)
        if touched is None:
            self.full_diffs += 1
        sides: list[tuple[Level, ...]] = []
        for side in SIDES:
            held, after = self.sent[side], book.limit(side, self.depth)
            changes: dict[int, Value] = {}
            if touched is None:
                now = {p: (s, n) for p, s, n in book.top(side, self.depth)}
                changes = {p: GONE for p in held if p not in now}
                changes.update((p, v) for p, v in now.items() if held.get(p) != v)
            else:
                prices = touched[side]
                for price in prices:
                    value = book.get(side, price)
                    if value[0] and book.key(side, price) > after:
                        value = GONE  # beyond the view now
                    if held.get(price, GONE) != value:
                        changes[price] = value
                before = self.limits[side]
                if after > before:  # better levels left: the next ones entered the view
                    for price in book.prices_between(side, before, after):
                        if price not in prices:
                            changes[price] = book.get(side, price)
                elif after < before:  # better levels arrived: the last ones left the view
                    for price in book.prices_between(side, after, before):
                        if price not in prices and price in held:
                            changes[price] = GONE
            for price, value in changes.items():
                if value[0]:
                    held[price] = value
                else:
                    held.pop(price, None)
            self.limits[side] = after
            sides.append(tuple((p, s, n) for p, (s, n) in changes.items()))
        self.seen_seq, self.position = seq, feed.clock
        if not sides[0] and not sides[1] and not even_unchanged:
            return None  # nothing in view changed: the next update covers these sequences too
        update = L2Update(self.sent_seq + 1, seq, sides[0], sides[1], feed.checksum())
        self.sent_seq = seq
        return update


_BUY, _SELL = Side.BUY, Side.SELL


Hint = tuple[Side, int, int, int]  # the resting order a cancel or amend names: side, price, order id, open size


class BookFeed:
    """One market's levels kept equal to the engine's book, and when each level was last touched,
    which every subscriber's view reads from: each level once, at its last touch (bounded: the last `log_limit`
    levels touched; a view further behind than the oldest of them compares its whole view once).

    Drive it around every ``Engine.apply`` of the market: ``hint = before(command)``, apply, then
    ``after(command, events, hint)``. Level totals follow from the events (a rest adds, a fill or a cancel
    takes away); only the rare levels no event prices (an amend's, a maker's that self-trade prevention
    reduced) are read again from the engine."""

    def __init__(self, engine: Engine, market: str, log_limit: int = 4096) -> None:
        self.engine = engine
        self.market = market
        bids, asks = engine.depth(market, 2**31)
        self.book = LevelBook.of(bids, asks)
        self.seq = engine.last_seq(market)
        self.log_limit = log_limit
        self.clock = 0  # counts touches
        # (side, price) -> the clock at its last touch, least recently touched first
        self._touched: OrderedDict[tuple[Side, int], int] = OrderedDict()
        self._forgotten = 0  # the clock of the last touch forgotten (views from before it compare whole views)
        self._checksum = (-1, 0)  # (seq, the top checksum at seq)
        # the updates views took at this sequence, by (depth, sent_seq, seen_seq, even_unchanged): ViewDiff.take
        self.takes: dict[tuple[int, int, int, bool], tuple[L2Update | None, dict[Side, float]]] = {}

    def touched_since(self, position: int) -> dict[Side, set[int]] | None:
        """The prices touched since clock `position`, per side (each once, newest first: the cost is the number of
        distinct levels, not of touches); None if touches after `position` were forgotten."""
        if position < self._forgotten:
            return None
        touched: dict[Side, set[int]] = {Side.BUY: set(), Side.SELL: set()}
        for (side, price), when in reversed(self._touched.items()):
            if when <= position:
                break
            touched[side].add(price)
        return touched

    def _touch(self, side: Side, price: int) -> None:
        key = (side, price)
        self.clock += 1
        touched = self._touched
        touched[key] = self.clock
        touched.move_to_end(key)

    def before(self, command: Command) -> Hint | None:
        """Where the order a cancel or amend names rests now, and its open size."""
        if type(command) is CancelOrder or type(command) is AmendOrder:
            view = self.engine.order(self.market, command.order_id)
            if view is not None:
                return view.side, view.price, view.order_id, view.remaining
        return None

    def after(self, command: Command, events: list[Event], hint: Hint | None) -> None:
        """Brings the levels to the engine's book after `command` and logs the levels it touched."""
        book, engine, market = self.book, self.engine, self.market
        add, append = book.add, self._touch
        reread: set[tuple[Side, int]] = set()
        taker = command.order_id if type(command) is AmendOrder else command.seq
        # the hot kinds read by index: a NamedTuple's attribute is a slower descriptor
        for event in cast("list[tuple[Any, ...]]", events):  # (a string: no generic built per call)
            kind = type(event)
            if kind is OrderRested:  # (market, seq, order_id, side, price, size, account)
                add(event[3], event[4], event[5], 1)
                append(event[3], event[4])
            elif kind is OrderFilled:  # (market, seq, trade_id, price, size, maker, taker, taker_side, maker_rem...)
                maker_side = _SELL if event[7] is _BUY else _BUY
                add(maker_side, event[3], -event[4], 0 if event[8] else -1)
                append(maker_side, event[3])
            elif kind is OrderAccepted:
                continue
            elif kind is OrderCancelled or kind is OrderReduced:
                gone = cast(OrderCancelled | OrderReduced, event)
                if hint is not None and gone.order_id == hint[2] and type(command) is CancelOrder:
                    book.add(hint[0], hint[1], -gone.size, -1)
                    append(hint[0], hint[1])
                elif gone.reason is CancelReason.SELF_TRADE_PREVENTED and gone.order_id != taker:
                    for side in SIDES:  # a maker: at the best level of its side that is left, or at one gone
                        best = engine.best_price(market, side)
                        limit = _INF if best is None else book.key(side, best)
                        if best is not None:
                            reread.add((side, best))
                        for price in book.prices(side):  # levels better than the engine's best are gone
                            if book.key(side, price) >= limit:
                                break
                            reread.add((side, price))
            elif kind is OrderAmended and hint is not None:
                reread.update(((hint[0], hint[1]), (hint[0], cast(OrderAmended, event).price)))
        for side, price in reread:  # after every delta: the engine's values are the final ones
            book.set(side, price, engine.level(market, side, price))
            append(side, price)
        self.seq = command.seq
        if self.takes:
            self.takes = {}
        touched = self._touched
        while len(touched) > self.log_limit:
            self._forgotten = touched.popitem(last=False)[1]

    def checksum(self) -> int:
        """The top checksum now (every view holds the top 10 levels: computed once per sequence)."""
        seq, value = self._checksum
        if seq != self.seq:
            value = self.book.checksum()
            self._checksum = (self.seq, value)
        return value

    def subscribe(self, depth: int) -> ViewDiff:
        """A new subscriber's view of `depth` levels per side, from now on."""
        return ViewDiff(self, depth)
