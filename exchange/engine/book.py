"""One market's order book and its matching rules (price-time priority).

Data layout
-----------
An order is a list ``[remaining, order_id, price, size, side, post_only, account, stp]`` (a record, indexed
by the ``REMAINING``..``STP`` constants; the hot paths use the literal indexes, with the field named in a
comment). ``size`` is the order's total size, ``filled + remaining`` (what an amend or self-trade
prevention took away is no longer part of it). ``account`` owns the order ("" for none) and ``stp`` is the
``SelfTradePrevention`` mode it was submitted with, which it applies again when an amend makes it cross.
Lists are used rather than slotted objects because building one costs a quarter as much, and a passive
order builds one per command.

Each side is a ``SideBook`` (``exchange.engine.sides``: its levels, their sorted keys, the cached best key
and the tombstone counts).

The book keeps an index ``orders``: order id -> order, of every resting order.

Cancelling is O(1) (plus O(log n) when the level disappears): the order leaves the index and becomes a
*tombstone* (``remaining = 0``) in its level's deque. Tombstones are popped as soon as they reach the front
of a level, so the front order of every level is live and a level is empty exactly when its deque is.
A level holding more than ``live + SLACK`` tombstones is compacted, so memory stays proportional to the
resting orders. An order that loses priority (amend) leaves a tombstone and re-enters as a new record.
Level totals are not maintained (the hot paths do not need them); ``depth`` and FOK sum on demand.

Invariants (``Book.check`` verifies them)
------------------------------------------
1. ``orders`` holds exactly the live (``remaining > 0``) records found in the level deques, by identity.
2. Every live order has ``0 < remaining <= size`` and sits in the level of its own side and price.
3. Every deque entry that is not live is a tombstone: ``remaining == 0``, absent from ``orders``, counted
   in ``tombs``; tombstones <= live + ``SLACK`` per level.
4. No level is empty, and the front of every level is live.
5. ``keys`` is exactly the set of level keys; ``best`` is its first element (or ``EMPTY``).
6. The book is not crossed: best bid < best ask.
7. FIFO: within a level, live orders are in the order they were accepted or re-queued.
8. Every live order's ``account`` is a str and its ``stp`` a ``SelfTradePrevention``.

Self-trade prevention adds no structure: the matching walk compares each maker's ``account`` with the
taker's and hands an own maker to ``Book._prevent_self_trade``, which cancels or reduces orders with the
same primitives as a cancel (``unlink``) or a partial fill.
"""

from __future__ import annotations

from collections.abc import Iterator

from exchange.engine.model import (
    BUY,
    CANCEL_BOTH,
    CANCEL_MAKER,
    CANCEL_TAKER,
    FOK,
    IOC,
    LIMIT,
    MARKET,
    ORDER_TYPES,
    POST_ONLY,
    SELF_TRADE_PREVENTED,
    SELF_TRADE_PREVENTIONS,
    SELL,
    SIDES,
    USER,
    AmendOrder,
    CancelOrder,
    CancelReason,
    Event,
    MarketConfig,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderFilled,
    OrderReduced,
    OrderRejected,
    OrderRested,
    OrderType,
    PlaceOrder,
    RejectReason,
    SelfTradePrevention,
    Side,
)
from exchange.engine.sides import (
    ACCOUNT,
    ANY_PRICE,
    EMPTY,
    ORDER_ID,
    POST_ONLY_FLAG,
    PRICE,
    REMAINING,
    SIDE,
    SIZE,
    SLACK,
    STP,
    Order,
    SideBook,
)

_new = tuple.__new__  # builds an event without the NamedTuple's Python-level __new__


def _bad_account(account: object) -> TypeError:
    """A command whose account is not a str: a caller bug (protobuf strings never are), refused before
    anything changes, like a wrong seq; the account would otherwise reach snapshots that cannot be read."""
    return TypeError(f"a command's account must be a str, got {type(account).__name__}")


