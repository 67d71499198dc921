"""The echo-built order path: the least this architecture can do for one order, the cluster bench's floor.

A client's unary CreateOrder (the same method, messages and server options as a node's) reaches node A; A
sends the command to the Sequencer on a bidi stream and gets its number back; A answers the client and sends
the numbered entry to every other node, one client stream each, in parallel (not waited for, like a node's
broadcast). The streaming entry methods (OrderEntry, OrderEntryBatch: one order or a batch per message) take
the same path, each message answered in request order while the following ones are already on their way.
Every hop batches what arrives within LINGER_S of the first into one message (the product's messages:
SequenceRequest, SequenceResponse, BroadcastOrderRequest), and A keeps sending while earlier batches are
answered (the stream keeps their order). Nothing else: no durable write, no matching, no keys, no
signatures, no dedup. Every node is an A for the clients it takes, and a peer of the others.

Run by the bench (bench/cluster_load.py), one process per role, with the cluster's gRPC transport:
`python -m bench.order_path --role sequencer --listen ADDR` and
`python -m bench.order_path --role node --listen ADDR --sequencer ADDR --peers ADDR,ADDR`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

import grpc

from devtools.local_cluster import ServiceProcess, wait_until
from devtools.ports import free_port
from exchange.runtime import SERVICE_GRPC_ENV
from exchange.shared.wire import CHANNEL_OPTIONS, SERVER_OPTIONS
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import sequencer_pb2, types_pb2

LINGER_S = 0.0005
SERVICE = "bench.OrderPath"
GATE, BROADCAST, POSITION = f"/{SERVICE}/Gate", f"/{SERVICE}/Broadcast", f"/{SERVICE}/Position"
CREATE_ORDER = "/exchange.v1.ExchangeNode/CreateOrder"
DEFAULT_MARKET = "BTC-USD"

Item = TypeVar("Item")
Request = TypeVar("Request")
Started = TypeVar("Started")


class Linger(Generic[Item]):
    """Items queued within LINGER_S of the first go out together: `send(items)` once per batch, in order."""

    def __init__(self, send: Callable[[list[Item]], Awaitable[None]]) -> None:
        self._send = send
        self._items: list[Item] = []
        self._wakeup = asyncio.Event()
        self._pump = asyncio.ensure_future(self._run())

    def put(self, item: Item) -> None:
        self._items.append(item)
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(LINGER_S)
            self._wakeup.clear()
            items, self._items = self._items, []
            await self._send(items)


class Sequencer:
    """Numbers the commands of each Gate message, in order; Position says how many it numbered."""

    def __init__(self) -> None:
        self.seq = 0

    async def gate(self, requests: AsyncIterator[sequencer_pb2.SequenceRequest], context: grpc.aio.ServicerContext
                   ) -> AsyncIterator[sequencer_pb2.SequenceResponse]:
        async for request in requests:
            response = sequencer_pb2.SequenceResponse(granted=True)
            for command in request.commands:
                self.seq += 1
                response.assignments.add(seq=self.seq, entry=types_pb2.SequencedCommand(
                    market=command.market, seq=self.seq, command=command.SerializeToString()))
            response.current_seq = self.seq
            yield response

    async def position(self, request: sequencer_pb2.GetSequenceRequest,
                       context: grpc.aio.ServicerContext) -> sequencer_pb2.GetSequenceResponse:
        return sequencer_pb2.GetSequenceResponse(current_seq=self.seq)

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Gate": grpc.stream_stream_rpc_method_handler(
                self.gate, sequencer_pb2.SequenceRequest.FromString, sequencer_pb2.SequenceResponse.SerializeToString),
            "Position": grpc.unary_unary_rpc_method_handler(
                self.position, sequencer_pb2.GetSequenceRequest.FromString,
                sequencer_pb2.GetSequenceResponse.SerializeToString),
        })


async def _in_order(requests: AsyncIterator[Request], start: Callable[[Request], Started]) -> AsyncIterator[Started]:
    """What `start` returned for each request, in request order, while the stream's next requests are read and
    started (the client bounds how many are in flight)."""
    started: asyncio.Queue[Started | None] = asyncio.Queue()

    async def read() -> None:
        async for request in requests:
            started.put_nowait(start(request))
        started.put_nowait(None)

    reader = asyncio.ensure_future(read())
    try:
        while (item := await started.get()) is not None:
            yield item
    finally:
        reader.cancel()


class Node:
    """Node A for its clients (CreateOrder, OrderEntry, OrderEntryBatch), a peer for the others (Broadcast)."""

    def __init__(self, node_id: str, sequencer: str, peers: list[str]) -> None:
        self.node_id = node_id
        self.channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for address in [sequencer, *peers]]
        self.received = 0
        self._gate: grpc.aio.StreamStreamCall | None = None
        self._waiting: deque[list[asyncio.Future[types_pb2.SequencedCommand]]] = deque()
        self._to_gate: Linger[tuple[types_pb2.Command, asyncio.Future[types_pb2.SequencedCommand]]] | None = None
        self._to_peers: list[Linger[types_pb2.SequencedCommand]] = []

    def _open(self) -> None:
        """The streams, at the first order (every process of the path is up by then)."""
        gate = self.channels[0].stream_stream(GATE, sequencer_pb2.SequenceRequest.SerializeToString,
                                              sequencer_pb2.SequenceResponse.FromString)
        self._gate = gate(wait_for_ready=True)
        asyncio.ensure_future(self._answers(self._gate))
        self._to_gate = Linger(self._sequence)
        for channel in self.channels[1:]:
            broadcast = channel.stream_unary(BROADCAST, pb.BroadcastOrderRequest.SerializeToString,
                                             pb.BroadcastOrderResponse.FromString)
            self._to_peers.append(Linger(functools.partial(self._broadcast, broadcast(wait_for_ready=True))))

    async def _broadcast(self, call: grpc.aio.StreamUnaryCall, entries: list[types_pb2.SequencedCommand]) -> None:
        await call.write(pb.BroadcastOrderRequest(origin_node=self.node_id, commands=entries))

    async def _sequence(self, items: list[tuple[types_pb2.Command, asyncio.Future[types_pb2.SequencedCommand]]]
                        ) -> None:
        assert self._gate is not None
        self._waiting.append([future for _, future in items])
        await self._gate.write(sequencer_pb2.SequenceRequest(
            market=DEFAULT_MARKET, node_id=self.node_id, commands=[command for command, _ in items]))

    async def _answers(self, gate: grpc.aio.StreamStreamCall) -> None:
        async for response in gate:
            for future, assignment in zip(self._waiting.popleft(), response.assignments, strict=True):
                future.set_result(assignment.entry)
                for peer in self._to_peers:
                    peer.put(assignment.entry)

    def _number(self, request: pb.CreateOrderRequest) -> asyncio.Future[types_pb2.SequencedCommand]:
        """Queues an order for the Sequencer: its entry once numbered (then on its way to every peer)."""
        if self._to_gate is None:
            self._open()
        assert self._to_gate is not None
        command = types_pb2.Command(market=request.market or DEFAULT_MARKET, origin_node=self.node_id,
                                    new_order=types_pb2.NewOrderCommand(
                                        side=request.side, order_type=request.order_type or types_pb2.LIMIT,
                                        size=request.size, price=request.limit_price))
        numbered: asyncio.Future[types_pb2.SequencedCommand] = asyncio.get_running_loop().create_future()
        self._to_gate.put((command, numbered))
        return numbered

    @staticmethod
    def _response(entry: types_pb2.SequencedCommand, request: pb.CreateOrderRequest) -> pb.CreateOrderResponse:
        return pb.CreateOrderResponse(market=entry.market, order_id=entry.seq, seq=entry.seq, status=pb.RESTING,
                                      remaining_size=request.size)

    async def create_order(self, request: pb.CreateOrderRequest,
                           context: grpc.aio.ServicerContext) -> pb.CreateOrderResponse:
        return self._response(await self._number(request), request)

    async def order_entry(self, requests: AsyncIterator[pb.CreateOrderRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[pb.OrderEntryResult]:
        async for numbered, request in _in_order(requests, lambda request: (self._number(request), request)):
            yield pb.OrderEntryResult(order=self._response(await numbered, request))

    async def order_entry_batch(self, requests: AsyncIterator[pb.OrderBatch],
                                context: grpc.aio.ServicerContext) -> AsyncIterator[pb.OrderBatchResult]:
        def start(batch: pb.OrderBatch) -> list[tuple[asyncio.Future[types_pb2.SequencedCommand],
                                                      pb.CreateOrderRequest]]:
            return [(self._number(order), order) for order in batch.orders]

        async for started in _in_order(requests, start):
            yield pb.OrderBatchResult(results=[pb.OrderEntryResult(order=self._response(await numbered, order))
                                               for numbered, order in started])

    async def broadcast(self, requests: AsyncIterator[pb.BroadcastOrderRequest],
                        context: grpc.aio.ServicerContext) -> pb.BroadcastOrderResponse:
        async for request in requests:
            self.received += len(request.commands)
        return pb.BroadcastOrderResponse()

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        return [
            grpc.method_handlers_generic_handler("exchange.v1.ExchangeNode", {
                "CreateOrder": grpc.unary_unary_rpc_method_handler(
                    self.create_order, pb.CreateOrderRequest.FromString, pb.CreateOrderResponse.SerializeToString),
                "OrderEntry": grpc.stream_stream_rpc_method_handler(
                    self.order_entry, pb.CreateOrderRequest.FromString, pb.OrderEntryResult.SerializeToString),
                "OrderEntryBatch": grpc.stream_stream_rpc_method_handler(
                    self.order_entry_batch, pb.OrderBatch.FromString, pb.OrderBatchResult.SerializeToString),
            }),
            grpc.method_handlers_generic_handler(SERVICE, {
                "Broadcast": grpc.stream_unary_rpc_method_handler(
                    self.broadcast, pb.BroadcastOrderRequest.FromString, pb.BroadcastOrderResponse.SerializeToString),
            }),
        ]


async def serve(listen: str, handlers: list[grpc.GenericRpcHandler]) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(handlers)
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


def _ready(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
            return True
        except grpc.FutureTimeoutError:
            return False


class OrderPath:
    """The path's processes for `nodes` nodes (started by `running`): the Sequencer's address, the nodes'."""

    def __init__(self, sequencer: ServiceProcess, nodes: list[ServiceProcess], addresses: list[str],
                 sequencer_address: str) -> None:
        self.sequencer = sequencer
        self.nodes = nodes
        self.node_addresses = addresses
        self.sequencer_address = sequencer_address

    def processes(self) -> list[ServiceProcess]:
        return [self.sequencer, *self.nodes]

    def position(self) -> int:
        """How many orders the Sequencer numbered so far."""
        with grpc.insecure_channel(self.sequencer_address) as channel:
            ask = channel.unary_unary(POSITION, sequencer_pb2.GetSequenceRequest.SerializeToString,
                                      sequencer_pb2.GetSequenceResponse.FromString)
            return ask(sequencer_pb2.GetSequenceRequest(), timeout=10).current_seq


