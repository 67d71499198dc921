"""The pure matching engine: deterministic price-time priority limit order books, one per market.

No I/O, no clocks, no randomness, no floats: the same command sequence gives the same events, the same
checksums and the same snapshot bytes on every node. Prices are ints in ticks, sizes ints in lots.

Sequencing
    ``Engine.apply(command)`` requires ``command.seq == last_seq(market) + 1`` (else ``SequenceError``;
    unknown market: ``UnknownMarketError``; an ``account`` that is not a str: ``TypeError``), and then
    always consumes the seq, even if the command is rejected. Every market-level failure is an
    ``OrderRejected`` event, never an exception, and leaves the book unchanged. An order's id is the seq of
    its ``PlaceOrder``; trade ids count from 1 per market.

Accounts and ownership
    Every command carries the ``account`` it acts for (a str; "" is "no account", for tools and commands
    from before accounts), so every replica and every replay knows each order's owner. The account of a
    ``PlaceOrder`` owns the order. A cancel or amend of an order of another account is rejected with
    NOT_ORDER_OWNER (the book does not change); "" owns its orders like any other value (a cancel from ""
    of an order of "" is allowed, from "alice" it is NOT_ORDER_OWNER). Every event names the account(s) of
    the order(s) it concerns in its last field(s): ``OrderFilled`` has ``maker_account`` and
    ``taker_account``, ``OrderRejected`` the command's account, every other event its order's owner.
    Consumers filter a trader's own view with them; public market data drops them.

Self-trade prevention (``PlaceOrder.stp``, a ``SelfTradePrevention``; default CANCEL_TAKER)
    An incoming order never trades with a resting order of its own non-empty account; orders of "" never
    trigger it. Wherever the matching walk (price-time priority, otherwise unchanged) meets such a resting
    order, the incoming order's mode decides, and its events stand where the trade would have been, the
    resting order's first:

    * CANCEL_TAKER: ``OrderCancelled(incoming remainder, SELF_TRADE_PREVENTED)``; the incoming order stops;
    * CANCEL_MAKER: ``OrderCancelled(resting order's open size, SELF_TRADE_PREVENTED)``; matching goes on;
    * CANCEL_BOTH: both of those cancels, the resting order's first; the incoming order stops;
    * DECREMENT: q = min(incoming open size, resting open size); both lose q without a trade. An order left
      with nothing gets ``OrderCancelled(size=q, SELF_TRADE_PREVENTED)``, one left with something
      ``OrderReduced(size=q, remaining, SELF_TRADE_PREVENTED)`` (a resting order keeps its place); an
      incoming order with size left goes on matching.

    What is cancelled of an incoming order never rests, whatever its type; an incoming order stopped by
    CANCEL_TAKER or CANCEL_BOTH has no further event. An IOC or MARKET remainder cancelled for running out
    of liquidity keeps IOC_REMAINDER/MARKET_REMAINDER. A FOK fills completely by trades or is rejected
    (FOK_CANNOT_FILL) before anything changes: its availability check counts, in priority order within its
    limit, only what it can trade: under CANCEL_MAKER every resting order of other accounts (its own ones
    met are cancelled as it goes), under the other modes only what lies ahead of its first own resting
    order. POST_ONLY never takes, so self-trade prevention never applies to it. A resting order keeps its
    mode: an amend that makes it cross applies that mode to it as the incoming order.

Submitting (``PlaceOrder``)
    Events: ``OrderAccepted``, one ``OrderFilled`` per trade in match order (best price first, FIFO within
    a price, each at the maker's price) with self-trade prevention's events among them, then
    ``OrderRested`` (LIMIT/POST_ONLY remainder) or ``OrderCancelled`` (IOC remainder: IOC_REMAINDER;
    MARKET remainder: MARKET_REMAINDER) if anything is left. A rejection is a lone ``OrderRejected``,
    decided before any trade: input errors (checked in the order side, type, self-trade prevention mode
    (INVALID_SELF_TRADE_PREVENTION), size bounds, lot, price presence, price bounds, tick),
    POST_ONLY_WOULD_TAKE, FOK_CANNOT_FILL (a FOK fills completely or not at all), NO_LIQUIDITY (MARKET
    facing an empty side). An IOC that cannot trade is accepted and its whole size cancelled
    (IOC_REMAINDER).

Cancelling (``CancelOrder``)
    ``OrderCancelled(size=open size, reason=USER)``, or ``OrderRejected`` with, in check order,
    ORDER_NOT_FOUND (an unknown, filled or cancelled order) or NOT_ORDER_OWNER.

Amending (``AmendOrder(order_id, new_size, new_price)``)
    ``new_size`` is the new *open* (remaining) size; ``new_price`` None keeps the price. The order's total
    size becomes ``filled + new_size`` (that total must not exceed ``max_size``; ``min_size`` is not applied,
    an amend may shrink like a partial cancel). Rejections, in check order: AMEND_SIZE_INVALID
    (``new_size`` <= 0), ORDER_NOT_FOUND, NOT_ORDER_OWNER, SIZE_OUT_OF_BOUNDS, SIZE_NOT_ON_LOT,
    PRICE_OUT_OF_BOUNDS, PRICE_NOT_ON_TICK, AMEND_NO_CHANGE (same price and size), POST_ONLY_WOULD_TAKE (a
    POST_ONLY order moved to a crossing price). Otherwise:

    * same price, smaller size: the order keeps its place; ``OrderAmended(priority_kept=True)``;
    * same price, larger size, or a new price that does not cross: the order moves to the back of its
      (new) level; ``OrderAmended(priority_kept=False)``;
    * a new price that crosses the opposite best: ``OrderAmended(priority_kept=False)``, then the order
      trades as an aggressive limit order of ``new_size`` (``OrderFilled`` with it as taker; self-trade
      prevention with the order's own mode and the command's account, which owns it), then
      ``OrderRested`` with what is left, if anything (nothing left: the order is finished).

    An order's total size (``OrderView.size``) is ``filled + remaining``: what an amend or DECREMENT took
    away is no longer part of it.

Checksum (``Engine.checksum(market)``, part of the API: equal books give equal checksums)
    ``zlib.crc32`` (unsigned) of: the number of resting bid orders as an 8-byte big-endian signed int, then
    for every resting order in priority order -- bids best (highest) price first, FIFO within a level, then
    asks best (lowest) price first, FIFO within a level -- its order id, price and remaining size, each an
    8-byte big-endian signed int. The empty book encodes as 8 zero bytes: checksum
    ``zlib.crc32(bytes(8)) == 0x6522DF69``. Owners are not part of it (public market data carries none).

Snapshots (``Engine.snapshot()`` / ``Engine.restore(data)``)
    8-byte magic ``b"P2PXENG\\0"``, u16 version (3), u32 CRC32 of the body, all big-endian, then the body: a
    u32 length and that many bytes of canonical JSON (sorted keys, no spaces, ASCII): ``accounts``, the table
    of the resting orders' owners in order of first appearance, and ``markets``, each market's config, last
    seq, next trade id and its numbers of resting ``bids`` and ``asks``; then, market after market, bids then
    asks, each side's N orders (in priority order) as seven columns of N big-endian values each, in this order:
    ``id``, ``price``, ``size``, ``remaining`` (8-byte signed), ``account`` (its index in the table, u32),
    ``post_only`` (u8, 0 or 1) and ``stp`` (u8: the order's ``SelfTradePrevention`` value, which an amend that
    crosses applies again; ``engine.py: _COLUMNS``). Packed columns rather than JSON
    rows: a node writes one every 100,000 entries and a restarting node reads a peer's, and both take a
    fraction of the time (about 15 against 100 ms for 50,000 resting orders). Restoring gives the same
    checksums and the same events for the same following commands, owners included; bad input raises
    ValueError. Versions 1 and 2 (JSON bodies whose orders are rows ``[id, price, size, remaining,
    post_only, account, stp]``; version 1 from before accounts, ``[id, price, size, remaining, post_only]``,
    every order with account "" and mode CANCEL_TAKER, which is what replaying its commands gives) are
    still read.

Enums
    ``Side``, ``OrderType``, ``SelfTradePrevention``, ``RejectReason``, ``CancelReason`` are ``IntEnum``s.
    ``SIDES``, ``ORDER_TYPES`` and ``SELF_TRADE_PREVENTIONS`` map an int value to its member (protobuf's
    values are the same, see types.proto; a protobuf self-trade prevention enum must keep these numbers):
    every layer decodes numbers with them. ``PlaceOrder`` also takes
    the plain ints and normalises them; any other value of ``side``, ``order_type`` or ``stp`` replays into
    its rejection (INVALID_SIDE, INVALID_ORDER_TYPE, INVALID_SELF_TRADE_PREVENTION).

L2 market data
    ``exchange.engine.l2`` (pure too): a market's price levels kept from the events, the views of StreamBook
    subscribers and their merged updates, and the top-10 checksum (CONTRACT section 8), for the node, the
    client library and the tests alike. ``Engine.level`` and ``Engine.best_price`` are its queries.

Memory is proportional to the resting orders: filled and cancelled orders leave every structure (a
cancelled order may linger as a bounded tombstone, see ``exchange.engine.book``), empty levels are removed.

May import the standard library, sortedcontainers and ``exchange.shared.markets`` (the market rules and
their enums, re-exported here); nothing else of the product (devtools/layout.py checks it).
"""

from exchange.engine.engine import Engine
from exchange.engine.model import (
    ORDER_TYPES,
    SELF_TRADE_PREVENTIONS,
    SIDES,
    AmendOrder,
    CancelOrder,
    CancelReason,
    Command,
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
    OrderView,
    PlaceOrder,
    RejectReason,
    SelfTradePrevention,
    SequenceError,
    Side,
    UnknownMarketError,
)

__all__ = [
    "ORDER_TYPES",
    "SELF_TRADE_PREVENTIONS",
    "SIDES",
    "AmendOrder",
    "CancelOrder",
    "CancelReason",
    "Command",
    "Engine",
    "Event",
    "MarketConfig",
    "OrderAccepted",
    "OrderAmended",
    "OrderCancelled",
    "OrderFilled",
    "OrderReduced",
    "OrderRejected",
    "OrderRested",
    "OrderType",
    "OrderView",
    "RejectReason",
    "SelfTradePrevention",
    "SequenceError",
    "Side",
    "PlaceOrder",
    "UnknownMarketError",
]
