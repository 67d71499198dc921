"""A bare gRPC unary echo server: the baseline for the cluster benchmark.

It serves `exchange.v1.ExchangeNode/CreateOrder` with the same grpcio, the same messages and the same
server options as a node, and answers at once with a fixed response: what a node could do at best if
sequencing, matching and replication cost nothing.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc

from exchange.shared.wire import SERVER_OPTIONS
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc

RESPONSE = pb.CreateOrderResponse(market="BTC-USD", order_id=1, seq=1, status=pb.RESTING, remaining_size=1)


class Echo(exchange_pb2_grpc.ExchangeNodeServicer):
    async def CreateOrder(  # noqa: N802
        self, request: pb.CreateOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateOrderResponse:
        return RESPONSE


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    exchange_pb2_grpc.add_ExchangeNodeServicer_to_server(Echo(), server)
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    asyncio.run(serve(parser.parse_args().listen))
