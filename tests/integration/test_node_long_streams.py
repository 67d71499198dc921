"""The node's long-lived streams against an in-process gRPC server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest

from exchange.errors import Unavailable
from exchange.node.broadcast import BroadcastStub, PeerStream
from exchange.node.sequencer_link import GateStream, GateTicket
from exchange.shared.wire import CHANNEL_OPTIONS, SERVER_OPTIONS
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, sequencer_pb2, sequencer_pb2_grpc, types_pb2
from tests.unit.fakes import run_scenario, until

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
        stream = PeerStream(f"127.0.0.1:{port}", BroadcastStub(channel), ())
        try:
            for number in range(3):
                stream.send(pb.BroadcastOrderRequest(origin_node=f"b{number}").SerializeToString())
                deadline = asyncio.get_running_loop().time() + 5
                while len(peer.received) <= number and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # the peer's end of the stream reaches the node
            return peer.received
        finally:
            stream.close()
            await channel.close()
            await server.stop(0)

    assert run_scenario(scenario()) == ["b0", "b1", "b2"]
    assert "failed" not in caplog.text and "InvalidStateError" not in caplog.text


class NeverAnswers(sequencer_pb2_grpc.SequencerServicer):
    """A Sequencer that takes gate requests and never answers them (a stalled leader)."""

    async def SequenceStream(  # noqa: N802 - the RPC's name
        self, request_iterator: AsyncIterator[sequencer_pb2.SequenceRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sequencer_pb2.SequenceResponse]:
        async for _ in request_iterator:
            await asyncio.sleep(3600)
        yield sequencer_pb2.SequenceResponse()  # pragma: no cover


def ticket(gate: GateStream) -> GateTicket:
    return gate.take(sequencer_pb2.SequenceRequest(market="M"))


@contextlib.asynccontextmanager
async def sequencer_serving(
    servicer: sequencer_pb2_grpc.SequencerServicer,
) -> AsyncIterator[sequencer_pb2_grpc.SequencerStub]:
    """A stub of `servicer` served in-process on loopback, stopped on exit."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    sequencer_pb2_grpc.add_SequencerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    try:
        yield sequencer_pb2_grpc.SequencerStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


def test_an_interrupted_gate_request_fails_unavailable_at_once_and_the_next_goes_on_a_new_stream() -> None:
    async def scenario() -> None:
        async with sequencer_serving(NeverAnswers()) as stub:
            gate = GateStream("M")
            asked = asyncio.create_task(gate.ask(stub, ticket(gate), timeout=30))
            await asyncio.sleep(0.3)
            gate.interrupt("the Sequencer leader changed")
            with pytest.raises(Unavailable, match="the Sequencer leader changed"):
                await asyncio.wait_for(asked, 5)  # at once: not after its own 30 s watchdog
            again = asyncio.create_task(gate.ask(stub, ticket(gate), timeout=0.5))
            with pytest.raises(Unavailable, match="did not answer within"):  # a new stream, its own watchdog
                await again

    run_scenario(scenario())


