"""StreamBook: the L2 book stream of a market, for anyone (no key, no owners), from this node's replica.

The rules (what a view is, how changes merge, the top-10 checksum) live in exchange/engine/l2.py; the replica
keeps the market's levels and the log of touched levels current as it applies commands (Replica.watch_book)
and only notifies the market's pulse (exchange/node/pacing.py), so a subscriber that does not read never holds
the replica back: when it reads again it gets one update covering every sequence since its previous one. The
subscribers wake together at a pulse (at most every 50 ms), and those in step send one shared message.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import grpc

from exchange.engine.l2 import L2Update, depth_problem
from exchange.errors import InvalidArgument, ResourceExhausted, Unavailable, rpc
from exchange.node import order_messages
from exchange.node.lifecycle import NodeState
from exchange.node.replica import Replica
from exchange.v1 import exchange_pb2 as pb

# StreamBook subscribers one node serves at most (each holds at most 2 x depth levels: docs/market-data.md).
MAX_BOOK_SUBSCRIBERS = 1000
# A stream quiet this long while the market moved outside its view gets an update without levels: the subscriber
# learns the sequence its view is at (and that the stream is alive).
HEARTBEAT = 1.0


def book_update(market: str, update: L2Update, depth: int, snapshot: bool = False) -> pb.BookUpdate:
    return pb.BookUpdate(market=market, snapshot=snapshot, first_seq=update.first_seq, last_seq=update.last_seq,
                         bids=order_messages.book_levels(update.bids), asks=order_messages.book_levels(update.asks),
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
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.BookUpdate | bytes]:
        """Yields the snapshot, then each update serialised (shared by the views in step: exchange/runtime.py
        sends bytes as they are)."""
        market = order_messages.resolve_market(self.replica.markets, request.market).symbol
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
            feed, view, watchers = watch.feed, watch.view, watch.watchers
            yield book_update(market, view.snapshot(feed), depth, snapshot=True)
            last_message = loop.time()
            while True:
                pulse = watchers.pulse
                if watch.ended:
                    pass
                elif view.seen_seq == feed.seq:  # nothing new: until the next pulse, or the heartbeat
                    await pulse.wait(HEARTBEAT)
                elif pulse.pending:  # new, and its pulse is due (within 50 ms): with the others
                    await pulse.wait()
                # else: new, and its pulse passed while this stream wrote: at once
                if watch.ended:
                    raise Unavailable(watch.ended)
                update = view.take(feed, even_unchanged=loop.time() - last_message >= HEARTBEAT)
                if update is not None:  # views of one depth in step take the same update: one message for all
                    yield watchers.messages.get((depth, update.first_seq, update.last_seq),
                                                functools.partial(book_update, market, update, depth))
                    last_message = loop.time()
