"""The aggregated book (L2) and its stream: levels, the top-10 checksum, and each subscriber's view and diff.

Pure (no I/O, no clocks), shared by the node (StreamBook), the client library (its local L2 book) and the
tests, so the rules below have one home (README "Market data: the L2 book stream", CONTRACT section 8).

* ``top_checksum``: CRC32 of ``ask:ask...:bid...`` where each level is ``price:size``, the best 10 asks
  lowest first then the best 10 bids highest first, all joined by ``:`` (an empty book: CRC32 of b"").
* ``LevelBook``: price -> (size, order count) per side, ordered best first; the node's copy of every level
  (one per market, kept only while someone subscribes) and the client's copy of its view.
* ``BookFeed``: keeps a market's ``LevelBook`` equal to the engine's book, re-reading from the engine only the
  levels a command touched (the events name them), and hands each change to the ``ViewDiff`` of every
  subscriber.
* ``ViewDiff``: one subscriber's view (its ``depth`` best levels per side). Every applied command merges into
  its pending changes (absolute values: the latest one of a level wins); ``take`` hands them out as one
  update covering every sequence since the previous one. A subscriber that does not read only makes its
  pending changes cover a longer range, never grow without bound:

  - ``sent``: what the subscriber holds, at most ``depth`` levels per side;
  - ``pending``: a level is pending only while its value differs from ``sent``'s (a level that entered and
    left the view between two updates, or came back to the value the subscriber holds, is dropped). A pending
    level is either one the subscriber holds or one in the current view, so at most ``2 x depth`` per side.

  In all, at most ``6 x depth`` (price, size, count) entries per subscriber (``2 x depth`` held, ``4 x depth``
  pending), plus a constant.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from sortedcontainers import SortedList

from exchange.engine.engine import Engine
from exchange.engine.model import (
    AmendOrder,
    CancelOrder,
    CancelReason,
    Command,
    Event,
    OrderAmended,
    OrderCancelled,
    OrderFilled,
    OrderReduced,
    OrderRested,
    Side,
)

CHECKSUM_LEVELS = 10  # levels per side the top checksum covers
MAX_STREAM_DEPTH = 1000  # the deepest view a StreamBook subscriber may ask for
Level = tuple[int, int, int]  # (price, total open size, order count)
Value = tuple[int, int]  # (total open size, order count); (0, 0): no level
GONE: Value = (0, 0)
SIDES = (Side.BUY, Side.SELL)
_INF = float("inf")


def top_checksum(asks: Iterable[tuple[int, int]], bids: Iterable[tuple[int, int]],
                 levels: int = CHECKSUM_LEVELS) -> int:
    """CONTRACT section 8's checksum of the first `levels` (price, size) of `asks` (lowest price first) and of
    `bids` (highest price first): unsigned CRC32 of their decimal ``price:size`` joined by ``:``."""
    parts: list[str] = []
    for side in (asks, bids):
        for count, (price, size) in enumerate(side):
            if count == levels:
                break
            parts += (str(price), str(size))
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

    def checksum(self, depth: int = CHECKSUM_LEVELS) -> int:
        """`top_checksum` of this book's best min(10, `depth`) levels per side."""
        n = min(CHECKSUM_LEVELS, depth)
        return top_checksum([(p, s) for p, s, _ in self.top(Side.SELL, n)],
                            [(p, s) for p, s, _ in self.top(Side.BUY, n)], n)

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
    """One subscriber's view of `depth` levels per side and its pending, merged changes (module docstring)."""

    __slots__ = ("depth", "sent", "pending", "limits", "sent_seq", "seq")

    def __init__(self, book: LevelBook, depth: int, seq: int) -> None:
        if not 1 <= depth <= MAX_STREAM_DEPTH:
            raise ValueError(f"depth must be between 1 and {MAX_STREAM_DEPTH}, got {depth}")
        self.depth = depth
        self.sent: dict[Side, dict[int, Value]] = {
            side: {p: (s, n) for p, s, n in book.top(side, depth)} for side in SIDES}
        self.pending: dict[Side, dict[int, Value]] = {side: {} for side in SIDES}
        self.limits = {side: book.limit(side, depth) for side in SIDES}
        self.sent_seq = seq  # the last sequence the subscriber's view reflects
        self.seq = seq  # the last sequence applied to the pending changes

    def snapshot(self, book: LevelBook, checksum: int) -> L2Update:
        """The view as first sent (the book must be at `sent_seq`; `checksum`: its top checksum for this depth)."""
        bids, asks = book.top(Side.BUY, self.depth), book.top(Side.SELL, self.depth)
        return L2Update(self.seq, self.seq, tuple(bids), tuple(asks), checksum)

    @property
    def changed(self) -> bool:
        """Whether the view has changes its subscriber does not hold yet."""
        return bool(self.pending[Side.BUY] or self.pending[Side.SELL])

    def pending_levels(self) -> int:
        return sum(len(p) for p in self.pending.values())

    def held_levels(self) -> int:
        return sum(len(s) for s in self.sent.values())

    def _note(self, side: Side, price: int, value: Value) -> None:
        held = self.sent[side].get(price, GONE)
        if held == value:
            self.pending[side].pop(price, None)
        else:
            self.pending[side][price] = value

    def on_changed(self, book: LevelBook, seq: int, touched: dict[Side, set[int]]) -> None:
        """`book` is now at `seq`, changed only at the `touched` prices since the previous call."""
        self.seq = seq
        for side in SIDES:
            prices = touched[side]
            before, after = self.limits[side], book.limit(side, self.depth)
            for price in prices:
                value = book.get(side, price)
                key = book.key(side, price)
                if value[0] and key <= after:
                    self._note(side, price, value)
                elif key <= before:
                    self._note(side, price, GONE)
            if after > before:  # better levels left: the next ones entered the view
                for price in book.prices_between(side, before, after):
                    if price not in prices:
                        self._note(side, price, book.get(side, price))
            elif after < before:  # better levels arrived: the last ones left the view
                for price in book.prices_between(side, after, before):
                    if price not in prices:
                        self._note(side, price, GONE)
            self.limits[side] = after

    def take(self, checksum: Callable[[int], int], even_unchanged: bool = False) -> L2Update | None:
        """The pending changes as one update (None if there is none). `checksum(depth)`: the top checksum of a
        view of `depth` of the book now (which must be at `seq`). An unchanged view gives None unless
        `even_unchanged` (an update without levels, if sequences passed)."""
        if self.seq == self.sent_seq:
            return None
        if not even_unchanged and not self.pending[Side.BUY] and not self.pending[Side.SELL]:
            return None  # nothing in view changed: the next update covers these sequences too
        sides = []
        for side in SIDES:
            held, changes = self.sent[side], self.pending[side]
            for price, value in changes.items():
                if value[0]:
                    held[price] = value
                else:
                    held.pop(price, None)
            sides.append(tuple((p, s, n) for p, (s, n) in changes.items()))
            self.pending[side] = {}
        update = L2Update(self.sent_seq + 1, self.seq, sides[0], sides[1], checksum(self.depth))
        self.sent_seq = self.seq
        return update


