"""The Sequencer's gRPC servicer: Sequence and SequenceStream (the gate, `sequencer.gate`), ReadLog and
GetSequence (the log reader). As thin as the node's: the rules live in the gate."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from exchange.errors import InvalidArgument, rpc
from exchange.runtime import Malformed, answered_in_order, receives_malformed_items
from exchange.v1 import sequencer_pb2, sequencer_pb2_grpc
from sequencer.gate import READ_CHUNK, SequencingGate, add_entries

# Requests of one SequenceStream numbered and not yet answered (a node keeps fewer in flight: --gate-depth).
STREAM_WINDOW = 16


async def _answer(answer: Callable[[], Awaitable[sequencer_pb2.SequenceResponse]]) -> sequencer_pb2.SequenceResponse:
    return await answer()


class SequencerService(SequencingGate, sequencer_pb2_grpc.SequencerServicer):
    """The gate and the log reader over gRPC (the constructor is `SequencingGate`'s)."""

    @rpc
    async def Sequence(
        self, request: sequencer_pb2.SequenceRequest, context: grpc.aio.ServicerContext
    ) -> sequencer_pb2.SequenceResponse:
        return await self._sequence(request)

    @rpc
    @receives_malformed_items
    async def SequenceStream(
        self, request_iterator: AsyncIterator[sequencer_pb2.SequenceRequest | Malformed],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[sequencer_pb2.SequenceResponse]:
        with self.streams.track(context):
            async for response in answered_in_order(request_iterator, self._begin_item, _answer, STREAM_WINDOW):
                yield response

    async def _begin_item(
        self, request: sequencer_pb2.SequenceRequest | Malformed
    ) -> Callable[[], Awaitable[sequencer_pb2.SequenceResponse]]:
        if isinstance(request, Malformed):
            raise InvalidArgument(f"a SequenceStream message is not a SequenceRequest: {request.error}")
        return await self._begin(request)

    @rpc
    async def ReadLog(
        self, request: sequencer_pb2.ReadLogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sequencer_pb2.LogBatch]:
        if request.from_seq < 1:
            raise InvalidArgument(f"from_seq must be >= 1, got {request.from_seq}")
        if request.to_seq and request.to_seq < request.from_seq:
            raise InvalidArgument(f"to_seq {request.to_seq} is before from_seq {request.from_seq}")
        market = self.market(request.market)
        end = market.durable if not request.to_seq else min(request.to_seq, market.durable)
        seq = request.from_seq
        while seq <= end:
            chunk = await self._entries(market, seq, min(end, seq + READ_CHUNK - 1))
            if not chunk:
                break
            batch = sequencer_pb2.LogBatch()
            add_entries(batch.entries, chunk)
            yield batch
            seq = chunk[-1].seq + 1

    @rpc
    async def GetSequence(
        self, request: sequencer_pb2.GetSequenceRequest, context: grpc.aio.ServicerContext
    ) -> sequencer_pb2.GetSequenceResponse:
        # the contract's rule for every request: an empty market is the cluster's default (first) market
        market = self.market(request.market or next(iter(self.configs)))
        return sequencer_pb2.GetSequenceResponse(
            market=market.market, current_seq=market.durable, role="leader" if self.leading else "standby"
        )
