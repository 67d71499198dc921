"""Example tests of accounts in the engine: ownership, self-trade prevention (each mode, FOK, IOC, MARKET,
amends), the account fields of events and views, invalid commands, and snapshots with owners.

Each test asserts the exact ordered list of events; ``Book`` (test_engine_rules) checks the engine's
internal consistency after every command.
"""

from __future__ import annotations

import json
import struct
import zlib

import pytest

from exchange.engine import (
    SELF_TRADE_PREVENTIONS,
    AmendOrder,
    CancelOrder,
    CancelReason,
    Command,
    Engine,
    Event,
    MarketConfig,
    OrderAmended,
    OrderCancelled,
    OrderFilled,
    OrderReduced,
    OrderRejected,
    OrderView,
    PlaceOrder,
    RejectReason,
    SelfTradePrevention,
)
from tests.unit.test_engine_rules import (
    BUY,
    FOK,
    IOC,
    LIMIT,
    MARKET,
    POST,
    SELL,
    M,
    accepted,
    fill,
    ill_typed,
    rejected,
    rested,
)
from tests.unit.test_engine_rules import Book as Driver

A, B, C = "alice", "bob", "carol"
CANCEL_TAKER, CANCEL_MAKER, CANCEL_BOTH, DECREMENT = SelfTradePrevention
PREVENTED = CancelReason.SELF_TRADE_PREVENTED


def prevented(seq: int, order_id: int, size: int, account: str = A) -> OrderCancelled:
    return OrderCancelled(M, seq, order_id, size, PREVENTED, account)


def reduced(seq: int, order_id: int, size: int, remaining: int, account: str = A) -> OrderReduced:
    return OrderReduced(M, seq, order_id, size, remaining, PREVENTED, account)


def checksum_of(bids: list[tuple[int, int, int]], asks: list[tuple[int, int, int]]) -> int:
    """The package docstring's checksum of a book given as (id, price, remaining) in priority order."""
    flat = [value for order in bids + asks for value in order]
    return zlib.crc32(struct.pack(f">{1 + len(flat)}q", len(bids), *flat))


def resting(book: Driver) -> list[tuple[int, int, int]]:
    return [(o.order_id, o.price, o.remaining) for o in book.engine.resting_orders(M)]


@pytest.fixture
def book() -> Driver:
    return Driver()


@pytest.fixture
def walk() -> Driver:
    """Asks, in priority order: bob 2@100 (id 1), alice 3@100 (id 2), bob 4@101 (id 3). Alice's buy of 10 at
    101 (id 4) trades with order 1, then meets her own order 2 in the middle of the walk."""
    book = Driver()
    book.sell(2, 100, account=B)
    book.sell(3, 100, account=A)
    book.sell(4, 101, account=B)
    return book


# ------------------------------------------------------------------------------- self-trade prevention


# what each mode makes of alice's buy of 10 at 101 after its first trade, the book after it (id, price, open),
# and the incoming order's view (None: finished)
FIRST_FILL = fill(4, 1, 100, 2, 1, BUY, 0, 8, maker_account=B, taker_account=A)
WALKS: dict[SelfTradePrevention, tuple[list[Event], list[tuple[int, int, int]], OrderView | None]] = {
    # the incoming order stops where it meets its own
    CANCEL_TAKER: ([prevented(4, 4, 8)], [(2, 100, 3), (3, 101, 4)], None),
    # the resting order is cancelled, matching goes on and the rest rests
    CANCEL_MAKER: (
        [
            prevented(4, 2, 3),
            fill(4, 2, 101, 4, 3, BUY, 0, 4, maker_account=B, taker_account=A),
            rested(4, BUY, 101, 4, account=A),
        ],
        [(4, 101, 4)],
        OrderView(4, BUY, 101, 10, 4, 6, A),
    ),
    # the resting order first, then the incoming remainder
    CANCEL_BOTH: ([prevented(4, 2, 3), prevented(4, 4, 8)], [(3, 101, 4)], None),
    # both lose 3: the resting order is left with 0 (cancelled), the incoming one keeps 5 and goes on; its
    # total size no longer counts the 3 lots: 6 filled + 1 open
    DECREMENT: (
        [
            prevented(4, 2, 3),
            reduced(4, 4, 3, 5),
            fill(4, 2, 101, 4, 3, BUY, 0, 1, maker_account=B, taker_account=A),
            rested(4, BUY, 101, 1, account=A),
        ],
        [(4, 101, 1)],
        OrderView(4, BUY, 101, 7, 1, 6, A),
    ),
}


