"""The node's broadcasts to its peers: one stream per peer (`PeerStream`), the set of passing peers found
through discovery (`PeerSet`, the gRPC implementation of `exchange.node.sequencer_link.Peers`).
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from discovery import Registry, ServiceInstance, Watch
from exchange.cluster_common import token_metadata
from exchange.errors import Unavailable
from exchange.grpc_metrics import client_stream
from exchange.node.metrics import STREAM_RECONNECTS, counters
from exchange.runtime import aio_channel
from exchange.shared.tls import TlsConfig
from exchange.shared.wire import PEER_SERVICE
from exchange.v1 import exchange_pb2, exchange_pb2_grpc, types_pb2

log = logging.getLogger(__name__)

BROADCAST_RECONNECTS = STREAM_RECONNECTS.labels("broadcast")


class BroadcastStub:
    """The BroadcastOrderStream method of a peer's channel, sending messages already serialised: a broadcast is
    serialised once for every peer (not once per peer), and the broadcasts queued for one peer are merged by
    joining their bytes (protobuf's encoding of a message's repeated field, concatenated, is the merged message)."""

    METHOD = "/exchange.v1.ExchangeNode/BroadcastOrderStream"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.BroadcastOrderStream = channel.stream_unary(  # noqa: N815 - the RPC's name, as on a generated stub
            self.METHOD, request_serializer=None, response_deserializer=exchange_pb2.BroadcastOrderResponse.FromString
        )


class PeerStream:
    """One long-lived BroadcastOrderStream to a peer.

    Broadcasts (serialised BroadcastOrderRequests) queue (bounded) and one task writes them in order. A stream found
    ended before a write (the peer stopped gracefully, the connection was closed while idle) is replaced at once and
    nothing is lost. When writing fails (peer restarted, unreachable), what was queued or in flight is dropped, and so
    is every broadcast until a new stream is opened after a backoff (50 ms doubling to 1 s: an unreachable peer
    costs no call per batch). The peer fills the gap from the Sequencer's log, as for any lost broadcast.
    """

    MAX_QUEUED = 10_000  # broadcasts waiting for a slow peer before new ones are dropped
    WRITE_TIMEOUT_S = 5.0  # a write not done by then fails the stream (a write may never wake: see GateStream)
    MAX_COALESCED_BYTES = 512 * 1024  # of one stream message, merged broadcasts (half a peer's 1 MiB limit)
    FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.05, 1.0

    def __init__(self, target: str, stub: BroadcastStub, metadata: tuple) -> None:
        self.target = target
        self.stub = stub
        self.metadata = metadata
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(self.MAX_QUEUED)
        self.task: asyncio.Task[None] | None = None
        self.failures = 0  # streams in a row that failed
        self.reopen_at = 0.0  # loop time before which no new stream is opened (after a failure)
        self.dropped = 0
        self._carried: bytes | None = None  # taken from the queue, to go first in the next message
        self._metrics = client_stream(BroadcastStub.METHOD)
        self._opened = 0

    def send(self, request: bytes) -> None:
        """Queues a serialised BroadcastOrderRequest for the peer."""
        if self.task is None or self.task.done():
            loop = asyncio.get_running_loop()
            if loop.time() < self.reopen_at:
                return  # backing off after a failure: the peer will read this from the log
            self.task = loop.create_task(self._pump(), name=f"broadcast-{self.target}")
        try:
            self.queue.put_nowait(request)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("peer %s is not keeping up: %d broadcasts dropped (it will read them from the log)",
                            self.target, self.dropped)

    async def _pump(self) -> None:
        call = None
        try:
            while True:
                first, self._carried = self._carried, None
                request = self._coalesced(first if first is not None else await self.queue.get())
                call = await self._write(call, request)
                if self.failures:
                    log.info("broadcast stream to %s restored after %d failed", self.target, self.failures)
                    self.failures = 0
        except asyncio.CancelledError:
            if call is not None:
                call.cancel()
            raise
        except Exception as error:  # noqa: BLE001 - any failure ends this stream; a later send reopens it
            self.failures += 1
            backoff = min(self.FIRST_BACKOFF_S * 2 ** (self.failures - 1), self.MAX_BACKOFF_S)
            self.reopen_at = asyncio.get_running_loop().time() + backoff
            lost = self.queue.qsize() + (self._carried is not None)
            self._carried = None
            while not self.queue.empty():
                self.queue.get_nowait()
            if self._metrics is not None:
                self._metrics.ended(error.code() if isinstance(error, grpc.aio.AioRpcError)
                                    else grpc.StatusCode.UNAVAILABLE)
            if self.failures == 1 or self.failures % 30 == 0:
                code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else type(error).__name__
                log.warning("broadcast stream to %s failed (%d in a row, %d queued broadcasts dropped): %s",
                            self.target, self.failures, lost, code)
            if call is not None:
                call.cancel()

    def _coalesced(self, request: bytes) -> bytes:
        """`request` and the broadcasts queued behind it, as one message (up to MAX_COALESCED_BYTES; one that would
        not fit waits for the next): under load the stream then carries one message per write, not one per grant."""
        parts, size = [request], len(request)
        while not self.queue.empty():
            following = self.queue.get_nowait()
            if size + len(following) > self.MAX_COALESCED_BYTES:
                self._carried = following
                break
            parts.append(following)
            size += len(following)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _write(self, call: grpc.aio.StreamUnaryCall | None, request: bytes) -> grpc.aio.StreamUnaryCall:
        """Writes on the open stream; one that has ended meanwhile (the peer's graceful stop, a connection
        closed while idle) is written off and the request goes on a new one. Returns the stream in use."""
        for _ in range(2):
            if call is None or call.done():
                if call is not None and self._metrics is not None:
                    self._metrics.ended(grpc.StatusCode.UNAVAILABLE)
                call = self.stub.BroadcastOrderStream(metadata=self.metadata)
                self._opened += 1
                if self._opened > 1:
                    BROADCAST_RECONNECTS.inc()
                if self._metrics is not None:
                    self._metrics.opened()
            try:
                async with asyncio.timeout(self.WRITE_TIMEOUT_S):
                    await call.write(request)
                if self._metrics is not None:
                    self._metrics.sent()
                return call
            except asyncio.InvalidStateError:  # it ended between the check and the write
                call = None
        raise Unavailable(f"the broadcast stream to {self.target} ended twice in a row")

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


class PeerSet:
    """The passing `peer-server` instances except this node, with one channel each."""

    def __init__(self, registry: Registry | None, node_id: str, secret: bytes,
                 static_peers: list[str] | None = None, tls: TlsConfig | None = None) -> None:
        self.node_id = node_id
        self.tls = tls
        self.metadata = token_metadata(secret)
        self.static_peers = static_peers
        self.watch: Watch | None = None
        if static_peers is None:
            assert registry is not None
            self.watch = registry.watch(PEER_SERVICE, lambda instances: None)
        self._stubs: dict[str, exchange_pb2_grpc.ExchangeNodeStub] = {}
        self._broadcast_stubs: dict[str, BroadcastStub] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._streams: dict[str, PeerStream] = {}
        self._closing: set[asyncio.Future[None]] = set()  # channels of peers that left, being closed

    def targets(self) -> list[str]:
        if self.static_peers is not None:
            return list(self.static_peers)
        assert self.watch is not None
        return [i.target for i in self.watch.current() if not self._is_self(i)]

    def _is_self(self, instance: ServiceInstance) -> bool:
        return instance.instance_id == self.node_id

    def _stub(self, target: str) -> exchange_pb2_grpc.ExchangeNodeStub:
        stub = self._stubs.get(target)
        if stub is None:
            channel = aio_channel(target, self.tls)
            self._channels[target] = channel
            stub = self._stubs[target] = exchange_pb2_grpc.ExchangeNodeStub(channel)
        return stub

    async def fetch_snapshot(self, wait_s: float = 2.0) -> exchange_pb2.ReplicaSnapshot | None:
        """A snapshot of the first peer that gives one (waiting up to `wait_s` for discovery to name
        peers); None if no peer can."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not self.targets() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for target in self.targets():
            try:
                return await self._stub(target).GetSnapshot(
                    exchange_pb2.GetSnapshotRequest(), timeout=30, metadata=self.metadata
                )
            except grpc.aio.AioRpcError as error:
                log.warning("no snapshot from %s: %s %s", target, error.code().name, error.details())
        return None

    def queued(self) -> int:
        """Broadcasts queued for peers, not yet written."""
        return sum(stream.queue.qsize() for stream in self._streams.values())

    def broadcast(self, entries: list[types_pb2.SequencedCommand]) -> None:
        """Sends entries to every passing peer over its long-lived stream; a peer that misses them
        (stream broken, queue full) fills the gap from the Sequencer's log, so nothing is retried here."""
        if not entries:
            return
        request = exchange_pb2.BroadcastOrderRequest(origin_node=self.node_id, commands=entries).SerializeToString()
        targets = self.targets()
        counters["broadcast_messages"] += len(targets)
        counters["broadcast_entries"] += len(targets) * len(entries)
        for target in targets:
            stream = self._streams.get(target)
            if stream is None:
                self._stub(target)
                stub = self._broadcast_stubs.setdefault(target, BroadcastStub(self._channels[target]))
                stream = self._streams[target] = PeerStream(target, stub, self.metadata)
            stream.send(request)
        if len(self._streams) > len(targets):  # a peer left discovery: stop streaming to it
            for target in set(self._streams) - set(targets):
                self._forget(target)

    def _forget(self, target: str) -> None:
        """Closes the stream and the channel of a peer that left (a restarted node comes back on a new address:
        channels kept per address ever seen would add up)."""
        self._streams.pop(target).close()
        self._stubs.pop(target, None)
        self._broadcast_stubs.pop(target, None)
        channel = self._channels.pop(target, None)
        if channel is not None:
            closing = asyncio.ensure_future(channel.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        for stream in self._streams.values():
            stream.close()
        for channel in self._channels.values():
            await channel.close()
