"""Example tests of the matching engine: one rule each, asserting the exact ordered list of events."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pytest

from exchange.engine import (
    AmendOrder,
    CancelOrder,
    CancelReason,
    Engine,
    Event,
    MarketConfig,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderFilled,
    OrderRejected,
    OrderRested,
    OrderType,
    OrderView,
    PlaceOrder,
    RejectReason,
    SelfTradePrevention,
    SequenceError,
    Side,
    UnknownMarketError,
)

BUY, SELL = Side.BUY, Side.SELL
LIMIT, MARKET, IOC, FOK, POST = (
    OrderType.LIMIT,
    OrderType.MARKET,
    OrderType.IOC,
    OrderType.FOK,
    OrderType.POST_ONLY,
)
M = "X"


CommandT = TypeVar("CommandT", PlaceOrder, CancelOrder, AmendOrder)


def ill_typed(kind: type[CommandT], *fields: object) -> CommandT:
    """A command with fields of the wrong type on purpose, as a client of the engine might send: the engine
    must refuse them or make the enum they stand for: the cast tells mypy not to check the fields."""
    return cast(Callable[..., CommandT], kind)(*fields)


class Book:
    """Drives one market of an engine, numbering commands itself (test_engine_accounts uses it too)."""

    def __init__(self, engine: Engine | None = None, market: str = M) -> None:
        self.engine = engine or Engine([MarketConfig(M)])
        self.market = market

    @property
    def next_seq(self) -> int:
        return self.engine.last_seq(self.market) + 1

    def submit(
        self,
        side: Side,
        size: int,
        price: int | None,
        order_type: OrderType = LIMIT,
        account: str = "",
        stp: SelfTradePrevention = SelfTradePrevention.CANCEL_TAKER,
    ) -> list[Event]:
        cmd = PlaceOrder(self.market, self.next_seq, side, order_type, size, price, account, stp)
        events = self.engine.apply(cmd)
        self.engine.check_consistency()
        return events

    def buy(self, size: int, price: int | None, order_type: OrderType = LIMIT, **owner: Any) -> list[Event]:
        return self.submit(BUY, size, price, order_type, **owner)

    def sell(self, size: int, price: int | None, order_type: OrderType = LIMIT, **owner: Any) -> list[Event]:
        return self.submit(SELL, size, price, order_type, **owner)

    def cancel(self, order_id: int, account: str = "") -> list[Event]:
        events = self.engine.apply(CancelOrder(self.market, self.next_seq, order_id, account))
        self.engine.check_consistency()
        return events

    def amend(self, order_id: int, new_size: int, new_price: int | None = None, account: str = "") -> list[Event]:
        events = self.engine.apply(AmendOrder(self.market, self.next_seq, order_id, new_size, new_price, account))
        self.engine.check_consistency()
        return events

    def depth(self, levels: int = 10) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        return self.engine.depth(self.market, levels)

    def ids(self) -> list[int]:
        return [o.order_id for o in self.engine.resting_orders(self.market)]


def accepted(
    seq: int, side: Side, price: int | None, size: int, order_type: OrderType = LIMIT, account: str = ""
) -> OrderAccepted:
    return OrderAccepted(M, seq, seq, side, order_type, price, size, account)


def rested(seq: int, side: Side, price: int, size: int, order_id: int | None = None, account: str = "") -> OrderRested:
    return OrderRested(M, seq, seq if order_id is None else order_id, side, price, size, account)


def fill(
    seq: int,
    trade_id: int,
    price: int,
    size: int,
    maker: int,
    side: Side,
    maker_rem: int,
    taker_rem: int,
    taker: int | None = None,
    maker_account: str = "",
    taker_account: str = "",
) -> OrderFilled:
    return OrderFilled(
        M,
        seq,
        trade_id,
        price,
        size,
        maker,
        seq if taker is None else taker,
        side,
        maker_rem,
        taker_rem,
        maker_account,
        taker_account,
    )


def rejected(seq: int, reason: RejectReason, order_id: int | None = None, account: str = "") -> OrderRejected:
    return OrderRejected(M, seq, seq if order_id is None else order_id, reason, account)


@pytest.fixture
def book() -> Book:
    return Book()


# ------------------------------------------------------------------------------------------- resting


def test_limit_order_on_empty_book_is_accepted_and_rests(book: Book) -> None:
    assert book.buy(10, 100) == [accepted(1, BUY, 100, 10), rested(1, BUY, 100, 10)]
    assert book.depth() == ([(100, 10, 1)], [])
    assert book.engine.order(M, 1) == OrderView(1, BUY, 100, 10, 10, 0)


def test_non_crossing_buy_and_sell_both_rest(book: Book) -> None:
    book.buy(10, 99)
    assert book.sell(4, 100) == [accepted(2, SELL, 100, 4), rested(2, SELL, 100, 4)]
    assert book.depth() == ([(99, 10, 1)], [(100, 4, 1)])


# ------------------------------------------------------------------------------------------- crossing


def test_buy_crossing_two_levels_fills_at_maker_prices_then_rests_remainder(book: Book) -> None:
    book.sell(5, 100)
    book.sell(5, 101)
    book.sell(5, 103)
    assert book.buy(12, 102) == [
        accepted(4, BUY, 102, 12),
        fill(4, 1, 100, 5, 1, BUY, 0, 7),
        fill(4, 2, 101, 5, 2, BUY, 0, 2),
        rested(4, BUY, 102, 2),
    ]
    assert book.depth() == ([(102, 2, 1)], [(103, 5, 1)])
    assert book.engine.order(M, 4) == OrderView(4, BUY, 102, 12, 2, 10)


def test_sell_partially_filling_a_resting_buy_leaves_maker_with_remainder(book: Book) -> None:
    book.buy(10, 100)
    assert book.sell(4, 95) == [accepted(2, SELL, 95, 4), fill(2, 1, 100, 4, 1, SELL, 6, 0)]
    assert book.engine.order(M, 1) == OrderView(1, BUY, 100, 10, 6, 4)
    assert book.engine.order(M, 2) is None
    assert book.depth() == ([(100, 6, 1)], [])


def test_exact_full_fill_removes_both_orders_and_the_level(book: Book) -> None:
    book.sell(7, 100)
    assert book.buy(7, 100) == [accepted(2, BUY, 100, 7), fill(2, 1, 100, 7, 1, BUY, 0, 0)]
    assert book.depth() == ([], [])
    assert book.ids() == []


def test_orders_at_one_price_fill_first_in_first_out(book: Book) -> None:
    book.sell(3, 100)
    book.sell(3, 100)
    book.sell(3, 100)
    assert book.buy(5, 100) == [
        accepted(4, BUY, 100, 5),
        fill(4, 1, 100, 3, 1, BUY, 0, 2),
        fill(4, 2, 100, 2, 2, BUY, 1, 0),
    ]
    assert book.ids() == [2, 3]


def test_better_priced_level_fills_before_earlier_worse_level(book: Book) -> None:
    book.buy(5, 98)
    book.buy(5, 99)
    assert book.sell(6, 90) == [
        accepted(3, SELL, 90, 6),
        fill(3, 1, 99, 5, 2, SELL, 0, 1),
        fill(3, 2, 98, 1, 1, SELL, 4, 0),
    ]


def test_trade_ids_count_from_one_across_commands(book: Book) -> None:
    book.sell(1, 100)
    book.sell(1, 100)
    first, second = book.buy(1, 100)[1], book.buy(1, 100)[1]
    assert isinstance(first, OrderFilled) and first.trade_id == 1
    assert isinstance(second, OrderFilled) and second.trade_id == 2


# ------------------------------------------------------------------------------------------- market


def test_market_order_partially_filled_has_remainder_cancelled(book: Book) -> None:
    book.sell(3, 100)
    book.sell(2, 105)
    assert book.buy(10, None, MARKET) == [
        accepted(3, BUY, None, 10, MARKET),
        fill(3, 1, 100, 3, 1, BUY, 0, 7),
        fill(3, 2, 105, 2, 2, BUY, 0, 5),
        OrderCancelled(M, 3, 3, 5, CancelReason.MARKET_REMAINDER),
    ]
    assert book.depth() == ([], [])


def test_market_order_fully_filled_has_no_cancel(book: Book) -> None:
    book.buy(10, 100)
    assert book.sell(4, None, MARKET) == [
        accepted(2, SELL, None, 4, MARKET),
        fill(2, 1, 100, 4, 1, SELL, 6, 0),
    ]


def test_market_order_on_empty_opposite_side_is_rejected_no_liquidity(book: Book) -> None:
    book.buy(10, 100)
    assert book.buy(5, None, MARKET) == [rejected(2, RejectReason.NO_LIQUIDITY)]
    assert book.depth() == ([(100, 10, 1)], [])


def test_market_order_with_price_is_rejected(book: Book) -> None:
    assert book.buy(5, 100, MARKET) == [rejected(1, RejectReason.PRICE_NOT_ALLOWED)]


# ------------------------------------------------------------------------------------------- IOC / FOK


def test_ioc_fills_what_it_can_and_remainder_is_cancelled(book: Book) -> None:
    book.sell(3, 100)
    book.sell(3, 102)
    assert book.buy(5, 101, IOC) == [
        accepted(3, BUY, 101, 5, IOC),
        fill(3, 1, 100, 3, 1, BUY, 0, 2),
        OrderCancelled(M, 3, 3, 2, CancelReason.IOC_REMAINDER),
    ]
    assert book.depth() == ([], [(102, 3, 1)])


def test_ioc_that_cannot_trade_is_accepted_then_cancelled_whole(book: Book) -> None:
    book.sell(3, 100)
    assert book.buy(5, 99, IOC) == [
        accepted(2, BUY, 99, 5, IOC),
        OrderCancelled(M, 2, 2, 5, CancelReason.IOC_REMAINDER),
    ]


def test_fok_with_enough_liquidity_fills_completely_across_levels(book: Book) -> None:
    book.sell(3, 100)
    book.sell(3, 101)
    assert book.buy(5, 101, FOK) == [
        accepted(3, BUY, 101, 5, FOK),
        fill(3, 1, 100, 3, 1, BUY, 0, 2),
        fill(3, 2, 101, 2, 2, BUY, 1, 0),
    ]


def test_fok_without_enough_liquidity_is_rejected_without_trading(book: Book) -> None:
    book.sell(3, 100)
    book.sell(3, 102)
    before = book.engine.checksum(M)
    assert book.buy(5, 101, FOK) == [rejected(3, RejectReason.FOK_CANNOT_FILL)]
    assert book.engine.checksum(M) == before
    assert book.buy(6, 101, FOK) == [rejected(4, RejectReason.FOK_CANNOT_FILL)]
    assert book.depth() == ([], [(100, 3, 1), (102, 3, 1)])


def test_fok_on_empty_book_is_rejected(book: Book) -> None:
    assert book.sell(1, 100, FOK) == [rejected(1, RejectReason.FOK_CANNOT_FILL)]


# ------------------------------------------------------------------------------------------- post-only


def test_post_only_that_does_not_cross_rests(book: Book) -> None:
    book.sell(3, 101)
    assert book.buy(5, 100, POST) == [accepted(2, BUY, 100, 5, POST), rested(2, BUY, 100, 5)]


def test_post_only_that_would_take_is_rejected_and_book_unchanged(book: Book) -> None:
    book.sell(3, 101)
    assert book.buy(5, 101, POST) == [rejected(2, RejectReason.POST_ONLY_WOULD_TAKE)]
    assert book.depth() == ([], [(101, 3, 1)])


# ------------------------------------------------------------------------------------------- cancel


def test_cancel_resting_order_removes_it_and_its_level(book: Book) -> None:
    book.buy(10, 100)
    assert book.cancel(1) == [OrderCancelled(M, 2, 1, 10, CancelReason.USER)]
    assert book.depth() == ([], [])
    assert book.engine.order(M, 1) is None


def test_cancel_partially_filled_order_cancels_only_the_remainder(book: Book) -> None:
    book.buy(10, 100)
    book.sell(4, 100)
    assert book.cancel(1) == [OrderCancelled(M, 3, 1, 6, CancelReason.USER)]


def test_cancel_unknown_order_is_rejected_not_found(book: Book) -> None:
    assert book.cancel(42) == [rejected(1, RejectReason.ORDER_NOT_FOUND, order_id=42)]
    assert book.engine.last_seq(M) == 1


def test_cancel_of_already_filled_order_is_rejected_not_found(book: Book) -> None:
    book.sell(5, 100)
    book.buy(5, 100)
    assert book.cancel(1) == [rejected(3, RejectReason.ORDER_NOT_FOUND, order_id=1)]


def test_cancel_twice_second_is_rejected_not_found(book: Book) -> None:
    book.sell(5, 100)
    book.cancel(1)
    assert book.cancel(1) == [rejected(3, RejectReason.ORDER_NOT_FOUND, order_id=1)]


def test_cancelled_middle_order_is_skipped_by_matching(book: Book) -> None:
    for _ in range(3):
        book.sell(2, 100)
    book.cancel(2)
    assert book.buy(4, 100) == [
        accepted(5, BUY, 100, 4),
        fill(5, 1, 100, 2, 1, BUY, 0, 2),
        fill(5, 2, 100, 2, 3, BUY, 0, 0),
    ]
    assert book.depth() == ([], [])


def test_many_cancels_in_a_level_keep_tombstones_bounded(book: Book) -> None:
    book.sell(1, 100)  # the front order stays, everything behind it churns
    for _ in range(200):
        book.sell(1, 100)
        book.sell(1, 100)
        book.cancel(book.engine.last_seq(M) - 1)  # the middle one: a tombstone
    queue = book.engine._books[M].asks.levels[100]
    assert len(queue) <= 2 * 201 + 16  # check_consistency (run after every command) checks it exactly
    assert book.depth() == ([], [(100, 201, 201)])
    last = book.buy(201, 100)[-1]
    assert isinstance(last, OrderFilled) and last.taker_remaining == 0
    assert book.depth() == ([], [])


def test_cancelling_the_front_order_keeps_the_tombstones_of_its_level_bounded(book: Book) -> None:
    """A level at the bound (19 tombstones behind 3 live orders) losing its front order, whose successor is
    live, must be compacted: it has one live order fewer and as many tombstones."""
    book.sell(1, 100)  # 1: the front
    book.sell(1, 100)  # 2: the next front
    for _ in range(19):
        book.sell(1, 100)  # 3..21, cancelled below
    book.sell(1, 100)  # 22
    for order_id in range(3, 22):
        book.cancel(order_id)
    assert book.engine._books[M].asks.tombs == {100: 19}  # 19 <= 3 live + 16: no compaction yet
    book.cancel(1)  # check_consistency (in book.cancel) verifies the bound
    assert book.engine._books[M].asks.tombs == {}
    assert len(book.engine._books[M].asks.levels[100]) == 2
    assert book.ids() == [2, 22]


# ------------------------------------------------------------------------------------------- amend


def test_amend_reducing_size_keeps_time_priority(book: Book) -> None:
    book.sell(5, 100)
    book.sell(5, 100)
    assert book.amend(1, 2) == [OrderAmended(M, 3, 1, 100, 2, True)]
    assert book.ids() == [1, 2]
    assert book.depth() == ([], [(100, 7, 2)])
    assert book.engine.order(M, 1) == OrderView(1, SELL, 100, 2, 2, 0)
    assert book.buy(3, 100) == [
        accepted(4, BUY, 100, 3),
        fill(4, 1, 100, 2, 1, BUY, 0, 1),
        fill(4, 2, 100, 1, 2, BUY, 4, 0),
    ]


def test_amend_increasing_size_loses_time_priority(book: Book) -> None:
    book.sell(5, 100)
    book.sell(5, 100)
    assert book.amend(1, 8) == [OrderAmended(M, 3, 1, 100, 8, False)]
    assert book.ids() == [2, 1]
    assert book.depth() == ([], [(100, 13, 2)])


def test_amend_of_partially_filled_order_sets_remaining_and_total_size(book: Book) -> None:
    book.sell(10, 100)
    book.buy(4, 100)
    assert book.amend(1, 3) == [OrderAmended(M, 3, 1, 100, 3, True)]
    assert book.engine.order(M, 1) == OrderView(1, SELL, 100, 7, 3, 4)


def test_amend_price_change_requeues_at_back_of_new_level(book: Book) -> None:
    book.buy(5, 100)
    book.buy(5, 99)
    book.buy(5, 99)
    assert book.amend(1, 5, 99) == [OrderAmended(M, 4, 1, 99, 5, False)]
    assert book.ids() == [2, 3, 1]
    assert book.depth() == ([(99, 15, 3)], [])


def test_amend_to_crossing_price_trades_then_rests_remainder(book: Book) -> None:
    book.sell(3, 101)
    book.sell(3, 102)
    book.buy(10, 100)
    assert book.amend(3, 8, 102) == [
        OrderAmended(M, 4, 3, 102, 8, False),
        fill(4, 1, 101, 3, 1, BUY, 0, 5, taker=3),
        fill(4, 2, 102, 3, 2, BUY, 0, 2, taker=3),
        rested(4, BUY, 102, 2, order_id=3),
    ]
    assert book.engine.order(M, 3) == OrderView(3, BUY, 102, 8, 2, 6)
    assert book.depth() == ([(102, 2, 1)], [])


def test_amend_to_crossing_price_that_fills_completely_finishes_the_order(book: Book) -> None:
    book.sell(3, 101)
    book.buy(2, 100)
    assert book.amend(2, 2, 101) == [
        OrderAmended(M, 3, 2, 101, 2, False),
        fill(3, 1, 101, 2, 1, BUY, 1, 0, taker=2),
    ]
    assert book.engine.order(M, 2) is None
    assert book.cancel(2) == [rejected(4, RejectReason.ORDER_NOT_FOUND, order_id=2)]


def test_amend_post_only_to_crossing_price_is_rejected(book: Book) -> None:
    book.sell(3, 101)
    book.buy(2, 100, POST)
    assert book.amend(2, 2, 101) == [rejected(3, RejectReason.POST_ONLY_WOULD_TAKE, order_id=2)]
    assert book.engine.order(M, 2) == OrderView(2, BUY, 100, 2, 2, 0)


@pytest.mark.parametrize("new_size", [0, -5])
def test_amend_to_non_positive_size_is_rejected(book: Book, new_size: int) -> None:
    book.buy(5, 100)
    assert book.amend(1, new_size) == [rejected(2, RejectReason.AMEND_SIZE_INVALID, order_id=1)]
    assert book.engine.order(M, 1) == OrderView(1, BUY, 100, 5, 5, 0)


def test_amend_with_same_price_and_size_is_rejected_no_change(book: Book) -> None:
    book.buy(5, 100)
    assert book.amend(1, 5, 100) == [rejected(2, RejectReason.AMEND_NO_CHANGE, order_id=1)]
    assert book.amend(1, 5) == [rejected(3, RejectReason.AMEND_NO_CHANGE, order_id=1)]


def test_amend_unknown_order_is_rejected_not_found(book: Book) -> None:
    assert book.amend(9, 5) == [rejected(1, RejectReason.ORDER_NOT_FOUND, order_id=9)]


def test_amend_to_invalid_price_is_rejected() -> None:
    book = Book(Engine([MarketConfig(M, tick_size=5, max_price=1000)]))
    book.buy(5, 100)
    assert book.amend(1, 5, 102) == [rejected(2, RejectReason.PRICE_NOT_ON_TICK, order_id=1)]
    assert book.amend(1, 5, 1005) == [rejected(3, RejectReason.PRICE_OUT_OF_BOUNDS, order_id=1)]


def test_amend_bounds_the_total_size_by_max_size_and_ignores_min_size() -> None:
    book = Book(Engine([MarketConfig(M, lot_size=2, min_size=6, max_size=20)]))
    book.buy(10, 100)
    book.sell(6, 100)  # order 1: 6 filled, 4 open
    assert book.amend(1, 2) == [OrderAmended(M, 3, 1, 100, 2, True)]  # below min_size, like a partial cancel
    assert book.amend(1, 16) == [rejected(4, RejectReason.SIZE_OUT_OF_BOUNDS, order_id=1)]  # 6 + 16 > 20
    assert book.amend(1, 3) == [rejected(5, RejectReason.SIZE_NOT_ON_LOT, order_id=1)]
    assert book.amend(1, 14) == [OrderAmended(M, 6, 1, 100, 14, False)]  # 6 + 14 == max_size
    assert book.engine.order(M, 1) == OrderView(1, BUY, 100, 20, 14, 6)


def test_amend_checks_a_positive_size_before_the_order_and_the_order_before_the_market_rules() -> None:
    book = Book(Engine([MarketConfig(M, lot_size=2, tick_size=5)]))
    assert book.amend(9, 0) == [rejected(1, RejectReason.AMEND_SIZE_INVALID, order_id=9)]
    assert book.amend(9, 3, 101) == [rejected(2, RejectReason.ORDER_NOT_FOUND, order_id=9)]
    book.buy(4, 100)
    assert book.amend(3, 3, 101) == [rejected(4, RejectReason.SIZE_NOT_ON_LOT, order_id=3)]


# ------------------------------------------------------------------------------------------- validation


@pytest.fixture
def strict() -> Book:
    return Book(
        Engine([MarketConfig(M, tick_size=5, lot_size=10, min_price=50, max_price=500, min_size=10, max_size=1000)])
    )


@pytest.mark.parametrize(
    ("side", "order_type", "size", "price", "reason"),
    [
        (BUY, LIMIT, 10, None, RejectReason.PRICE_REQUIRED),
        (BUY, IOC, 10, None, RejectReason.PRICE_REQUIRED),
        (BUY, POST, 10, None, RejectReason.PRICE_REQUIRED),
        (BUY, FOK, 10, None, RejectReason.PRICE_REQUIRED),
        (SELL, MARKET, 10, 100, RejectReason.PRICE_NOT_ALLOWED),
        (BUY, LIMIT, 10, 45, RejectReason.PRICE_OUT_OF_BOUNDS),
        (BUY, LIMIT, 10, 505, RejectReason.PRICE_OUT_OF_BOUNDS),
        (BUY, LIMIT, 10, -100, RejectReason.PRICE_OUT_OF_BOUNDS),
        (BUY, LIMIT, 10, 101, RejectReason.PRICE_NOT_ON_TICK),
        (BUY, LIMIT, 0, 100, RejectReason.SIZE_OUT_OF_BOUNDS),
        (BUY, LIMIT, -10, 100, RejectReason.SIZE_OUT_OF_BOUNDS),
        (BUY, LIMIT, 1010, 100, RejectReason.SIZE_OUT_OF_BOUNDS),
        (BUY, LIMIT, 15, 100, RejectReason.SIZE_NOT_ON_LOT),
        (3, LIMIT, 10, 100, RejectReason.INVALID_SIDE),
        ([1], LIMIT, 10, 100, RejectReason.INVALID_SIDE),  # unhashable: still an event, not an exception
        (BUY, 9, 10, 100, RejectReason.INVALID_ORDER_TYPE),
        (BUY, {1: 1}, 10, 100, RejectReason.INVALID_ORDER_TYPE),
    ],
)
def test_invalid_submit_is_rejected_with_reason_and_changes_nothing(
    strict: Book, side: Side, order_type: OrderType, size: int, price: int | None, reason: RejectReason
) -> None:
    strict.sell(10, 200)
    before = strict.engine.checksum(M)
    assert strict.submit(side, size, price, order_type) == [rejected(2, reason)]
    assert strict.engine.checksum(M) == before
    assert strict.engine.last_seq(M) == 2


@pytest.mark.parametrize(
    ("size", "price", "reason"),
    [
        (5, 100.0, RejectReason.PRICE_OUT_OF_BOUNDS),
        (5, True, RejectReason.PRICE_OUT_OF_BOUNDS),
        (5.0, 100, RejectReason.SIZE_OUT_OF_BOUNDS),
        (True, 100, RejectReason.SIZE_OUT_OF_BOUNDS),
    ],
)
def test_limit_order_whose_price_or_size_is_not_an_int_is_rejected(
    book: Book, size: int, price: int, reason: RejectReason
) -> None:
    """Equal to a valid int is not enough: the values would end up in events, checksums and snapshots."""
    assert book.buy(size, price) == [rejected(1, reason)]
    assert book.depth() == ([], [])


def test_plain_int_side_and_type_are_normalised_to_enums(book: Book) -> None:
    events = book.engine.apply(ill_typed(PlaceOrder, M, 1, 1, 1, 5, 100))
    assert events == [accepted(1, BUY, 100, 5), rested(1, BUY, 100, 5)]
    first = events[0]
    assert isinstance(first, OrderAccepted) and type(first.side) is Side and type(first.order_type) is OrderType


@pytest.mark.parametrize(
    "kwargs",
    [
        {"symbol": ""},
        {"symbol": "X", "tick_size": 0},
        {"symbol": "X", "lot_size": -1},
        {"symbol": "X", "min_price": 10, "max_price": 5},
        {"symbol": "X", "min_size": 10, "max_size": 5},
        {"symbol": "X", "max_price": 2**63},
        {"symbol": "X", "tick_size": 1.0},
    ],
)
def test_invalid_market_config_raises_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MarketConfig(**kwargs)


# ------------------------------------------------------------------------------------------- engine


def test_markets_are_independent() -> None:
    engine = Engine([MarketConfig("A"), MarketConfig("B")])
    assert list(engine.markets) == ["A", "B"]
    a, b = Book(engine, "A"), Book(engine, "B")
    a.sell(5, 100)
    assert b.buy(5, 100) == [
        OrderAccepted("B", 1, 1, BUY, LIMIT, 100, 5),
        OrderRested("B", 1, 1, BUY, 100, 5),
    ]
    assert engine.depth("A", 5) == ([], [(100, 5, 1)])
    assert engine.depth("B", 5) == ([(100, 5, 1)], [])
    assert engine.last_seq("A") == 1 and engine.last_seq("B") == 1
    assert b.cancel(1) == [OrderCancelled("B", 2, 1, 5, CancelReason.USER)]
    assert engine.order("A", 1) is not None


def test_sequence_gap_and_duplicate_raise_and_change_nothing(book: Book) -> None:
    book.buy(5, 100)
    before = book.engine.snapshot()
    with pytest.raises(SequenceError):
        book.engine.apply(PlaceOrder(M, 3, BUY, LIMIT, 5, 100))
    with pytest.raises(SequenceError):
        book.engine.apply(PlaceOrder(M, 1, BUY, LIMIT, 5, 100))
    with pytest.raises(SequenceError):
        book.engine.apply(CancelOrder(M, 0, 1))
    assert book.engine.snapshot() == before
    assert book.engine.last_seq(M) == 1


def test_unknown_market_raises_unknown_market_error(book: Book) -> None:
    with pytest.raises(UnknownMarketError):
        book.engine.apply(PlaceOrder("NOPE", 1, BUY, LIMIT, 5, 100))
    with pytest.raises(LookupError):
        book.engine.checksum("NOPE")


def test_duplicate_or_missing_markets_are_rejected() -> None:
    with pytest.raises(ValueError):
        Engine([MarketConfig("A"), MarketConfig("A")])
    with pytest.raises(ValueError):
        Engine([])


def test_events_equal_only_events_of_the_same_class() -> None:
    rest = OrderRested(M, 1, 1, BUY, 1, 1)
    amend = OrderAmended(M, 1, 1, 1, 1, True)
    assert rest != amend and not rest == amend  # noqa: SIM201
    assert rest != tuple(rest)
    assert rest == OrderRested(M, 1, 1, BUY, 1, 1) and hash(rest) == hash(OrderRested(M, 1, 1, BUY, 1, 1))


# ------------------------------------------------------------------------------------------- queries


def test_empty_book_checksum_is_crc_of_zero_count() -> None:
    assert Engine([MarketConfig(M)]).checksum(M) == zlib.crc32(bytes(8)) == 0x6522DF69


def test_checksum_of_known_book_equals_hand_computed_crc(book: Book) -> None:
    book.buy(5, 100)  # id 1
    book.buy(7, 101)  # id 2
    book.buy(2, 100)  # id 3
    book.sell(4, 105)  # id 4
    book.sell(3, 103)  # id 5
    book.sell(1, 101)  # id 6: fills 1 of order 2
    encoding = bytes.fromhex(
        "0000000000000003"  # three bids
        "0000000000000002"
        "0000000000000065"
        "0000000000000006"  # id 2 @ 101, 6 left
        "0000000000000001"
        "0000000000000064"
        "0000000000000005"  # id 1 @ 100, 5
        "0000000000000003"
        "0000000000000064"
        "0000000000000002"  # id 3 @ 100, 2
        "0000000000000005"
        "0000000000000067"
        "0000000000000003"  # id 5 @ 103, 3
        "0000000000000004"
        "0000000000000069"
        "0000000000000004"  # id 4 @ 105, 4
    )
    assert encoding == struct.pack(">16q", 3, 2, 101, 6, 1, 100, 5, 3, 100, 2, 5, 103, 3, 4, 105, 4)
    assert book.engine.checksum(M) == zlib.crc32(encoding)


def test_checksum_depends_on_fifo_order(book: Book) -> None:
    other = Book()
    book.buy(5, 100)
    book.buy(5, 100)
    other.buy(5, 100)
    other.buy(5, 100)
    other.amend(1, 5, 99)
    other.amend(1, 5, 100)  # back at 100, now behind order 2
    assert book.engine.checksum(M) != other.engine.checksum(M)


def test_depth_lists_best_levels_first_with_totals_and_counts(book: Book) -> None:
    for price, size in [(98, 1), (99, 2), (99, 3), (97, 4)]:
        book.buy(size, price)
    for price, size in [(101, 5), (103, 6), (101, 7)]:
        book.sell(size, price)
    assert book.depth(2) == ([(99, 5, 2), (98, 1, 1)], [(101, 12, 2), (103, 6, 1)])
    assert book.depth(10) == ([(99, 5, 2), (98, 1, 1), (97, 4, 1)], [(101, 12, 2), (103, 6, 1)])
    assert book.depth(0) == ([], [])


def test_resting_orders_lists_bids_then_asks_in_priority_order(book: Book) -> None:
    book.sell(1, 105)
    book.buy(1, 99)
    book.sell(1, 104)
    book.buy(1, 100)
    book.buy(1, 99)
    assert book.ids() == [4, 2, 5, 3, 1]


def test_snapshot_restore_round_trip_keeps_state_and_future_events(book: Book) -> None:
    book.sell(5, 101)
    book.sell(5, 101)
    book.buy(3, 99)
    book.sell(2, 99)  # trade id 1
    book.amend(1, 3)
    data = book.engine.snapshot()
    restored = Book(Engine.restore(data))
    assert restored.engine.snapshot() == data
    assert restored.engine.checksum(M) == book.engine.checksum(M)
    assert restored.engine.last_seq(M) == 5
    assert list(restored.engine.resting_orders(M)) == list(book.engine.resting_orders(M))
    assert restored.buy(10, 101) == book.buy(10, 101)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: b"",
        lambda d: d[:10],
        lambda d: b"XXXXXXXX" + d[8:],
        lambda d: d[:8] + b"\x00\x04" + d[10:],
        lambda d: d[:-1] + bytes([d[-1] ^ 1]),
        lambda d: d + b" ",
    ],
)
def test_corrupt_snapshot_raises_value_error(book: Book, mutate: Callable[[bytes], bytes]) -> None:
    book.buy(5, 100)
    with pytest.raises(ValueError):
        Engine.restore(mutate(book.engine.snapshot()))


def test_snapshot_with_valid_crc_but_crossed_book_raises_value_error() -> None:
    import json

    body = json.dumps(
        {
            "markets": [
                {
                    "config": {
                        "symbol": M,
                        "tick_size": 1,
                        "lot_size": 1,
                        "min_price": 1,
                        "max_price": 1000,
                        "min_size": 1,
                        "max_size": 1000,
                    },
                    "last_seq": 2,
                    "next_trade_id": 1,
                    "bids": [[1, 101, 5, 5, 0]],
                    "asks": [[2, 100, 5, 5, 0]],
                }
            ]
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    data = b"P2PXENG\x00" + struct.pack(">HI", 1, zlib.crc32(body)) + body
    with pytest.raises(ValueError, match="crossed"):
        Engine.restore(data)
