"""The node's long-lived streams against an in-process gRPC server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from exchange.node.links import PeerStream
from exchange.runtime import CHANNEL_OPTIONS, SERVER_OPTIONS
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc

pytestmark = pytest.mark.integration


class EndsEachStreamAfterOneMessage(exchange_pb2_grpc.ExchangeNodeServicer):
    """A peer that ends every broadcast stream after its first message, as a stopping peer would."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def BroadcastOrderStream(  # noqa: N802 - the RPC's name
        self, request_iterator: AsyncIterator[pb.BroadcastOrderRequest], context: grpc.aio.ServicerContext
    ) -> pb.BroadcastOrderResponse:
        async for request in request_iterator:
            self.received.append(request.origin_node)
            return pb.BroadcastOrderResponse(accepted=1)
        return pb.BroadcastOrderResponse()


def test_a_broadcast_on_a_stream_the_peer_has_ended_goes_on_a_new_stream_and_nothing_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> list[str]:
        peer = EndsEachStreamAfterOneMessage()
        server = grpc.aio.server(options=SERVER_OPTIONS)
        exchange_pb2_grpc.add_ExchangeNodeServicer_to_server(peer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
        stream = PeerStream(f"127.0.0.1:{port}", exchange_pb2_grpc.ExchangeNodeStub(channel), ())
        try:
            for number in range(3):
                stream.send(pb.BroadcastOrderRequest(origin_node=f"b{number}"))
                deadline = asyncio.get_running_loop().time() + 5
                while len(peer.received) <= number and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # the peer's end of the stream reaches the node
            return peer.received
        finally:
            stream.close()
            await channel.close()
            await server.stop(0)

    assert asyncio.run(scenario()) == ["b0", "b1", "b2"]
    assert "failed" not in caplog.text and "InvalidStateError" not in caplog.text
