"""The shape of a sequenced command: what the Sequencer admits to the log.

A node validates a client's request (exchange/node/order_messages.py) before it builds a command; the Sequencer
checks every command it is sent again, with the same rules, so that nothing malformed enters the log even
from a caller that bypasses a node: a command must have a kind, name a market of the cluster, and keep that
market's rules (exchange.engine.MarketConfig owns them; the engine applies them once more and rejects as an
event what breaks them, because the log is the truth). Pure: no I/O.
"""

from __future__ import annotations

from exchange.shared.markets import ORDER_TYPES, SELF_TRADE_PREVENTIONS, SIDES, MarketConfig, order_id_error
from exchange.v1 import types_pb2

MAX_CLIENT_ORDER_ID = 64


def client_order_id_error(client_order_id: str) -> str | None:
    """Why a client_order_id cannot be used (None if it can)."""
    if len(client_order_id) > MAX_CLIENT_ORDER_ID:
        return f"client_order_id is {len(client_order_id)} characters long; at most {MAX_CLIENT_ORDER_ID} are allowed"
    if not client_order_id.isprintable():
        return "client_order_id must contain printable characters only"
    return None


def command_error(command: types_pb2.Command, config: MarketConfig) -> str | None:
    """Why `command` (of `config`'s market) may not enter the log (None if it may)."""
    kind = command.WhichOneof("kind")
    if kind is None:
        return "a command has no new_order, cancel_order or amend_order"
    if (error := client_order_id_error(command.client_order_id)) is not None:
        return error
    if kind == "new_order":
        order = command.new_order
        side, order_type = SIDES.get(order.side), ORDER_TYPES.get(order.order_type)
        stp = SELF_TRADE_PREVENTIONS.get(order.self_trade_prevention or types_pb2.CANCEL_TAKER)  # unset: the default
        reason = config.order_error(side, order_type, order.size, order.price or None, stp)
        what = (f"new_order (side {order.side}, order_type {order.order_type}, size {order.size}, price {order.price}, "
                f"self_trade_prevention {order.self_trade_prevention})")
    else:
        change = command.cancel_order if kind == "cancel_order" else command.amend_order
        if (error := order_id_error(change.order_id)) is not None:
            return f"{kind}.{error}"
        if kind == "cancel_order":
            return None
        amend = command.amend_order
        reason = config.amend_error(amend.new_size, amend.new_price or None)
        what = f"amend_order (new_size {amend.new_size}, new_price {amend.new_price})"
    return None if reason is None else f"{what} breaks {config.symbol}'s rules: {reason.name}"
