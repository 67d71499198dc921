"""StreamBook's handler on a replica, without a network: a syncing node refuses like GetOrderBook, bad depths
and markets are refused, and a subscriber that stops reading holds the replica back in nothing (applying never
waits for it), keeps only its view, and gets one merged update that brings it to the book when it reads again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from exchange import engine as eng
from exchange.engine.l2 import LevelBook
from exchange.node.book_stream import BookStreamRPCs
from exchange.node.lifecycle import SERVING, NodeState
from exchange.node.replica import Replica
from exchange.v1 import exchange_pb2 as pb
from tests.unit.fakes import Aborted, FakeContext, decoded, run_scenario
from tests.unit.test_node_replica import MARKETS, entries


def stream(rpcs: BookStreamRPCs, market: str = "BTC-USD", depth: int = 10) -> AsyncIterator[pb.BookUpdate]:
    return rpcs.StreamBook(pb.StreamBookRequest(market=market, depth=depth), FakeContext())


def test_a_syncing_node_and_bad_requests_are_refused() -> None:
    async def scenario() -> None:
        node = NodeState("node-1")
        rpcs = BookStreamRPCs(node, Replica(MARKETS))
        with pytest.raises(Aborted) as syncing:
            await anext(stream(rpcs))
        assert syncing.value.code == grpc.StatusCode.UNAVAILABLE and "SYNCING" in syncing.value.details
        node.state = SERVING
        for depth in (0, -3, 5, 9, 1001):
            with pytest.raises(Aborted) as refused:
                await anext(stream(rpcs, depth=depth))
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, depth
            assert "depth must be 10 to 1000" in refused.value.details and "depth-10 view" in refused.value.details
        assert rpcs.subscribers() == 0, "a refused request leaves nothing behind"
        with pytest.raises(Aborted) as unknown:
            await anext(stream(rpcs, market="DOGE-USD"))
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND

    run_scenario(scenario())


def test_a_subscriber_that_stops_reading_costs_its_view_and_gets_one_merged_update() -> None:
    async def scenario() -> None:
        replica = Replica(MARKETS)
        rpcs = BookStreamRPCs(NodeState("node-1", SERVING), replica)
        log = entries(3000)
        for entry in log[:500]:
            replica.offer(entry)
        updates = stream(rpcs, depth=10)
        snapshot = decoded(await anext(updates), pb.BookUpdate)
        assert snapshot.snapshot and snapshot.last_seq == 500 and replica.book_watchers("BTC-USD") == 1
        book = LevelBook.of([(x.price, x.size, x.order_count) for x in snapshot.bids],
                            [(x.price, x.size, x.order_count) for x in snapshot.asks])
        for entry in log[500:]:  # the subscriber reads nothing meanwhile: every offer applies at once
            assert replica.offer(entry)
        assert replica.applied_seq("BTC-USD") == 3000
        (watch,) = replica._book_watchers["BTC-USD"].watches
        assert watch.view.held_levels() <= 2 * 10 and watch.view.sent_seq == 500
        update = decoded(await anext(updates), pb.BookUpdate)
        assert (update.first_seq, update.last_seq) == (501, 3000), "one update for everything it missed"
        for side, levels in ((eng.Side.BUY, update.bids), (eng.Side.SELL, update.asks)):
            for level in levels:
                book.set(side, level.price, (level.size, level.order_count))
        bids, asks = replica.depth("BTC-USD", 10)
        assert (book.top(eng.Side.BUY, 99), book.top(eng.Side.SELL, 99)) == (bids, asks)
        assert update.checksum == book.checksum()
        waiting = asyncio.ensure_future(anext(updates))  # nothing more comes; the client goes (grpc cancels)
        await asyncio.sleep(0.01)  # it waits inside the handler
        assert not waiting.done()
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert replica.book_watchers("BTC-USD") == 0, "the market's levels go with its last subscriber"

    run_scenario(scenario())
