"""The ExchangeNode gRPC service: one servicer made of six parts, one per audience.

* `OrderEntryRPCs` (orders.py): clients placing, amending and cancelling orders (with an API key);
* `TraderViewRPCs` (trader_view.py): a trader's own orders and order events (with an API key);
* `ReadRPCs` (reads.py): market data: books, events and status, for anyone;
* `BookStreamRPCs` (book_stream.py): the L2 book stream (StreamBook), for anyone;
* `MarketDataRPCs` (market_data_rpcs.py): public trades, candles and the ticker by Sequencer time, for anyone;
* `PeerRPCs` (peer_rpcs.py): the cluster's own calls (broadcasts, snapshots), behind the cluster token.

Each part is a thin adapter over the replica and the sequencing pipelines; this module only states which
part answers which RPC (every RPC of the proto exactly once, checked at start); the node's lifecycle
state (lifecycle.py), which every part consults, is made here.
"""

from __future__ import annotations

from collections.abc import Mapping

from exchange.node.auth import AccessControl
from exchange.node.book_stream import BookStreamRPCs
from exchange.node.lifecycle import NodeState
from exchange.node.market_data_rpcs import MarketDataRPCs
from exchange.node.orders import OrderEntryRPCs
from exchange.node.peer_rpcs import PeerRPCs
from exchange.node.reads import ReadRPCs
from exchange.node.replica import Replica
from exchange.node.sequencer_link import Peers, Sequencer
from exchange.node.sequencing import MarketPipeline
from exchange.node.trader_view import TraderViewRPCs
from exchange.v1 import exchange_pb2, exchange_pb2_grpc


class ExchangeNodeService(exchange_pb2_grpc.ExchangeNodeServicer):
    def __init__(
        self, node_id: str, replica: Replica, pipelines: Mapping[str, MarketPipeline],
        sequencer: Sequencer, peers: Peers, secret: bytes, access: AccessControl,
    ) -> None:
        self.node = NodeState(node_id)
        self.orders = OrderEntryRPCs(self.node, replica, pipelines, sequencer, access)
        self.trader_view = TraderViewRPCs(self.node, replica, access)
        self.reads = ReadRPCs(self.node, replica, pipelines, sequencer, peers, access.registry)
        self.peer_rpcs = PeerRPCs(self.node, replica, secret)
        self.market_data = MarketDataRPCs(self.node, replica)
        self.book_stream = BookStreamRPCs(self.node, replica)
        parts = (self.orders, self.trader_view, self.reads, self.peer_rpcs, self.market_data, self.book_stream)
        for method in exchange_pb2.DESCRIPTOR.services_by_name["ExchangeNode"].methods:
            owners = [part for part in parts if hasattr(part, method.name)]
            if len(owners) != 1:
                raise TypeError(f"ExchangeNode/{method.name} is answered by {len(owners)} parts, not exactly one")
            setattr(self, method.name, getattr(owners[0], method.name))

    @property
    def state(self) -> str:
        return self.node.state

    @state.setter
    def state(self, value: str) -> None:
        self.node.state = value
