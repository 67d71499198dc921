"""What the client library hands back: frozen dataclasses with ints for prices (ticks) and sizes (lots).

Nothing here is protobuf; the `from_pb` helpers at the bottom are the only place that reads the messages.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from exchange.errors import InvalidArgument
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2


class Side(enum.IntEnum):
    BUY = types_pb2.BUY
    SELL = types_pb2.SELL


class OrderType(enum.IntEnum):
    LIMIT = types_pb2.LIMIT
    MARKET = types_pb2.MARKET
    IOC = types_pb2.IOC
    FOK = types_pb2.FOK
    POST_ONLY = types_pb2.POST_ONLY


class SelfTradePrevention(enum.IntEnum):
    """What happens instead of a trade with a resting order of the same account (types.proto)."""

    CANCEL_TAKER = 1  # cancel what is left of the incoming order (the default)
    CANCEL_MAKER = 2  # cancel the resting order and go on matching
    CANCEL_BOTH = 3
    DECREMENT = 4  # decrement both by the overlap, without a trade


class OrderStatus(enum.IntEnum):
    UNKNOWN = pb.ORDER_STATUS_UNSPECIFIED
    RESTING = pb.RESTING
    FILLED = pb.FILLED
    CANCELLED = pb.CANCELLED
    REJECTED = pb.REJECTED


M = TypeVar("M")


def request(message: Callable[..., M], **fields: Any) -> M:
    """`message(**fields)`, the one way the library builds a request: a value its field cannot hold (a number
    beyond int64, a wrong type) is the caller's InvalidArgument naming the field, not protobuf's bare error."""
    try:
        return message(**fields)
    except (ValueError, TypeError) as error:
        for name, value in fields.items():
            try:
                message(**{name: value})
            except (ValueError, TypeError) as wrong:
                raise InvalidArgument(f"{name} {value!r} cannot be sent: {wrong}") from None
        raise InvalidArgument(f"the request cannot be sent: {error}") from None


@dataclass(frozen=True, slots=True)
class NewOrder:
    """An order to place. `size` is positive (lots); `price` (ticks) is required for every type but MARKET.
    Without a `client_order_id` the library generates one, so a retry can never place the order twice."""

    side: Side
    size: int
    price: int | None = None
    order_type: OrderType = OrderType.LIMIT
    market: str = ""  # "" is the cluster's default market
    client_order_id: str | None = None
    self_trade_prevention: SelfTradePrevention | None = None  # None: the default, CANCEL_TAKER

    def to_pb(self, client_order_id: str) -> pb.CreateOrderRequest:
        return request(
            pb.CreateOrderRequest, market=self.market, size=self.size, limit_price=self.price or 0, side=self.side.name,
            order_type=self.order_type.name, client_order_id=client_order_id,
            self_trade_prevention=self.self_trade_prevention.name if self.self_trade_prevention else None,
        )


@dataclass(frozen=True, slots=True)
class Trade:
    trade_id: int
    price: int  # the resting (maker) order's price
    size: int
    maker_order_id: int
    taker_order_id: int
    taker_side: Side


@dataclass(frozen=True, slots=True)
class OrderResult:
    """The outcome of a new order. `duplicate`: this is the first result of the same client_order_id (a retry)."""

    market: str
    order_id: int  # equal to its sequence number
    seq: int
    status: OrderStatus
    side: Side
    filled_size: int
    remaining_size: int  # resting in the book (0 unless RESTING)
    cancelled_size: int  # IOC or market remainder, or what self-trade prevention cancelled (cancel_reason)
    trades: tuple[Trade, ...]
    reject_reason: str  # with REJECTED, e.g. "POST_ONLY_WOULD_TAKE"
    duplicate: bool
    client_order_id: str
    cancel_reason: str = ""  # IOC_REMAINDER, MARKET_REMAINDER or SELF_TRADE_PREVENTED
    prevented_trades: tuple[PreventedTrade, ...] = ()  # resting orders of the caller's own met instead of trading


@dataclass(frozen=True, slots=True)
class PreventedTrade:
    """A self-trade that did not happen: the order met a resting order of its own account (0 if not named)."""

    resting_order_id: int
    resting_size_removed: int
    incoming_size_removed: int


@dataclass(frozen=True, slots=True)
class CancelResult:
    """A cancel's outcome. `cancelled_size` and `seq` are None when it is uncertain whether this cancel removed
    the order: its first attempt failed ambiguously and a retry found the order no longer resting (removed by
    that first attempt, or filled or cancelled otherwise). Either way the order does not rest any more."""

    market: str
    order_id: int
    seq: int | None
    cancelled_size: int | None

    @property
    def uncertain(self) -> bool:
        return self.cancelled_size is None


@dataclass(frozen=True, slots=True)
class AmendResult:
    market: str
    order_id: int
    seq: int
    price: int
    remaining_size: int  # 0 if an amend to a crossing price filled it
    priority_kept: bool
    trades: tuple[Trade, ...]


@dataclass(frozen=True, slots=True)
class BookOrder:
    """A resting order in public market data: no owner."""

    order_id: int
    size: int  # open (remaining) size


@dataclass(frozen=True, slots=True)
class BookLevel:
    price: int
    size: int  # total open size at this price
    order_count: int
    orders: tuple[BookOrder, ...] = ()  # in time priority, only when asked for (L3)


@dataclass(frozen=True, slots=True)
class Book:
    """A market's book at sequence `seq`: bids best (highest) first, asks best (lowest) first."""

    market: str
    seq: int
    bids: tuple[BookLevel, ...]
    asks: tuple[BookLevel, ...]
    checksum: int  # "Book checksum" (docs/architecture.md): equal on every node at the same seq
    known_seq: int = 0  # the highest sequence the node knew existed; seq < known_seq: it was lagging

    @property
    def best_bid(self) -> int | None:
        return self.bids[0].price if self.bids else None

    @property
    def best_ask(self) -> int | None:
        return self.asks[0].price if self.asks else None


