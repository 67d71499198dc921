"""The node's peer RPCs in-process: only the cluster's token opens them, only the Sequencer's entries apply."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from exchange import engine as eng
from exchange.cluster_common import peer_token
from exchange.node.lifecycle import SERVING, NodeState
from exchange.node.peer_rpcs import PeerRPCs
from exchange.node.replica import Replica
from exchange.shared.wire import TOKEN_HEADER
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import SECRET, Aborted, FakeContext, run_scenario, signed_entry

M = "BTC-USD"
# The token is checked before any handler runs (RequireClusterToken: tests/unit/test_cluster_token.py).
TOKEN = FakeContext(((TOKEN_HEADER, peer_token(SECRET)),))


def order(seq: int) -> types_pb2.SequencedCommand:
    command = types_pb2.Command(market=M, new_order=types_pb2.NewOrderCommand(
        side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1, price=100 + seq))
    return signed_entry(M, seq, command)


def rpcs() -> PeerRPCs:
    return PeerRPCs(NodeState("node-1", SERVING), Replica([eng.MarketConfig(M)]), SECRET)


def broadcast(peer: PeerRPCs, *entries: types_pb2.SequencedCommand, context: FakeContext = TOKEN) -> int:
    request = pb.BroadcastOrderRequest(origin_node="node-2", commands=entries)
    return run_scenario(peer.BroadcastOrder(request, context)).accepted


def forged(entry: types_pb2.SequencedCommand, **changes: object) -> types_pb2.SequencedCommand:
    copy = types_pb2.SequencedCommand()
    copy.CopyFrom(entry)
    for name, value in changes.items():
        setattr(copy, name, value)
    return copy


def test_genuine_entries_are_applied_once() -> None:
    peer = rpcs()
    assert broadcast(peer, order(1), order(2)) == 2
    assert broadcast(peer, order(2), order(1)) == 0, "entries already applied are no-ops"
    assert peer.replica.applied_seq(M) == 2


@pytest.mark.parametrize("forgery", [
    {"mac": b"\x00" * 32}, {"mac": b""}, {"seq": 2}, {"command": b"\x08\x01"}, {"market": "ETH-USD"},
])
def test_a_forged_entry_is_refused_and_nothing_of_its_message_is_applied(forgery: dict[str, object]) -> None:
    peer = rpcs()
    before = peer.replica.checksum(M)
    with pytest.raises(Aborted) as refused:
        broadcast(peer, order(1), forged(order(1), **forgery))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (peer.replica.applied_seq(M), peer.replica.checksum(M)) == (0, before)


def test_a_broadcast_stream_ends_at_a_forged_message_keeping_what_came_before() -> None:
    peer = rpcs()

    async def messages() -> AsyncIterator[pb.BroadcastOrderRequest]:
        yield pb.BroadcastOrderRequest(commands=[order(1)])
        yield pb.BroadcastOrderRequest(commands=[order(2), forged(order(3), mac=b"x" * 32)])

    with pytest.raises(Aborted) as refused:
        run_scenario(peer.BroadcastOrderStream(messages(), TOKEN))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not signed by the Sequencer" in refused.value.details
    assert peer.replica.applied_seq(M) == 1, "the earlier message was applied, nothing of the forged one"