def _opposite(side: Side) -> Side:
    return Side.SELL if side is Side.BUY else Side.BUY


class BookFeed:
    """One market's levels kept equal to the engine's book, and the views of its subscribers.

    Drive it around every ``Engine.apply`` of the market: ``hint = before(command)``, apply, then
    ``after(command, events, hint)``."""

    def __init__(self, engine: Engine, market: str) -> None:
        self.engine = engine
        self.market = market
        bids, asks = engine.depth(market, 2**31)
        self.book = LevelBook.of(bids, asks)
        self.seq = engine.last_seq(market)
        self.views: set[ViewDiff] = set()
        self._checksums: dict[int, tuple[int, int]] = {}  # depth class -> (seq, checksum)

    def before(self, command: Command) -> tuple[Side, int] | None:
        """Where the order a cancel or amend names rests now (its level changes)."""
        if type(command) is CancelOrder or type(command) is AmendOrder:
            view = self.engine.order(self.market, command.order_id)
            if view is not None:
                return view.side, view.price
        return None

    def after(self, command: Command, events: list[Event], hint: tuple[Side, int] | None) -> dict[Side, set[int]]:
        """Re-reads the levels `events` touched, updates every view; returns the touched prices per side."""
        touched: dict[Side, set[int]] = {Side.BUY: set(), Side.SELL: set()}
        if hint is not None:
            touched[hint[0]].add(hint[1])
        self_trade = False
        for event in events:
            if isinstance(event, OrderFilled):
                touched[_opposite(event.taker_side)].add(event.price)
            elif isinstance(event, OrderRested):
                touched[event.side].add(event.price)
            elif isinstance(event, OrderAmended):
                if hint is not None:
                    touched[hint[0]].add(event.price)
            elif isinstance(event, OrderCancelled | OrderReduced) and event.reason is CancelReason.SELF_TRADE_PREVENTED:
                self_trade = True
        engine, market, book = self.engine, self.market, self.book
        for side in SIDES:
            best = engine.best_price(market, side)
            if self_trade and best is not None:  # a maker reduced without a trade rests at the new best
                touched[side].add(best)
            # levels better than the engine's best are gone (a walk took them, a self-trade cancelled them)
            new_key = _INF if best is None else book.key(side, best)
            for price in book.prices(side):
                if book.key(side, price) >= new_key:
                    break
                touched[side].add(price)
            for price in touched[side]:
                book.set(side, price, engine.level(market, side, price))
        self.seq = command.seq
        for view in self.views:
            view.on_changed(book, command.seq, touched)
        return touched

    def checksum(self, depth: int) -> int:
        """The top checksum of a view of `depth` at the current sequence (computed once per depth class)."""
        n = min(depth, CHECKSUM_LEVELS)
        cached = self._checksums.get(n)
        if cached is not None and cached[0] == self.seq:
            return cached[1]
        value = self.book.checksum(n)
        self._checksums[n] = (self.seq, value)
        return value

    def subscribe(self, depth: int) -> ViewDiff:
        view = ViewDiff(self.book, depth, self.seq)
        self.views.add(view)
        return view

    def unsubscribe(self, view: ViewDiff) -> None:
        self.views.discard(view)
