"""The ``Engine``: every configured market's book, the sequence check, queries, checksum and snapshots."""

from __future__ import annotations

import contextlib
import json
import operator
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
SNAPSHOT_VERSION = 3  # written; 1 and 2 (canonical JSON; 1 from before accounts) are still read
_HEADER = struct.Struct(">8sHI")  # magic, version, crc32 of the body
_META_LENGTH = struct.Struct(">I")  # of a version-3 body's JSON part
# A version-3 body's columns of one side's orders: (the order record's field, its struct code), in this order.
_COLUMNS = ((ORDER_ID, "q"), (PRICE, "q"), (SIZE, "q"), (REMAINING, "q"), (ACCOUNT, "I"), (POST_ONLY_FLAG, "B"),
            (STP, "B"))
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

    def next_trade_id(self, market: str) -> int:
        """The id the market's next trade gets (trade ids count up from 1 without gaps)."""
        return self._book(market).next_trade_id

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
        """The whole state as deterministic bytes (see the package docstring: header, then the version-3 body)."""
        accounts: dict[str, int] = {}  # account -> its index in the body's table, in order of first appearance
        markets = []
        columns: list[bytes] = []
        for book in self._books.values():
            counts = []
            for side_book in (book.bids, book.asks):
                # one pass over the orders (a pass per field would fetch every record from memory again)
                fields = list(zip(*side_book.iter_orders(), strict=True)) or [()] * (STP + 1)
                count = len(fields[ORDER_ID])
                counts.append(count)
                for field, code in _COLUMNS:
                    column = fields[field]
                    if field == ACCOUNT:
                        for account in dict.fromkeys(column):  # the new ones in order of first appearance
                            accounts.setdefault(account, len(accounts))
                        column = tuple(map(accounts.__getitem__, column))
                    columns.append(struct.pack(f">{count}{code}", *column))
            markets.append(
                {
                    "config": {name: getattr(book.config, name) for name in _CONFIG_FIELDS},
                    "last_seq": book.last_seq,
                    "next_trade_id": book.next_trade_id,
                    "bids": counts[0],
                    "asks": counts[1],
                }
            )
        meta = json.dumps({"accounts": list(accounts), "markets": markets}, sort_keys=True,
                          separators=(",", ":")).encode("ascii")
        body = b"".join([_META_LENGTH.pack(len(meta)), meta, *columns])
        return _HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, zlib.crc32(body)) + body

    @classmethod
    def restore(cls, data: bytes) -> Engine:
        """Rebuild an engine from ``snapshot()`` bytes. Raises ValueError if they are not a valid snapshot."""
        version, body = _checked_body(data)
        with _invalid_as_value_error():
            if version == SNAPSHOT_VERSION:
                return cls._from_body(body)
            return cls._from_state(json.loads(body), version)

    @staticmethod
    def positions(data: bytes) -> dict[str, int]:
        """Each market's last seq in ``snapshot()`` bytes, without rebuilding the books (a version-3 snapshot's
        orders are not read, so ``restore`` may still refuse it). ValueError if they are not a snapshot's."""
        version, body = _checked_body(data)
        with _invalid_as_value_error():
            markets = _meta(body)[0]["markets"] if version == SNAPSHOT_VERSION else json.loads(body)["markets"]
            return {m["config"]["symbol"]: _int(m["last_seq"], "last_seq", 0) for m in markets}

    @classmethod
    def _empty(cls, markets: object) -> Engine:
        """The engine of a snapshot's markets (their configs, last seqs and next trade ids), without orders."""
        if not isinstance(markets, list) or not markets:
            raise ValueError("no markets")
        engine = cls(MarketConfig(**{name: m["config"][name] for name in _CONFIG_FIELDS}) for m in markets)
        for m, book in zip(markets, engine._books.values(), strict=True):
            book.last_seq = _int(m["last_seq"], "last_seq", 0)
            book.next_trade_id = _int(m["next_trade_id"], "next_trade_id", 1)
        return engine

    @classmethod
    def _from_body(cls, body: bytes) -> Engine:
        """A version-3 body: its orders' values are read and checked a column at a time, not an order at a time."""
        meta, offset = _meta(body)
        accounts = meta["accounts"]
        if not isinstance(accounts, list) or any(type(a) is not str for a in accounts):
            raise ValueError("accounts must be a list of strings")
        markets = meta["markets"]
        engine = cls._empty(markets)
        for m, book in zip(markets, engine._books.values(), strict=True):
            for side, key in ((Side.BUY, "bids"), (Side.SELL, "asks")):
                count = _int(m[key], key, 0)
                columns = []
                for _, code in _COLUMNS:
                    layout = struct.Struct(f">{count}{code}")
                    columns.append(layout.unpack_from(body, offset))
                    offset += layout.size
                _rest_columns(book, side, columns, accounts)
            book.check()
        if offset != len(body):
            raise ValueError(f"{len(body) - offset} bytes beyond the orders the markets announce")
        return engine

    @classmethod
    def _from_state(cls, state: dict, version: int) -> Engine:
        """A version-1 or version-2 body (canonical JSON)."""
        markets = state["markets"]
        engine = cls._empty(markets)
        for m, book in zip(markets, engine._books.values(), strict=True):
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


