"""Market data: GetOrderBook, StreamEvents and GetStatus, answered from this node's replica, for anyone:
no key is needed and no owner is shown.

A node that is still catching up answers UNAVAILABLE rather than from a stale book; every book answer
says which sequence it reflects (`seq`) and the highest one the node knows exists (`known_seq`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

import grpc

from exchange import engine as eng
from exchange.errors import InvalidArgument, OutOfRange, Unavailable, rpc
from exchange.node import order_messages
from exchange.node.auth import AccountRegistry
from exchange.node.lifecycle import NodeState
from exchange.node.metrics import counters
from exchange.node.replica import Applied, Replica
from exchange.node.sequencer_link import Peers, Sequencer
from exchange.node.sequencing import MarketPipeline
from exchange.shared.markets import int64_total
from exchange.v1 import exchange_pb2 as pb

# Applied entries a StreamEvents subscriber may fall behind by before its stream is ended (it resumes).
STREAM_QUEUE_LIMIT = 100_000
# GetOrderBook's `all_levels`: more levels than any book has.
ALL_LEVELS = 2**31


async def applied_entries(replica: Replica, market: str, from_seq: int,
                          still_allowed: Callable[[], object] = lambda: None) -> AsyncIterator[Applied]:
    """The entries of `market` from `from_seq` (0: from now on), journaled then live, in sequence order, without
    end: what an event stream (StreamEvents, StreamOrders) shows. OUT_OF_RANGE for a resume point the node no
    longer retains; UNAVAILABLE for a reader that fell too far behind. `still_allowed` is asked before every live
    entry and may raise (a disabled key ends its stream)."""
    if from_seq < 0:
        raise InvalidArgument(f"from_seq must be >= 0, got {from_seq}")
    with replica.subscribe(market, STREAM_QUEUE_LIMIT) as queue:
        next_seq = replica.applied_seq(market) + 1
        if from_seq:
            oldest = replica.oldest_journaled(market)
            if from_seq < oldest:
                raise OutOfRange(
                    f"events of {market} before sequence {oldest} are no longer retained by this node (it keeps "
                    f"the last {replica.journal_size} commands of each market, from when it started); resume from "
                    f"{oldest} or later"
                )
            for seq in range(from_seq, next_seq):
                journaled = replica.journal_entry(market, seq)
                if journaled is None:  # the journal moved on past it while the reader took the ones before
                    raise OutOfRange(
                        f"events of {market} from sequence {seq} left this node's journal while this stream "
                        f"replayed the ones before (it keeps the last {replica.journal_size} commands of each "
                        f"market); resume from {replica.oldest_journaled(market)} or later"
                    )
                yield journaled
            next_seq = max(next_seq, from_seq)
        while True:
            if replica.dropped(market, queue):
                raise Unavailable("the stream fell too far behind; resume it from the last sequence seen")
            applied = await queue.get()
            if applied.seq < next_seq:
                continue
            if applied.seq > next_seq:  # the replica adopted a peer's snapshot: it never applied the ones between
                raise OutOfRange(
                    f"this node has no events of {market} from sequence {next_seq} to {applied.seq - 1} (it "
                    f"restored a peer's snapshot meanwhile); resume from {next_seq} on another node, or from "
                    f"{applied.seq} here"
                )
            still_allowed()
            next_seq = applied.seq + 1
            yield applied


class ReadRPCs:
    """The read RPCs of ExchangeNode (see exchange/node/service.py for the other parts)."""

    def __init__(self, node: NodeState, replica: Replica, pipelines: Mapping[str, MarketPipeline],
                 sequencer: Sequencer, peers: Peers, registry: AccountRegistry | None) -> None:
        self.node = node
        self.pipelines = pipelines
        self.registry = registry
        self.replica = replica
        self.sequencer = sequencer
        self.peers = peers

    @property
    def markets(self) -> Mapping[str, eng.MarketConfig]:
        return self.replica.markets

    @rpc
    async def GetOrderBook(
        self, request: pb.GetOrderBookRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOrderBookResponse:
        config = order_messages.resolve_market(self.markets, request.market)
        if not 0 <= request.depth <= order_messages.MAX_DEPTH:
            raise InvalidArgument(f"depth must be between 1 and {order_messages.MAX_DEPTH} (0 means "
                                  f"{order_messages.DEFAULT_DEPTH}), got {request.depth}")
        self.node.require_serving()
        market = config.symbol
        levels = ALL_LEVELS if request.all_levels else request.depth or order_messages.DEFAULT_DEPTH
        if request.include_orders:
            bids, asks = self._orders_by_level(market, levels)
        else:
            l2_bids, l2_asks = self.replica.depth(market, levels)
            bids, asks = order_messages.book_levels(l2_bids), order_messages.book_levels(l2_asks)
        return pb.GetOrderBookResponse(
            market=market,
            seq=self.replica.applied_seq(market),
            bids=bids,
            asks=asks,
            checksum=self.replica.checksum(market),
            known_seq=self.replica.known_seq(market),
        )

    def _orders_by_level(self, market: str, levels: int) -> tuple[list[pb.PriceLevel], list[pb.PriceLevel]]:
        """The first `levels` levels of each side with their resting orders (L3), in priority order."""
        sides: dict[eng.Side, list[pb.PriceLevel]] = {eng.Side.BUY: [], eng.Side.SELL: []}
        totals: dict[eng.Side, list[int]] = {eng.Side.BUY: [], eng.Side.SELL: []}  # exact, before the int64 cap
        for order in self.replica.resting_orders(market):
            side = sides[order.side]
            if not side or side[-1].price != order.price:
                if len(side) == levels:
                    continue
                side.append(pb.PriceLevel(price=order.price))
                totals[order.side].append(0)
            level = side[-1]
            totals[order.side][-1] += order.remaining
            level.order_count += 1
            level.orders.add(order_id=order.order_id, size=order.remaining)
        for which in sides:
            for level, total in zip(sides[which], totals[which], strict=True):
                level.size = int64_total(total)
        return sides[eng.Side.BUY], sides[eng.Side.SELL]

    @rpc
    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MarketEvent]:
        market = order_messages.resolve_market(self.markets, request.market).symbol
        async for applied in applied_entries(self.replica, market, request.from_seq):
            for event in applied.events:
                yield order_messages.market_event(event)

    @rpc
    async def GetStatus(self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext) -> pb.GetStatusResponse:
        response = pb.GetStatusResponse(
            node_id=self.node.node_id, state=self.node.state, peers=self.peers.targets(),
            sequencer=self.sequencer.target or "", counters=counters,
        )
        if self.registry is not None:
            loaded, fresh, accounts, keys = self.registry.status()
            response.accounts.CopyFrom(
                pb.AccountRegistryStatus(loaded=loaded, fresh=fresh, active_accounts=accounts, keys=keys)
            )
        for market in self.markets:
            view = self.replica.view(market)
            response.markets.add(
                market=market, applied_seq=view.applied_seq, known_seq=view.known_seq, lag=view.lag,
                checksum=view.checksum, buffered=view.buffered, resting_orders=view.resting_orders,
                pending=self.pipelines[market].pending,
            )
        return response
