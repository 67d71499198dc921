"""The ``Engine``: every configured market's book, the sequence check, queries, checksum and snapshots."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from exchange.engine.book import Book
from exchange.engine.model import (
    CANCEL_TAKER,
    SELF_TRADE_PREVENTIONS,
    AmendOrder,
    CancelOrder,
    Command,
    Event,
    MarketConfig,
    OrderView,
    PlaceOrder,
    SequenceError,
    Side,
    UnknownMarketError,
)
from exchange.engine.sides import ACCOUNT, ORDER_ID, POST_ONLY_FLAG, PRICE, REMAINING, SIDE, SIZE, STP, Order

SNAPSHOT_MAGIC = b"P2PXENG\x00"
SNAPSHOT_VERSION = 2  # written; 1 (before accounts: orders of account "") is still read
_HEADER = struct.Struct(">8sHI")  # magic, version, crc32 of the body
_CONFIG_FIELDS = ("symbol", "tick_size", "lot_size", "min_price", "max_price", "min_size", "max_size")


Level = tuple[int, int, int]  # (price, total open size, order count)


class Engine:
    """Deterministic matching over one or more markets. See the ``exchange.engine`` package docstring."""

    __slots__ = ("_books", "_markets")

    def __init__(self, markets: Iterable[MarketConfig]) -> None:
        self._books: dict[str, Book] = {}
        for config in markets:
            if not isinstance(config, MarketConfig):
                raise TypeError(f"expected MarketConfig, got {type(config).__name__}")
            if config.symbol in self._books:
                raise ValueError(f"market {config.symbol!r} configured twice")
            self._books[config.symbol] = Book(config)
        if not self._books:
            raise ValueError("an Engine needs at least one market")
        self._markets = MappingProxyType({symbol: book.config for symbol, book in self._books.items()})

    # ---------------------------------------------------------------------------------------- apply

    def apply(self, command: Command) -> list[Event]:
        """Apply the next command of its market; return the events it produced, in order.

        Raises UnknownMarketError for an unknown market, SequenceError unless ``command.seq`` is exactly
        ``last_seq(market) + 1``, and TypeError for a command whose ``account`` is not a str; in all these
        cases nothing changes. Every market-level failure is an ``OrderRejected`` event instead, and a
        rejected command still consumes its seq.
        """
        try:
            book = self._books[command.market]
        except KeyError:
            raise UnknownMarketError(command.market) from None
        seq = command.seq
        if seq != book.last_seq + 1 or type(seq) is not int:
            raise SequenceError(book.market, book.last_seq + 1, seq)
        if type(command) is PlaceOrder:
            events = book.place(command)
        elif type(command) is CancelOrder:
            events = book.cancel(command)
        elif type(command) is AmendOrder:
            events = book.amend(command)
        else:
            raise TypeError(f"not an engine command: {type(command).__name__}")
        book.last_seq = seq
        return events

    # -------------------------------------------------------------------------------------- queries

    def _book(self, market: str) -> Book:
        book = self._books.get(market)
        if book is None:
            raise UnknownMarketError(market)
        return book

    @property
    def markets(self) -> Mapping[str, MarketConfig]:
        """Configured markets in configuration order; the first one is the default market."""
        return self._markets

    def last_seq(self, market: str) -> int:
        return self._book(market).last_seq

    def depth(self, market: str, levels: int) -> tuple[list[Level], list[Level]]:
        """(bids, asks), each best first, at most ``levels`` levels of (price, total size, order count)."""
        book = self._book(market)
        return book.depth(book.bids, levels), book.depth(book.asks, levels)

    def level(self, market: str, side: Side, price: int) -> tuple[int, int]:
        """(total open size, order count) of one price level; (0, 0) if there is none (L2 book streams)."""
        book = self._book(market)
        queue = (book.bids if side is Side.BUY else book.asks).levels.get(price)
        if queue is None:
            return 0, 0
        size = count = 0
        for order in queue:
            if order[REMAINING]:
                size += order[REMAINING]
                count += 1
        return size, count

    def best_price(self, market: str, side: Side) -> int | None:
        """The best price of one side (highest bid, lowest ask), None if the side is empty."""
        book = self._book(market)
        side_book = book.bids if side is Side.BUY else book.asks
        return side_book.sign * side_book.best if side_book.keys else None

    def order(self, market: str, order_id: int) -> OrderView | None:
        """The resting order ``order_id``, or None if it is unknown, filled or cancelled."""
        order = self._book(market).orders.get(order_id)
        return None if order is None else _view(order)

    def resting_orders(self, market: str) -> Iterator[OrderView]:
        """Resting orders in priority order: bids best first (FIFO per level), then asks best first."""
        return map(_view, self._book(market).iter_orders())

    def resting_owners(self, market: str) -> list[tuple[int, str]]:
        """(order id, account) of every resting order, oldest (lowest id) first: a node's index of each account's
        orders, rebuilt from a snapshot without an ``OrderView`` per order."""
        return sorted((order[ORDER_ID], order[ACCOUNT]) for order in self._book(market).orders.values())

    def checksum(self, market: str) -> int:
        """Unsigned CRC32 of the canonical book encoding (see the package docstring)."""
        book = self._book(market)
        flat: list[int] = []
        for order in book.bids.iter_orders():
            flat += (order[ORDER_ID], order[PRICE], order[REMAINING])
        bid_count = len(flat) // 3
        for order in book.asks.iter_orders():
            flat += (order[ORDER_ID], order[PRICE], order[REMAINING])
        return zlib.crc32(struct.pack(f">{1 + len(flat)}q", bid_count, *flat))

    def check_consistency(self) -> None:
        """Raise AssertionError describing the first broken internal invariant, if any."""
        for book in self._books.values():
            book.check()

    # ------------------------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """The whole state as deterministic bytes: header (magic, version, CRC32 of body) + canonical JSON."""
        markets = []
        for book in self._books.values():
            markets.append(
                {
                    "config": {name: getattr(book.config, name) for name in _CONFIG_FIELDS},
                    "last_seq": book.last_seq,
                    "next_trade_id": book.next_trade_id,
                    "bids": [_encode_order(o) for o in book.bids.iter_orders()],
                    "asks": [_encode_order(o) for o in book.asks.iter_orders()],
                }
            )
        body = json.dumps({"markets": markets}, sort_keys=True, separators=(",", ":")).encode("ascii")
        return _HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, zlib.crc32(body)) + body

    @classmethod
    def restore(cls, data: bytes) -> Engine:
        """Rebuild an engine from ``snapshot()`` bytes. Raises ValueError if they are not a valid snapshot."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError(f"snapshot must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise ValueError(f"snapshot too short: {len(data)} bytes")
        magic, version, crc = _HEADER.unpack_from(data)
        if magic != SNAPSHOT_MAGIC:
            raise ValueError(f"not an engine snapshot: magic {magic!r}")
        if version not in (1, SNAPSHOT_VERSION):
            raise ValueError(f"unsupported snapshot version {version}, this engine reads 1 and {SNAPSHOT_VERSION}")
        body = data[_HEADER.size :]
        if zlib.crc32(body) != crc:
            raise ValueError("snapshot corrupt: body CRC32 mismatch")
        try:
            state = json.loads(body)
            return cls._from_state(state, version)
        except ValueError as exc:
            raise ValueError(f"invalid snapshot: {exc}") from exc
        except (KeyError, TypeError, AssertionError) as exc:
            raise ValueError(f"invalid snapshot: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _from_state(cls, state: dict, version: int) -> Engine:
        markets = state["markets"]
        if not isinstance(markets, list) or not markets:
            raise ValueError("no markets")
        engine = cls(MarketConfig(**{name: m["config"][name] for name in _CONFIG_FIELDS}) for m in markets)
        for m, book in zip(markets, engine._books.values(), strict=True):
            book.last_seq = _int(m["last_seq"], "last_seq", 0)
            book.next_trade_id = _int(m["next_trade_id"], "next_trade_id", 1)
            for side, key in ((Side.BUY, "bids"), (Side.SELL, "asks")):
                side_book = book.bids if side is Side.BUY else book.asks
                previous_key = None
                for entry in m[key]:
                    order = _decode_order(entry, side, book, version)
                    order_id = order[ORDER_ID]
                    if order_id in book.orders or order_id > book.last_seq:
                        raise ValueError(f"{book.market}: bad or duplicate order id {order_id}")
                    order_key = side_book.sign * order[PRICE]
                    if previous_key is not None and order_key < previous_key:
                        raise ValueError(f"{book.market}: {key} not in priority order")
                    previous_key = order_key
                    side_book.rest(order)
                    book.orders[order_id] = order
            book.check()
        return engine


def _view(order: Order) -> OrderView:
    return OrderView(
        order[ORDER_ID],
        order[SIDE],
        order[PRICE],
        order[SIZE],
        order[REMAINING],
        order[SIZE] - order[REMAINING],
        order[ACCOUNT],
    )


def _encode_order(order: Order) -> list[int | str]:
    return [
        order[ORDER_ID],
        order[PRICE],
        order[SIZE],
        order[REMAINING],
        int(order[POST_ONLY_FLAG]),
        order[ACCOUNT],
        int(order[STP]),
    ]


def _int(value: object, what: str, minimum: int) -> int:
    if type(value) is not int or value < minimum or value > 2**63 - 1:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def _decode_order(entry: object, side: Side, book: Book, version: int) -> Order:
    if version == 1:  # before accounts: every order is of account "", with the default mode
        if not isinstance(entry, list) or len(entry) != 5:
            raise ValueError(f"{book.market}: order entry must be [id, price, size, remaining, post_only]")
        entry = [*entry, "", int(CANCEL_TAKER)]
    if not isinstance(entry, list) or len(entry) != 7:
        raise ValueError(f"{book.market}: order entry must be [id, price, size, remaining, post_only, account, stp]")
    order_id = _int(entry[0], "order id", 1)
    price = _int(entry[1], "price", 1)
    size = _int(entry[2], "size", 1)
    remaining = _int(entry[3], "remaining", 1)
    post_only = _int(entry[4], "post_only", 0)
    account = entry[5]
    stp = SELF_TRADE_PREVENTIONS.get(_int(entry[6], "stp", 1))
    if (
        remaining > size
        or post_only > 1
        or type(account) is not str
        or stp is None
        or book.config.price_error(price) is not None
    ):
        raise ValueError(f"{book.market}: invalid order entry {entry!r}")
    return [remaining, order_id, price, size, side, bool(post_only), account, stp]
