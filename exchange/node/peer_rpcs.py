"""The cluster's own RPCs: BroadcastOrder(Stream) and GetSnapshot.

Only callers holding the cluster token reach them (exchange.runtime.RequireClusterToken checks it for every
cluster-internal method before a handler runs). Even then, a broadcast entry is applied only if the
Sequencer's MAC proves it is the Sequencer's own log entry, so a forged, altered or misnumbered broadcast can
never change a book.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from exchange.entry_signing import entry_is_authentic
from exchange.errors import InvalidArgument, rpc
from exchange.node.lifecycle import NodeState
from exchange.node.metrics import counters
from exchange.node.replica import Replica
from exchange.node.snapshots import replica_snapshot
from exchange.runtime import LongLivedStreams, Malformed, receives_malformed_items
from exchange.v1 import exchange_pb2 as pb


class PeerRPCs:
    """The peer RPCs of ExchangeNode (see exchange/node/service.py for the other parts)."""

    def __init__(self, node: NodeState, replica: Replica, secret: bytes) -> None:
        self.node = node
        self.replica = replica
        self.secret = secret
        self.streams = LongLivedStreams()  # incoming BroadcastOrderStreams, ended before a graceful stop

    @rpc
    async def GetSnapshot(
        self, request: pb.GetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReplicaSnapshot:
        self.node.require_serving()
        return replica_snapshot(self.node.node_id, self.replica)

    @rpc
    async def BroadcastOrder(
        self, request: pb.BroadcastOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.BroadcastOrderResponse:
        return pb.BroadcastOrderResponse(accepted=self.accept_broadcast(request))

    @rpc
    @receives_malformed_items
    async def BroadcastOrderStream(
        self, request_iterator: AsyncIterator[pb.BroadcastOrderRequest | Malformed], context: grpc.aio.ServicerContext
    ) -> pb.BroadcastOrderResponse:
        accepted = 0
        with self.streams.track(context):
            async for request in request_iterator:
                if isinstance(request, Malformed):
                    raise InvalidArgument(
                        f"a BroadcastOrderStream message is not a BroadcastOrderRequest: {request.error}"
                    )
                accepted += self.accept_broadcast(request)
        return pb.BroadcastOrderResponse(accepted=accepted)

    def accept_broadcast(self, request: pb.BroadcastOrderRequest) -> int:
        """Checks every entry of a broadcast, then offers them all to the replica; returns how many were
        new. Nothing is applied if one entry is for an unknown market or not signed by the Sequencer."""
        markets = self.replica.markets
        for entry in request.commands:
            if entry.market not in markets:
                raise InvalidArgument(f"broadcast entry {entry.seq} is for unknown market {entry.market!r}")
            if not entry_is_authentic(self.secret, entry):
                raise InvalidArgument(
                    f"broadcast entry {entry.market}#{entry.seq} is not signed by the Sequencer; nothing applied"
                )
        counters["broadcast_messages_received"] += 1
        counters["broadcast_entries_received"] += len(request.commands)
        offer = self.replica.offer
        return sum(1 for entry in request.commands if offer(entry))
