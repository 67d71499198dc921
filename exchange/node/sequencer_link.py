"""The node's connections: to the Sequencer and to its peers, both found through discovery.

`Sequencer` and `Peers` are the shapes the rest of the node relies on (tests give fakes of them);
`SequencerLink` (here) and `PeerSet` (`exchange.node.broadcast`) are the gRPC implementations. Discovery runs
in the background (a Consul watch with blocking queries); the node only ever reads the latest passing set, so
no order costs a Consul lookup.

With the Sequencer in HA mode (replicas registered with meta log=consul), the gate goes to the leader only:
the replica named by the leader lock in Consul KV (exchange.cluster_common.SEQUENCER_LEADER_KEY), if it passes its
health check. A change of leader interrupts the gate streams to the old one at once, and the requests in
flight are sent again to the new one: a request that was granted comes back as a stale answer carrying its
entries (the new leader holds every committed entry), so nothing is numbered twice. Reads of the log go to
the leader, or to any replica while none leads. While the node cannot reach Consul (its view of the lock is
stale), each retry goes to the next replica it knows: only the leader numbers, the others answer UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from discovery import KeyValue, KeyWatch, Registry, Watch
from exchange.cluster_common import SEQUENCER_LEADER_KEY, LeaderRecord, token_metadata
from exchange.errors import FailedPrecondition, InvalidArgument, Unavailable
from exchange.grpc_metrics import client_stream
from exchange.node.metrics import STREAM_RECONNECTS
from exchange.runtime import aio_channel
from exchange.shared.tls import TlsConfig
from exchange.shared.wire import SEQUENCER_SERVICE
from exchange.v1 import exchange_pb2, sequencer_pb2, sequencer_pb2_grpc, types_pb2

log = logging.getLogger(__name__)

T = TypeVar("T")
GATE_RECONNECTS = STREAM_RECONNECTS.labels("gate")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class Sequencer(Protocol):
    """What the node needs of the Sequencer. Failures are raised as `exchange.errors.ExchangeError`s."""

    @property
    def target(self) -> str | None:
        """The Sequencer's address in use (None if none is known)."""
        ...

    async def sequence(self, request: sequencer_pb2.SequenceRequest) -> sequencer_pb2.SequenceResponse:
        """One gated request (the gate protocol: docs/architecture.md, "The sequencing protocol")."""
        ...

    async def current_seq(self, market: str) -> int: ...

    def read_log(
        self, market: str, from_seq: int, to_seq: int = 0
    ) -> AsyncIterator[list[types_pb2.SequencedCommand]]:
        """Batches of log entries from_seq..to_seq (0: up to the current sequence)."""
        ...

    async def close(self) -> None: ...


class Peers(Protocol):
    """What the node needs of its peers: broadcasting granted entries, and a snapshot to start from."""

    def targets(self) -> list[str]:
        """The peers' addresses this node broadcasts to now."""
        ...

    def broadcast(self, entries: list[types_pb2.SequencedCommand]) -> None:
        """Sends entries to every peer, without waiting; a peer that misses them reads them from the log."""
        ...

    async def fetch_snapshot(self, wait_s: float = 2.0) -> exchange_pb2.ReplicaSnapshot | None: ...

    async def close(self) -> None: ...


@dataclass(slots=True, eq=False)
class GateTicket:
    """One gated request of a GateStream, from `take` until it is answered or forgotten."""

    request: sequencer_pb2.SequenceRequest
    future: asyncio.Future[sequencer_pb2.SequenceResponse]  # its answer on the stream it was last written on
    stream: int = 0  # the number of that stream (0: not written yet)
    answer: sequencer_pb2.SequenceResponse | None = None
    forgotten: bool = False