@pytest.mark.parametrize("stp", list(WALKS), ids=[mode.name for mode in WALKS])
def test_each_mode_where_the_walk_meets_an_own_resting_order(walk: Driver, stp: SelfTradePrevention) -> None:
    events, after, view = WALKS[stp]
    assert walk.buy(10, 101, account=A, stp=stp) == [accepted(4, BUY, 101, 10, account=A), FIRST_FILL, *events]
    assert resting(walk) == after
    bids = [order for order in after if order[0] == 4]
    assert walk.engine.checksum(M) == checksum_of(bids, [order for order in after if order not in bids])
    assert walk.engine.order(M, 4) == view


def test_cancel_taker_is_the_default(walk: Driver) -> None:
    events = walk.engine.apply(PlaceOrder(M, 4, BUY, LIMIT, 10, 101, A))
    assert events == [accepted(4, BUY, 101, 10, account=A), FIRST_FILL, prevented(4, 4, 8)]


def test_decrement_reduces_a_larger_resting_order_which_keeps_its_place(book: Driver) -> None:
    book.sell(10, 100, account=A)
    book.sell(1, 100, account=B)
    assert book.buy(4, 100, account=A, stp=DECREMENT) == [
        accepted(3, BUY, 100, 4, account=A),
        reduced(3, 1, 4, 6),
        prevented(3, 3, 4),  # the incoming order is left with 0
    ]
    assert book.engine.order(M, 1) == OrderView(1, SELL, 100, 6, 6, 0, A)
    assert book.engine.checksum(M) == checksum_of([], [(1, 100, 6), (2, 100, 1)])
    assert book.buy(7, 100, account=C) == [  # order 1 still comes first
        accepted(4, BUY, 100, 7, account=C),
        fill(4, 1, 100, 6, 1, BUY, 0, 1, maker_account=A, taker_account=C),
        fill(4, 2, 100, 1, 2, BUY, 0, 0, maker_account=B, taker_account=C),
    ]


def test_decrement_of_equal_sizes_cancels_both(book: Driver) -> None:
    book.buy(4, 100, account=A)
    assert book.sell(4, 100, account=A, stp=DECREMENT) == [
        accepted(2, SELL, 100, 4, account=A),
        prevented(2, 1, 4),
        prevented(2, 2, 4),
    ]
    assert resting(book) == []


def test_orders_of_no_account_are_never_self_trade_prevented(book: Driver) -> None:
    book.sell(5, 100)
    assert book.buy(3, 100, stp=CANCEL_BOTH) == [accepted(2, BUY, 100, 3), fill(2, 1, 100, 3, 1, BUY, 2, 0)]
    book.sell(2, 101, account=A)
    assert book.buy(4, 101, stp=CANCEL_BOTH) == [
        accepted(4, BUY, 101, 4),
        fill(4, 2, 100, 2, 1, BUY, 0, 2),
        fill(4, 3, 101, 2, 3, BUY, 0, 0, maker_account=A),
    ]
    book.buy(1, 99)
    assert book.sell(1, 99, account=A, stp=CANCEL_BOTH) == [
        accepted(6, SELL, 99, 1, account=A),
        fill(6, 4, 99, 1, 5, SELL, 0, 0, taker_account=A),
    ]


def test_orders_of_different_accounts_trade(book: Driver) -> None:
    book.sell(5, 100, account=A)
    assert book.buy(5, 100, account=B, stp=CANCEL_BOTH) == [
        accepted(2, BUY, 100, 5, account=B),
        fill(2, 1, 100, 5, 1, BUY, 0, 0, maker_account=A, taker_account=B),
    ]


def test_post_only_never_takes_so_self_trade_prevention_never_applies(book: Driver) -> None:
    book.sell(3, 100, account=A)
    assert book.buy(3, 100, POST, account=A, stp=CANCEL_MAKER) == [
        rejected(2, RejectReason.POST_ONLY_WOULD_TAKE, account=A)
    ]
    assert resting(book) == [(1, 100, 3)]


# ------------------------------------------------------------------------------------- FOK, IOC, MARKET