@contextlib.contextmanager
def running(workdir: Path, nodes: int) -> Iterator[OrderPath]:
    """The echo-built order path with `nodes` nodes, stopped on exit."""
    sequencer_address = f"127.0.0.1:{free_port()}"
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(nodes)]
    sequencer = ServiceProcess("path-sequencer", "bench.order_path",
                               ["--role", "sequencer", "--listen", sequencer_address],
                               workdir / "path-sequencer.log", SERVICE_GRPC_ENV)
    node_processes = [
        ServiceProcess(f"path-node-{n + 1}", "bench.order_path",
                       ["--role", "node", "--listen", address, "--sequencer", sequencer_address, "--node-id",
                        f"node-{n + 1}", "--peers", ",".join(a for a in addresses if a != address)],
                       workdir / f"path-node-{n + 1}.log", SERVICE_GRPC_ENV)
        for n, address in enumerate(addresses)
    ]
    path = OrderPath(sequencer, node_processes, addresses, sequencer_address)
    try:
        for process in path.processes():
            process.start()
        for address in [sequencer_address, *addresses]:
            wait_until(functools.partial(_ready, address), 20, f"the order path's server at {address}")
        yield path
    finally:
        for process in path.processes():
            process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.order_path", description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["sequencer", "node"], required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--sequencer", help="the Sequencer's address (a node)")
    parser.add_argument("--peers", default="", help="the other nodes' addresses, comma-separated (a node)")
    parser.add_argument("--node-id", default="node")
    args = parser.parse_args()

    async def start() -> None:
        if args.role == "sequencer":
            await serve(args.listen, [Sequencer().handlers()])
        else:
            node = Node(args.node_id, args.sequencer, [p for p in args.peers.split(",") if p])
            await serve(args.listen, node.handlers())

    asyncio.run(start())


if __name__ == "__main__":
    main()
