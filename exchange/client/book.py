"""A local copy of one market's book, kept current from its events and checked against the node's checksum.

`LocalBook` holds every resting order (id, price, open size) in priority order, as the engine does, because the
checksum (README "Book checksum") covers each order, not only levels. It starts from an L3 snapshot
(GetOrderBook with `all_levels` and `include_orders`) and applies StreamEvents from the snapshot's seq + 1.

`BookTracker` is the subscription's logic without I/O, shared by the sync and asyncio subscriptions:
* where to resume the event stream after a break (`resume_point`: the last seq seen, skipping the events of it
  already applied, so a stream may end anywhere, even between two events of one command);
* verification: `expect(seq, checksum)` records the node's checksum at a seq; when the local book has applied
  all of that seq (the first event of a later seq arrives, or the stream is quiet there for a moment) their
  checksums are compared. A mismatch, or an event that cannot apply (an unknown maker order), raises `Diverged`:
  the subscription then starts again from a new snapshot.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections import OrderedDict
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from exchange.client import types as t
from exchange.client.core import StreamPosition
from exchange.errors import ExchangeError, Unavailable


class Diverged(Exception):
    """The local book no longer equals the node's: it must be rebuilt from a snapshot."""


def book_checksum(bids: list[tuple[int, int, int]], asks: list[tuple[int, int, int]]) -> int:
    """README "Book checksum" over (order id, price, open size) of each side's orders in priority order."""
    flat = [value for order in (*bids, *asks) for value in order]
    return zlib.crc32(struct.pack(f">{1 + len(flat)}q", len(bids), *flat))


class LocalBook:
    """Every resting order of one market, per side and price level in time priority."""

    def __init__(self, market: str) -> None:
        self.market = market
        self.seq = 0
        # side -> price -> order id -> open size (insertion order is time priority)
        self.levels: dict[t.Side, dict[int, OrderedDict[int, int]]] = {t.Side.BUY: {}, t.Side.SELL: {}}
        self.orders: dict[int, tuple[t.Side, int]] = {}  # order id -> (side, price)

    @classmethod
    def from_snapshot(cls, book: t.Book) -> LocalBook:
        local = cls(book.market)
        local.seq = book.seq
        for side, levels in ((t.Side.BUY, book.bids), (t.Side.SELL, book.asks)):
            for level in levels:
                if level.order_count and not level.orders:
                    raise ValueError("the snapshot has no orders (L3): ask with include_orders")
                for order in level.orders:
                    local.rest(order.order_id, side, level.price, order.size)
        return local

    # -- changes ----------------------------------------------------------------------------------------

    def rest(self, order_id: int, side: t.Side, price: int, size: int) -> None:
        """Puts the order at the back of its level (replacing it where it was)."""
        self.remove(order_id)
        self.levels[side].setdefault(price, OrderedDict())[order_id] = size
        self.orders[order_id] = (side, price)

    def remove(self, order_id: int) -> None:
        placed = self.orders.pop(order_id, None)
        if placed is None:
            return
        side, price = placed
        level = self.levels[side][price]
        del level[order_id]
        if not level:
            del self.levels[side][price]

    def set_size(self, order_id: int, size: int) -> None:
        side, price = self.orders[order_id]
        if size <= 0:
            self.remove(order_id)
        else:
            self.levels[side][price][order_id] = size

    def size_of(self, order_id: int) -> int | None:
        placed = self.orders.get(order_id)
        return None if placed is None else self.levels[placed[0]][placed[1]][order_id]

    def apply(self, event: t.Event) -> None:
        """Applies one event of the market's stream (raises Diverged if it cannot apply to this book)."""
        if isinstance(event, t.OrderRested):
            self.rest(event.order_id, event.side, event.price, event.size)
        elif isinstance(event, t.TradeExecuted):
            maker = self.size_of(event.maker_order_id)
            if maker is None or maker < event.size:
                raise Diverged(f"trade {event.trade_id} at seq {event.seq}: maker order {event.maker_order_id} "
                               f"rests here with {maker} lots, not the {event.size} traded")
            self.set_size(event.maker_order_id, maker - event.size)
            taker = self.size_of(event.taker_order_id)  # only an amended order trades from the book
            if taker is not None:
                self.set_size(event.taker_order_id, taker - event.size)
        elif isinstance(event, t.OrderCancelled):
            self.remove(event.order_id)
        elif isinstance(event, t.OrderReduced):
            if self.size_of(event.order_id) is not None:  # a resting order (an incoming one does not rest yet)
                self.set_size(event.order_id, event.remaining)
        elif isinstance(event, t.OrderAmended):
            placed = self.orders.get(event.order_id)
            if placed is None:
                raise Diverged(f"amend at seq {event.seq} of order {event.order_id}, which does not rest here")
            if event.priority_kept:
                self.set_size(event.order_id, event.size)
            else:  # re-queued at the back (at a crossing price it trades first; OrderRested then says what rests)
                self.rest(event.order_id, placed[0], event.price, event.size)
        # OrderAccepted (not resting until OrderRested) and OrderRejected change nothing
        self.seq = event.seq

    # -- reading ----------------------------------------------------------------------------------------

    def _side_orders(self, side: t.Side) -> list[tuple[int, int, int]]:
        prices = sorted(self.levels[side], reverse=side is t.Side.BUY)
        return [(order_id, price, size) for price in prices for order_id, size in self.levels[side][price].items()]

    def checksum(self) -> int:
        return book_checksum(self._side_orders(t.Side.BUY), self._side_orders(t.Side.SELL))

    def snapshot(self, depth: int | None = None, include_orders: bool = False) -> t.Book:
        """The book as a frozen value (`depth` levels per side, all by default)."""

        def levels(side: t.Side) -> tuple[t.BookLevel, ...]:
            prices = sorted(self.levels[side], reverse=side is t.Side.BUY)[:depth]
            out = []
            for price in prices:
                queue = self.levels[side][price]
                orders = tuple(t.BookOrder(i, s) for i, s in queue.items()) if include_orders else ()
                out.append(t.BookLevel(price, sum(queue.values()), len(queue), orders))
            return tuple(out)

        return t.Book(self.market, self.seq, levels(t.Side.BUY), levels(t.Side.SELL), self.checksum(), self.seq)