@pytest.fixture
def fok_book() -> Driver:
    """Asks: bob 3@100 (id 1), alice 3@100 (id 2), bob 3@101 (id 3): 9 resting, 6 tradeable by alice."""
    book = Driver()
    book.sell(3, 100, account=B)
    book.sell(3, 100, account=A)
    book.sell(3, 101, account=B)
    return book


@pytest.mark.parametrize("stp", [CANCEL_TAKER, CANCEL_BOTH, DECREMENT])
def test_fok_counts_only_what_lies_ahead_of_its_own_order(fok_book: Driver, stp: SelfTradePrevention) -> None:
    before = fok_book.engine.checksum(M)
    assert fok_book.buy(4, 101, FOK, account=A, stp=stp) == [rejected(4, RejectReason.FOK_CANNOT_FILL, account=A)]
    assert fok_book.engine.checksum(M) == before
    assert fok_book.buy(3, 101, FOK, account=A, stp=stp) == [  # fills before it meets its own order
        accepted(5, BUY, 101, 3, FOK, account=A),
        fill(5, 1, 100, 3, 1, BUY, 0, 0, maker_account=B, taker_account=A),
    ]
    assert resting(fok_book) == [(2, 100, 3), (3, 101, 3)]


def test_fok_under_cancel_maker_counts_every_other_accounts_order_and_cancels_its_own(fok_book: Driver) -> None:
    before = fok_book.engine.checksum(M)
    assert fok_book.buy(7, 101, FOK, account=A, stp=CANCEL_MAKER) == [
        rejected(4, RejectReason.FOK_CANNOT_FILL, account=A)
    ]
    assert fok_book.engine.checksum(M) == before  # its own order is not cancelled by a rejected FOK
    assert fok_book.buy(6, 101, FOK, account=A, stp=CANCEL_MAKER) == [
        accepted(5, BUY, 101, 6, FOK, account=A),
        fill(5, 1, 100, 3, 1, BUY, 0, 3, maker_account=B, taker_account=A),
        prevented(5, 2, 3),
        fill(5, 2, 101, 3, 3, BUY, 0, 0, maker_account=B, taker_account=A),
    ]
    assert resting(fok_book) == []


def test_fok_of_another_account_counts_everything(fok_book: Driver) -> None:
    assert fok_book.buy(9, 101, FOK, account=C) == [
        accepted(4, BUY, 101, 9, FOK, account=C),
        fill(4, 1, 100, 3, 1, BUY, 0, 6, maker_account=B, taker_account=C),
        fill(4, 2, 100, 3, 2, BUY, 0, 3, maker_account=A, taker_account=C),
        fill(4, 3, 101, 3, 3, BUY, 0, 0, maker_account=B, taker_account=C),
    ]


def test_ioc_stopped_by_self_trade_prevention_is_cancelled_as_prevented(fok_book: Driver) -> None:
    assert fok_book.buy(10, 101, IOC, account=A) == [
        accepted(4, BUY, 101, 10, IOC, account=A),
        fill(4, 1, 100, 3, 1, BUY, 0, 7, maker_account=B, taker_account=A),
        prevented(4, 4, 7),
    ]


def test_ioc_out_of_liquidity_after_cancelling_its_own_order_keeps_ioc_remainder(fok_book: Driver) -> None:
    assert fok_book.buy(10, 101, IOC, account=A, stp=CANCEL_MAKER) == [
        accepted(4, BUY, 101, 10, IOC, account=A),
        fill(4, 1, 100, 3, 1, BUY, 0, 7, maker_account=B, taker_account=A),
        prevented(4, 2, 3),
        fill(4, 2, 101, 3, 3, BUY, 0, 4, maker_account=B, taker_account=A),
        OrderCancelled(M, 4, 4, 4, CancelReason.IOC_REMAINDER, A),
    ]


def test_market_order_stopped_by_self_trade_prevention_is_cancelled_as_prevented(fok_book: Driver) -> None:
    assert fok_book.buy(10, None, MARKET, account=A) == [
        accepted(4, BUY, None, 10, MARKET, account=A),
        fill(4, 1, 100, 3, 1, BUY, 0, 7, maker_account=B, taker_account=A),
        prevented(4, 4, 7),
    ]
    assert resting(fok_book) == [(2, 100, 3), (3, 101, 3)]


