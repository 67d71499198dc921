"""Differential and determinism tests: the engine against a deliberately naive reference book.

The reference is written from the rules in the ``exchange.engine`` docstring only, with plain lists kept in
priority order and linear scans for everything. It shares no code with the engine beyond the value types.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exchange.engine import (
    AmendOrder,
    CancelOrder,
    CancelReason,
    Command,
    Engine,
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

if TYPE_CHECKING:  # pytest imports conftest.py itself: the tests never do
    from tests.unit.conftest import StreamFactory

STP = SelfTradePrevention
PREVENTED = CancelReason.SELF_TRADE_PREVENTED

M = "X"
CONFIG = MarketConfig(M, tick_size=1, lot_size=1, min_price=1, max_price=100_000, min_size=1, max_size=1000)


@dataclass
class RefOrder:
    order_id: int
    side: Side
    price: int
    size: int
    remaining: int
    post_only: bool
    account: str
    stp: SelfTradePrevention


class ReferenceBook:
    """One market, O(n) everything: ``bids``/``asks`` are lists in priority order."""

    def __init__(self, config: MarketConfig) -> None:
        self.c = config
        self.bids: list[RefOrder] = []
        self.asks: list[RefOrder] = []
        self.trade_id = 1

    def find(self, order_id: int) -> RefOrder | None:
        for order in self.bids + self.asks:
            if order.order_id == order_id:
                return order
        return None

    def insert(self, order: RefOrder) -> None:
        """Behind every order with the same or a better price."""
        book = self.bids if order.side is Side.BUY else self.asks
        better_or_same = (
            (lambda o: o.price >= order.price) if order.side is Side.BUY else (lambda o: o.price <= order.price)
        )
        position = 0
        while position < len(book) and better_or_same(book[position]):
            position += 1
        book.insert(position, order)

    def remove(self, order: RefOrder) -> None:
        book = self.bids if order.side is Side.BUY else self.asks
        book[:] = [o for o in book if o is not order]

    @staticmethod
    def acceptable(side: Side, limit: int | None, maker_price: int) -> bool:
        if limit is None:
            return True
        return maker_price <= limit if side is Side.BUY else maker_price >= limit

    def price_error(self, price: object) -> RejectReason | None:
        if not isinstance(price, int) or isinstance(price, bool) or not self.c.min_price <= price <= self.c.max_price:
            return RejectReason.PRICE_OUT_OF_BOUNDS
        if price % self.c.tick_size != 0:
            return RejectReason.PRICE_NOT_ON_TICK
        return None

    @staticmethod
    def own(account: str, maker: RefOrder) -> bool:
        return account != "" and maker.account == account

    def tradeable(self, side: Side, limit: int | None, account: str, stp: SelfTradePrevention) -> int:
        """What a FOK could fill by trades: in priority order, other accounts' orders; its own ones are
        skipped under CANCEL_MAKER and end the count otherwise."""
        total = 0
        for maker in self.asks if side is Side.BUY else self.bids:
            if not self.acceptable(side, limit, maker.price):
                break
            if self.own(account, maker):
                if stp is STP.CANCEL_MAKER:
                    continue
                break
            total += maker.remaining
        return total

    def take(
        self,
        seq: int,
        taker: int,
        side: Side,
        size: int,
        limit: int | None,
        events: list[Event],
        account: str,
        stp: SelfTradePrevention,
    ) -> tuple[int, int]:
        """Match; return (what is left open, what self-trade prevention took from the taker without a trade).
        A taker stopped or finished by self-trade prevention has its cancel appended here and 0 left."""
        opposite = self.asks if side is Side.BUY else self.bids
        reduced = 0
        while size > 0 and opposite and self.acceptable(side, limit, opposite[0].price):
            maker = opposite[0]
            if self.own(account, maker):
                if stp is STP.CANCEL_TAKER:
                    events.append(OrderCancelled(M, seq, taker, size, PREVENTED, account))
                    return 0, reduced
                if stp in (STP.CANCEL_MAKER, STP.CANCEL_BOTH):
                    opposite.pop(0)
                    events.append(OrderCancelled(M, seq, maker.order_id, maker.remaining, PREVENTED, account))
                    if stp is STP.CANCEL_BOTH:
                        events.append(OrderCancelled(M, seq, taker, size, PREVENTED, account))
                        return 0, reduced
                    continue
                qty = min(size, maker.remaining)  # DECREMENT
                maker.remaining -= qty
                maker.size -= qty
                if maker.remaining == 0:
                    opposite.pop(0)
                    events.append(OrderCancelled(M, seq, maker.order_id, qty, PREVENTED, account))
                else:
                    events.append(OrderReduced(M, seq, maker.order_id, qty, maker.remaining, PREVENTED, account))
                size -= qty
                if size == 0:
                    events.append(OrderCancelled(M, seq, taker, qty, PREVENTED, account))
                    return 0, reduced
                reduced += qty
                events.append(OrderReduced(M, seq, taker, qty, size, PREVENTED, account))
                continue
            qty = min(size, maker.remaining)
            maker.remaining -= qty
            size -= qty
            events.append(
                OrderFilled(
                    M,
                    seq,
                    self.trade_id,
                    maker.price,
                    qty,
                    maker.order_id,
                    taker,
                    side,
                    maker.remaining,
                    size,
                    maker.account,
                    account,
                )
            )
            self.trade_id += 1
            if maker.remaining == 0:
                opposite.pop(0)
        return size, reduced

    def place(self, cmd: PlaceOrder) -> list[Event]:
        seq, account = cmd.seq, cmd.account
        reason = None
        if cmd.side not in (1, 2):
            reason = RejectReason.INVALID_SIDE
        elif cmd.order_type not in (1, 2, 3, 4, 5):
            reason = RejectReason.INVALID_ORDER_TYPE
        elif cmd.stp not in (1, 2, 3, 4):
            reason = RejectReason.INVALID_SELF_TRADE_PREVENTION
        elif not self.c.min_size <= cmd.size <= self.c.max_size:
            reason = RejectReason.SIZE_OUT_OF_BOUNDS
        elif cmd.size % self.c.lot_size != 0:
            reason = RejectReason.SIZE_NOT_ON_LOT
        elif cmd.order_type == OrderType.MARKET and cmd.price is not None:
            reason = RejectReason.PRICE_NOT_ALLOWED
        elif cmd.order_type != OrderType.MARKET and cmd.price is None:
            reason = RejectReason.PRICE_REQUIRED
        elif cmd.order_type != OrderType.MARKET:
            reason = self.price_error(cmd.price)
        if reason is not None:
            return [OrderRejected(M, seq, seq, reason, account)]
        side, otype, size, price = Side(cmd.side), OrderType(cmd.order_type), cmd.size, cmd.price
        stp = SelfTradePrevention(cmd.stp)
        opposite = self.asks if side is Side.BUY else self.bids
        matchable = [o for o in opposite if self.acceptable(side, price, o.price)]
        if otype is OrderType.MARKET and not opposite:
            return [OrderRejected(M, seq, seq, RejectReason.NO_LIQUIDITY, account)]
        if otype is OrderType.POST_ONLY and matchable:
            return [OrderRejected(M, seq, seq, RejectReason.POST_ONLY_WOULD_TAKE, account)]
        if otype is OrderType.FOK and self.tradeable(side, price, account, stp) < size:
            return [OrderRejected(M, seq, seq, RejectReason.FOK_CANNOT_FILL, account)]
        events: list[Event] = [OrderAccepted(M, seq, seq, side, otype, price, size, account)]
        left, reduced = self.take(seq, seq, side, size, price, events, account, stp)
        if left:
            if otype in (OrderType.LIMIT, OrderType.POST_ONLY):
                assert price is not None
                order = RefOrder(seq, side, price, size - reduced, left, otype is OrderType.POST_ONLY, account, stp)
                self.insert(order)
                events.append(OrderRested(M, seq, seq, side, price, left, account))
            elif otype is OrderType.IOC:
                events.append(OrderCancelled(M, seq, seq, left, CancelReason.IOC_REMAINDER, account))
            elif otype is OrderType.MARKET:
                events.append(OrderCancelled(M, seq, seq, left, CancelReason.MARKET_REMAINDER, account))
            else:
                raise AssertionError("a FOK that passed its check cannot have a remainder")
        elif otype is OrderType.FOK:
            assert not any(isinstance(e, (OrderCancelled, OrderReduced)) and e.order_id == seq for e in events)
        return events

    def cancel(self, cmd: CancelOrder) -> list[Event]:
        order = self.find(cmd.order_id)
        if order is None:
            return [OrderRejected(M, cmd.seq, cmd.order_id, RejectReason.ORDER_NOT_FOUND, cmd.account)]
        if order.account != cmd.account:
            return [OrderRejected(M, cmd.seq, cmd.order_id, RejectReason.NOT_ORDER_OWNER, cmd.account)]
        self.remove(order)
        return [OrderCancelled(M, cmd.seq, order.order_id, order.remaining, CancelReason.USER, order.account)]

    def amend(self, cmd: AmendOrder) -> list[Event]:
        seq, oid, new_size, account = cmd.seq, cmd.order_id, cmd.new_size, cmd.account
        order = self.find(oid)
        reason = None
        if new_size <= 0:
            reason = RejectReason.AMEND_SIZE_INVALID
        elif order is None:
            reason = RejectReason.ORDER_NOT_FOUND
        elif order.account != account:
            reason = RejectReason.NOT_ORDER_OWNER
        elif order.size - order.remaining + new_size > self.c.max_size:
            reason = RejectReason.SIZE_OUT_OF_BOUNDS
        elif new_size % self.c.lot_size != 0:
            reason = RejectReason.SIZE_NOT_ON_LOT
        elif cmd.new_price is not None:
            reason = self.price_error(cmd.new_price)
        if reason is None:
            assert order is not None
            price = order.price if cmd.new_price is None else cmd.new_price
            if price == order.price and new_size == order.remaining:
                reason = RejectReason.AMEND_NO_CHANGE
            else:
                opposite = self.asks if order.side is Side.BUY else self.bids
                crosses = bool(opposite) and self.acceptable(order.side, price, opposite[0].price)
                if crosses and order.post_only:
                    reason = RejectReason.POST_ONLY_WOULD_TAKE
        if reason is not None:
            return [OrderRejected(M, seq, oid, reason, account)]
        assert order is not None
        filled = order.size - order.remaining
        if price == order.price and new_size < order.remaining:
            order.size = filled + new_size
            order.remaining = new_size
            return [OrderAmended(M, seq, oid, price, new_size, True, account)]
        self.remove(order)
        events: list[Event] = [OrderAmended(M, seq, oid, price, new_size, False, account)]
        left, reduced = new_size, 0
        if crosses:
            left, reduced = self.take(seq, oid, order.side, new_size, price, events, account, order.stp)
            if not left:
                return events
            events.append(OrderRested(M, seq, oid, order.side, price, left, account))
        self.insert(
            RefOrder(oid, order.side, price, filled + new_size - reduced, left, order.post_only, account, order.stp)
        )
        return events

    def apply(self, cmd: Command) -> list[Event]:
        if isinstance(cmd, PlaceOrder):
            return self.place(cmd)
        if isinstance(cmd, CancelOrder):
            return self.cancel(cmd)
        return self.amend(cmd)

    def checksum(self) -> int:
        data = struct.pack(">q", len(self.bids))
        for order in self.bids + self.asks:
            data += struct.pack(">qqq", order.order_id, order.price, order.remaining)
        return zlib.crc32(data)


def _resting(engine: Engine) -> list[tuple[int, Side, int, int, int, str]]:
    return [(o.order_id, o.side, o.price, o.size, o.remaining, o.account) for o in engine.resting_orders(M)]


def _reference_resting(reference: ReferenceBook) -> list[tuple[int, Side, int, int, int, str]]:
    return [(o.order_id, o.side, o.price, o.size, o.remaining, o.account) for o in reference.bids + reference.asks]


def test_engine_matches_naive_reference_on_100k_random_commands(make_stream: StreamFactory) -> None:
    commands = make_stream(seed=7, count=100_000)
    engine = Engine([CONFIG])
    reference = ReferenceBook(CONFIG)
    largest_book = 0
    for cmd in commands:
        got = engine.apply(cmd)
        want = reference.apply(cmd)
        assert got == want, f"seq {cmd.seq}: {cmd}"
        if cmd.seq % 1000 == 0:
            assert engine.checksum(M) == reference.checksum(), f"seq {cmd.seq}"
            assert _resting(engine) == _reference_resting(reference), f"seq {cmd.seq}"
            engine.check_consistency()
            largest_book = max(largest_book, len(reference.bids) + len(reference.asks))
    assert engine.checksum(M) == reference.checksum()
    assert _resting(engine) == _reference_resting(reference)
    assert 10 < largest_book < 2000  # the stream is meant to keep a small but non-trivial book


def test_stream_exercises_every_event_kind(make_stream: StreamFactory) -> None:
    engine = Engine([CONFIG])
    kinds: set[object] = set()
    for cmd in make_stream(seed=1, count=20_000):  # a seed whose stream meets an empty side (NO_LIQUIDITY)
        for event in engine.apply(cmd):
            kinds.add(type(event))
            kinds.add(getattr(event, "reason", None))
    assert {OrderAccepted, OrderRejected, OrderFilled, OrderRested, OrderCancelled, OrderReduced, OrderAmended} <= kinds
    assert set(CancelReason) <= kinds
    exercised = {r for r in RejectReason if r not in (RejectReason.INVALID_SIDE, RejectReason.INVALID_ORDER_TYPE)}
    exercised -= {RejectReason.PRICE_NOT_ON_TICK, RejectReason.SIZE_NOT_ON_LOT}  # tick = lot = 1 here
    assert exercised <= kinds, exercised - kinds


def _run(engine: Engine, commands: list[Command]) -> tuple[list[list[Event]], list[int]]:
    events, checksums = [], []
    for cmd in commands:
        events.append(engine.apply(cmd))
        if cmd.seq % 5000 == 0:
            checksums.append(engine.checksum(M))
    checksums.append(engine.checksum(M))
    return events, checksums


def test_same_100k_commands_give_identical_events_checksums_and_snapshots(make_stream: StreamFactory) -> None:
    commands = make_stream(seed=3, count=100_000)
    first, second = Engine([CONFIG]), Engine([CONFIG])
    assert _run(first, commands) == _run(second, commands)
    assert first.snapshot() == second.snapshot()


def test_snapshot_restore_mid_stream_gives_same_events_and_checksum(make_stream: StreamFactory) -> None:
    commands = make_stream(seed=5, count=100_000)
    straight = Engine([CONFIG])
    events, checksums = _run(straight, commands)

    half = 50_000
    before = Engine([CONFIG])
    for cmd in commands[:half]:
        before.apply(cmd)
    restored = Engine.restore(before.snapshot())
    assert restored.snapshot() == before.snapshot()
    restored.check_consistency()
    later_events, later_checksums = _run(restored, commands[half:])
    assert later_events == events[half:]
    assert later_checksums[-1] == checksums[-1]
    assert restored.snapshot() == straight.snapshot()
