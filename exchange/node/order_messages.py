"""Conversions between the node's protobuf messages and the engine's domain types, and request
validation. Everything the node checks before an order is sequenced lives here, with messages
that say what was wrong and what would be right."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import cast

from exchange import engine as eng
from exchange.commands import client_order_id_error
from exchange.errors import InvalidArgument, NotFound
from exchange.shared.markets import int64_total, order_id_error
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2

MAX_DEPTH = 1000
DEFAULT_DEPTH = 10


def resolve_market(markets: Mapping[str, eng.MarketConfig], name: str) -> eng.MarketConfig:
    """The market a request names; empty means the default (first configured) market."""
    if not name:
        return next(iter(markets.values()))
    config = markets.get(name)
    if config is None:
        raise NotFound(f"unknown market {name!r}; this cluster trades: {', '.join(markets)}")
    return config


def explain(reason: eng.RejectReason, config: eng.MarketConfig, size: int, price: int | None) -> str:
    """A person's version of a market-rule rejection of a request's `size` and `limit_price` (None: unset),
    naming the field at fault and the bound it breaks."""
    symbol = config.symbol
    if reason is eng.RejectReason.SIZE_OUT_OF_BOUNDS:
        if size > config.max_size:
            return f"size {size} is above {symbol}'s maximum size {config.max_size} (lots)"
        return f"size {size} is below {symbol}'s minimum size {config.min_size} (lots)"
    messages = {
        eng.RejectReason.SIZE_NOT_ON_LOT: f"size {size} is not a multiple of {symbol}'s lot size {config.lot_size}",
        eng.RejectReason.AMEND_SIZE_INVALID:
            f"size must be the new positive remaining size (lots), got {size}; to remove an order, cancel it",
        eng.RejectReason.PRICE_OUT_OF_BOUNDS:
            f"limit_price {price} is outside {symbol}'s price bounds [{config.min_price}, {config.max_price}] (ticks)",
        eng.RejectReason.PRICE_NOT_ON_TICK:
            f"limit_price {price} is not a multiple of {symbol}'s tick size {config.tick_size}",
        eng.RejectReason.PRICE_REQUIRED: "this order type needs a positive limit_price (ticks)",
        eng.RejectReason.PRICE_NOT_ALLOWED:
            "a MARKET order takes no limit_price: leave it unset, or use a LIMIT or IOC order",
    }
    return messages.get(reason, f"size {size}, limit_price {price}: {reason.name}")


def _refuse(reason: eng.RejectReason | None, config: eng.MarketConfig, size: int, price: int | None) -> None:
    if reason is not None:
        raise InvalidArgument(explain(reason, config, size, price))


def _check_client_order_id(client_order_id: str) -> None:
    if (error := client_order_id_error(client_order_id)) is not None:
        raise InvalidArgument(error)


def new_order_command(
    request: pb.CreateOrderRequest, markets: Mapping[str, eng.MarketConfig], node_id: str, account: str
) -> types_pb2.Command:
    """Validates a CreateOrderRequest and turns it into the command to sequence.

    Only what protobuf adds is checked here (the sign of size, the side and order_type numbers, the
    client_order_id); the market's rules are ``MarketConfig.order_error``'s, the engine's own."""
    config = resolve_market(markets, request.market)
    size = request.size
    if size == 0:
        raise InvalidArgument("size must not be 0: give a positive size to buy or a negative size to sell (lots)")
    side: eng.Side | None
    if request.side == types_pb2.SIDE_UNSPECIFIED:
        side = eng.Side.BUY if size > 0 else eng.Side.SELL
    else:
        side = eng.SIDES.get(request.side)
        if side is None:
            raise InvalidArgument(f"unknown side {request.side}: use BUY (1) or SELL (2), or leave it unset")
        if size < 0 and side is eng.Side.BUY:
            raise InvalidArgument(
                f"side BUY contradicts the negative size {size}: use a positive size to buy, or side SELL"
            )
    size = abs(size)
    order_type = eng.ORDER_TYPES.get(request.order_type or types_pb2.LIMIT)
    if order_type is None:
        names = ", ".join(f"{t.name} ({t.value})" for t in eng.OrderType)
        raise InvalidArgument(f"unknown order_type {request.order_type}: use one of {names}")
    stp = request.self_trade_prevention or types_pb2.CANCEL_TAKER
    if stp not in eng.SELF_TRADE_PREVENTIONS:
        names = ", ".join(f"{mode.name} ({mode.value})" for mode in eng.SelfTradePrevention)
        raise InvalidArgument(f"unknown self_trade_prevention {request.self_trade_prevention}: use one of {names}, "
                              "or leave it unset (CANCEL_TAKER)")
    price = request.limit_price or None  # 0: unset
    _refuse(config.order_error(side, order_type, size, price), config, size, price)
    _check_client_order_id(request.client_order_id)
    return types_pb2.Command(
        market=config.symbol,
        new_order=types_pb2.NewOrderCommand(
            side=proto_side(side), order_type=proto_order_type(order_type), size=size, price=request.limit_price,
            self_trade_prevention=stp,
        ),
        client_order_id=request.client_order_id,
        origin_node=node_id,
        account=account,
    )