class GateStream:
    """One market's long-lived SequenceStream: requests written one behind the other without waiting for the
    answers (the caller bounds how many: the node's --gate-depth), each answered in order.

    The stream is an ordered outbox: every request taken and not answered is written on the stream in the order
    taken. Any failure (stream broken, an answer not within the timeout, the Sequencer moved) discards the
    stream and fails every request waiting on it; the next attempt opens a new stream and writes every request
    still unanswered on it again, in the order first taken, whichever caller's retry comes first. A request
    repeated so states the applied sequence it first stated, so one that was granted comes back as a stale
    answer carrying its entries, never numbered twice; and the node's requests keep their order at the
    Sequencer (docs/architecture.md, "The sequencing protocol").

    The timeout cancels the waiting task itself (asyncio.timeout), not only the call: grpc's `write` waits for
    the call's initial metadata to be sent, and a call cancelled before that (a Sequencer restarting: the
    connection accepted, no HTTP/2 yet) never wakes it. Measured with grpcio 1.85: `call.cancel()` alone left
    the write waiting for good, and with it this market's gate (chaos seed 2013).
    """

    def __init__(self, market: str) -> None:
        self.market = market
        self._stub: sequencer_pb2_grpc.SequencerStub | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self._stream = 0  # the number of the last stream opened
        self._unanswered: deque[GateTicket] = deque()  # in the order taken
        self._lock = asyncio.Lock()  # one writer at a time
        self._writing: asyncio.Timeout | None = None  # the deadline of the writer in progress
        self._reader: asyncio.Task[None] | None = None
        self._metrics = client_stream("/exchange.v1.Sequencer/SequenceStream")

    def take(self, request: sequencer_pb2.SequenceRequest) -> GateTicket:
        """Queues a request behind every one taken before it (`ask` sends it and waits for its answer)."""
        ticket = GateTicket(request, asyncio.get_running_loop().create_future())
        self._unanswered.append(ticket)
        return ticket

    def forget(self, ticket: GateTicket) -> None:
        """The caller is done with `ticket` (answered, or given up: then it is never sent again, and an answer
        still to come on the live stream is dropped)."""
        if ticket.answer is not None or ticket.forgotten:
            return
        ticket.forgotten = True
        if self._call is None or ticket.stream != self._stream:
            self._unanswered.remove(ticket)

    async def ask(
        self, stub: sequencer_pb2_grpc.SequencerStub, ticket: GateTicket, timeout: float,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> sequencer_pb2.SequenceResponse:
        """One attempt: sends the request (with every earlier one not answered, on a new stream if need be) and
        waits at most `timeout` for its answer. A failure raises and leaves the request queued for the next
        attempt (or `forget`)."""
        if ticket.answer is not None:  # answered on a stream another attempt opened
            return ticket.answer
        try:
            async with asyncio.timeout(timeout):
                await self._send(stub, ticket, metadata)
                return await ticket.future
        except BaseException as error:
            if isinstance(error, TimeoutError | asyncio.CancelledError) and not _cancelling():
                # the deadline, a broken stream waking a write, or the call cancelled under us: never the
                # caller's own cancel
                if ticket.answer is not None:  # answered while this attempt still wrote the requests behind it
                    return ticket.answer
                failed = ticket.future.exception() if ticket.future.done() and not ticket.future.cancelled() else None
                if failed is not None:  # the stream broke (`_break`): its reason
                    raise failed from error
                if isinstance(error, TimeoutError):
                    why = f"the Sequencer did not answer within {timeout:g} s ({self.market})"
                    self._break(why)
                    raise Unavailable(why) from error
                self._break(f"the gate stream of {self.market} was cancelled")
                raise Unavailable(f"the gate stream of {self.market} was cancelled") from error
            if isinstance(error, asyncio.InvalidStateError):  # the stream had already ended (Sequencer gone)
                self._break(f"the gate stream of {self.market} to the Sequencer has ended", grpc.StatusCode.UNAVAILABLE)
                raise Unavailable(f"the gate stream of {self.market} to the Sequencer has ended") from error
            if isinstance(error, grpc.aio.AioRpcError):
                self._break(f"the gate stream of {self.market} failed: {error.code().name}", error.code())
            raise

    async def _send(
        self, stub: sequencer_pb2_grpc.SequencerStub, ticket: GateTicket, metadata: tuple[tuple[str, str], ...],
    ) -> None:
        async with self._lock:
            if self._call is not None and ticket.stream == self._stream:
                return  # already written on the live stream (by the attempt of an earlier request)
            if self._call is None or stub is not self._stub or self._call.done():  # none, moved, or ended
                if self._call is not None:
                    self._break(f"the gate stream of {self.market} ended or the Sequencer moved")
                self._open(stub, metadata)
            stream, call = self._stream, self._call
            assert call is not None
            for queued in list(self._unanswered):
                if queued.stream == stream or queued.forgotten:
                    continue
                if queued.future.done():  # failed with the stream it was written on before
                    queued.future = asyncio.get_running_loop().create_future()
                queued.stream = stream
                self._writing = asyncio.timeout(None)
                try:
                    async with self._writing:
                        await call.write(queued.request)
                finally:
                    self._writing = None
                if self._stream != stream or self._call is None:  # broken meanwhile: the attempts fail
                    return
                if self._metrics is not None:
                    self._metrics.sent()

    def _open(self, stub: sequencer_pb2_grpc.SequencerStub, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stream += 1
        self._stub, self._call = stub, stub.SequenceStream(metadata=metadata)
        if self._stream > 1:
            GATE_RECONNECTS.inc()
        if self._metrics is not None:
            self._metrics.opened()
        self._reader = asyncio.create_task(self._read(self._call, self._stream), name=f"gate-read-{self.market}")

    async def _read(self, call: grpc.aio.StreamStreamCall, stream: int) -> None:
        """Hands each answer of stream `stream` to the oldest request not answered (answers come in order)."""
        try:
            while True:
                response = await call.read()
                if stream != self._stream:
                    return
                if response is grpc.aio.EOF:
                    self._break(f"the Sequencer ended the gate stream of {self.market}", grpc.StatusCode.UNAVAILABLE)
                    return
                if self._metrics is not None:
                    self._metrics.received()
                if not self._unanswered:
                    self._break(f"the Sequencer answered a request of {self.market} that was never sent",
                                grpc.StatusCode.INTERNAL)
                    return
                ticket = self._unanswered.popleft()
                if ticket.forgotten:
                    continue
                ticket.answer = response
                if not ticket.future.done():
                    ticket.future.set_result(response)
        except asyncio.CancelledError:
            if stream == self._stream and self._call is not None and not _cancelling():
                self._break(f"the gate stream of {self.market} was cancelled")
            raise
        except grpc.aio.AioRpcError as error:
            if stream == self._stream:
                self._break(f"the gate stream of {self.market} failed: {error.code().name} {error.details()}",
                            error.code(), head=error)
        except Exception as error:  # noqa: BLE001 - whatever it is, the stream is done and the requests retry
            if stream == self._stream:
                self._break(f"the gate stream of {self.market} failed: {error!r}", grpc.StatusCode.UNKNOWN)

    def _break(self, why: str, code: grpc.StatusCode = grpc.StatusCode.CANCELLED,
               head: BaseException | None = None) -> None:
        """Ends the stream (`code`: how it ended, for the client metrics) and fails every request waiting:
        the oldest with `head` if given (the stream's own error: the Sequencer refused that request), the others
        (and the oldest without `head`) with UNAVAILABLE `why`: they are sent again by their next attempt."""
        if self._call is not None:
            self._call.cancel()
            if self._metrics is not None:
                self._metrics.ended(code)
        self._call = None
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        if self._writing is not None:
            self._writing.reschedule(asyncio.get_running_loop().time())  # wakes a write that waits
        for ticket in list(self._unanswered):
            if ticket.forgotten:
                self._unanswered.remove(ticket)
                continue
            if not ticket.future.done():
                ticket.future.set_exception(head if head is not None else Unavailable(why))
                ticket.future.exception()  # retrieved: the caller may be sleeping before its next attempt
            head = None

    def reset(self) -> None:
        """Ends the stream; the requests waiting on it fail UNAVAILABLE."""
        self._break(f"the gate stream of {self.market} was closed")

    def interrupt(self, why: str) -> None:
        """Cuts the requests in flight short (their callers get UNAVAILABLE `why` and retry) and ends the stream."""
        self._break(f"{why} ({self.market})")


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled (then a CancelledError is not the gRPC call's)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class SequencerLink:
    """Calls to the Sequencer (the leader, in HA mode), retried across short outages until `outage_s` has passed.

    `leader`: the key-value store holding the HA leader lock (Consul KV), followed in the background."""

    def __init__(
        self, secret: bytes, registry: Registry | None, static_target: str | None = None, outage_s: float = 5.0,
        call_timeout_s: float = 5.0, tls: TlsConfig | None = None, leader: KeyValue | None = None,
    ) -> None:
        self.metadata = token_metadata(secret)
        self.tls = tls
        self.static_target = static_target
        self.watch: Watch | None = None
        self.leader_watch: KeyWatch | None = None
        if static_target is None:
            assert registry is not None, "either a registry or a static Sequencer address is needed"
            self._loop = asyncio.get_running_loop()
            self.watch = registry.watch(SEQUENCER_SERVICE, self._moved_threadsafe)
            if leader is not None:
                self.leader_watch = leader.watch_prefix(SEQUENCER_LEADER_KEY, self._moved_threadsafe)
        self.outage_s = outage_s
        self.call_timeout_s = call_timeout_s
        self._gate_target: str | None = None
        self._blind_tries = 0  # gate retries while the view of the leader lock is stale (see `_pick`)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, sequencer_pb2_grpc.SequencerStub] = {}
        self._gates: dict[str, GateStream] = {}

    @property
    def target(self) -> str | None:
        """Where the gate goes: the Sequencer, or in HA mode the leader (None while none is known)."""
        return self._pick(for_gate=True)

    def _pick(self, for_gate: bool) -> str | None:  # noqa: C901 - the rules of the module docstring, in order
        if self.static_target is not None:
            return self.static_target
        assert self.watch is not None
        instances = self.watch.current()
        replicas = [i for i in instances if i.meta.get("log") == "consul"]
        if not replicas:
            return instances[0].target if instances else None
        values = self.leader_watch.current() if self.leader_watch is not None else None
        leader = LeaderRecord.decode((values or {}).get(SEQUENCER_LEADER_KEY))
        if self.leader_watch is not None and not self.leader_watch.fresh():
            if for_gate and self._blind_tries:  # Consul cannot tell: try them in turn, stay with one that works
                return replicas[self._blind_tries % len(replicas)].target
        else:
            self._blind_tries = 0
        for instance in replicas:
            if leader is not None and instance.instance_id == leader.id:
                return instance.target
        return None if for_gate else replicas[0].target

    def _moved_threadsafe(self, _: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the node is stopping
            self._loop.call_soon_threadsafe(self._moved)

    def _moved(self) -> None:
        """Discovery changed: if the leader did, the gate requests in flight to the old one go to the new one."""
        target = self.target
        if target == self._gate_target:
            return
        log.info("the gate goes to the Sequencer at %s now (was %s)", target or "none yet", self._gate_target)
        if self._gate_target is not None:
            for gate in self._gates.values():
                gate.interrupt(f"the Sequencer leader changed from {self._gate_target} to {target or 'none yet'}")
        self._gate_target = target

    def stub(self, for_gate: bool = True) -> sequencer_pb2_grpc.SequencerStub:
        target = self._pick(for_gate)
        if target is None:
            if self.watch is not None and self.watch.current():
                raise Unavailable("no Sequencer replica leads now (HA mode: a standby is taking over); retry")
            raise Unavailable("no passing Sequencer is registered in Consul (service 'sequencer')")
        if for_gate:
            self._gate_target = target
        stub = self._stubs.get(target)
        if stub is None:
            channel = self._channels[target] = aio_channel(target, self.tls)
            stub = self._stubs[target] = sequencer_pb2_grpc.SequencerStub(channel)
        return stub

    async def _retrying(self, what: str, call: Callable[[sequencer_pb2_grpc.SequencerStub], Awaitable[T]],
                        for_gate: bool = True) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.outage_s
        delay = 0.05
        while True:
            try:
                return await call(self.stub(for_gate))
            except grpc.aio.AioRpcError as error:
                code = error.code()
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidArgument(f"Sequencer refused {what}: {error.details()}") from error
                if code == grpc.StatusCode.FAILED_PRECONDITION:
                    raise FailedPrecondition(f"Sequencer refused {what}: {error.details()}") from error
                if code not in RETRYABLE or loop.time() + delay > deadline:
                    raise Unavailable(
                        f"Sequencer at {self._pick(for_gate)} unreachable for {what}: {code.name} {error.details()}"
                    ) from error
            except Unavailable:
                if loop.time() + delay > deadline:
                    raise
            if for_gate:
                self._blind_tries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def sequence(self, request: sequencer_pb2.SequenceRequest) -> sequencer_pb2.SequenceResponse:
        """One gated request, over the market's long-lived SequenceStream. Concurrent calls for one market are
        written in call order without waiting for each other's answers, and answered in that order."""
        gate = self._gates.get(request.market)
        if gate is None:
            gate = self._gates[request.market] = GateStream(request.market)
        ticket = gate.take(request)
        try:
            return await self._retrying(
                "Sequence", lambda stub: gate.ask(stub, ticket, self.call_timeout_s, self.metadata)
            )
        finally:
            gate.forget(ticket)

    async def current_seq(self, market: str) -> int:
        response = await self._retrying(
            "GetSequence",
            lambda stub: stub.GetSequence(sequencer_pb2.GetSequenceRequest(market=market), timeout=2.0),
            for_gate=False,
        )
        return response.current_seq

    async def read_log(
        self, market: str, from_seq: int, to_seq: int = 0
    ) -> AsyncIterator[list[types_pb2.SequencedCommand]]:
        """Batches of log entries from_seq..to_seq (0: up to the current sequence)."""
        request = sequencer_pb2.ReadLogRequest(market=market, from_seq=from_seq, to_seq=to_seq)
        try:
            async for batch in self.stub(for_gate=False).ReadLog(request, timeout=120, metadata=self.metadata):
                yield list(batch.entries)
        except grpc.aio.AioRpcError as error:
            raise Unavailable(f"reading the Sequencer's log failed: {error.code().name} {error.details()}") from error

    async def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.leader_watch is not None:
            self.leader_watch.stop()
        for gate in self._gates.values():
            gate.reset()
        for channel in self._channels.values():
            await channel.close()
