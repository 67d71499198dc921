"""What a node keeps of its orders beside the book (exchange/node/replica.py): each account's resting orders, how
the orders of the window finished, and the size and price of those that are no longer their submit's; GetOrder
answers from them.

An order's size is the engine's (OrderView.size): what it filled plus what is open, without what an amend or
self-trade prevention took from it. A finished order's filled size is its size less what was cancelled of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange import engine as eng
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2

FILLED, CANCELLED, REJECTED, RESTING = pb.FILLED, pb.CANCELLED, pb.REJECTED, pb.RESTING
OrderFilled, OrderCancelled, OrderRejected, OrderRested, OrderAmended, OrderReduced = (
    eng.OrderFilled, eng.OrderCancelled, eng.OrderRejected, eng.OrderRested, eng.OrderAmended, eng.OrderReduced)

# (size, price) of an order when it differs from what its submit said: amended, or reduced by self-trade
# prevention (`size` as the engine's OrderView.size: filled + open, without what it lost)
SizeAndPrice = tuple[int, int]
# (status, cancelled size, account, its size and price if not its submit's) of an order that left the book:
# its filled size is its size less the cancelled size
FinishedRecord = tuple[pb.OrderStatus, int, str, SizeAndPrice | None]
RestingRecord = tuple[types_pb2.OrderType, str]  # (order type, client_order_id) of a resting order ("": unknown)


@dataclass(frozen=True, slots=True)
class OrderState:
    """What this node knows of one order: resting, or finished and still retained (GetOrder).

    What the node does not know of an order resting since before the snapshot it started from (its order type,
    its client_order_id if the snapshot had none) is unspecified or empty."""

    market: str
    order_id: int
    status: pb.OrderStatus
    side: types_pb2.Side
    order_type: types_pb2.OrderType
    price: int
    size: int
    filled: int
    remaining: int
    client_order_id: str
    account: str


def finished_state(market: str, order_id: int, finished: FinishedRecord, submit: types_pb2.Command) -> OrderState:
    """A finished order as GetOrder shows it, from how it finished and its submit."""
    new_order = submit.new_order
    status, cancelled, owner, changed = finished
    size, price = (new_order.size, new_order.price) if changed is None else changed
    filled = size - cancelled if status == CANCELLED else size if status == FILLED else 0
    return OrderState(market, order_id, status, new_order.side, new_order.order_type, price, size, filled, 0,
                      submit.client_order_id, owner or submit.account)


def note_finished(finished: dict[int, FinishedRecord], resting: dict[str, dict[int, RestingRecord]],
                  changed: dict[int, SizeAndPrice], engine: eng.Engine, market: str, command: types_pb2.Command,
                  new_order: bool, events: list[eng.Event], floor: int, amended: eng.OrderView | None) -> None:
    """After `command` made `events`: keeps each account's resting orders and how the window's orders (ids from
    `floor` on) finished.

    An order that leaves the book keeps its size and price if they are not its submit's: the command's own
    order (a new one, or the amended one: `amended` is its view before) by what it filled before and in the
    command; any other (a maker, a cancelled order) by `changed`, kept while it rested."""
    own = events[0].seq if new_order else -1 if amended is None else amended.order_id
    own_filled = 0 if amended is None else amended.filled
    own_price = command.new_order.price if new_order else 0
    moved: list[int] = []  # orders amended or reduced by this command
    for event in events:
        if type(event) is OrderFilled:
            if event.taker_order_id == own:
                own_filled += event.size
            if event.maker_remaining == 0:
                if event.maker_order_id >= floor:
                    finished[event.maker_order_id] = (
                        FILLED, 0, event.maker_account, changed.pop(event.maker_order_id, None) if changed else None)
                resting.get(event.maker_account, {}).pop(event.maker_order_id, None)
            if event.taker_remaining == 0:
                if event.taker_order_id >= floor:
                    finished[event.taker_order_id] = (FILLED, 0, event.taker_account, (own_filled, own_price))
                resting.get(event.taker_account, {}).pop(event.taker_order_id, None)
        elif type(event) is OrderRested:
            orders = resting.setdefault(event.account, {})
            if event.order_id not in orders:  # an amend that re-queues keeps what its submit said
                orders[event.order_id] = (
                    (command.new_order.order_type, command.client_order_id) if new_order
                    else (types_pb2.ORDER_TYPE_UNSPECIFIED, ""))
        elif type(event) is OrderCancelled:
            order_id = event.order_id
            if order_id >= floor:
                finished[order_id] = (CANCELLED, event.size, event.account,
                                      (own_filled + event.size, own_price) if order_id == own
                                      else changed.pop(order_id, None) if changed else None)
            resting.get(event.account, {}).pop(order_id, None)
        elif type(event) is OrderRejected and new_order and event.order_id == event.seq and event.order_id >= floor:
            finished[event.order_id] = (REJECTED, 0, event.account, None)
        elif type(event) is OrderAmended:
            if event.order_id == own:
                own_price = event.price
            moved.append(event.order_id)
        elif type(event) is OrderReduced:
            moved.append(event.order_id)
    for order_id in moved:
        if order_id >= floor and (view := engine.order(market, order_id)) is not None:
            changed[order_id] = (view.size, view.price)
