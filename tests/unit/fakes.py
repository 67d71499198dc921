"""In-process stand-ins for what a node talks to, so its parts can be tested without a network.

`InMemorySequencer` implements the node's `Sequencer` shape with the gate's rules over an in-memory log
(signed entries, client_order_id deduplication); `stale` makes it refuse like a Sequencer that the node can
never catch up with. `RecordingPeers` implements `Peers` and keeps what was broadcast. `DictKeyValue` is a
`KeyValue` store in a dict. `FakeContext` is the part of a grpc.aio servicer context the handlers use (metadata,
abort).

Every async method of a fake yields to the event loop once (`await asyncio.sleep(0)`), as a real call does: a
node looping on a fake that never yields (a bug such as a retry limit ignored) would starve the loop, and no
timeout of the test could fire. `run_scenario` runs a test's scenario within its own deadline, so such a hang
fails that test in seconds and the run goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar, cast

import grpc
from google.protobuf.message import Message

from discovery import TransactionOp, Versioned
from exchange.entry_signing import entry_mac
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import sequencer_pb2, types_pb2

SECRET = b"unit-test-secret"
SCENARIO_TIMEOUT_S = 30.0

T = TypeVar("T")
MessageT = TypeVar("MessageT", bound=Message)


def run_scenario(scenario: Awaitable[T], timeout_s: float = SCENARIO_TIMEOUT_S) -> T:
    """Runs `scenario` on a new event loop and fails the test if it has not finished after `timeout_s` (the
    test's own deadline, far below pytest-timeout's: a hang is reported as one, and the run goes on)."""

    async def bounded() -> T:
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                return await scenario
        except TimeoutError:
            if deadline.expired():
                raise AssertionError(f"the scenario did not finish within {timeout_s:g} s: it hangs") from None
            raise

    return asyncio.run(bounded())


async def until(condition: Callable[[], bool]) -> None:
    """Waits for `condition` (bounded by the scenario's deadline, see `run_scenario`)."""
    while not condition():
        await asyncio.sleep(0.001)


def signed_entry(market: str, seq: int, command: types_pb2.Command | bytes,
                 secret: bytes = SECRET) -> types_pb2.SequencedCommand:
    """A log entry as the Sequencer makes it: the command's bytes and its MAC."""
    data = command if isinstance(command, bytes) else command.SerializeToString(deterministic=True)
    return types_pb2.SequencedCommand(market=market, seq=seq, command=data, mac=entry_mac(secret, market, seq, data))


class InMemorySequencer:
    """The gate over an in-memory log."""

    target = "in-memory"

    def __init__(self, secret: bytes = SECRET) -> None:
        self.secret = secret
        self.log: dict[str, list[types_pb2.SequencedCommand]] = {}
        self.client_order_ids: dict[tuple[str, str], int] = {}
        self.requests: list[sequencer_pb2.SequenceRequest] = []
        self.stale = False  # True: every request is answered "stale", as if the log always moved on

    def current(self, market: str) -> int:
        return len(self.log.get(market, []))

    def append(self, command: types_pb2.Command) -> types_pb2.SequencedCommand:
        """Numbers a command as if another node had it sequenced."""
        entries = self.log.setdefault(command.market, [])
        entry = signed_entry(command.market, len(entries) + 1, command, self.secret)
        entries.append(entry)
        if command.client_order_id:
            self.client_order_ids.setdefault((command.market, command.client_order_id), entry.seq)
        return entry

    async def sequence(self, request: sequencer_pb2.SequenceRequest) -> sequencer_pb2.SequenceResponse:
        """The gate as the Sequencer keeps it: a node behind gets what it lacks, then its grant; a request
        repeating numbered commands gets a stale answer (docs/architecture.md, "The sequencing protocol")."""
        await asyncio.sleep(0)  # a real call yields to the loop (see the module docstring)
        self.requests.append(request)
        market = request.market
        if self.stale:  # the log moved on again: the node can never catch up
            self.append(types_pb2.Command(market=market, cancel_order=types_pb2.CancelOrderCommand(order_id=1)))
        missing = self.log.get(market, [])[request.applied_seq:]
        refs = {(c.origin_node, c.origin_ref) for c in request.commands}
        repeats = any((c.origin_node, c.origin_ref) in refs
                      for c in (types_pb2.Command.FromString(e.command) for e in missing))
        if self.stale or repeats:
            return sequencer_pb2.SequenceResponse(granted=False, current_seq=self.current(market), missing=missing)
        response = sequencer_pb2.SequenceResponse(granted=True, missing=missing)
        for command in request.commands:
            known = self.client_order_ids.get((market, command.client_order_id))
            if command.client_order_id and known is not None:
                response.assignments.add(seq=known, duplicate=True, entry=self.log[market][known - 1])
                continue
            entry = self.append(command)
            response.assignments.add(seq=entry.seq, entry=entry)
        response.current_seq = self.current(market)
        return response

    async def current_seq(self, market: str) -> int:
        await asyncio.sleep(0)
        return self.current(market)

    async def read_log(
        self, market: str, from_seq: int, to_seq: int = 0
    ) -> AsyncIterator[list[types_pb2.SequencedCommand]]:
        await asyncio.sleep(0)
        end = to_seq or self.current(market)
        yield self.log.get(market, [])[from_seq - 1:end]

    async def close(self) -> None:
        await asyncio.sleep(0)


class RecordingPeers:
    """Peers that keep what the node broadcast."""

    def __init__(self) -> None:
        self.sent: list[types_pb2.SequencedCommand] = []

    def targets(self) -> list[str]:
        return []

    def broadcast(self, entries: list[types_pb2.SequencedCommand]) -> None:
        self.sent.extend(entries)

    async def fetch_snapshot(self, wait_s: float = 2.0) -> pb.ReplicaSnapshot | None:
        await asyncio.sleep(0)
        return None

    async def close(self) -> None:
        await asyncio.sleep(0)


class DictKeyValue:
    """A `KeyValue` store in a dict, and its only prefix watch (`watch_prefix` returns the store itself): `put`
    calls every watcher with all the keys. What no unit test uses (versions, transactions) fails loudly."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.callbacks: list[Callable[[dict[str, bytes]], None]] = []

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def read(self, key: str, consistent: bool = False) -> Versioned | None:
        raise NotImplementedError("DictKeyValue keeps no versions")

    def create(self, key: str, value: bytes) -> bool:
        return self.values.setdefault(key, value) is value

    def put(self, key: str, value: bytes) -> None:
        self.values[key] = value
        for callback in self.callbacks:
            callback(dict(self.values))

    def transact(self, ops: Sequence[TransactionOp]) -> dict[str, int]:
        raise NotImplementedError("DictKeyValue has no transactions")

    def list(self, prefix: str) -> dict[str, bytes]:
        return {key: value for key, value in self.values.items() if key.startswith(prefix)}

    def watch_prefix(self, prefix: str, on_change: Callable[[dict[str, bytes]], None] | None = None) -> DictKeyValue:
        if on_change is not None:
            self.callbacks.append(on_change)
        return self

    def current(self) -> dict[str, bytes] | None:
        return dict(self.values)

    def fresh(self) -> bool:
        return True

    def stop(self) -> None:
        pass


def decoded(item: object, kind: type[MessageT]) -> MessageT:
    """A streamed item as the client receives it: a public stream may yield a message already serialised (bytes,
    exchange/node/pacing.py) that the server sends as it is."""
    return kind.FromString(item) if isinstance(item, bytes) else cast(MessageT, item)


class FakeRpcError(grpc.RpcError):
    """A gRPC error as a call raises it: a status code and its details."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Aborted(Exception):
    """What FakeContext.abort raises: the status a handler ended the call with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    """The part of grpc.aio.ServicerContext the handlers use."""

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...] = ()) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.metadata

    def done(self) -> bool:
        """False: tests use one context for several calls, each of them a call not yet ended."""
        return False

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        await asyncio.sleep(0)
        raise Aborted(code, details)