def test_market_order_facing_only_its_own_orders_is_accepted_then_prevented_not_no_liquidity(book: Driver) -> None:
    book.sell(3, 100, account=A)
    assert book.buy(5, None, MARKET, account=A) == [accepted(2, BUY, None, 5, MARKET, account=A), prevented(2, 2, 5)]
    assert resting(book) == [(1, 100, 3)]


def test_market_order_decremented_goes_on_matching_and_keeps_market_remainder(book: Driver) -> None:
    book.sell(3, 100, account=A)
    book.sell(1, 101, account=B)
    assert book.buy(6, None, MARKET, account=A, stp=DECREMENT) == [
        accepted(3, BUY, None, 6, MARKET, account=A),
        prevented(3, 1, 3),
        reduced(3, 3, 3, 3),
        fill(3, 1, 101, 1, 2, BUY, 0, 2, maker_account=B, taker_account=A),
        OrderCancelled(M, 3, 3, 2, CancelReason.MARKET_REMAINDER, A),
    ]
    assert resting(book) == []


# ---------------------------------------------------------------------------------------------- amend


@pytest.fixture
def amend_book() -> Driver:
    """Asks: bob 2@100 (id 1), alice 2@101 (id 2); alice's bid 5@99 (id 3) is amended to 101 (seq 4)."""
    book = Driver()
    book.sell(2, 100, account=B)
    book.sell(2, 101, account=A)
    return book


# the amend, then the trade with bob's order 1; what follows depends on the mode of order 3
AMENDED_AND_FILLED = [
    OrderAmended(M, 4, 3, 101, 5, False, A),
    fill(4, 1, 100, 2, 1, BUY, 0, 3, taker=3, maker_account=B, taker_account=A),
]


def test_amend_that_crosses_applies_the_orders_default_mode(amend_book: Driver) -> None:
    amend_book.buy(5, 99, account=A)
    assert amend_book.amend(3, 5, 101, account=A) == [
        *AMENDED_AND_FILLED,
        prevented(4, 3, 3),
    ]
    assert amend_book.engine.order(M, 3) is None
    assert resting(amend_book) == [(2, 101, 2)]


def test_amend_that_crosses_applies_the_orders_own_mode(amend_book: Driver) -> None:
    amend_book.buy(5, 99, account=A, stp=CANCEL_MAKER)
    assert amend_book.amend(3, 5, 101, account=A) == [
        *AMENDED_AND_FILLED,
        prevented(4, 2, 2),
        rested(4, BUY, 101, 3, order_id=3, account=A),
    ]
    assert amend_book.engine.order(M, 3) == OrderView(3, BUY, 101, 5, 3, 2, A)


def test_amend_that_crosses_under_decrement_reduces_the_amended_order(amend_book: Driver) -> None:
    amend_book.buy(5, 99, account=A, stp=DECREMENT)
    assert amend_book.amend(3, 5, 101, account=A) == [
        *AMENDED_AND_FILLED,
        prevented(4, 2, 2),
        reduced(4, 3, 2, 1),
        rested(4, BUY, 101, 1, order_id=3, account=A),
    ]
    assert amend_book.engine.order(M, 3) == OrderView(3, BUY, 101, 3, 1, 2, A)
    assert amend_book.engine.checksum(M) == checksum_of([(3, 101, 1)], [])


# ------------------------------------------------------------------------------------------ ownership


def test_cancel_or_amend_of_another_accounts_order_is_rejected_and_changes_nothing(book: Driver) -> None:
    book.sell(5, 100, account=A)
    before = resting(book), book.engine.checksum(M)
    assert book.cancel(1, account=B) == [rejected(2, RejectReason.NOT_ORDER_OWNER, order_id=1, account=B)]
    assert book.cancel(1) == [rejected(3, RejectReason.NOT_ORDER_OWNER, order_id=1)]  # "" is not alice
    assert book.amend(1, 3, account=B) == [rejected(4, RejectReason.NOT_ORDER_OWNER, order_id=1, account=B)]
    assert book.amend(1, 5, 99) == [rejected(5, RejectReason.NOT_ORDER_OWNER, order_id=1)]
    assert (resting(book), book.engine.checksum(M)) == before
    assert book.amend(1, 3, account=A) == [OrderAmended(M, 6, 1, 100, 3, True, A)]
    assert book.cancel(1, account=A) == [OrderCancelled(M, 7, 1, 3, CancelReason.USER, A)]