def check_order_id(order_id: int) -> None:
    """INVALID_ARGUMENT for an order_id that names no order (`order_id_error`)."""
    if (error := order_id_error(order_id)) is not None:
        raise InvalidArgument(error)


def cancel_command(
    request: pb.CancelOrderRequest, markets: Mapping[str, eng.MarketConfig], node_id: str, account: str
) -> types_pb2.Command:
    config = resolve_market(markets, request.market)
    check_order_id(request.order_id)
    return types_pb2.Command(
        market=config.symbol,
        cancel_order=types_pb2.CancelOrderCommand(order_id=request.order_id),
        origin_node=node_id,
        account=account,
    )


def amend_command(
    request: pb.AmendOrderRequest, markets: Mapping[str, eng.MarketConfig], node_id: str, account: str
) -> types_pb2.Command:
    config = resolve_market(markets, request.market)
    check_order_id(request.order_id)
    # the order's filled size is unknown until the amend is sequenced: 0 gives a necessary condition; the
    # engine applies the rest (the total size bound, the order's existence) to the order it finds
    price = request.limit_price or None  # 0 keeps the price
    _refuse(config.amend_error(request.size, price), config, request.size, price)
    return types_pb2.Command(
        market=config.symbol,
        amend_order=types_pb2.AmendOrderCommand(
            order_id=request.order_id, new_size=request.size, new_price=request.limit_price
        ),
        origin_node=node_id,
        account=account,
    )


def engine_command(command: types_pb2.Command, seq: int) -> eng.Command:
    """The engine command for a sequenced protobuf command (engine validates market rules itself)."""
    kind = command.WhichOneof("kind")
    if kind == "new_order":
        order = command.new_order
        # unknown numbers pass through as they are: the engine rejects them (INVALID_SIDE/INVALID_ORDER_TYPE)
        order_type = eng.ORDER_TYPES.get(order.order_type, order.order_type)
        side = eng.SIDES.get(order.side, order.side)
        price = order.price if order_type is not eng.OrderType.MARKET else (order.price or None)
        stp = eng.SELF_TRADE_PREVENTIONS.get(order.self_trade_prevention or types_pb2.CANCEL_TAKER,
                                             order.self_trade_prevention)
        # a logged command may carry numbers that are no side, type or mode: the engine rejects them as an event
        return eng.PlaceOrder(command.market, seq, side, order_type, order.size, price,  # type: ignore[arg-type]
                               command.account, stp)  # type: ignore[arg-type]
    if kind == "cancel_order":
        return eng.CancelOrder(command.market, seq, command.cancel_order.order_id, command.account)
    if kind == "amend_order":
        amend = command.amend_order
        return eng.AmendOrder(command.market, seq, amend.order_id, amend.new_size, amend.new_price or None,
                              command.account)
    raise ValueError(f"sequenced command {seq} of {command.market} has no kind")


# -- events to protobuf ---------------------------------------------------------------------------


def proto_side(side: eng.Side | int) -> types_pb2.Side:
    """The API's value of an engine side: the same number (types.proto: "Values are shared with the engine")."""
    return cast(types_pb2.Side, int(side))


def proto_order_type(order_type: eng.OrderType | int) -> types_pb2.OrderType:
    """The API's value of an engine order type: the same number."""
    return cast(types_pb2.OrderType, int(order_type))


def trade(event: eng.OrderFilled) -> pb.Trade:
    return pb.Trade(
        trade_id=event.trade_id,
        price=event.price,
        size=event.size,
        maker_order_id=event.maker_order_id,
        taker_order_id=event.taker_order_id,
        taker_side=proto_side(event.taker_side),
    )


