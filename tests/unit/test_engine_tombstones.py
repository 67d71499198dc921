"""Tombstones (cancelled orders left in their level) stay bounded by the level's live orders on every path that
takes live orders out, self-trade prevention's stops included (found by a review, 2026-12-03: a fill that stopped at
the taker's own maker skipped the compaction check)."""

from __future__ import annotations

from exchange.engine import (
    CancelOrder,
    Engine,
    MarketConfig,
    OrderCancelled,
    OrderFilled,
    OrderReduced,
    OrderType,
    PlaceOrder,
    SelfTradePrevention,
    Side,
)

M = "X"


class Driver:
    def __init__(self) -> None:
        self.engine = Engine([MarketConfig(M)])
        self.seq = 0

    def place(self, side: Side, size: int, price: int | None, account: str,
              order_type: OrderType = OrderType.LIMIT,
              stp: SelfTradePrevention = SelfTradePrevention.CANCEL_TAKER) -> list:
        self.seq += 1
        return self.engine.apply(PlaceOrder(M, self.seq, side, order_type, size, price, account, stp))

    def cancel(self, order_id: int, account: str) -> list:
        self.seq += 1
        return self.engine.apply(CancelOrder(M, self.seq, order_id, account))


def _level_with_max_tombstones(d: Driver) -> None:
    """Ask level 100: a maker of "b" (id 1), then one of "a" (id 2), then 18 tombstones (live 2 + SLACK 16: the
    most the compaction rule allows)."""
    d.place(Side.SELL, 1, 100, "b")
    d.place(Side.SELL, 1, 100, "a")
    extra = [d.place(Side.SELL, 1, 100, "b")[0].order_id for _ in range(18)]
    for order_id in extra:
        d.cancel(order_id, "b")
    d.engine.check_consistency()  # the book is consistent so far


def test_fill_that_stops_at_an_own_maker_skips_tombstone_compaction() -> None:
    """book.py `_take`: when a full fill leaves the level with an own maker in front, the inner loop breaks without
    the compaction check the other exits make; CANCEL_TAKER then ends the taker without unlinking anything, so the
    level keeps more tombstones than live + SLACK and the engine's own consistency check fails on a reachable
    state."""
    d = Driver()
    _level_with_max_tombstones(d)
    events = d.place(Side.BUY, 2, 100, "a")  # fills "b"'s order 1, then meets its own order 2: CANCEL_TAKER
    assert [type(e) for e in events[1:]] == [OrderFilled, OrderCancelled]
    d.engine.check_consistency()  # AssertionError: "X: SELL level 100: too many tombstones"


def test_fill_then_decrement_against_own_maker_skips_compaction() -> None:
    """The DECREMENT flavour in one command: the taker fills "b"'s maker, meets its own larger maker, and is
    decremented to nothing while the maker keeps a remainder (no unlink, no compaction)."""
    d = Driver()
    d.place(Side.SELL, 1, 100, "b")
    d.place(Side.SELL, 5, 100, "a")
    extra = [d.place(Side.SELL, 1, 100, "b")[0].order_id for _ in range(18)]
    for order_id in extra:
        d.cancel(order_id, "b")
    d.engine.check_consistency()
    events = d.place(Side.BUY, 2, 100, "a", stp=SelfTradePrevention.DECREMENT)
    assert [type(e) for e in events[1:]] == [OrderFilled, OrderReduced, OrderCancelled]
    d.engine.check_consistency()


def test_tombstones_are_not_bounded_by_the_live_orders_of_their_level() -> None:
    """The package docstring: "Memory is proportional to the resting orders ... a cancelled order may linger as a
    bounded tombstone"; book.py: "tombstones <= live + SLACK per level". Alternating makers of two accounts, each
    taker filling one and stopping at its own: every fill removes a live order without a compaction check, so one
    live order ends up sitting in front of 116 tombstones."""
    d = Driver()
    n = 100
    for i in range(n):
        d.place(Side.SELL, 1, 100, "x" if i % 2 == 0 else "y")
    extra = [d.place(Side.SELL, 1, 100, "z")[0].order_id for _ in range(n + 16)]
    for order_id in extra:
        d.cancel(order_id, "z")
    d.engine.check_consistency()
    for i in range(n - 1):
        # the front maker belongs to "x" on even i: a taker of "y" fills it and stops at the next, its own
        d.place(Side.BUY, 2, 100, "y" if i % 2 == 0 else "x")
    assert len(list(d.engine.resting_orders(M))) == 1
    queue = d.engine._books[M].asks.levels[100]  # noqa: SLF001 (the memory the docstring bounds)
    assert len(queue) <= 1 + 16, f"1 live order and {len(queue) - 1} tombstones"