def test_no_account_owns_its_orders_like_any_account(book: Driver) -> None:
    book.sell(5, 100)
    assert book.cancel(1, account=A) == [rejected(2, RejectReason.NOT_ORDER_OWNER, order_id=1, account=A)]
    assert book.amend(1, 4, account=A) == [rejected(3, RejectReason.NOT_ORDER_OWNER, order_id=1, account=A)]
    assert book.amend(1, 4) == [OrderAmended(M, 4, 1, 100, 4, True)]
    assert book.cancel(1) == [OrderCancelled(M, 5, 1, 4, CancelReason.USER)]


def test_ownership_is_checked_right_after_the_order_is_found() -> None:
    book = Driver(Engine([MarketConfig(M, lot_size=2, tick_size=5)]))
    book.sell(4, 100, account=A)
    assert book.amend(1, 0, account=B) == [rejected(2, RejectReason.AMEND_SIZE_INVALID, order_id=1, account=B)]
    assert book.amend(9, 3, 101, account=B) == [rejected(3, RejectReason.ORDER_NOT_FOUND, order_id=9, account=B)]
    assert book.amend(1, 3, 101, account=B) == [rejected(4, RejectReason.NOT_ORDER_OWNER, order_id=1, account=B)]
    assert book.amend(1, 3, 101, account=A) == [rejected(5, RejectReason.SIZE_NOT_ON_LOT, order_id=1, account=A)]
    assert book.cancel(9, account=B) == [rejected(6, RejectReason.ORDER_NOT_FOUND, order_id=9, account=B)]


def test_events_and_views_name_the_owner(book: Driver) -> None:
    assert book.sell(5, 100, account=A) == [accepted(1, SELL, 100, 5, account=A), rested(1, SELL, 100, 5, account=A)]
    assert book.sell(5, 100, IOC, account=B) == [
        accepted(2, SELL, 100, 5, IOC, account=B),
        OrderCancelled(M, 2, 2, 5, CancelReason.IOC_REMAINDER, B),
    ]
    assert book.buy(5, 99, FOK, account=B) == [rejected(3, RejectReason.FOK_CANNOT_FILL, account=B)]
    assert list(book.engine.resting_orders(M)) == [OrderView(1, SELL, 100, 5, 5, 0, A)]


def test_event_account_fields_default_to_no_account_for_code_written_before_accounts() -> None:
    assert OrderAmended(M, 2, 1, 100, 2, True).account == ""
    filled = OrderFilled(M, 1, 1, 100, 1, 1, 2, BUY, 0, 0)
    assert (filled.maker_account, filled.taker_account) == ("", "")
    assert OrderRejected(M, 1, 1, RejectReason.ORDER_NOT_FOUND) == rejected(1, RejectReason.ORDER_NOT_FOUND)


# ------------------------------------------------------------------------------------- invalid commands


@pytest.mark.parametrize("stp", [0, 5, -1, "1", None, 1.0, True, [1]])
def test_invalid_self_trade_prevention_is_rejected_and_changes_nothing(book: Driver, stp: object) -> None:
    book.sell(5, 100, account=A)
    before = book.engine.checksum(M)
    cmd = ill_typed(PlaceOrder, M, 2, BUY, LIMIT, 5, 100, A, stp)
    assert book.engine.apply(cmd) == [rejected(2, RejectReason.INVALID_SELF_TRADE_PREVENTION, account=A)]
    assert book.engine.checksum(M) == before and book.engine.last_seq(M) == 2


def test_self_trade_prevention_is_checked_right_after_the_order_type(book: Driver) -> None:
    apply = book.engine.apply
    assert apply(ill_typed(PlaceOrder, M, 1, 3, LIMIT, 5, 100, A, 9)) == [
        rejected(1, RejectReason.INVALID_SIDE, account=A)
    ]
    assert apply(ill_typed(PlaceOrder, M, 2, BUY, 9, 5, 100, A, 9)) == [
        rejected(2, RejectReason.INVALID_ORDER_TYPE, account=A)
    ]
    assert apply(ill_typed(PlaceOrder, M, 3, BUY, LIMIT, 0, None, A, 9)) == [
        rejected(3, RejectReason.INVALID_SELF_TRADE_PREVENTION, account=A)
    ]
    config = MarketConfig(M)
    assert config.order_error(BUY, LIMIT, 0, None, None) is RejectReason.INVALID_SELF_TRADE_PREVENTION
    assert config.order_error(BUY, LIMIT, 0, None) is RejectReason.SIZE_OUT_OF_BOUNDS