class Book:
    """The state of one market and the rules that change it. Driven by ``Engine.apply``."""

    __slots__ = (
        "config", "market", "bids", "asks", "orders", "last_seq", "next_trade_id", "limits", "taker_reduced"
    )

    def __init__(self, config: MarketConfig) -> None:
        self.config = config
        self.market = config.symbol
        self.bids = SideBook(-1)
        self.asks = SideBook(1)
        self.orders: dict[int, Order] = {}
        self.last_seq = 0
        self.next_trade_id = 1
        c = config
        self.limits = (c.min_size, c.max_size, c.lot_size, c.min_price, c.max_price, c.tick_size)
        self.taker_reduced = 0  # _take's second result: what DECREMENT took from the taker without a trade

    # -------------------------------------------------------------------------------------- commands

    def place(self, cmd: PlaceOrder) -> list[Event]:
        """Every new order. Rejections are decided before any trade (nothing changes then).

        Check order: side, order type, self-trade prevention mode, size (bounds, lot), price (presence,
        bounds, tick), then the book: POST_ONLY_WOULD_TAKE, FOK_CANNOT_FILL, NO_LIQUIDITY. The most common
        command, a valid LIMIT order with enum side, type and mode, is recognised by one fast check (it lets
        nothing else through); everything else is decoded and asked ``MarketConfig.order_error``. Both go on
        the same way.
        """
        seq = cmd.seq
        side = cmd.side
        otype = cmd.order_type
        size = cmd.size
        price = cmd.price
        account = cmd.account
        stp = cmd.stp
        min_size, max_size, lot, min_price, max_price, tick = self.limits
        if not (
            otype is LIMIT
            and type(price) is int
            and type(size) is int
            and min_price <= price  # unchained: two bytecodes fewer than ``a <= b <= c``
            and price <= max_price
            and min_size <= size
            and size <= max_size
            and not price % tick
            and not size % lot
            and (side is BUY or side is SELL)
            and (stp is CANCEL_TAKER or type(stp) is SelfTradePrevention)  # the default first: cheaper
            and type(account) is str
        ):
            decoded = self._decode(cmd)
            if isinstance(decoded, list):  # rejected
                return decoded
            side, otype, stp = decoded

        market = self.market
        if side is BUY:
            own, opp = self.bids, self.asks
            limit_key = ANY_PRICE if price is None else price
        else:
            own, opp = self.asks, self.bids
            limit_key = ANY_PRICE if price is None else -price

        if opp.best > limit_key:  # cannot trade: the common, passive case
            if otype is LIMIT or otype is POST_ONLY:  # rest (``own.rest``, inlined on the hot path)
                order = [size, seq, price, size, side, otype is POST_ONLY, account, stp]
                # a LIMIT or POST_ONLY order has an int price here (the fast check, or order_error, said so)
                queue = own.levels.get(price)  # type: ignore[arg-type]
                if queue is None:
                    queue = own.add_level(price)  # type: ignore[arg-type]
                queue.append(order)
                self.orders[seq] = order
                return [
                    _new(OrderAccepted, (market, seq, seq, side, otype, price, size, account)),
                    _new(OrderRested, (market, seq, seq, side, price, size, account)),
                ]
            return self._no_match(seq, side, otype, price, size, account)

        if otype is POST_ONLY:  # never takes, so self-trade prevention never applies to it
            return [_new(OrderRejected, (market, seq, seq, RejectReason.POST_ONLY_WOULD_TAKE, account))]
        if otype is FOK and not opp.available(limit_key, size, account, stp):
            return [_new(OrderRejected, (market, seq, seq, RejectReason.FOK_CANNOT_FILL, account))]

        events: list[Event] = [_new(OrderAccepted, (market, seq, seq, side, otype, price, size, account))]
        remaining = self._take(seq, seq, side, size, limit_key, opp, events, account, stp)
        if remaining:
            if otype is LIMIT:
                order = [remaining, seq, price, size - self.taker_reduced, side, False, account, stp]
                own.rest(order)
                self.orders[seq] = order
                events.append(_new(OrderRested, (market, seq, seq, side, price, remaining, account)))
            else:  # IOC or MARKET out of liquidity (a FOK was checked to fill completely)
                why = CancelReason.MARKET_REMAINDER if otype is MARKET else CancelReason.IOC_REMAINDER
                events.append(_new(OrderCancelled, (market, seq, seq, remaining, why, account)))
        return events

    def _decode(self, cmd: PlaceOrder) -> tuple[Side, OrderType, SelfTradePrevention] | list[Event]:
        """The slow path of ``place``'s checks: the command's side, type and mode decoded, or its rejection.

        A logged command may carry any value (model.py): a plain int that is a member's value becomes the enum,
        anything else (even an unhashable value) None, which ``MarketConfig.order_error`` refuses."""
        account = cmd.account
        if type(account) is not str:
            raise _bad_account(account)
        raw_side: object = cmd.side
        raw_type: object = cmd.order_type
        raw_stp: object = cmd.stp
        decoded_side = raw_side if type(raw_side) is Side else (
            SIDES.get(raw_side) if type(raw_side) is int else None)
        decoded_type = raw_type if type(raw_type) is OrderType else (
            ORDER_TYPES.get(raw_type) if type(raw_type) is int else None)
        decoded_stp = raw_stp if type(raw_stp) is SelfTradePrevention else (
            SELF_TRADE_PREVENTIONS.get(raw_stp) if type(raw_stp) is int else None)
        reason = self.config.order_error(decoded_side, decoded_type, cmd.size, cmd.price, decoded_stp)
        if reason is not None or decoded_side is None or decoded_type is None or decoded_stp is None:
            return [_new(OrderRejected, (self.market, cmd.seq, cmd.seq, reason, account))]
        return decoded_side, decoded_type, decoded_stp

    def _no_match(self, seq: int, side: Side, otype: OrderType, price: int | None, size: int,
                  account: str) -> list[Event]:
        """An IOC, FOK or MARKET order that cannot trade at all (the opposite side does not cross)."""
        market = self.market
        if otype is IOC:
            return [
                _new(OrderAccepted, (market, seq, seq, side, otype, price, size, account)),
                _new(OrderCancelled, (market, seq, seq, size, CancelReason.IOC_REMAINDER, account)),
            ]
        if otype is FOK:
            return [_new(OrderRejected, (market, seq, seq, RejectReason.FOK_CANNOT_FILL, account))]
        return [_new(OrderRejected, (market, seq, seq, RejectReason.NO_LIQUIDITY, account))]

    def _take(
        self,
        seq: int,
        taker_id: int,
        taker_side: Side,
        remaining: int,
        limit_key: int,
        opp: SideBook,
        events: list[Event],
        account: str,
        stp: SelfTradePrevention,
    ) -> int:
        """Match ``remaining`` against ``opp`` at keys <= ``limit_key``, best level first, FIFO within it.

        Appends one OrderFilled per trade, at the maker's price, and returns what is left to fill. A maker of
        the taker's own non-empty ``account`` is handed to ``_prevent_self_trade`` instead (its events go
        where the trade would have); if that finishes the taker, its cancel is appended and 0 returned.
        What DECREMENT took from the taker is left in ``self.taker_reduced``, for a remainder that rests.
        Callers only call this when the order crosses (``opp.best <= limit_key``).
        """
        market = self.market
        orders = self.orders
        levels = opp.levels
        sign = opp.sign
        trade_id = self.next_trade_id
        append = events.append
        self.taker_reduced = 0
        best = opp.best
        while best <= limit_key:
            price = sign * best
            queue = levels[price]
            maker = queue[0]  # the front order of a level is always live
            if maker[6] == account and account:  # account: an own order, no trade
                remaining = self._prevent_self_trade(seq, taker_id, remaining, maker, opp, events, account, stp)
                if not remaining:
                    break
                best = opp.best
                continue
            available = maker[0]  # remaining
            while available <= remaining:  # the maker is filled completely and leaves the book
                queue.popleft()
                del orders[maker[1]]  # order_id
                remaining -= available
                append(_new(OrderFilled, (market, seq, trade_id, price, available, maker[1], taker_id, taker_side, 0,
                                          remaining, maker[6], account)))  # the last two: the accounts
                trade_id += 1
                if not queue or not queue[0][0]:  # level exhausted, or a tombstone reached the front
                    opp.pop_front_tombstones(price, queue)  # drops the level if nothing live is left
                    if not queue:
                        break
                if not remaining:
                    break
                maker = queue[0]
                if maker[6] == account and account:  # account: an own order, handled from the top
                    if opp.tombs.get(price, 0) > SLACK:  # live orders left, tombstones not: see below
                        opp.compact(price)
                    break
                available = maker[0]
            else:  # the maker keeps a remainder; the taker is done
                available -= remaining
                maker[0] = available
                append(_new(OrderFilled, (market, seq, trade_id, price, remaining, maker[1], taker_id, taker_side,
                                          available, 0, maker[6], account)))  # the last two: the accounts
                trade_id += 1
                remaining = 0
            if not remaining:
                if opp.tombs.get(price, 0) > SLACK:  # fills took live orders from a level with tombstones
                    opp.compact(price)  # (see compact; a dropped level has no count)
                break
            best = opp.best  # the level was dropped: next level
        self.next_trade_id = trade_id
        return remaining

    def _prevent_self_trade(
        self,
        seq: int,
        taker_id: int,
        remaining: int,
        maker: Order,
        opp: SideBook,
        events: list[Event],
        account: str,
        stp: SelfTradePrevention,
    ) -> int:
        """The taker (``remaining`` open) met ``maker``, the front order of ``opp``'s best level, of its own
        account: apply ``stp`` instead of a trade. Appends the maker's event, then the taker's if it has one
        (a cancel finishes it); returns the taker's new open size (0: finished)."""
        market = self.market
        if stp is CANCEL_TAKER:
            events.append(_new(OrderCancelled, (market, seq, taker_id, remaining, SELF_TRADE_PREVENTED, account)))
            return 0
        maker_id = maker[ORDER_ID]
        lost = maker[REMAINING] if stp is CANCEL_MAKER or stp is CANCEL_BOTH else min(remaining, maker[REMAINING])
        if lost == maker[REMAINING]:  # the maker is cancelled
            del self.orders[maker_id]
            opp.unlink(maker)
            events.append(_new(OrderCancelled, (market, seq, maker_id, lost, SELF_TRADE_PREVENTED, account)))
        else:  # DECREMENT, the maker keeps a remainder (and its place)
            maker[REMAINING] -= lost
            maker[SIZE] -= lost
            events.append(
                _new(OrderReduced, (market, seq, maker_id, lost, maker[REMAINING], SELF_TRADE_PREVENTED, account))
            )
        if stp is CANCEL_MAKER:
            return remaining
        if stp is CANCEL_BOTH:
            events.append(_new(OrderCancelled, (market, seq, taker_id, remaining, SELF_TRADE_PREVENTED, account)))
            return 0
        remaining -= lost  # DECREMENT
        if not remaining:
            events.append(_new(OrderCancelled, (market, seq, taker_id, lost, SELF_TRADE_PREVENTED, account)))
            return 0
        self.taker_reduced += lost
        events.append(_new(OrderReduced, (market, seq, taker_id, lost, remaining, SELF_TRADE_PREVENTED, account)))
        return remaining

    def cancel(self, cmd: CancelOrder) -> list[Event]:
        """Check order: ORDER_NOT_FOUND, NOT_ORDER_OWNER."""
        order_id = cmd.order_id
        account = cmd.account
        if type(account) is not str:
            raise _bad_account(account)
        order = self.orders.get(order_id) if type(order_id) is int else None
        if order is None:
            return [_new(OrderRejected, (self.market, cmd.seq, order_id, RejectReason.ORDER_NOT_FOUND, account))]
        if order[6] != account:  # account
            return [_new(OrderRejected, (self.market, cmd.seq, order_id, RejectReason.NOT_ORDER_OWNER, account))]
        del self.orders[order_id]
        side = self.bids if order[4] is BUY else self.asks  # side
        return [_new(OrderCancelled, (self.market, cmd.seq, order_id, side.unlink(order), USER, account))]

    def amend(self, cmd: AmendOrder) -> list[Event]:
        """Change a resting order's open size and/or price (see the package docstring for the rules).

        Check order: AMEND_SIZE_INVALID, ORDER_NOT_FOUND, NOT_ORDER_OWNER, the market's rules for the order's
        filled size (``MarketConfig.amend_error``: size, then price), AMEND_NO_CHANGE, POST_ONLY_WOULD_TAKE (a
        post-only order amended to a crossing price).
        """
        market, seq, order_id, new_size, new_price = self.market, cmd.seq, cmd.order_id, cmd.new_size, cmd.new_price
        account = cmd.account
        if type(account) is not str:
            raise _bad_account(account)
        order = self.orders.get(order_id) if type(order_id) is int else None
        filled = 0 if order is None else order[SIZE] - order[REMAINING]
        reason = self.config.amend_error(new_size, new_price, filled)
        if order is None:
            if reason is not RejectReason.AMEND_SIZE_INVALID:  # the one check that ranks before the order's
                reason = RejectReason.ORDER_NOT_FOUND
        elif reason is not RejectReason.AMEND_SIZE_INVALID and order[ACCOUNT] != account:
            reason = RejectReason.NOT_ORDER_OWNER
        elif reason is None:
            price = order[PRICE] if new_price is None else new_price
            if price == order[PRICE] and new_size == order[REMAINING]:
                reason = RejectReason.AMEND_NO_CHANGE
        if reason is not None:
            return [_new(OrderRejected, (market, seq, order_id, reason, account))]
        assert order is not None

        side = order[SIDE]
        own, opp = (self.bids, self.asks) if side is BUY else (self.asks, self.bids)
        if price == order[PRICE] and new_size < order[REMAINING]:  # a pure reduction keeps priority
            order[SIZE] = filled + new_size
            order[REMAINING] = new_size
            return [_new(OrderAmended, (market, seq, order_id, price, new_size, True, account))]

        limit_key = price if side is BUY else -price
        crosses = opp.best <= limit_key
        if crosses and order[POST_ONLY_FLAG]:
            return [_new(OrderRejected, (market, seq, order_id, RejectReason.POST_ONLY_WOULD_TAKE, account))]
        own.unlink(order)
        del self.orders[order_id]
        events: list[Event] = [_new(OrderAmended, (market, seq, order_id, price, new_size, False, account))]
        remaining = new_size
        size = filled + new_size
        if crosses:  # trade like a new aggressive limit order of the new open size, with its own STP mode
            remaining = self._take(seq, order_id, side, new_size, limit_key, opp, events, account, order[STP])
            if not remaining:
                return events
            size -= self.taker_reduced
            events.append(_new(OrderRested, (market, seq, order_id, side, price, remaining, account)))
        requeued = [remaining, order_id, price, size, side, order[POST_ONLY_FLAG], account, order[STP]]
        own.rest(requeued)
        self.orders[order_id] = requeued
        return events

    # --------------------------------------------------------------------------------------- queries

    def iter_orders(self) -> Iterator[Order]:
        """Every resting order in priority order: bids best first, then asks best first; FIFO per level."""
        yield from self.bids.iter_orders()
        yield from self.asks.iter_orders()

    def depth(self, side: SideBook, levels: int) -> list[tuple[int, int, int]]:
        out = []
        for key in side.keys.islice(0, max(levels, 0)):
            queue = side.levels[side.sign * key]
            live = [o[REMAINING] for o in queue if o[REMAINING]]
            out.append((side.sign * key, sum(live), len(live)))
        return out

    def check(self) -> None:
        """Assert every invariant of the module docstring; raise AssertionError naming the broken one."""
        m = self.market
        seen: dict[int, Order] = {}
        for side, book, sign in ((BUY, self.bids, -1), (SELL, self.asks, 1)):
            assert book.sign == sign, f"{m}: {side.name} sign"
            keys = list(book.keys)
            assert keys == sorted(set(keys)), f"{m}: {side.name} keys not sorted/unique"
            assert sorted(sign * p for p in book.levels) == keys, f"{m}: {side.name} keys != levels"
            assert book.best == (keys[0] if keys else EMPTY), f"{m}: {side.name} best cache stale"
            assert set(book.tombs) <= set(book.levels), f"{m}: {side.name} tombstone count of a dropped level"
            for price, queue in book.levels.items():
                where = f"{m}: {side.name} level {price}"
                assert queue and queue[0][REMAINING] > 0, f"{where} is empty or has a tombstone in front"
                tombs = sum(1 for o in queue if not o[REMAINING])
                assert book.tombs.get(price, 0) == tombs, f"{where}: {tombs} tombstones, counted {book.tombs}"
                assert tombs <= len(queue) - tombs + SLACK, f"{where}: too many tombstones"
                for o in queue:
                    assert len(o) == 8, f"{where}: malformed order record {o!r}"
                    if not o[REMAINING]:
                        indexed = self.orders.get(o[ORDER_ID]) is o
                        assert not indexed, f"{where}: tombstone {o[ORDER_ID]} in the index"
                        continue
                    oid = o[ORDER_ID]
                    assert 0 < o[REMAINING] <= o[SIZE], f"{where}: order {oid} remaining {o[REMAINING]}"
                    assert o[PRICE] == price and o[SIDE] is side, f"{where}: order {oid} misplaced"
                    assert type(o[ACCOUNT]) is str, f"{where}: order {oid} account {o[ACCOUNT]!r}"
                    assert type(o[STP]) is SelfTradePrevention, f"{where}: order {oid} stp {o[STP]!r}"
                    assert oid not in seen, f"{where}: order {oid} twice"
                    assert self.orders.get(oid) is o, f"{where}: order {oid} not indexed"
                    seen[oid] = o
        assert len(seen) == len(self.orders), f"{m}: index has {len(self.orders)} orders, levels {len(seen)}"
        assert self.bids.best == EMPTY or self.asks.best == EMPTY or -self.bids.best < self.asks.best, (
            f"{m}: book crossed: bid {-self.bids.best} >= ask {self.asks.best}"
        )
