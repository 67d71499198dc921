"""StreamBook: the L2 book stream of a market, for anyone (no key, no owners), from this node's replica.

The rules (what a view is, how changes merge, the top-10 checksum) live in exchange/engine/l2.py; the replica
keeps each subscriber's view current as it applies commands (Replica.watch_book) and only sets its `wake`
event, so a subscriber that does not read never holds the replica back: its changes merge while its stream
waits on the network, and it gets them as one update covering every sequence since its previous one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from exchange.engine.l2 import MAX_STREAM_DEPTH, L2Update
from exchange.errors import InvalidArgument, ResourceExhausted, Unavailable, rpc
from exchange.node import convert
from exchange.node.lifecycle import NodeState
from exchange.node.replica import Replica
from exchange.v1 import exchange_pb2 as pb

# StreamBook subscribers one node serves at most (each holds at most 6 x depth levels: README).
MAX_BOOK_SUBSCRIBERS = 1000
# A stream quiet this long while the market moved outside its view gets an update without levels: the subscriber
# learns the sequence its view is at (and that the stream is alive).
HEARTBEAT = 1.0


def book_update(market: str, update: L2Update, depth: int, snapshot: bool = False) -> pb.BookUpdate:
    return pb.BookUpdate(market=market, snapshot=snapshot, first_seq=update.first_seq, last_seq=update.last_seq,
                         bids=convert.book_levels(update.bids), asks=convert.book_levels(update.asks),
                         checksum=update.checksum, depth=depth)


class BookStreamRPCs:
    """StreamBook (see exchange/node/service.py for the other parts)."""

    def __init__(self, node: NodeState, replica: Replica) -> None:
        self.node = node
        self.replica = replica

    def subscribers(self) -> int:
        return sum(self.replica.book_watchers(market) for market in self.replica.markets)

    @rpc
    async def StreamBook(self, request: pb.StreamBookRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.BookUpdate]:
        market = convert.resolve_market(self.replica.markets, request.market).symbol
        depth = request.depth
        if not 1 <= depth <= MAX_STREAM_DEPTH:
            raise InvalidArgument(f"depth must be between 1 and {MAX_STREAM_DEPTH} levels per side, got {depth}")
        self.node.require_serving()
        if self.subscribers() >= MAX_BOOK_SUBSCRIBERS:
            raise ResourceExhausted(f"this node already serves {MAX_BOOK_SUBSCRIBERS} book streams; "
                                    "use another node or retry later")
        with self.replica.watch_book(market, depth) as watch:
            feed, view = watch.feed, watch.view
            yield book_update(market, view.snapshot(feed.book, feed.checksum(depth)), depth, snapshot=True)
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT):
                        await watch.wake.wait()
                    quiet = False
                except TimeoutError:
                    quiet = True
                watch.wake.clear()
                if watch.ended:
                    raise Unavailable(watch.ended)
                update = view.take(feed.checksum, even_unchanged=quiet)
                if update is not None:
                    yield book_update(market, update, depth)