def test_plain_int_self_trade_prevention_is_normalised_to_the_mode(book: Driver) -> None:
    assert SELF_TRADE_PREVENTIONS == {1: CANCEL_TAKER, 2: CANCEL_MAKER, 3: CANCEL_BOTH, 4: DECREMENT}
    book.engine.apply(ill_typed(PlaceOrder, M, 1, SELL, LIMIT, 5, 100, A, 2))
    book.buy(2, 99, account=B)
    book.buy(1, 98, account=A)
    # the amended order applies CANCEL_MAKER (2): alice's own bid is cancelled, the rest rests
    assert book.amend(1, 5, 98, account=A) == [
        OrderAmended(M, 4, 1, 98, 5, False, A),
        fill(4, 1, 99, 2, 2, SELL, 0, 3, taker=1, maker_account=B, taker_account=A),
        prevented(4, 3, 1),
        rested(4, SELL, 98, 3, order_id=1, account=A),
    ]


@pytest.mark.parametrize(
    "command",
    [
        ill_typed(PlaceOrder, M, 2, BUY, LIMIT, 5, 100, None),
        ill_typed(PlaceOrder, M, 2, 7, LIMIT, 5, 100, b"alice"),
        ill_typed(CancelOrder, M, 2, 1, 5),
        ill_typed(AmendOrder, M, 2, 1, 3, None, ["alice"]),
    ],
)
def test_an_account_that_is_not_a_str_raises_and_changes_nothing(book: Driver, command: Command) -> None:
    book.sell(5, 100, account=A)
    before = book.engine.snapshot()
    with pytest.raises(TypeError, match="account"):
        book.engine.apply(command)
    assert book.engine.snapshot() == before and book.engine.last_seq(M) == 1


# ------------------------------------------------------------------------------------------- snapshots


def test_snapshot_keeps_owners_and_modes(book: Driver) -> None:
    book.sell(5, 101, account=A, stp=CANCEL_MAKER)
    book.buy(2, 99, account=A)
    book.buy(3, 100, account=B)
    data = book.engine.snapshot()
    accounts, markets = _decode(data)
    assert accounts == [B, A]  # in order of first appearance: bids first
    assert markets[0]["asks"] == [(1, 101, 5, 5, A, 0, 2)]
    assert markets[0]["bids"] == [(3, 100, 3, 3, B, 0, 1), (2, 99, 2, 2, A, 0, 1)]
    restored = Driver(Engine.restore(data))
    assert restored.engine.snapshot() == data
    assert list(restored.engine.resting_orders(M)) == list(book.engine.resting_orders(M))
    expected = [
        OrderAmended(M, 4, 1, 99, 5, False, A),
        fill(4, 1, 100, 3, 3, SELL, 0, 2, taker=1, maker_account=B, taker_account=A),
        prevented(4, 2, 2),  # the restored order still applies CANCEL_MAKER
        rested(4, SELL, 99, 2, order_id=1, account=A),
    ]
    assert restored.amend(1, 5, 99, account=A) == expected == book.amend(1, 5, 99, account=A)
    assert restored.cancel(1, account=B) == [rejected(5, RejectReason.NOT_ORDER_OWNER, order_id=1, account=B)]


CONFIG = {"symbol": M, "tick_size": 1, "lot_size": 1, "min_price": 1, "max_price": 1000, "min_size": 1,
          "max_size": 1000}
COLUMNS = "qqqqIBB"  # a version-3 body's columns: id, price, size, remaining, account index, post_only, stp


def _framed(version: int, body: bytes) -> bytes:
    return b"P2PXENG\x00" + struct.pack(">HI", version, zlib.crc32(body)) + body


def _snapshot(version: int, bids: list, asks: list) -> bytes:
    """A version-1 or version-2 snapshot (JSON rows)."""
    market = {"config": CONFIG, "last_seq": 3, "next_trade_id": 1, "bids": bids, "asks": asks}
    return _framed(version, json.dumps({"markets": [market]}, sort_keys=True, separators=(",", ":")).encode())