def test_a_gate_request_whose_caller_is_cancelled_while_it_is_interrupted_ends_cancelled() -> None:
    """The interruption's CancelledError becomes UNAVAILABLE, the caller's own cancellation stays one (a node
    that stops must not keep its gate loop running)."""

    async def scenario() -> None:
        async with sequencer_serving(NeverAnswers()) as stub:
            gate = GateStream("M")
            asked = asyncio.create_task(gate.ask(stub, ticket(gate), 30))
            await asyncio.sleep(0.3)
            gate.interrupt("the Sequencer leader changed")
            asked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(asked, 5)

    run_scenario(scenario())


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An address whose TCP connections are accepted (by the kernel's backlog) and never spoken to, as a
    Sequencer or a peer restarting on its address looks before its gRPC server serves."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_a_gate_request_to_a_server_that_never_speaks_times_out_and_can_be_interrupted(silent_server: str) -> None:
    """grpc's `write` waits for the call's initial metadata, and a call cancelled before that never wakes it
    (grpcio 1.85): cancelling the call alone, as the gate's watchdog did, left the market's gate stuck for good
    (chaos seed 2013). Both the timeout and an interruption must end the request."""

    async def scenario() -> None:
        channel = grpc.aio.insecure_channel(silent_server, options=CHANNEL_OPTIONS)
        stub = sequencer_pb2_grpc.SequencerStub(channel)
        gate = GateStream("M")
        try:
            with pytest.raises(Unavailable, match="did not answer within 0.5 s"):
                await asyncio.wait_for(gate.ask(stub, ticket(gate), 0.5), 5)
            asked = asyncio.create_task(gate.ask(stub, ticket(gate), 30))
            await asyncio.sleep(0.3)
            gate.interrupt("the Sequencer leader changed")
            with pytest.raises(Unavailable, match="the Sequencer leader changed"):
                await asyncio.wait_for(asked, 5)
        finally:
            await channel.close()

    run_scenario(scenario())


def test_a_broadcast_stream_to_a_peer_that_never_speaks_fails_and_is_reopened_later(
    silent_server: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write that cannot complete fails the stream after WRITE_TIMEOUT_S (the peer reads what it missed from
    the log) instead of holding the peer's broadcasts forever."""
    monkeypatch.setattr(PeerStream, "WRITE_TIMEOUT_S", 0.5)

    async def scenario() -> PeerStream:
        channel = grpc.aio.insecure_channel(silent_server, options=CHANNEL_OPTIONS)
        stream = PeerStream(silent_server, BroadcastStub(channel), ())
        try:
            stream.send(pb.BroadcastOrderRequest(origin_node="b0").SerializeToString())
            assert stream.task is not None
            await asyncio.wait_for(asyncio.shield(stream.task), 5)
            return stream
        finally:
            stream.close()
            await channel.close()

    stream = run_scenario(scenario())
    assert stream.failures == 1 and stream.reopen_at > 0


class HeldSequencer(sequencer_pb2_grpc.SequencerServicer):
    """A Sequencer that reads gate requests as they come, records them per stream (by their first command's
    origin_ref) and answers each, in order, only when the test releases one (`release`), with that ref as
    `current_seq`. `break_first_after`: the first stream ends UNAVAILABLE, unanswered, once it holds that many."""

    def __init__(self, break_first_after: int = 0) -> None:
        self.streams: list[list[int]] = []
        self.release = asyncio.Semaphore(0)
        self.break_first_after = break_first_after

    async def SequenceStream(  # noqa: N802 - the RPC's name
        self, request_iterator: AsyncIterator[sequencer_pb2.SequenceRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sequencer_pb2.SequenceResponse]:
        received: list[int] = []
        self.streams.append(received)
        first = len(self.streams) == 1
        refs: asyncio.Queue[int | None] = asyncio.Queue()

        async def read() -> None:
            async for request in request_iterator:
                received.append(request.commands[0].origin_ref)
                refs.put_nowait(received[-1])
                if first and len(received) == self.break_first_after:
                    refs.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (ref := await refs.get()) is not None:
                if not (first and self.break_first_after):
                    await self.release.acquire()
                    yield sequencer_pb2.SequenceResponse(current_seq=ref)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the test breaks the stream")
        finally:
            reader.cancel()


def numbered(gate: GateStream, ref: int) -> GateTicket:
    command = types_pb2.Command(market="M", origin_node="n", origin_ref=ref)
    return gate.take(sequencer_pb2.SequenceRequest(market="M", commands=[command]))


async def bounded(condition: Callable[[], bool]) -> None:
    await asyncio.wait_for(until(condition), 5)


def test_gate_requests_in_flight_are_written_without_waiting_and_each_gets_its_own_answer_in_order() -> None:
    async def scenario() -> None:
        sequencer = HeldSequencer()
        async with sequencer_serving(sequencer) as stub:
            gate = GateStream("M")
            one, two = numbered(gate, 1), numbered(gate, 2)
            asked = [asyncio.create_task(gate.ask(stub, ticket, 10)) for ticket in (one, two)]
            await bounded(lambda: sequencer.streams == [[1, 2]])  # the second went out before the first's answer
            sequencer.release.release()
            sequencer.release.release()
            answers = await asyncio.wait_for(asyncio.gather(*asked), 5)
            assert [a.current_seq for a in answers] == [1, 2]

    run_scenario(scenario())


def test_after_a_broken_stream_every_unanswered_request_goes_again_in_the_order_taken_whichever_retries_first(
) -> None:
    """The request taken second retries first: the new stream carries the first one's request before its own
    (the Sequencer numbers a node's requests in that order), and the first's retry finds its answer."""

    async def scenario() -> None:
        sequencer = HeldSequencer(break_first_after=2)
        async with sequencer_serving(sequencer) as stub:
            gate = GateStream("M")
            one, two = numbered(gate, 1), numbered(gate, 2)
            asked = [asyncio.create_task(gate.ask(stub, ticket, 10)) for ticket in (one, two)]
            for task in asked:
                with pytest.raises((Unavailable, grpc.aio.AioRpcError)):
                    await asyncio.wait_for(task, 5)
            retried = asyncio.create_task(gate.ask(stub, two, 10))
            await bounded(lambda: len(sequencer.streams) == 2 and sequencer.streams[1] == [1, 2])
            sequencer.release.release()
            sequencer.release.release()
            assert (await asyncio.wait_for(retried, 5)).current_seq == 2
            assert (await asyncio.wait_for(gate.ask(stub, one, 10), 5)).current_seq == 1
            assert sequencer.streams == [[1, 2], [1, 2]], "an answered request was sent again"

    run_scenario(scenario())


def test_a_request_given_up_on_the_live_stream_has_its_answer_dropped_and_the_next_gets_its_own() -> None:
    async def scenario() -> None:
        sequencer = HeldSequencer()
        async with sequencer_serving(sequencer) as stub:
            gate = GateStream("M")
            one, two = numbered(gate, 1), numbered(gate, 2)
            first = asyncio.create_task(gate.ask(stub, one, 10))
            second = asyncio.create_task(gate.ask(stub, two, 10))
            await bounded(lambda: sequencer.streams == [[1, 2]])
            first.cancel()  # its caller went away
            gate.forget(one)
            sequencer.release.release()
            sequencer.release.release()
            assert (await asyncio.wait_for(second, 5)).current_seq == 2
            three = numbered(gate, 3)
            third = asyncio.create_task(gate.ask(stub, three, 10))
            sequencer.release.release()
            assert (await asyncio.wait_for(third, 5)).current_seq == 3
            assert sequencer.streams == [[1, 2, 3]], "the stream was kept"

    run_scenario(scenario())