def market_event(event: eng.Event) -> pb.MarketEvent:
    message = pb.MarketEvent(market=event.market, seq=event.seq)
    if isinstance(event, eng.OrderFilled):
        message.trade.CopyFrom(trade(event))
    elif isinstance(event, eng.OrderAccepted):
        message.order_accepted.CopyFrom(
            pb.OrderAccepted(
                order_id=event.order_id, side=proto_side(event.side), order_type=proto_order_type(event.order_type),
                price=event.price or 0, size=event.size,
            )
        )
    elif isinstance(event, eng.OrderRested):
        message.order_rested.CopyFrom(
            pb.OrderRested(order_id=event.order_id, side=proto_side(event.side), price=event.price, size=event.size)
        )
    elif isinstance(event, eng.OrderCancelled):
        message.order_cancelled.CopyFrom(
            pb.OrderCancelled(order_id=event.order_id, size=event.size, reason=event.reason.name)
        )
    elif isinstance(event, eng.OrderRejected):
        message.order_rejected.CopyFrom(pb.OrderRejected(order_id=event.order_id, reason=event.reason.name))
    elif isinstance(event, eng.OrderAmended):
        message.order_amended.CopyFrom(
            pb.OrderAmended(
                order_id=event.order_id, price=event.price, size=event.size, priority_kept=event.priority_kept
            )
        )
    elif isinstance(event, eng.OrderReduced):
        message.order_reduced.CopyFrom(
            pb.OrderReduced(order_id=event.order_id, size=event.size, remaining=event.remaining,
                            reason=event.reason.name)
        )
    return message


def order_events(market: str, seq: int, events: Iterable[eng.Event], account: str,
                 client_order_id: str) -> list[pb.OrderEvent]:
    """The events of one command that concern `account`'s orders, as its StreamOrders shows them (a trade is
    a Fill from the side of the account's order)."""
    found = []
    for event in events:
        if isinstance(event, eng.OrderFilled):
            fills = []
            if event.maker_account == account:
                maker_side = eng.Side.SELL if event.taker_side is eng.Side.BUY else eng.Side.BUY
                fills.append(pb.Fill(order_id=event.maker_order_id, trade_id=event.trade_id, price=event.price,
                                     size=event.size, side=proto_side(maker_side), maker=True,
                                     remaining=event.maker_remaining))
            if event.taker_account == account:
                fills.append(pb.Fill(order_id=event.taker_order_id, trade_id=event.trade_id, price=event.price,
                                     size=event.size, side=proto_side(event.taker_side), maker=False,
                                     remaining=event.taker_remaining))
            found += [pb.OrderEvent(market=market, seq=seq, fill=fill, client_order_id=client_order_id)
                      for fill in fills]
        elif event.account == account:
            public = market_event(event)
            kind = public.WhichOneof("event")
            assert kind is not None
            own = pb.OrderEvent(market=market, seq=seq, client_order_id=client_order_id)
            getattr(own, kind.removeprefix("order_")).CopyFrom(getattr(public, kind))
            found.append(own)
    return found


def create_order_response(
    command: types_pb2.Command, seq: int, events: Sequence[eng.Event], duplicate: bool
) -> pb.CreateOrderResponse:
    """The client's answer for a new order, from the events its command produced."""
    response = pb.CreateOrderResponse(
        market=command.market, order_id=seq, seq=seq, duplicate=duplicate,
        client_order_id=command.client_order_id, side=command.new_order.side,
    )
    filled = 0
    for event in events:
        if isinstance(event, eng.OrderFilled):
            response.trades.append(trade(event))
            filled += event.size
        elif isinstance(event, eng.OrderCancelled | eng.OrderReduced) and event.order_id != seq:
            # a resting order of the caller's own account, cancelled or decremented instead of a trade
            response.prevented_trades.add(resting_order_id=event.order_id, resting_size_removed=event.size)
        elif isinstance(event, eng.OrderReduced):  # this order, decremented against one of its own
            _prevented(response).incoming_size_removed += event.size
        elif isinstance(event, eng.OrderRested):
            response.status = pb.RESTING
            response.remaining_size = event.size
        elif isinstance(event, eng.OrderCancelled):
            response.status = pb.CANCELLED
            response.cancelled_size = event.size
            response.cancel_reason = event.reason.name
            if event.reason is eng.CancelReason.SELF_TRADE_PREVENTED:
                _prevented(response).incoming_size_removed += event.size
        elif isinstance(event, eng.OrderRejected):
            response.status = pb.REJECTED
            response.reject_reason = event.reason.name
    response.filled_size = filled
    if response.status == pb.ORDER_STATUS_UNSPECIFIED:
        response.status = pb.FILLED
    return response


def _prevented(response: pb.CreateOrderResponse) -> pb.PreventedTrade:
    """The prevented trade an incoming order's own reduction belongs to: the last one met, whose incoming side
    is not known yet (CANCEL_TAKER cancels without touching the resting order: a new entry, resting id 0)."""
    prevented = response.prevented_trades
    if not prevented or prevented[-1].incoming_size_removed:
        return prevented.add()
    return prevented[-1]


def rejection(events: Iterable[eng.Event]) -> eng.OrderRejected | None:
    for event in events:
        if isinstance(event, eng.OrderRejected):
            return event
    return None


def book_levels(levels: Iterable[tuple[int, int, int]]) -> list[pb.PriceLevel]:
    return [pb.PriceLevel(price=p, size=int64_total(s), order_count=n) for p, s, n in levels]