def _snapshot_v3(bids: list[tuple], asks: list[tuple], accounts: object = (A,), last_seq: int = 3,
                 announced: tuple[int, int] | None = None, trailing: bytes = b"") -> bytes:
    """A version-3 snapshot of one market, written here the way the package docstring says: each order
    (id, price, size, remaining, account index, post_only, stp)."""
    counts = announced or (len(bids), len(asks))
    market = {"config": CONFIG, "last_seq": last_seq, "next_trade_id": 1, "bids": counts[0], "asks": counts[1]}
    meta = json.dumps({"accounts": list(accounts) if isinstance(accounts, tuple) else accounts,
                       "markets": [market]}, sort_keys=True, separators=(",", ":")).encode()
    columns = b"".join(struct.pack(f">{len(rows)}{code}", *(row[i] for row in rows))
                       for rows in (bids, asks) for i, code in enumerate(COLUMNS))
    return _framed(3, struct.pack(">I", len(meta)) + meta + columns + trailing)


def _decode(data: bytes) -> tuple[list[str], list[dict]]:
    """(accounts, markets) of a version-3 snapshot, each market's orders as (id, price, size, remaining, account,
    post_only, stp) with the account's name (an independent reading of the format the package docstring gives)."""
    assert struct.unpack(">H", data[8:10]) == (3,)
    (length,) = struct.unpack(">I", data[14:18])
    meta = json.loads(data[18 : 18 + length])
    offset = 18 + length
    for market in meta["markets"]:
        for side in ("bids", "asks"):
            count = market[side]
            columns = []
            for code in COLUMNS:
                layout = struct.Struct(f">{count}{code}")
                columns.append(layout.unpack_from(data, offset))
                offset += layout.size
            rows = zip(*columns, strict=True)
            market[side] = [(i, p, s, r, meta["accounts"][a], f, m) for i, p, s, r, a, f, m in rows]
    assert offset == len(data)
    return meta["accounts"], meta["markets"]


def test_version_1_snapshot_is_read_with_every_order_of_no_account() -> None:
    engine = Engine.restore(_snapshot(1, [[1, 99, 5, 4, 0]], [[2, 101, 3, 3, 1]]))
    assert list(engine.resting_orders(M)) == [OrderView(1, BUY, 99, 5, 4, 1, ""), OrderView(2, SELL, 101, 3, 3, 0, "")]
    assert engine.checksum(M) == checksum_of([(1, 99, 4)], [(2, 101, 3)])
    assert struct.unpack(">H", engine.snapshot()[8:10]) == (3,)
    book = Driver(engine)
    assert book.cancel(1, account=A) == [rejected(4, RejectReason.NOT_ORDER_OWNER, order_id=1, account=A)]
    assert book.cancel(1) == [OrderCancelled(M, 5, 1, 4, CancelReason.USER)]


@pytest.mark.parametrize(
    ("version", "entry"),
    [
        (2, [1, 99, 5, 5, 0]),  # a version-1 entry in a version-2 snapshot
        (1, [1, 99, 5, 5, 0, "", 1]),
        (2, [1, 99, 5, 5, 0, 7, 1]),  # account not a str
        (2, [1, 99, 5, 5, 0, A, 0]),  # no such mode
        (2, [1, 99, 5, 5, 0, A, 5]),
        (2, [1, 99, 5, 5, 0, A, "1"]),
    ],
)
def test_snapshot_with_a_malformed_order_entry_raises_value_error(version: int, entry: list) -> None:
    with pytest.raises(ValueError, match="order entry|stp"):
        Engine.restore(_snapshot(version, [entry], []))


def test_version_2_snapshot_is_read_with_owners_and_modes() -> None:
    engine = Engine.restore(_snapshot(2, [[1, 99, 5, 4, 0, A, 2]], [[2, 101, 3, 3, 1, B, 1]]))
    assert list(engine.resting_orders(M)) == [OrderView(1, BUY, 99, 5, 4, 1, A), OrderView(2, SELL, 101, 3, 3, 0, B)]
    assert Engine.restore(engine.snapshot()).snapshot() == engine.snapshot()


def test_version_3_snapshot_written_elsewhere_is_read() -> None:
    engine = Engine.restore(_snapshot_v3([(3, 99, 5, 4, 1, 0, 2), (1, 98, 2, 2, 0, 0, 1)], [(2, 101, 3, 3, 0, 1, 1)],
                                         accounts=(A, B)))
    assert list(engine.resting_orders(M)) == [
        OrderView(3, BUY, 99, 5, 4, 1, B), OrderView(1, BUY, 98, 2, 2, 0, A), OrderView(2, SELL, 101, 3, 3, 0, A)]
    book = Driver(engine)
    assert book.cancel(3, account=A) == [rejected(4, RejectReason.NOT_ORDER_OWNER, order_id=3, account=A)]
    assert book.cancel(3, account=B) == [OrderCancelled(M, 5, 3, 4, CancelReason.USER, B)]


