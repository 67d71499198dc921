"""A local L2 book kept from StreamBook and verified at every message; and the full-book checksum rule.

`BookTracker` is the subscription's logic without I/O, shared by the sync and asyncio subscriptions: it loads a
snapshot, applies each update, and checks, at every message, that the update starts right after the previous
one (`first_seq` = previous `last_seq` + 1) and that the local view gives the node's top-10 checksum
(exchange/engine/l2.py, CONTRACT section 8). Any failure raises `Diverged` with its reason; the subscription
then resubscribes for a new snapshot (a resync), and counts it by reason in `SubscriptionStats`.

`book_checksum` is the other checksum, over every resting order (docs/architecture.md, "Book checksum"): what an L3
GetOrderBook answer (`all_levels`, `include_orders`) can be checked against.
"""

from __future__ import annotations

import contextlib
import struct
import zlib
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exchange.client import types as t
from exchange.errors import ExchangeError, Unavailable
from exchange.shared.markets import Side as LevelSide
from exchange.v1 import exchange_pb2 as pb

if TYPE_CHECKING:
    from exchange.engine.l2 import LevelBook

# why a subscription resynchronised (`SubscriptionStats.resyncs_by_reason`)
GAP, CHECKSUM, STREAM_ENDED = "gap", "checksum", "stream ended"


class Diverged(Exception):
    """The local book can no longer follow the stream: it must start again from a new snapshot."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def book_checksum(bids: list[tuple[int, int, int]], asks: list[tuple[int, int, int]]) -> int:
    """The "Book checksum" (docs/architecture.md) over (order id, price, open size) of each side's orders in
    priority order."""
    flat = [value for order in (*bids, *asks) for value in order]
    return zlib.crc32(struct.pack(f">{1 + len(flat)}q", len(bids), *flat))


@dataclass
class SubscriptionStats:
    snapshots: int = 0  # snapshots loaded (the first, then one per resync)
    updates: int = 0  # updates applied
    verified: int = 0  # checksums compared and equal (one per message)
    resyncs: int = 0  # new snapshots after a gap, a wrong checksum or a broken stream
    resyncs_by_reason: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0  # streams opened again after a break (on the same node or another)


class BookTracker:
    """One subscription's local view: `depth` levels per side, at `seq`, checked at every message."""

    def __init__(self, market: str, depth: int) -> None:
        self.market = market
        self.depth = depth
        self.book: LevelBook | None = None
        self.seq = 0
        self.checksum = 0
        self.stats = SubscriptionStats()

    def on_message(self, message: pb.BookUpdate) -> None:
        """Applies a StreamBook message; raises Diverged (the book is then dropped) on a gap or a wrong checksum."""
        if message.snapshot:
            # the node's own level book (sortedcontainers), loaded by the first book subscription only:
            # `import exchange.client` loads no engine code
            from exchange.engine.l2 import LevelBook

            self.book = LevelBook()
            self.stats.snapshots += 1
        elif self.book is None:
            raise Diverged(GAP, "an update arrived before any snapshot")
        elif message.first_seq != self.seq + 1:
            raise Diverged(GAP, f"update {message.first_seq}..{message.last_seq} after seq {self.seq}")
        else:
            self.stats.updates += 1
        book = self.book
        for side, levels in ((LevelSide.BUY, message.bids), (LevelSide.SELL, message.asks)):
            for level in levels:
                book.set(side, level.price, (level.size, level.order_count))
        self.seq, self.market = message.last_seq, message.market or self.market
        local = book.checksum()
        if local != message.checksum:
            raise Diverged(CHECKSUM, f"at seq {message.last_seq}: local {local}, node {message.checksum}")
        if book.count(LevelSide.BUY) > self.depth or book.count(LevelSide.SELL) > self.depth:
            raise Diverged(CHECKSUM, f"at seq {message.last_seq} the view holds more than {self.depth} levels")
        self.checksum = local
        self.stats.verified += 1

    def resync(self, reason: str) -> None:
        """Forgets the book: the next step is a new snapshot."""
        self.book = None
        self.stats.resyncs += 1
        self.stats.resyncs_by_reason[reason] = self.stats.resyncs_by_reason.get(reason, 0) + 1

    def snapshot(self, depth: int | None = None) -> t.Book:
        assert self.book is not None
        depth = self.depth if depth is None else min(depth, self.depth)
        levels = [tuple(t.BookLevel(p, s, n) for p, s, n in self.book.top(side, depth))
                  for side in (LevelSide.BUY, LevelSide.SELL)]
        return t.Book(self.market, self.seq, levels[0], levels[1], self.checksum, self.seq)


class SubscriptionBase:
    """What the sync and asyncio subscriptions share: their state and the reading side (`book()`, `seq`,
    `stats`). The sync one reads under its lock (`_guard`), since its thread writes."""

    def __init__(self, market: str, depth: int, timeout: float | None) -> None:
        self.market = market
        self.depth = depth
        self.timeout = timeout
        self._request = t.request(pb.StreamBookRequest, market=market, depth=depth)  # InvalidArgument here, at once
        self._tracker = BookTracker(market, depth)
        self._call: Any = None  # the StreamBook call being followed
        self._address: str | None = None  # the node it comes from
        self._error: ExchangeError | None = None  # why the subscription stopped, if it did

    def _guard(self) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def book(self, depth: int | None = None) -> t.Book:
        """The local view (its `depth` levels per side by default); `checksum` is its verified top-10 checksum."""
        with self._guard():
            if self._error is not None:
                raise self._error
            if self._tracker.book is None:
                raise Unavailable("the book is being resynchronised")
            return self._tracker.snapshot(depth)

    @property
    def seq(self) -> int:
        """The last sequence the local view reflects (0 while resynchronising)."""
        with self._guard():
            return self._tracker.seq if self._tracker.book is not None else 0

    @property
    def address(self) -> str | None:
        """The node the stream comes from."""
        return self._address

    @property
    def stats(self) -> SubscriptionStats:
        with self._guard():
            stats = self._tracker.stats
            return SubscriptionStats(**{**vars(stats), "resyncs_by_reason": dict(stats.resyncs_by_reason)})