def _checked_body(data: bytes) -> tuple[int, bytes]:
    """(version, body) of snapshot bytes whose header and CRC32 are right; ValueError otherwise."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"snapshot must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise ValueError(f"snapshot too short: {len(data)} bytes")
    magic, version, crc = _HEADER.unpack_from(data)
    if magic != SNAPSHOT_MAGIC:
        raise ValueError(f"not an engine snapshot: magic {magic!r}")
    if version not in (1, 2, SNAPSHOT_VERSION):
        raise ValueError(f"unsupported snapshot version {version}, this engine reads 1 to {SNAPSHOT_VERSION}")
    body = data[_HEADER.size :]
    if zlib.crc32(body) != crc:
        raise ValueError("snapshot corrupt: body CRC32 mismatch")
    return version, body


@contextlib.contextmanager
def _invalid_as_value_error() -> Iterator[None]:
    """Whatever a malformed body raises while it is read, as the ValueError ``restore`` promises."""
    try:
        yield
    except ValueError as exc:
        raise ValueError(f"invalid snapshot: {exc}") from exc
    except (KeyError, TypeError, AssertionError, IndexError, struct.error, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser goes (json raises it, not ValueError)
        raise ValueError(f"invalid snapshot: {type(exc).__name__}: {exc}") from exc


def _meta(body: bytes) -> tuple[dict, int]:
    """The JSON part of a version-3 body, and the offset of the columns after it."""
    (length,) = _META_LENGTH.unpack_from(body)
    end = _META_LENGTH.size + length
    if end > len(body):
        raise ValueError(f"the body announces {length} bytes of JSON, it holds fewer")
    meta = json.loads(body[_META_LENGTH.size : end])
    if not isinstance(meta, dict):
        raise ValueError("the JSON part is not an object")
    return meta, end


def _rest_columns(book: Book, side: Side, columns: list[tuple[int, ...]], accounts: list[str]) -> None:
    """Rests one side's orders of a version-3 body (its columns, _COLUMNS, each in priority order), after checking
    every column at once: ValueError names the first rule a value breaks."""
    ids, prices, sizes, remainings, account_ids, post_only, modes = columns
    if not ids:
        return
    where = f"{book.market} {side.name}"
    if min(ids) < 1 or max(ids) > book.last_seq:
        raise ValueError(f"{where}: an order id outside 1..{book.last_seq}")
    if min(remainings) < 1 or any(map(operator.gt, remainings, sizes)):
        raise ValueError(f"{where}: an order whose remaining size is not in 1..its size")
    if max(post_only) > 1:
        raise ValueError(f"{where}: a post_only flag that is not 0 or 1")
    if max(account_ids) >= len(accounts):
        raise ValueError(f"{where}: an account index outside the table of {len(accounts)}")
    if not set(modes) <= SELF_TRADE_PREVENTIONS.keys():
        raise ValueError(f"{where}: an unknown self-trade prevention among {sorted(set(modes))}")
    bad = next((p for p in set(prices) if book.config.price_error(p) is not None), None)
    if bad is not None:
        raise ValueError(f"{where}: price {bad} is not a valid price of the market")
    side_book = book.bids if side is Side.BUY else book.asks
    keys = [side_book.sign * price for price in prices]
    if any(map(operator.gt, keys, keys[1:])):
        raise ValueError(f"{where}: orders not in priority order")
    orders = book.orders
    modes_by_value = SELF_TRADE_PREVENTIONS
    rest = side_book.rest
    for order_id, price, size, remaining, account_id, flag, mode in zip(*columns, strict=True):
        if order_id in orders:
            raise ValueError(f"{book.market}: order id {order_id} twice")
        order = [remaining, order_id, price, size, side, flag == 1, accounts[account_id], modes_by_value[mode]]
        rest(order)
        orders[order_id] = order


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