@dataclass
class SubscriptionStats:
    snapshots: int = 0  # books loaded (the first, then one per resynchronisation)
    resyncs: int = 0  # divergences found and repaired by a new snapshot
    verified: int = 0  # checksum comparisons that matched
    reconnects: int = 0  # event streams resumed after a break
    events: int = 0


class BookTracker:
    """One subscription's state: the local book, where its stream resumes, and the pending checksum check."""

    def __init__(self, market: str, quiet: float = 0.2) -> None:
        self.market = market
        self.quiet = quiet  # how long the stream must rest at a seq before that seq counts as complete
        self.book: LocalBook | None = None
        self.position = StreamPosition()
        self.expected: tuple[int, int] | None = None  # (seq, the node's checksum at it)
        self.last_event_at = 0.0
        self.stats = SubscriptionStats()

    def load(self, snapshot: t.Book, now: float) -> None:
        """Starts from an L3 snapshot (raises Diverged if its orders do not give its own checksum)."""
        book = LocalBook.from_snapshot(snapshot)
        self.stats.snapshots += 1
        if book.checksum() != snapshot.checksum:
            raise Diverged(f"the snapshot at seq {snapshot.seq} does not add up to its checksum")
        self.book, self.expected = book, None
        self.position = StreamPosition(seq=snapshot.seq)
        self.last_event_at = now

    def diverged(self) -> None:
        """Forgets the book: the next step is a new snapshot."""
        self.book, self.expected = None, None
        self.stats.resyncs += 1

    def on_event(self, event: t.Event, now: float) -> None:
        assert self.book is not None
        if event.seq > self.position.seq:
            self._check(complete_seq=self.position.seq)
        if not self.position.accept(event.seq):
            return
        self.book.apply(event)
        self.stats.events += 1
        self.last_event_at = now

    def expect(self, seq: int, checksum: int) -> None:
        """The node's checksum at `seq`, to compare once the local book has applied exactly that seq."""
        if self.book is not None and seq >= self.position.seq:
            self.expected = (seq, checksum)

    def reached(self, seq: int, now: float) -> bool:
        """Whether the local book has applied every event of `seq` (a later seq has begun, or the stream has
        rested at `seq` for `quiet` seconds)."""
        if self.book is None:
            return False
        return self.book.seq > seq or self.book.seq == seq and now - self.last_event_at >= self.quiet

    def check_quiet(self, now: float) -> None:
        """Compares a pending check now if the stream has rested at its seq for `quiet` seconds."""
        if self.book is not None and self.expected is not None and self.expected[0] == self.book.seq \
                and now - self.last_event_at >= self.quiet:
            self._check(complete_seq=self.book.seq)

    def _check(self, complete_seq: int) -> None:
        """`complete_seq` has been applied whole: settle a pending check made at it."""
        if self.expected is None or self.book is None:
            return
        seq, checksum = self.expected
        if seq > complete_seq:
            return
        self.expected = None
        if seq < complete_seq:
            return  # passed without a check (the local book was mid-seq then): the next one will do
        local = self.book.checksum()
        if local != checksum:
            raise Diverged(f"checksum at seq {seq}: local {local}, node {checksum}")
        self.stats.verified += 1


class SubscriptionBase:
    """What the sync and asyncio subscriptions share: their state and the reading side (`book()`, `seq`,
    `stats`). The sync one reads under its lock (`_guard`), since its thread writes."""

    def __init__(self, market: str, verify_interval: float, timeout: float | None) -> None:
        self.market = market
        self.verify_interval = verify_interval
        self.timeout = timeout
        self._tracker = BookTracker(market)
        self._call: Any = None  # the StreamEvents call being followed
        self._address: str | None = None  # the node it comes from
        self._error: ExchangeError | None = None  # why the subscription stopped, if it did

    def _guard(self) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def book(self, depth: int | None = None, include_orders: bool = False) -> t.Book:
        """The local book (`depth` levels per side, all by default; each level's orders if `include_orders`)."""
        with self._guard():
            if self._error is not None:
                raise self._error
            if self._tracker.book is None:
                raise Unavailable("the book is being resynchronised")
            return self._tracker.book.snapshot(depth, include_orders)

    @property
    def seq(self) -> int:
        with self._guard():
            return self._tracker.book.seq if self._tracker.book is not None else 0

    @property
    def stats(self) -> SubscriptionStats:
        with self._guard():
            return SubscriptionStats(**vars(self._tracker.stats))
