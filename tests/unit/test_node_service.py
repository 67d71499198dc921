"""The node's servicer is made of parts: every RPC of the proto is answered by exactly one of them."""

from __future__ import annotations

from exchange import engine as eng
from exchange.node.auth import AccessControl
from exchange.node.replica import Replica
from exchange.node.service import ExchangeNodeService
from exchange.v1 import exchange_pb2
from tests.unit.fakes import SECRET, InMemorySequencer, RecordingPeers


def test_every_rpc_of_exchange_node_has_one_handler() -> None:
    service = ExchangeNodeService("node-1", Replica([eng.MarketConfig("M")]), {}, InMemorySequencer(),
                                  RecordingPeers(), SECRET, AccessControl(None, None))
    parts = (service.orders, service.trader_view, service.reads, service.peer_rpcs, service.market_data,
             service.book_stream)
    for method in exchange_pb2.DESCRIPTOR.services_by_name["ExchangeNode"].methods:
        handler = getattr(service, method.name)
        owners = [part for part in parts if getattr(part, method.name, None) == handler]
        assert len(owners) == 1, method.name