@dataclass(frozen=True, slots=True)
class Order:
    """One order as a node knows it (resting, or finished and still retained)."""

    market: str
    order_id: int
    side: Side | None  # None (and 0 for price and size): a finished order whose details the node no longer keeps
    order_type: OrderType | None
    price: int
    size: int
    filled_size: int
    remaining_size: int
    status: OrderStatus
    client_order_id: str


@dataclass(frozen=True, slots=True)
class MarketStatus:
    market: str
    applied_seq: int
    known_seq: int
    lag: int
    checksum: int
    buffered: int
    resting_orders: int
    pending: int = 0  # commands the node took and has not yet sequenced and applied


@dataclass(frozen=True, slots=True)
class NodeStatus:
    address: str
    node_id: str
    state: str  # SYNCING, SERVING or STOPPING
    markets: tuple[MarketStatus, ...]
    peers: tuple[str, ...]
    sequencer: str


# -- events: one class per kind; every event of one command shares its `seq` --------------------------------


@dataclass(frozen=True, slots=True)
class OrderAccepted:
    kind: ClassVar[str] = "order_accepted"
    market: str
    seq: int
    order_id: int
    side: Side
    order_type: OrderType
    price: int
    size: int


@dataclass(frozen=True, slots=True)
class TradeExecuted:
    kind: ClassVar[str] = "trade"
    market: str
    seq: int
    trade_id: int
    price: int
    size: int
    maker_order_id: int
    taker_order_id: int
    taker_side: Side


@dataclass(frozen=True, slots=True)
class OrderRested:
    kind: ClassVar[str] = "order_rested"
    market: str
    seq: int
    order_id: int
    side: Side
    price: int
    size: int  # the open size that rests


@dataclass(frozen=True, slots=True)
class OrderCancelled:
    kind: ClassVar[str] = "order_cancelled"
    market: str
    seq: int
    order_id: int
    size: int  # the open size removed
    reason: str  # USER, IOC_REMAINDER, MARKET_REMAINDER or SELF_TRADE_PREVENTED


@dataclass(frozen=True, slots=True)
class OrderRejected:
    kind: ClassVar[str] = "order_rejected"
    market: str
    seq: int
    order_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class OrderAmended:
    kind: ClassVar[str] = "order_amended"
    market: str
    seq: int
    order_id: int
    price: int
    size: int
    priority_kept: bool


@dataclass(frozen=True, slots=True)
class OrderReduced:
    """An order lost `size` without a trade (self-trade prevention DECREMENT) and keeps `remaining` open."""

    kind: ClassVar[str] = "order_reduced"
    market: str
    seq: int
    order_id: int
    size: int
    remaining: int
    reason: str


Event = OrderAccepted | TradeExecuted | OrderRested | OrderCancelled | OrderRejected | OrderAmended | OrderReduced
EVENT_TYPES: dict[str, type[Event]] = {cls.kind: cls for cls in
                                       (OrderAccepted, TradeExecuted, OrderRested, OrderCancelled, OrderRejected,
                                        OrderAmended, OrderReduced)}


@dataclass(frozen=True, slots=True)
class Fill:
    """A trade of one of the caller's own orders, from that order's side (StreamOrders)."""

    kind: ClassVar[str] = "fill"
    market: str
    seq: int
    order_id: int
    trade_id: int
    price: int
    size: int
    side: Side
    maker: bool  # the order was resting (False: it was the incoming order)
    remaining: int  # the order's open size after the trade


# What happened to one of the caller's own orders (StreamOrders): the public kinds without trades, and fills.
OrderEvent = OrderAccepted | Fill | OrderRested | OrderCancelled | OrderRejected | OrderAmended | OrderReduced


def describe(value: Any, skip: tuple[str, ...] = ()) -> str:
    """`field: value` pairs of a dataclass, one per line, leaving out zero and empty values (as protobuf's text
    format does): enums by name, strings quoted."""
    lines = []
    for item in dataclasses.fields(value):
        field_value = getattr(value, item.name)
        if item.name in skip or not field_value:
            continue
        if isinstance(field_value, enum.Enum):
            text = field_value.name
        elif isinstance(field_value, str):
            text = f'"{field_value}"'
        else:
            text = str(field_value).lower() if isinstance(field_value, bool) else str(field_value)
        lines.append(f"{item.name}: {text}")
    return "\n".join(lines)


