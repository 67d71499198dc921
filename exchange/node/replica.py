"""A node's replica of every book: applies sequenced log entries strictly in sequence order.

Entries arrive from three places (the node's own grants, peers' BroadcastOrder, the Sequencer's log)
in any order and any number of times. `offer` applies an entry only when it is the next one of its
market, buffers it when it is ahead, and ignores it when it is already applied, so replication is
idempotent and order-insensitive, and the books are a pure function of the log.

Besides the engine, the replica keeps what is derived from the log and needed to answer clients:
the events of recent commands (the journal: results of retried orders, StreamEvents resume), the
client_order_id -> order id map (idempotency), and the open listeners of StreamEvents.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from exchange import engine as eng
from exchange.node.convert import engine_command
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2

log = logging.getLogger(__name__)

MAX_BUFFERED = 200_000
FILLED, CANCELLED, REJECTED = pb.FILLED, pb.CANCELLED, pb.REJECTED
OrderFilled, OrderCancelled, OrderRejected = eng.OrderFilled, eng.OrderCancelled, eng.OrderRejected


@dataclass(slots=True)
class Applied:
    """One applied log entry: its command and the events it produced."""

    seq: int
    command: types_pb2.Command
    events: list[eng.Event]


# A journal record: the command's bytes as logged (parsed again only when asked for: a retried order,
# GetOrder) and its events. Bytes rather than the parsed message: the journal holds up to 200k records per
# market, a parsed message is larger and is one more object for every full garbage collection to scan.
JournalRecord = tuple[bytes, tuple[eng.Event, ...]]


@dataclass
class MarketState:
    market: str
    buffer: dict[int, types_pb2.SequencedCommand] = field(default_factory=dict)
    journal: OrderedDict[int, JournalRecord] = field(default_factory=OrderedDict)
    client_order_ids: dict[str, int] = field(default_factory=dict)
    known_seq: int = 0
    listeners: set[asyncio.Queue[Applied | None]] = field(default_factory=set)
    waiters: dict[int, list[asyncio.Future[None]]] = field(default_factory=dict)
    # order id -> (status, filled size) of orders that left the book, most recent last (bounded).
    finished: OrderedDict[int, tuple[int, int]] = field(default_factory=OrderedDict)


class Replica:
    def __init__(self, markets: Iterable[eng.MarketConfig], journal_size: int = 200_000) -> None:
        self.engine = eng.Engine(markets)
        self.journal_size = journal_size
        self.states = {name: MarketState(name) for name in self.engine.markets}
        # market -> what to call with every entry applied in that market
        self.on_applied: dict[str, list[Callable[[Applied], None]]] = {name: [] for name in self.states}

    def applied_seq(self, market: str) -> int:
        return self.engine.last_seq(market)

    def lag(self, market: str) -> int:
        state = self.states[market]
        return max(0, state.known_seq - self.engine.last_seq(market))

    def note_known(self, market: str, seq: int) -> None:
        state = self.states[market]
        if seq > state.known_seq:
            state.known_seq = seq

    def offer(self, entry: types_pb2.SequencedCommand) -> bool:
        """Applies or buffers an entry; returns False if it was already known (applied or buffered)."""
        state = self.states[entry.market]
        seq = entry.seq
        applied = self.engine.last_seq(entry.market)
        if seq <= applied or seq in state.buffer:
            return False
        self.note_known(entry.market, seq)
        if seq != applied + 1:
            if seq - applied <= MAX_BUFFERED:
                state.buffer[seq] = entry
            return True
        self._apply(state, entry)
        while state.buffer and self._drain(state):
            pass
        return True

    def snapshot(self) -> tuple[bytes, list[tuple[str, str, int]]]:
        """The replicated state a peer needs to start here: the engine, and every client_order_id."""
        client_order_ids = [
            (market, client_order_id, seq)
            for market, state in self.states.items()
            for client_order_id, seq in state.client_order_ids.items()
        ]
        return self.engine.snapshot(), client_order_ids

    def adopt(self, engine_snapshot: bytes, client_order_ids: Iterable[tuple[str, str, int]]) -> bool:
        """Replaces this replica's state by a peer's snapshot if it trades the same markets and is not
        behind in any of them; returns whether it did. Raises ValueError for a corrupt snapshot.

        The journal starts empty (results of older orders and StreamEvents before the snapshot are not
        available on this node); buffered entries the snapshot already covers are dropped."""
        engine = eng.Engine.restore(engine_snapshot)
        if dict(engine.markets) != dict(self.engine.markets):
            raise ValueError(
                f"the snapshot's markets {list(engine.markets)} differ from this node's {list(self.states)}"
            )
        if any(engine.last_seq(m) < self.engine.last_seq(m) for m in self.states):
            return False
        self.engine = engine
        for market, state in self.states.items():
            applied = engine.last_seq(market)
            self.note_known(market, applied)
            state.buffer = {seq: entry for seq, entry in state.buffer.items() if seq > applied}
            for seq in [seq for seq in state.waiters if seq <= applied]:
                for future in state.waiters.pop(seq):
                    if not future.done():
                        future.set_result(None)
        for market, client_order_id, seq in client_order_ids:
            if market in self.states:
                self.states[market].client_order_ids.setdefault(client_order_id, seq)
        while any(self._drain(state) for state in self.states.values()):
            pass
        return True

    def _drain(self, state: MarketState) -> bool:
        """Applies buffered entries that have become next; returns whether any was."""
        following = state.buffer.pop(self.engine.last_seq(state.market) + 1, None)
        if following is None:
            return False
        self._apply(state, following)
        return True

    def first_gap(self, market: str) -> tuple[int, int] | None:
        """(first missing seq, last missing seq before the buffer) if buffered entries wait on a gap."""
        state = self.states[market]
        if not state.buffer:
            return None
        return self.engine.last_seq(market) + 1, min(state.buffer) - 1

    def _apply(self, state: MarketState, entry: types_pb2.SequencedCommand) -> None:
        command = types_pb2.Command.FromString(entry.command)
        events = self.engine.apply(engine_command(command, entry.seq))
        applied = Applied(entry.seq, command, events)
        journal = state.journal
        journal[entry.seq] = (entry.command, tuple(events))
        if len(journal) > self.journal_size:
            journal.popitem(last=False)
        self._note_finished(state, events)
        if command.client_order_id and command.WhichOneof("kind") == "new_order":
            state.client_order_ids.setdefault(command.client_order_id, entry.seq)
        for listener in state.listeners:
            listener.put_nowait(applied)
        waiting = state.waiters.pop(entry.seq, None)
        if waiting:
            for future in waiting:
                if not future.done():
                    future.set_result(None)
        for callback in self.on_applied[state.market]:
            callback(applied)

    def _note_finished(self, state: MarketState, events: list[eng.Event]) -> None:
        finished = state.finished
        for event in events:
            kind = type(event)
            if kind is OrderFilled:
                if event.maker_remaining == 0:
                    finished[event.maker_order_id] = (FILLED, 0)
                if event.taker_remaining == 0:
                    finished[event.taker_order_id] = (FILLED, 0)
            elif kind is OrderCancelled:
                finished[event.order_id] = (CANCELLED, event.size)
            elif kind is OrderRejected and event.order_id == event.seq:
                finished[event.order_id] = (REJECTED, 0)
        while len(finished) > self.journal_size:
            finished.popitem(last=False)

    def finished_order(self, market: str, order_id: int) -> tuple[int, int] | None:
        """(status, cancelled size) of an order that left the book, if still retained."""
        return self.states[market].finished.get(order_id)

    def journal_entry(self, market: str, seq: int) -> Applied | None:
        """The command `seq` and its events, if still journaled."""
        record = self.states[market].journal.get(seq)
        if record is None:
            return None
        data, events = record
        return Applied(seq, types_pb2.Command.FromString(data), list(events))

    def journaled_events(self, market: str, seq: int) -> tuple[eng.Event, ...]:
        """The events of journaled command `seq` (KeyError if it is not journaled)."""
        return self.states[market].journal[seq][1]

    def order_of_client_id(self, market: str, client_order_id: str) -> int | None:
        return self.states[market].client_order_ids.get(client_order_id)

    async def wait_applied(self, market: str, seq: int) -> None:
        if self.engine.last_seq(market) >= seq:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.states[market].waiters.setdefault(seq, []).append(future)
        await future
