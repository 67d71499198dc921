"""StreamBook: the L2 book stream of a market, for anyone (no key, no owners), from this node's replica.

The rules (what a view is, how changes merge, the top-10 checksum) live in exchange/engine/l2.py; the replica
keeps the market's levels and the log of touched levels current as it applies commands (Replica.watch_book)
and only sets an event, so a subscriber that does not read never holds the replica back: when it reads again
it gets one update covering every sequence since its previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from exchange.engine.l2 import L2Update, depth_problem
from exchange.errors import InvalidArgument, ResourceExhausted, Unavailable, rpc
from exchange.node import convert
from exchange.node.lifecycle import NodeState
from exchange.node.replica import Replica
from exchange.v1 import exchange_pb2 as pb

# StreamBook subscribers one node serves at most (each holds at most 2 x depth levels: docs/market-data.md).
MAX_BOOK_SUBSCRIBERS = 1000
# A stream quiet this long while the market moved outside its view gets an update without levels: the subscriber
# learns the sequence its view is at (and that the stream is alive).
HEARTBEAT = 1.0
# The shortest time between two updates of one stream: changes meanwhile merge into the next (a stream's cost
# is about one gRPC message, so this bounds it at 20 messages per second, however fast the market moves).
UPDATE_INTERVAL = 0.05


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
        problem = depth_problem(depth)
        if problem:
            raise InvalidArgument(problem)
        self.node.require_serving()
        if self.subscribers() >= MAX_BOOK_SUBSCRIBERS:
            raise ResourceExhausted(f"this node already serves {MAX_BOOK_SUBSCRIBERS} book streams; "
                                    "use another node or retry later")
        loop = asyncio.get_running_loop()
        with self.replica.watch_book(market, depth) as watch:
            feed, view = watch.feed, watch.view
            yield book_update(market, view.snapshot(feed), depth, snapshot=True)
            last_message = loop.time()
            while True:
                if view.seen_seq == feed.seq and not watch.ended:  # nothing new yet
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(HEARTBEAT):
                            await watch.changed().wait()
                if watch.ended:
                    raise Unavailable(watch.ended)
                update = view.take(feed, even_unchanged=loop.time() - last_message >= HEARTBEAT)
                if update is not None:
                    built = watch.watchers.messages.get(id(update))  # views in step share their update
                    if built is None or built[0] is not update:
                        built = watch.watchers.messages[id(update)] = (update, book_update(market, update, depth))
                    yield built[1]
                    last_message = loop.time()
                    await asyncio.sleep(UPDATE_INTERVAL)  # what changes meanwhile goes into the next update