@pytest.mark.parametrize(
    ("bids", "asks", "extra", "match"),
    [
        ([(0, 99, 5, 5, 0, 0, 1)], [], {}, "order id outside"),
        ([(4, 99, 5, 5, 0, 0, 1)], [], {}, "order id outside"),  # above last_seq
        ([(1, 99, 5, 6, 0, 0, 1)], [], {}, "remaining size"),
        ([(1, 99, 5, 0, 0, 0, 1)], [], {}, "remaining size"),
        ([(1, 99, 5, 5, 0, 2, 1)], [], {}, "post_only"),
        ([(1, 99, 5, 5, 1, 0, 1)], [], {}, "account index"),
        ([(1, 99, 5, 5, 0, 0, 0)], [], {}, "self-trade prevention"),
        ([(1, 99, 5, 5, 0, 0, 9)], [], {}, "self-trade prevention"),
        ([(1, 1001, 5, 5, 0, 0, 1)], [], {}, "price 1001"),
        ([(1, 98, 5, 5, 0, 0, 1), (2, 99, 5, 5, 0, 0, 1)], [], {}, "priority order"),
        ([], [(1, 101, 5, 5, 0, 0, 1), (2, 100, 5, 5, 0, 0, 1)], {}, "priority order"),
        ([(1, 99, 5, 5, 0, 0, 1)], [(1, 101, 5, 5, 0, 0, 1)], {}, "twice"),
        ([(1, 101, 5, 5, 0, 0, 1)], [(2, 100, 5, 5, 0, 0, 1)], {}, "crossed"),
        ([(1, 99, 5, 5, 0, 0, 1)], [], {"accounts": [7]}, "accounts"),
        ([(1, 99, 5, 5, 0, 0, 1)], [], {"accounts": "A"}, "accounts"),
        ([(1, 99, 5, 5, 0, 0, 1)], [], {"announced": (2, 0)}, "invalid snapshot"),
        ([(1, 99, 5, 5, 0, 0, 1)], [], {"announced": (-1, 0)}, "bids"),
        ([(1, 99, 5, 5, 0, 0, 1)], [], {"trailing": b"\x00"}, "beyond"),
    ],
)
def test_version_3_snapshot_breaking_a_rule_raises_value_error(bids: list, asks: list, extra: dict,
                                                                 match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Engine.restore(_snapshot_v3(bids, asks, **extra))


def test_positions_are_read_without_the_books_in_every_version() -> None:
    v3 = _snapshot_v3([(1, 99, 5, 5, 0, 0, 1)], [], last_seq=3)
    assert Engine.positions(v3) == Engine.positions(_snapshot(2, [], [])) == Engine.positions(_snapshot(1, [], []))
    assert Engine.positions(v3) == {M: 3}
    bad_orders = _snapshot_v3([(1, 99, 5, 6, 0, 0, 1)], [])  # positions do not read the orders; restore does
    assert Engine.positions(bad_orders) == {M: 3}
    with pytest.raises(ValueError, match="remaining"):
        Engine.restore(bad_orders)
    with pytest.raises(ValueError, match="CRC32"):
        Engine.positions(v3[:-1] + bytes([v3[-1] ^ 1]))
    with pytest.raises(ValueError, match="invalid snapshot"):
        Engine.positions(_framed(3, struct.pack(">I", 99) + b"{}"))


def test_a_snapshot_nested_too_deep_for_the_json_parser_is_a_value_error() -> None:
    """json raises RecursionError for a deep enough document; restore and positions promise ValueError (a node
    that starts from a damaged file or a peer's snapshot must refuse it, not crash)."""
    meta = b"[" * 100_000 + b"]" * 100_000
    data = _framed(3, struct.pack(">I", len(meta)) + meta)
    with pytest.raises(ValueError, match="invalid snapshot"):
        Engine.restore(data)
    with pytest.raises(ValueError, match="invalid snapshot"):
        Engine.positions(data)
