"""One market's order book and its matching rules (price-time priority).

Data layout
-----------
Each side (``_SideBook``) keeps

* ``levels``: dict price -> ``_Level``; a level holds a FIFO ``deque`` of ``_Order`` plus its live order
  count and total open size;
* ``keys``: a ``SortedList`` of the *keys* of the levels, best first: ``price`` for asks, ``-price`` for bids,
  so that one matching loop serves both sides ("better" is always "smaller key");
* ``best``: the cached smallest key, or ``_EMPTY`` when the side has no level. A passive order is decided by
  one comparison against the opposite side's ``best``; the ``SortedList`` is only touched when a level is
  created or emptied.

The book keeps an index ``orders``: order id -> ``_Order`` of every resting order.

Cancelling is O(1) plus O(log n) when the level disappears: the order leaves the index, its ``remaining``
becomes 0 and it stays in its level's deque as a *tombstone* that matching pops when it reaches the front
and that every iteration skips. A level whose deque holds more tombstones than ``live + _SLACK`` orders is
compacted, so memory stays proportional to the resting orders. An order that loses priority (amend) leaves
a tombstone behind and re-enters as a new ``_Order`` object at the back of its (new) level.

Invariants (``Book.check`` verifies them)
------------------------------------------
1. ``orders`` holds exactly the live (``remaining > 0``) orders found in the level deques, by identity.
2. Every live order has ``0 < remaining <= size``, and sits in the level of its own side and price.
3. Every deque entry that is not live is a tombstone: ``remaining == 0`` and absent from ``orders``.
4. ``level.live`` and ``level.total`` equal the count and sum of remaining of the level's live orders;
   ``live > 0`` (empty levels are removed at once); ``len(queue) <= 2 * live + _SLACK``.
5. ``keys`` is exactly the set of level keys; ``best`` is its first element (or ``_EMPTY``).
6. The book is not crossed: best bid < best ask.
7. FIFO: within a level, live orders are in the order they were accepted or re-queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from sortedcontainers import SortedList

from exchange.engine.model import (
    CancelReason,
    Event,
    MarketConfig,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderFilled,
    OrderRejected,
    OrderRested,
    OrderType,
    RejectReason,
    Side,
)

_EMPTY = 2**64  # ``best`` of a side without levels: larger than every key
_ANY_PRICE = 2**63  # limit key of a market order: larger than every real key, smaller than _EMPTY
_SLACK = 16  # tombstones tolerated in a level beyond its live count before compaction

_new = tuple.__new__  # builds an event without the NamedTuple's Python-level __new__

BUY = Side.BUY
SELL = Side.SELL
LIMIT = OrderType.LIMIT
MARKET = OrderType.MARKET
IOC = OrderType.IOC
FOK = OrderType.FOK
POST_ONLY = OrderType.POST_ONLY
_SIDES: dict[object, Side] = {1: BUY, 2: SELL}
_TYPES: dict[object, OrderType] = {t.value: t for t in OrderType}


class _Order:
    """A resting order. ``size`` is the total size (filled + remaining); ``remaining == 0`` is a tombstone."""

    __slots__ = ("order_id", "side", "price", "size", "remaining", "post_only")

    def __init__(self, order_id: int, side: Side, price: int, size: int, remaining: int, post_only: bool):
        self.order_id = order_id
        self.side = side
        self.price = price
        self.size = size
        self.remaining = remaining
        self.post_only = post_only


class _Level:
    """All orders at one price on one side, FIFO, with tombstones (see module docstring)."""

    __slots__ = ("queue", "live", "total")

    def __init__(self) -> None:
        self.queue: deque[_Order] = deque()
        self.live = 0
        self.total = 0


class _SideBook:
    __slots__ = ("levels", "keys", "best", "sign")

    def __init__(self, sign: int) -> None:
        self.levels: dict[int, _Level] = {}
        self.keys = SortedList()
        self.best = _EMPTY
        self.sign = sign  # key = sign * price: +1 for asks, -1 for bids

    def add_level(self, price: int) -> _Level:
        level = self.levels[price] = _Level()
        key = self.sign * price
        self.keys.add(key)
        if key < self.best:
            self.best = key
        return level

    def drop_level(self, price: int) -> None:
        del self.levels[price]
        key = self.sign * price
        keys = self.keys
        keys.remove(key)
        if key == self.best:
            self.best = keys[0] if keys else _EMPTY

    def rest(self, order: _Order) -> None:
        level = self.levels.get(order.price)
        if level is None:
            level = self.add_level(order.price)
        level.queue.append(order)
        level.live += 1
        level.total += order.remaining

    def unlink(self, order: _Order) -> int:
        """Take a live order out of its level (leaving a tombstone); return the open size it had."""
        level = self.levels[order.price]
        remaining = order.remaining
        order.remaining = 0
        level.live -= 1
        level.total -= remaining
        if level.live == 0:
            self.drop_level(order.price)
        elif len(level.queue) > 2 * level.live + _SLACK:
            level.queue = deque([o for o in level.queue if o.remaining])
        return remaining

    def available(self, limit_key: int, wanted: int) -> bool:
        """Whether at least ``wanted`` is resting at keys <= ``limit_key`` (for FOK)."""
        levels = self.levels
        sign = self.sign
        for key in self.keys.irange(maximum=limit_key):
            wanted -= levels[sign * key].total
            if wanted <= 0:
                return True
        return False

    def iter_orders(self) -> Iterator[_Order]:
        """Live orders in priority order: best level first, FIFO within a level."""
        levels = self.levels
        sign = self.sign
        for key in self.keys:
            for order in levels[sign * key].queue:
                if order.remaining:
                    yield order


class Book:
    """The state of one market and the rules that change it. Driven by ``Engine.apply``."""

    __slots__ = (
        "config",
        "market",
        "bids",
        "asks",
        "orders",
        "last_seq",
        "next_trade_id",
        "_tick",
        "_lot",
        "_min_price",
        "_max_price",
        "_min_size",
        "_max_size",
    )

    def __init__(self, config: MarketConfig) -> None:
        self.config = config
        self.market = config.symbol
        self.bids = _SideBook(-1)
        self.asks = _SideBook(1)
        self.orders: dict[int, _Order] = {}
        self.last_seq = 0
        self.next_trade_id = 1
        self._tick = config.tick_size
        self._lot = config.lot_size
        self._min_price = config.min_price
        self._max_price = config.max_price
        self._min_size = config.min_size
        self._max_size = config.max_size

    # ------------------------------------------------------------------------------------- validation

    def _price_error(self, price: object) -> RejectReason | None:
        if type(price) is not int or not self._min_price <= price <= self._max_price:
            return RejectReason.PRICE_OUT_OF_BOUNDS
        if price % self._tick:
            return RejectReason.PRICE_NOT_ON_TICK
        return None

    # -------------------------------------------------------------------------------------- commands

    def submit(self, seq: int, side_in: object, type_in: object, size: int, price: int | None) -> list[Event]:
        """A new order with id ``seq``. Rejections are decided before any trade (nothing changes then).

        Check order: side, order type, size (bounds, lot), price (presence, bounds, tick), then the book:
        POST_ONLY_WOULD_TAKE, FOK_CANNOT_FILL, NO_LIQUIDITY.
        """
        side = _SIDES.get(side_in)
        otype = _TYPES.get(type_in)
        reason = None
        if side is None:
            reason = RejectReason.INVALID_SIDE
        elif otype is None:
            reason = RejectReason.INVALID_ORDER_TYPE
        elif type(size) is not int or not self._min_size <= size <= self._max_size:
            reason = RejectReason.SIZE_OUT_OF_BOUNDS
        elif size % self._lot:
            reason = RejectReason.SIZE_NOT_ON_LOT
        elif otype is MARKET:
            if price is not None:
                reason = RejectReason.PRICE_NOT_ALLOWED
        elif price is None:
            reason = RejectReason.PRICE_REQUIRED
        elif type(price) is not int or not self._min_price <= price <= self._max_price:
            reason = RejectReason.PRICE_OUT_OF_BOUNDS
        elif price % self._tick:
            reason = RejectReason.PRICE_NOT_ON_TICK
        market = self.market
        if reason is not None:
            return [_new(OrderRejected, (market, seq, seq, reason))]

        if side is BUY:
            own, opp = self.bids, self.asks
            limit_key = _ANY_PRICE if price is None else price
        else:
            own, opp = self.asks, self.bids
            limit_key = _ANY_PRICE if price is None else -price

        if opp.best > limit_key:  # cannot trade: the common, passive case
            if otype is LIMIT or otype is POST_ONLY:
                order = _Order(seq, side, price, size, size, otype is POST_ONLY)  # type: ignore[arg-type]
                own.rest(order)
                self.orders[seq] = order
                return [
                    _new(OrderAccepted, (market, seq, seq, side, otype, price, size)),
                    _new(OrderRested, (market, seq, seq, side, price, size)),
                ]
            if otype is IOC:
                return [
                    _new(OrderAccepted, (market, seq, seq, side, otype, price, size)),
                    _new(OrderCancelled, (market, seq, seq, size, CancelReason.IOC_REMAINDER)),
                ]
            if otype is FOK:
                return [_new(OrderRejected, (market, seq, seq, RejectReason.FOK_CANNOT_FILL))]
            return [_new(OrderRejected, (market, seq, seq, RejectReason.NO_LIQUIDITY))]

        if otype is POST_ONLY:
            return [_new(OrderRejected, (market, seq, seq, RejectReason.POST_ONLY_WOULD_TAKE))]
        if otype is FOK and not opp.available(limit_key, size):
            return [_new(OrderRejected, (market, seq, seq, RejectReason.FOK_CANNOT_FILL))]

        events: list[Event] = [_new(OrderAccepted, (market, seq, seq, side, otype, price, size))]
        remaining = self._take(seq, seq, side, size, limit_key, opp, events)
        if remaining:
            if otype is LIMIT:
                order = _Order(seq, side, price, size, remaining, False)  # type: ignore[arg-type]
                own.rest(order)
                self.orders[seq] = order
                events.append(_new(OrderRested, (market, seq, seq, side, price, remaining)))
            else:  # IOC or MARKET (a FOK was checked to fill completely)
                why = CancelReason.MARKET_REMAINDER if otype is MARKET else CancelReason.IOC_REMAINDER
                events.append(_new(OrderCancelled, (market, seq, seq, remaining, why)))
        return events

    def _take(
        self,
        seq: int,
        taker_id: int,
        taker_side: Side,
        remaining: int,
        limit_key: int,
        opp: _SideBook,
        events: list[Event],
    ) -> int:
        """Match ``remaining`` against ``opp`` at keys <= ``limit_key``, best level first, FIFO within it.

        Appends one OrderFilled per trade, at the maker's price, and returns what is left to fill.
        """
        market = self.market
        orders = self.orders
        levels = opp.levels
        sign = opp.sign
        trade_id = self.next_trade_id
        best = opp.best
        while remaining and best <= limit_key:
            price = sign * best
            level = levels[price]
            queue = level.queue
            while remaining and queue:
                maker = queue[0]
                available = maker.remaining
                if not available:  # tombstone of a cancelled or re-queued order
                    queue.popleft()
                    continue
                if available <= remaining:
                    qty = available
                    queue.popleft()
                    del orders[maker.order_id]
                    level.live -= 1
                else:
                    qty = remaining
                maker.remaining = available - qty
                level.total -= qty
                remaining -= qty
                events.append(
                    _new(
                        OrderFilled,
                        (
                            market,
                            seq,
                            trade_id,
                            price,
                            qty,
                            maker.order_id,
                            taker_id,
                            taker_side,
                            available - qty,
                            remaining,
                        ),
                    )
                )
                trade_id += 1
            if level.live:  # the taker is done; this level keeps its remaining orders
                if len(queue) > 2 * level.live + _SLACK:  # fills may have left it tombstone-heavy
                    level.queue = deque([o for o in queue if o.remaining])
                break
            opp.drop_level(price)
            best = opp.best
        self.next_trade_id = trade_id
        return remaining

    def cancel(self, seq: int, order_id: int) -> list[Event]:
        order = self.orders.pop(order_id, None) if type(order_id) is int else None
        if order is None:
            return [_new(OrderRejected, (self.market, seq, order_id, RejectReason.ORDER_NOT_FOUND))]
        side = self.bids if order.side is BUY else self.asks
        size = side.unlink(order)
        return [_new(OrderCancelled, (self.market, seq, order_id, size, CancelReason.USER))]

    def amend(self, seq: int, order_id: int, new_size: int, new_price: int | None) -> list[Event]:
        """Change a resting order's open size and/or price (see the package docstring for the rules).

        Check order: AMEND_SIZE_INVALID (new_size not a positive int), ORDER_NOT_FOUND, size (total
        ``filled + new_size`` above max_size, lot), price (bounds, tick), AMEND_NO_CHANGE,
        POST_ONLY_WOULD_TAKE (a post-only order amended to a crossing price).
        """
        market = self.market
        order = self.orders.get(order_id) if type(order_id) is int else None
        reason = None
        if type(new_size) is not int or new_size <= 0:
            reason = RejectReason.AMEND_SIZE_INVALID
        elif order is None:
            reason = RejectReason.ORDER_NOT_FOUND
        elif order.size - order.remaining + new_size > self._max_size:
            reason = RejectReason.SIZE_OUT_OF_BOUNDS
        elif new_size % self._lot:
            reason = RejectReason.SIZE_NOT_ON_LOT
        elif new_price is not None:
            reason = self._price_error(new_price)
        if reason is None:
            assert order is not None
            price = order.price if new_price is None else new_price
            if price == order.price and new_size == order.remaining:
                reason = RejectReason.AMEND_NO_CHANGE
        if reason is not None:
            return [_new(OrderRejected, (market, seq, order_id, reason))]
        assert order is not None

        side = order.side
        own, opp = (self.bids, self.asks) if side is BUY else (self.asks, self.bids)
        if price == order.price and new_size < order.remaining:  # a pure reduction keeps priority
            own.levels[price].total -= order.remaining - new_size
            order.size -= order.remaining - new_size
            order.remaining = new_size
            return [_new(OrderAmended, (market, seq, order_id, price, new_size, True))]

        limit_key = price if side is BUY else -price
        crosses = opp.best <= limit_key
        if crosses and order.post_only:
            return [_new(OrderRejected, (market, seq, order_id, RejectReason.POST_ONLY_WOULD_TAKE))]
        filled = order.size - order.remaining
        own.unlink(order)
        del self.orders[order_id]
        events: list[Event] = [_new(OrderAmended, (market, seq, order_id, price, new_size, False))]
        remaining = new_size
        if crosses:  # trade like a new aggressive limit order of the new open size
            remaining = self._take(seq, order_id, side, new_size, limit_key, opp, events)
            if not remaining:
                return events
            events.append(_new(OrderRested, (market, seq, order_id, side, price, remaining)))
        requeued = _Order(order_id, side, price, filled + new_size, remaining, order.post_only)
        own.rest(requeued)
        self.orders[order_id] = requeued
        return events

    # --------------------------------------------------------------------------------------- queries

    def iter_orders(self) -> Iterator[_Order]:
        """Every resting order in priority order: bids best first, then asks best first; FIFO per level."""
        yield from self.bids.iter_orders()
        yield from self.asks.iter_orders()

    def depth(self, side: _SideBook, levels: int) -> list[tuple[int, int, int]]:
        out = []
        for key in side.keys.islice(0, max(levels, 0)):
            level = side.levels[side.sign * key]
            out.append((side.sign * key, level.total, level.live))
        return out

    def check(self) -> None:
        """Assert every invariant of the module docstring; raise AssertionError naming the broken one."""
        m = self.market
        seen: dict[int, _Order] = {}
        for side, book, sign in ((BUY, self.bids, -1), (SELL, self.asks, 1)):
            assert book.sign == sign, f"{m}: {side.name} sign"
            keys = list(book.keys)
            assert keys == sorted(set(keys)), f"{m}: {side.name} keys not sorted/unique"
            assert sorted(sign * p for p in book.levels) == keys, f"{m}: {side.name} keys != levels"
            assert book.best == (keys[0] if keys else _EMPTY), f"{m}: {side.name} best cache stale"
            for price, level in book.levels.items():
                live = [o for o in level.queue if o.remaining]
                where = f"{m}: {side.name} level {price}"
                assert live, f"{where} is empty"
                assert level.live == len(live), f"{where} live count {level.live} != {len(live)}"
                total = sum(o.remaining for o in live)
                assert level.total == total, f"{where} total {level.total} != {total}"
                assert len(level.queue) <= 2 * level.live + _SLACK, f"{where} too many tombstones"
                for o in level.queue:
                    if not o.remaining:
                        tomb = f"{where}: tombstone {o.order_id} in index"
                        assert self.orders.get(o.order_id) is not o, tomb
                        continue
                    assert o.remaining > 0, f"{where}: order {o.order_id} remaining {o.remaining}"
                    assert o.remaining <= o.size, f"{where}: order {o.order_id} remaining > size"
                    assert o.price == price and o.side is side, f"{where}: order {o.order_id} misplaced"
                    assert o.order_id not in seen, f"{where}: order {o.order_id} twice"
                    assert self.orders.get(o.order_id) is o, f"{where}: order {o.order_id} not indexed"
                    seen[o.order_id] = o
        assert len(seen) == len(self.orders), f"{m}: index has {len(self.orders)} orders, levels {len(seen)}"
        assert self.bids.best == _EMPTY or self.asks.best == _EMPTY or -self.bids.best < self.asks.best, (
            f"{m}: book crossed: bid {-self.bids.best} >= ask {self.asks.best}"
        )
