"""A market's trading rules and the enums they speak in: sides, order types, self-trade prevention, reject
and cancel reasons, and ``MarketConfig``, which owns every order rule.

Pure (no I/O, clocks or randomness) and free of the engine's machinery, so the Sequencer (which checks a
command's market and fields before numbering it) and the tools read the rules without loading the matching
engine; ``exchange.engine`` re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

INT64_MAX = 2**63 - 1


def int64_total(total: int) -> int:
    """A sum of sizes as the API's int64 carries it: every size is in int64, but a level's total or a day's volume
    of many may pass it; it then shows as INT64_MAX (protobuf would refuse the answer, and the call would fail).
    The top-10 checksum is over the sizes as sent, so it uses this too."""
    return total if total <= INT64_MAX else INT64_MAX


class Side(IntEnum):
    BUY = 1
    SELL = 2


class OrderType(IntEnum):
    LIMIT = 1
    MARKET = 2  # takes liquidity at any price, never rests
    IOC = 3  # immediate-or-cancel: matches up to its limit price, the rest is cancelled
    FOK = 4  # fill-or-kill: fills completely at once or is rejected without trading
    POST_ONLY = 5  # rests like LIMIT, rejected if it would take liquidity


class RejectReason(IntEnum):
    PRICE_REQUIRED = 1  # a limit-priced type without a price
    PRICE_NOT_ALLOWED = 2  # a market order with a price
    PRICE_OUT_OF_BOUNDS = 3
    PRICE_NOT_ON_TICK = 4
    SIZE_OUT_OF_BOUNDS = 5
    SIZE_NOT_ON_LOT = 6
    POST_ONLY_WOULD_TAKE = 7
    FOK_CANNOT_FILL = 8
    NO_LIQUIDITY = 9  # a market order facing an empty opposite side
    ORDER_NOT_FOUND = 10  # cancel/amend of an unknown or finished order
    AMEND_SIZE_INVALID = 11  # amend with new_size <= 0 (or not an integer)
    AMEND_NO_CHANGE = 12  # amend to the same price and the same remaining size
    INVALID_SIDE = 13  # side is neither BUY nor SELL
    INVALID_ORDER_TYPE = 14  # order_type is not one of OrderType
    INVALID_SELF_TRADE_PREVENTION = 15  # stp is not one of SelfTradePrevention
    NOT_ORDER_OWNER = 16  # cancel/amend of an order of another account


class CancelReason(IntEnum):
    USER = 1  # CancelOrder
    IOC_REMAINDER = 2  # what an IOC order could not fill (a FOK never has a remainder)
    MARKET_REMAINDER = 3  # what a market order could not fill once liquidity ran out
    SELF_TRADE_PREVENTED = 4  # it met an order of its own account (see SelfTradePrevention)


class SelfTradePrevention(IntEnum):
    """What happens when an incoming order meets a resting order of its own (non-empty) account."""

    CANCEL_TAKER = 1  # cancel the incoming order's remainder (the default)
    CANCEL_MAKER = 2  # cancel the resting order and go on matching
    CANCEL_BOTH = 3  # cancel the resting order and the incoming order's remainder
    DECREMENT = 4  # both lose min(their open sizes) without a trade; an order left with 0 is cancelled


# Decoding: the int value of each Side, OrderType and SelfTradePrevention -> the enum (protobuf's values are
# the same by design, see types.proto), for every layer that turns numbers into enums; an unknown number is
# absent.
SIDES: dict[int, Side] = {s.value: s for s in Side}
ORDER_TYPES: dict[int, OrderType] = {t.value: t for t in OrderType}
SELF_TRADE_PREVENTIONS: dict[int, SelfTradePrevention] = {m.value: m for m in SelfTradePrevention}

# The members as module constants, for the engine's hot paths: a global lookup instead of an enum
# attribute lookup (~60 ns each).
BUY, SELL = Side.BUY, Side.SELL
LIMIT, MARKET, IOC, FOK, POST_ONLY = (
    OrderType.LIMIT, OrderType.MARKET, OrderType.IOC, OrderType.FOK, OrderType.POST_ONLY
)
USER = CancelReason.USER
SELF_TRADE_PREVENTED = CancelReason.SELF_TRADE_PREVENTED
CANCEL_TAKER, CANCEL_MAKER, CANCEL_BOTH, DECREMENT = (
    SelfTradePrevention.CANCEL_TAKER,
    SelfTradePrevention.CANCEL_MAKER,
    SelfTradePrevention.CANCEL_BOTH,
    SelfTradePrevention.DECREMENT,
)


@dataclass(frozen=True, slots=True)
class MarketConfig:
    """One market's trading rules. Prices are in ticks, sizes in lots, all exact ints in int64 range.

    A price is valid when it is a multiple of ``tick_size`` within ``[min_price, max_price]``; a size when it
    is a multiple of ``lot_size`` within ``[min_size, max_size]``. Prices are strictly positive.
    """

    symbol: str
    tick_size: int = 1
    lot_size: int = 1
    min_price: int = 1
    max_price: int = 2**62
    min_size: int = 1
    max_size: int = 2**62

    def __post_init__(self) -> None:
        if not isinstance(self.symbol, str) or not self.symbol:
            raise ValueError(f"MarketConfig.symbol must be a non-empty string, got {self.symbol!r}")
        for name in ("tick_size", "lot_size", "min_price", "max_price", "min_size", "max_size"):
            value = getattr(self, name)
            if type(value) is not int:
                raise ValueError(f"MarketConfig.{name} must be an int, got {value!r}")
            if not 1 <= value <= INT64_MAX:
                raise ValueError(f"MarketConfig.{name} must be in [1, 2**63-1], got {value}")
        if self.min_price > self.max_price:
            raise ValueError(f"MarketConfig.min_price {self.min_price} > max_price {self.max_price}")
        if self.min_size > self.max_size:
            raise ValueError(f"MarketConfig.min_size {self.min_size} > max_size {self.max_size}")

    # The market's order and amend rules, in one place: the engine rejects with these reasons, and the API
    # layer refuses the same requests up front (INVALID_ARGUMENT) by asking the same questions.

    def price_error(self, price: object) -> RejectReason | None:
        if type(price) is not int or not self.min_price <= price <= self.max_price:
            return RejectReason.PRICE_OUT_OF_BOUNDS
        if price % self.tick_size:
            return RejectReason.PRICE_NOT_ON_TICK
        return None

    def size_error(self, size: object) -> RejectReason | None:
        if type(size) is not int or not self.min_size <= size <= self.max_size:
            return RejectReason.SIZE_OUT_OF_BOUNDS
        if size % self.lot_size:
            return RejectReason.SIZE_NOT_ON_LOT
        return None

    def order_error(
        self,
        side: Side | None,
        order_type: OrderType | None,
        size: object,
        price: object,
        stp: SelfTradePrevention | None = SelfTradePrevention.CANCEL_TAKER,
    ) -> RejectReason | None:
        """Why a new order breaks this market's rules (None if it does not), checked in this order:
        side, order type, self-trade prevention mode, size (bounds, lot), price (presence, bounds, tick).
        ``side``, ``order_type`` and ``stp`` are decoded: None stands for a value that is no member."""
        if side is None:
            return RejectReason.INVALID_SIDE
        if order_type is None:
            return RejectReason.INVALID_ORDER_TYPE
        if stp is None:
            return RejectReason.INVALID_SELF_TRADE_PREVENTION
        reason = self.size_error(size)
        if reason is not None:
            return reason
        if order_type is OrderType.MARKET:
            return None if price is None else RejectReason.PRICE_NOT_ALLOWED
        if price is None:
            return RejectReason.PRICE_REQUIRED
        return self.price_error(price)

    def amend_error(self, new_size: object, new_price: object, filled: int = 0) -> RejectReason | None:
        """Why amending an order that has ``filled`` lots filled to open size ``new_size`` and to ``new_price``
        (None keeps the price) breaks this market's rules (None if it does not), checked in this order:
        AMEND_SIZE_INVALID (``new_size`` not a positive int), size (the total ``filled + new_size`` above
        ``max_size``, lot), price (bounds, tick). ``min_size`` is not applied: an amend may shrink an order
        like a partial cancel. Before an amend is sequenced its order's filled size is unknown: 0 (the
        default) gives a necessary condition."""
        if type(new_size) is not int or new_size <= 0:
            return RejectReason.AMEND_SIZE_INVALID
        if filled + new_size > self.max_size:
            return RejectReason.SIZE_OUT_OF_BOUNDS
        if new_size % self.lot_size:
            return RejectReason.SIZE_NOT_ON_LOT
        return None if new_price is None else self.price_error(new_price)


def order_id_error(order_id: object) -> str | None:
    """Why `order_id` names no order (None if it may): an order's id is its sequence number, positive. The
    one check of it, for the node's requests and for the commands that enter the log."""
    if type(order_id) is int and order_id > 0:
        return None
    return f"order_id must be positive (the order's sequence number), got {order_id}"
