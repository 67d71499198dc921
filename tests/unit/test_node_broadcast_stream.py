"""The node's broadcast stream to one peer, against a fake stub (no network)."""

from __future__ import annotations

import asyncio

import pytest

from exchange.node import broadcast as broadcast_module
from exchange.node.broadcast import BroadcastStub, PeerSet, PeerStream
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import SECRET, run_scenario, signed_entry


class FakeCall:
    def __init__(self) -> None:
        self.written: list[pb.BroadcastOrderRequest] = []

    async def write(self, request: bytes) -> None:
        self.written.append(pb.BroadcastOrderRequest.FromString(request))
        await asyncio.sleep(0)

    def done(self) -> bool:
        return False

    def cancel(self) -> None:
        pass


class FakeStub(BroadcastStub):
    """A BroadcastStub without a channel: each stream a FakeCall."""

    def __init__(self) -> None:  # no channel: BroadcastStub's own __init__ is not called
        self.calls: list[FakeCall] = []

    def BroadcastOrderStream(self, metadata: object = ()) -> FakeCall:  # noqa: N802 - the RPC's name
        self.calls.append(FakeCall())
        return self.calls[-1]


def entry(seq: int) -> types_pb2.SequencedCommand:
    return signed_entry("M", seq, types_pb2.Command(market="M", cancel_order=types_pb2.CancelOrderCommand(order_id=1)))


def test_broadcasts_queued_behind_a_write_go_out_as_one_message_in_order() -> None:
    async def scenario() -> list[list[int]]:
        stub = FakeStub()
        stream = PeerStream("peer", stub, ())
        for seq in range(1, 6):  # all queued before the pump first runs
            stream.send(pb.BroadcastOrderRequest(origin_node="n", commands=[entry(seq)]).SerializeToString())
        await asyncio.sleep(0.01)
        stream.send(pb.BroadcastOrderRequest(origin_node="n", commands=[entry(6)]).SerializeToString())
        await asyncio.sleep(0.01)
        stream.close()
        return [[e.seq for e in request.commands] for call in stub.calls for request in call.written]

    assert run_scenario(scenario()) == [[1, 2, 3, 4, 5], [6]]


def test_merged_broadcasts_stay_within_the_message_limit_and_the_one_that_would_not_fit_goes_next() -> None:
    async def scenario() -> list[list[int]]:
        stub = FakeStub()
        stream = PeerStream("peer", stub, ())
        messages = [pb.BroadcastOrderRequest(origin_node="n", commands=[entry(seq)]).SerializeToString()
                    for seq in range(1, 6)]
        stream.MAX_COALESCED_BYTES = 2 * len(messages[0])  # two of them per message
        for message in messages:
            stream.send(message)
        await asyncio.sleep(0.01)
        stream.close()
        return [[e.seq for e in request.commands] for call in stub.calls for request in call.written]

    assert run_scenario(scenario()) == [[1, 2], [3, 4], [5]]


M = "BTC-USD"


class FakeChannel:
    def __init__(self, target: str) -> None:
        self.target = target
        self.closed = False

    def _method(self, method: str, request_serializer: object = None, response_deserializer: object = None,
                **_: object) -> object:
        def open_call(*args: object, **kwargs: object) -> FakeCall:
            return FakeCall()
        return open_call

    unary_unary = unary_stream = stream_unary = stream_stream = _method

    async def close(self) -> None:
        self.closed = True


def test_a_peer_that_left_discovery_does_not_keep_its_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peers come and go (restarts on new addresses, scale-in): the broadcast streams of departed peers are closed,
    but their channels (and stubs) stay in PeerSet's maps, open, until the node stops: one per address ever seen."""
    channels: list[FakeChannel] = []

    def fake_channel(target: str, tls: object = None) -> FakeChannel:
        channels.append(FakeChannel(target))
        return channels[-1]

    monkeypatch.setattr(broadcast_module, "aio_channel", fake_channel)
    entry = signed_entry(M, 1, types_pb2.Command(market=M, cancel_order=types_pb2.CancelOrderCommand(order_id=1)))

    async def scenario() -> None:
        discovered: list[str] = []
        peers = PeerSet(None, "node-1", SECRET, static_peers=discovered)
        for n in range(50):  # one peer at a time, each on a new address (the one before left discovery)
            discovered[:] = [f"127.0.0.1:{20000 + n}"]
            peers.broadcast([entry])
            await asyncio.sleep(0)
        assert len(peers._streams) == 1, "streams of departed peers are closed (this part works)"
        try:
            left_open = [c.target for c in channels if not c.closed and c.target not in discovered]
            assert not left_open and len(peers._channels) <= len(discovered), (
                f"{len(left_open)} channels of peers that left discovery are still open and held "
                f"({len(peers._channels)} channels for {len(discovered)} peer)"
            )
        finally:
            await peers.close()

    run_scenario(scenario())
