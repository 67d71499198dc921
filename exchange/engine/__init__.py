"""The pure matching engine: deterministic price-time priority limit order books, one per market.

No I/O, no clocks, no randomness, no floats: the same command sequence gives the same events, the same
checksums and the same snapshot bytes on every node. Prices are ints in ticks, sizes ints in lots.

Sequencing
    ``Engine.apply(command)`` requires ``command.seq == last_seq(market) + 1`` (else ``SequenceError``;
    unknown market: ``UnknownMarketError``), and then always consumes the seq, even if the command is
    rejected. Every market-level failure is an ``OrderRejected`` event, never an exception, and leaves the
    book unchanged. An order's id is the seq of its ``SubmitOrder``; trade ids count from 1 per market.

Submitting (``SubmitOrder``)
    Events: ``OrderAccepted``, one ``OrderFilled`` per trade in match order (best price first, FIFO within
    a price, each at the maker's price), then ``OrderRested`` (LIMIT/POST_ONLY remainder) or
    ``OrderCancelled`` (IOC remainder: IOC_REMAINDER; MARKET remainder: MARKET_REMAINDER) if anything is
    left. A rejection is a lone ``OrderRejected``, decided before any trade: input errors (checked in the
    order side, type, size bounds, lot, price presence, price bounds, tick), POST_ONLY_WOULD_TAKE,
    FOK_CANNOT_FILL (a FOK fills completely or not at all), NO_LIQUIDITY (MARKET facing an empty side).
    An IOC that cannot trade is accepted and its whole size cancelled (IOC_REMAINDER).

Cancelling (``CancelOrder``)
    ``OrderCancelled(size=open size, reason=USER)``, or ``OrderRejected(ORDER_NOT_FOUND)`` for an unknown,
    filled or cancelled order.

Amending (``AmendOrder(order_id, new_size, new_price)``)
    ``new_size`` is the new *open* (remaining) size; ``new_price`` None keeps the price. The order's total
    size becomes ``filled + new_size`` (that total must not exceed ``max_size``; ``min_size`` is not applied,
    an amend may shrink like a partial cancel). Rejections, in check order: AMEND_SIZE_INVALID
    (``new_size`` <= 0), ORDER_NOT_FOUND, SIZE_OUT_OF_BOUNDS, SIZE_NOT_ON_LOT, PRICE_OUT_OF_BOUNDS,
    PRICE_NOT_ON_TICK, AMEND_NO_CHANGE (same price and size), POST_ONLY_WOULD_TAKE (a POST_ONLY order moved
    to a crossing price). Otherwise:

    * same price, smaller size: the order keeps its place; ``OrderAmended(priority_kept=True)``;
    * same price, larger size, or a new price that does not cross: the order moves to the back of its
      (new) level; ``OrderAmended(priority_kept=False)``;
    * a new price that crosses the opposite best: ``OrderAmended(priority_kept=False)``, then the order
      trades as an aggressive limit order of ``new_size`` (``OrderFilled`` with it as taker), then
      ``OrderRested`` with what is left, if anything (nothing left: the order is finished).

Checksum (``Engine.checksum(market)``, part of the API: equal books give equal checksums)
    ``zlib.crc32`` (unsigned) of: the number of resting bid orders as an 8-byte big-endian signed int, then
    for every resting order in priority order -- bids best (highest) price first, FIFO within a level, then
    asks best (lowest) price first, FIFO within a level -- its order id, price and remaining size, each an
    8-byte big-endian signed int. The empty book encodes as 8 zero bytes: checksum
    ``zlib.crc32(bytes(8)) == 0x6522DF69``.

Snapshots (``Engine.snapshot()`` / ``Engine.restore(data)``)
    8-byte magic ``b"P2PXENG\\0"``, u16 version (1), u32 CRC32 of the body, all big-endian, then the body:
    canonical JSON (sorted keys, no spaces, ASCII) of every market's config, last seq, next trade id and
    resting orders ``[id, price, size, remaining, post_only]`` in priority order. Restoring gives the same
    checksums and the same events for the same following commands; bad input raises ValueError.

Enums
    ``Side``, ``OrderType``, ``RejectReason``, ``CancelReason`` are ``IntEnum``s. ``SIDES`` and ``ORDER_TYPES``
    map an int value to its ``Side`` or ``OrderType`` (protobuf's values are the same, see types.proto):
    every layer decodes numbers with them. ``SubmitOrder`` also takes the plain ints and normalises them.

Memory is proportional to the resting orders: filled and cancelled orders leave every structure (a
cancelled order may linger as a bounded tombstone, see ``exchange.engine.book``), empty levels are removed.
"""

from exchange.engine.engine import Engine
from exchange.engine.model import (
    ORDER_TYPES,
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
    OrderRejected,
    OrderRested,
    OrderType,
    OrderView,
    RejectReason,
    SequenceError,
    Side,
    SubmitOrder,
    UnknownMarketError,
)

__all__ = [
    "ORDER_TYPES",
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
    "OrderRejected",
    "OrderRested",
    "OrderType",
    "OrderView",
    "RejectReason",
    "SequenceError",
    "Side",
    "SubmitOrder",
    "UnknownMarketError",
]
