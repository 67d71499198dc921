"""Value types of the matching engine: enums, market configuration, commands, events, errors.

Commands and events are ``NamedTuple`` classes (immutable like frozen dataclasses): building one costs a
fraction of a frozen dataclass (measured: ~100 ns with ``tuple.__new__`` against ~700 ns), the engine builds
two or more events per command, and every node builds a command for every log entry it applies (as a frozen
dataclass, that was most of the node's cost of turning a logged command into an engine one). Equality is made
type-aware, so a command or event never equals a plain tuple or a value of another class with the same values.
The commands' constructors do not validate market rules on purpose: a command is a logged fact, and a malformed
one must replay into the same ``OrderRejected`` event on every node rather than fail at construction time on
some of them.
The account fields come last and default to "" (no account), so code written before accounts still builds
and compares events; the engine always fills them.
"""

from __future__ import annotations

from typing import NamedTuple

# The market rules and their enums live in exchange.shared.markets (the Sequencer and the client need them
# without the engine); the engine re-exports them.
from exchange.shared.markets import (  # noqa: F401
    BUY,
    CANCEL_BOTH,
    CANCEL_MAKER,
    CANCEL_TAKER,
    DECREMENT,
    FOK,
    INT64_MAX,
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
    CancelReason,
    MarketConfig,
    OrderType,
    RejectReason,
    SelfTradePrevention,
    Side,
)

# --------------------------------------------------------------------------------------------- commands


class PlaceOrder(NamedTuple):
    """A new order. ``size`` is positive; ``price`` is None for MARKET and required for every other type.

    The order's id is ``seq``. ``account`` owns it ("": no account; such orders never trigger self-trade
    prevention); ``stp`` says what happens when it meets a resting order of its own account.
    """

    market: str
    seq: int
    side: Side
    order_type: OrderType
    size: int
    price: int | None
    account: str = ""
    stp: SelfTradePrevention = SelfTradePrevention.CANCEL_TAKER


class CancelOrder(NamedTuple):
    """Cancel what is left of resting order ``order_id``, which ``account`` must own."""

    market: str
    seq: int
    order_id: int
    account: str = ""


class AmendOrder(NamedTuple):
    """Change a resting order. ``new_size`` is the new remaining (open) size; ``new_price`` None keeps it.

    A smaller size at the same price keeps time priority; a larger size or a new price loses it. A new price
    that crosses the book makes the order trade as an aggressive limit order first (see ``exchange.engine``).
    ``account`` must own the order.
    """

    market: str
    seq: int
    order_id: int
    new_size: int
    new_price: int | None = None
    account: str = ""


Command = PlaceOrder | CancelOrder | AmendOrder


# ----------------------------------------------------------------------------------------------- events


def _event_eq(self: tuple, other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _event_ne(self: tuple, other: object) -> bool:
    return not _event_eq(self, other)


class OrderAccepted(NamedTuple):
    market: str
    seq: int
    order_id: int
    side: Side
    order_type: OrderType
    price: int | None
    size: int
    account: str = ""


class OrderRejected(NamedTuple):
    """``order_id`` is the command's seq for a new order, the target order id for a cancel or amend; ``account``
    is the command's."""

    market: str
    seq: int
    order_id: int
    reason: RejectReason
    account: str = ""


class OrderFilled(NamedTuple):
    """One trade, at the maker's price. ``*_remaining`` are the open sizes right after this trade. The two
    accounts are never the same non-empty account (self-trade prevention)."""

    market: str
    seq: int
    trade_id: int
    price: int
    size: int
    maker_order_id: int
    taker_order_id: int
    taker_side: Side
    maker_remaining: int
    taker_remaining: int
    maker_account: str = ""
    taker_account: str = ""


class OrderRested(NamedTuple):
    """The order (or what is left of it) now rests in the book with ``size`` open."""

    market: str
    seq: int
    order_id: int
    side: Side
    price: int
    size: int
    account: str = ""


class OrderCancelled(NamedTuple):
    """``size`` is the quantity cancelled; the order is finished."""

    market: str
    seq: int
    order_id: int
    size: int
    reason: CancelReason
    account: str = ""


class OrderReduced(NamedTuple):
    """The order lost ``size`` without a trade and still has ``remaining`` open (self-trade prevention's
    DECREMENT; an order reduced to 0 gets ``OrderCancelled`` instead)."""

    market: str
    seq: int
    order_id: int
    size: int
    remaining: int
    reason: CancelReason
    account: str = ""


class OrderAmended(NamedTuple):
    """The order now has ``price`` and open size ``size``; ``priority_kept`` False: re-queued at the back."""

    market: str
    seq: int
    order_id: int
    price: int
    size: int
    priority_kept: bool
    account: str = ""


Event = OrderAccepted | OrderRejected | OrderFilled | OrderRested | OrderCancelled | OrderReduced | OrderAmended

for _cls in (PlaceOrder, CancelOrder, AmendOrder,
             OrderAccepted, OrderRejected, OrderFilled, OrderRested, OrderCancelled, OrderReduced, OrderAmended):
    # type-aware equality (module docstring): mypy forbids assigning to methods, which is the point here
    _cls.__eq__ = _event_eq  # type: ignore[method-assign]
    _cls.__ne__ = _event_ne  # type: ignore[assignment,method-assign]
    _cls.__hash__ = tuple.__hash__  # type: ignore[method-assign]
del _cls


class OrderView(NamedTuple):
    """A resting order as seen from outside. ``size`` is the order's total size: ``filled + remaining`` (what
    it lost to an amend or to self-trade prevention is no longer part of it)."""

    order_id: int
    side: Side
    price: int
    size: int
    remaining: int
    filled: int
    account: str = ""


# ----------------------------------------------------------------------------------------------- errors


class SequenceError(Exception):
    """A command's seq is not exactly ``last_seq + 1`` for its market: a caller bug, not a market event."""

    def __init__(self, market: str, expected: int, got: object) -> None:
        super().__init__(f"market {market!r}: expected seq {expected}, got {got!r}")
        self.market = market
        self.expected = expected
        self.got = got


class UnknownMarketError(KeyError):
    """The command or query names a market the engine was not configured with."""

    def __init__(self, market: object) -> None:
        super().__init__(market)
        self.market = market

    def __str__(self) -> str:
        return f"unknown market {self.market!r}"