# -- from protobuf ----------------------------------------------------------------------------------------


def _side(value: int) -> Side:
    return Side(value) if value in Side._value2member_map_ else Side.BUY


def trade_from_pb(message: pb.Trade) -> Trade:
    return Trade(message.trade_id, message.price, message.size, message.maker_order_id, message.taker_order_id,
                 _side(message.taker_side))


def order_result_from_pb(message: pb.CreateOrderResponse) -> OrderResult:
    return OrderResult(
        market=message.market, order_id=message.order_id, seq=message.seq, status=OrderStatus(message.status),
        side=_side(message.side), filled_size=message.filled_size, remaining_size=message.remaining_size,
        cancelled_size=message.cancelled_size, trades=tuple(trade_from_pb(t) for t in message.trades),
        reject_reason=message.reject_reason, duplicate=message.duplicate, client_order_id=message.client_order_id,
        cancel_reason=message.cancel_reason,
        prevented_trades=tuple(PreventedTrade(p.resting_order_id, p.resting_size_removed, p.incoming_size_removed)
                               for p in message.prevented_trades),
    )


def cancel_result_from_pb(message: pb.CancelOrderResponse) -> CancelResult:
    return CancelResult(message.market, message.order_id, message.seq, message.cancelled_size)


def amend_result_from_pb(message: pb.AmendOrderResponse) -> AmendResult:
    return AmendResult(message.market, message.order_id, message.seq, message.price, message.remaining_size,
                       message.priority_kept, tuple(trade_from_pb(t) for t in message.trades))


def _level(message: pb.PriceLevel) -> BookLevel:
    return BookLevel(message.price, message.size, message.order_count,
                     tuple(BookOrder(o.order_id, o.size) for o in message.orders))


def book_from_pb(message: pb.GetOrderBookResponse) -> Book:
    return Book(message.market, message.seq, tuple(map(_level, message.bids)), tuple(map(_level, message.asks)),
                message.checksum, message.known_seq)


def order_from_pb(message: pb.Order) -> Order:
    return Order(
        market=message.market, order_id=message.order_id,
        side=Side(message.side) if message.side in Side._value2member_map_ else None,
        order_type=OrderType(message.order_type) if message.order_type in OrderType._value2member_map_ else None,
        price=message.price, size=message.size,
        filled_size=message.filled_size, remaining_size=message.remaining_size, status=OrderStatus(message.status),
        client_order_id=message.client_order_id,
    )


def node_status_from_pb(address: str, message: pb.GetStatusResponse) -> NodeStatus:
    markets = tuple(MarketStatus(m.market, m.applied_seq, m.known_seq, m.lag, m.checksum, m.buffered,
                                 m.resting_orders, m.pending) for m in message.markets)
    return NodeStatus(address, message.node_id, message.state, markets, tuple(message.peers), message.sequencer)


def event_from_pb(message: pb.MarketEvent) -> Event:
    kind = message.WhichOneof("event")
    market, seq = message.market, message.seq
    if kind == "trade":
        t = message.trade
        return TradeExecuted(market, seq, t.trade_id, t.price, t.size, t.maker_order_id, t.taker_order_id,
                             _side(t.taker_side))
    if kind == "order_accepted":
        a = message.order_accepted
        return OrderAccepted(market, seq, a.order_id, _side(a.side), OrderType(a.order_type or OrderType.LIMIT),
                             a.price, a.size)
    if kind == "order_rested":
        r = message.order_rested
        return OrderRested(market, seq, r.order_id, _side(r.side), r.price, r.size)
    if kind == "order_cancelled":
        c = message.order_cancelled
        return OrderCancelled(market, seq, c.order_id, c.size, c.reason)
    if kind == "order_rejected":
        return OrderRejected(market, seq, message.order_rejected.order_id, message.order_rejected.reason)
    if kind == "order_amended":
        m = message.order_amended
        return OrderAmended(market, seq, m.order_id, m.price, m.size, m.priority_kept)
    if kind == "order_reduced":
        d = message.order_reduced
        return OrderReduced(market, seq, d.order_id, d.size, d.remaining, d.reason)
    raise ValueError(f"event {seq} of {market} has no kind this client knows ({kind!r}): upgrade the client")


def order_event_from_pb(message: pb.OrderEvent) -> OrderEvent:
    """One of the caller's own order events (StreamOrders)."""
    kind = message.WhichOneof("event")
    if kind == "fill":
        f = message.fill
        return Fill(message.market, message.seq, f.order_id, f.trade_id, f.price, f.size, _side(f.side), f.maker,
                    f.remaining)
    if kind is None:
        raise ValueError(f"order event {message.seq} of {message.market} has no kind: upgrade the client")
    public = pb.MarketEvent(market=message.market, seq=message.seq)
    getattr(public, "order_" + kind).CopyFrom(getattr(message, kind))
    event = event_from_pb(public)
    assert not isinstance(event, TradeExecuted)
    return event
