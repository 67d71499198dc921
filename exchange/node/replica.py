"""A node's replica of every book: applies sequenced log entries strictly in sequence order.

Entries arrive from three places (the node's own grants, peers' BroadcastOrder, the Sequencer's log)
in any order and any number of times. `offer` applies an entry only when it is the next one of its
market, buffers it when it is ahead, and ignores it when it is already applied, so replication is
idempotent and order-insensitive, and the books are a pure function of the log.

Besides the engine, the replica keeps what is derived from the log and needed to answer clients:
the events of recent commands (the journal: results of retried orders, StreamEvents/StreamOrders resume,
GetOrder), the (account, client_order_id) -> order id map (idempotency), each account's resting orders
(ListOrders), the orders that left the book recently, the open subscriptions of the event streams, and the
public market data by Sequencer time (market_data.py: trades, candles, ticker; bounded, in the snapshot).
Callers use its query methods; the state behind them is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from exchange import engine as eng
from exchange.errors import FailedPrecondition
from exchange.node.convert import engine_command, proto_side
from exchange.node.market_data import MarketData
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2

log = logging.getLogger(__name__)

MAX_BUFFERED = 200_000
FILLED, CANCELLED, REJECTED, RESTING = pb.FILLED, pb.CANCELLED, pb.REJECTED, pb.RESTING
FinishedRecord = tuple[pb.OrderStatus, int, str]  # (status, cancelled size, account) of an order that left the book
ClientOrderKey = tuple[str, str]  # (account, client_order_id): a client_order_id is unique per account
OrderFilled, OrderCancelled, OrderRejected, OrderRested = (
    eng.OrderFilled, eng.OrderCancelled, eng.OrderRejected, eng.OrderRested)
Level = tuple[int, int, int]  # (price, total open size, order count)


@dataclass(slots=True)
class Applied:
    """One applied log entry: its command and the events it produced."""

    seq: int
    command: types_pb2.Command
    events: list[eng.Event]
    traded: bool = False  # whether it made trades (set when it is applied; a journaled one's is not kept)


@dataclass(frozen=True, slots=True)
class MarketView:
    """One market's position and book identity on this node (GetStatus, GetOrderBook)."""

    market: str
    applied_seq: int
    known_seq: int  # the highest sequence this node knows exists (>= applied_seq)
    checksum: int
    buffered: int  # entries received ahead of a gap
    resting_orders: int

    @property
    def lag(self) -> int:
        return self.known_seq - self.applied_seq


@dataclass(frozen=True, slots=True)
class OrderState:
    """What this node knows of one order: resting, or finished and still retained (GetOrder).

    What the node no longer knows of a finished order (its submit left the journal) is 0 or empty."""

    market: str
    order_id: int
    status: pb.OrderStatus
    side: types_pb2.Side
    order_type: types_pb2.OrderType
    price: int
    size: int
    filled: int
    remaining: int
    client_order_id: str
    account: str


# A journal record: the command's bytes as logged (parsed again only when asked for: a retried order,
# GetOrder) and its events. Bytes rather than the parsed message: the journal holds up to 200k records per
# market, a parsed message is larger and is one more object for every full garbage collection to scan.
JournalRecord = tuple[bytes, tuple[eng.Event, ...]]


@dataclass
class _MarketState:
    market: str
    buffer: dict[int, types_pb2.SequencedCommand] = field(default_factory=dict)
    journal: OrderedDict[int, JournalRecord] = field(default_factory=OrderedDict)
    client_order_ids: dict[ClientOrderKey, int] = field(default_factory=dict)
    # account -> its resting orders' ids, oldest first (values unused: an ordered set)
    resting_by_account: dict[str, dict[int, None]] = field(default_factory=dict)
    known_seq: int = 0
    listeners: set[asyncio.Queue[Applied]] = field(default_factory=set)
    # order id -> (status, cancelled size) of orders that left the book, most recent last (bounded).
    finished: OrderedDict[int, FinishedRecord] = field(default_factory=OrderedDict)


class Replica:
    def __init__(self, markets: Iterable[eng.MarketConfig], journal_size: int = 200_000) -> None:
        self._engine = eng.Engine(markets)
        self.journal_size = journal_size
        self._states = {name: _MarketState(name) for name in self._engine.markets}
        self.market_data = MarketData(self._engine.markets)
        # market -> what to call with every entry applied in that market
        self._on_applied: dict[str, list[Callable[[Applied], None]]] = {name: [] for name in self._states}

    # -- position -----------------------------------------------------------------------------------

    @property
    def markets(self) -> Mapping[str, eng.MarketConfig]:
        """The configured markets, the default one first."""
        return self._engine.markets

    def applied_seq(self, market: str) -> int:
        return self._engine.last_seq(market)

    def known_seq(self, market: str) -> int:
        """The highest sequence this node knows the Sequencer has handed out (never below the applied one)."""
        return max(self._states[market].known_seq, self._engine.last_seq(market))

    def lag(self, market: str) -> int:
        return self.known_seq(market) - self._engine.last_seq(market)

    def note_known(self, market: str, seq: int) -> None:
        state = self._states[market]
        if seq > state.known_seq:
            state.known_seq = seq

    def first_gap(self, market: str) -> tuple[int, int] | None:
        """(first missing seq, last missing seq before the buffer) if buffered entries wait on a gap."""
        state = self._states[market]
        if not state.buffer:
            return None
        return self._engine.last_seq(market) + 1, min(state.buffer) - 1

    def view(self, market: str) -> MarketView:
        state = self._states[market]
        return MarketView(
            market, self.applied_seq(market), self.known_seq(market), self._engine.checksum(market),
            len(state.buffer), sum(1 for _ in self._engine.resting_orders(market)),
        )

    # -- the book -----------------------------------------------------------------------------------

    def depth(self, market: str, levels: int) -> tuple[list[Level], list[Level]]:
        return self._engine.depth(market, levels)

    def checksum(self, market: str) -> int:
        return self._engine.checksum(market)

    def resting_orders(self, market: str) -> Iterator[eng.OrderView]:
        """Every resting order in priority order: bids best first (FIFO per level), then asks best first."""
        return self._engine.resting_orders(market)

    def is_resting(self, market: str, order_id: int) -> bool:
        return self._engine.order(market, order_id) is not None

    def order_state(self, market: str, order_id: int) -> OrderState | None:
        """The order as this node knows it: resting, or finished and still retained; None if neither."""
        side, order_type = types_pb2.SIDE_UNSPECIFIED, types_pb2.ORDER_TYPE_UNSPECIFIED
        price = size = 0
        client_order_id = account = ""
        submitted = self.journal_entry(market, order_id)
        if submitted is not None and submitted.command.WhichOneof("kind") == "new_order":
            new_order = submitted.command.new_order
            side, order_type, price, size = new_order.side, new_order.order_type, new_order.price, new_order.size
            client_order_id, account = submitted.command.client_order_id, submitted.command.account
        view = self._engine.order(market, order_id)
        if view is not None:
            return OrderState(market, order_id, RESTING, proto_side(view.side), order_type, view.price, view.size,
                              view.filled, view.remaining, client_order_id, view.account)
        finished = self._states[market].finished.get(order_id)
        if finished is None:
            return None
        status, cancelled, owner = finished
        filled = size - cancelled if status == CANCELLED and size else size if status == FILLED else 0
        return OrderState(market, order_id, status, side, order_type, price, size, filled, 0, client_order_id,
                          owner or account)

    def owner(self, market: str, order_id: int) -> str | None:
        """The account of a resting order (None if it does not rest here)."""
        view = self._engine.order(market, order_id)
        return None if view is None else view.account

    def resting_orders_of(self, market: str, account: str, after: int = 0, limit: int = 100) -> list[OrderState]:
        """`account`'s resting orders with ids above `after`, oldest first, at most `limit` of them."""
        ids = self._states[market].resting_by_account.get(account, {})
        found = []
        for order_id in ids:
            if order_id > after:
                state = self.order_state(market, order_id)
                if state is not None:
                    found.append(state)
                    if len(found) == limit:
                        break
        return found

    # -- the journal and idempotency -----------------------------------------------------------------

    def journal_entry(self, market: str, seq: int) -> Applied | None:
        """The command `seq` and its events, if still journaled."""
        record = self._states[market].journal.get(seq)
        if record is None:
            return None
        data, events = record
        return Applied(seq, types_pb2.Command.FromString(data), list(events))

    def oldest_journaled(self, market: str) -> int:
        """The first sequence whose events are still journaled (the next one if the journal is empty)."""
        journal = self._states[market].journal
        return next(iter(journal)) if journal else self.applied_seq(market) + 1

    def journaled_events(self, market: str, seq: int) -> tuple[eng.Event, ...]:
        """The events of journaled command `seq` (KeyError if it is not journaled)."""
        return self._states[market].journal[seq][1]

    def order_of_client_id(self, market: str, account: str, client_order_id: str) -> int | None:
        return self._states[market].client_order_ids.get((account, client_order_id))

    def retained_result(self, market: str, seq: int, client_order_id: str) -> Applied:
        """The first result of the order a repeated `client_order_id` names, for its duplicate's answer.

        FAILED_PRECONDITION when this node no longer retains it (or never saw it: restored from a snapshot):
        the order exists once, and the message names it so the client can look it up."""
        applied = self.journal_entry(market, seq)
        if applied is None:
            raise FailedPrecondition(
                f"client_order_id {client_order_id!r} is order {seq} of {market}, whose result this node no "
                "longer retains; query it with GetOrder (it was not placed again)"
            )
        return applied

    # -- applying -----------------------------------------------------------------------------------

    def on_applied(self, market: str, callback: Callable[[Applied], None]) -> None:
        """Calls `callback` with every entry applied in `market` from now on."""
        self._on_applied[market].append(callback)

    @contextlib.contextmanager
    def subscribe(self, market: str) -> Iterator[asyncio.Queue[Applied]]:
        """A queue that receives every entry applied in `market` while the context is open."""
        queue: asyncio.Queue[Applied] = asyncio.Queue()
        listeners = self._states[market].listeners
        listeners.add(queue)
        try:
            yield queue
        finally:
            listeners.discard(queue)

    def offer(self, entry: types_pb2.SequencedCommand) -> bool:
        """Applies or buffers an entry; returns False if it was already known (applied or buffered)."""
        state = self._states[entry.market]
        seq = entry.seq
        applied = self._engine.last_seq(entry.market)
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

    def snapshot(self) -> tuple[bytes, list[tuple[str, str, str, int]]]:
        """The replicated state a peer needs to start here: the engine (with every resting order's owner),
        and every (market, account, client_order_id, order id)."""
        client_order_ids = [
            (market, account, client_order_id, seq)
            for market, state in self._states.items()
            for (account, client_order_id), seq in state.client_order_ids.items()
        ]
        return self._engine.snapshot(), client_order_ids

    def adopt(self, engine_snapshot: bytes, client_order_ids: Iterable[tuple[str, str, str, int]],
              market_data: bytes = b"") -> bool:
        """Replaces this replica's state by a peer's snapshot if it trades the same markets and is not
        behind in any of them; returns whether it did. Raises ValueError for a corrupt snapshot.

        The journal starts empty (results of older orders and StreamEvents before the snapshot are not
        available on this node); buffered entries the snapshot already covers are dropped. `market_data`: the
        peer's MarketData.snapshot() at the same sequences (a market it lacks starts its market data afresh)."""
        engine = eng.Engine.restore(engine_snapshot)
        if dict(engine.markets) != dict(self._engine.markets):
            raise ValueError(
                f"the snapshot's markets {list(engine.markets)} differ from this node's {list(self._states)}"
            )
        if any(engine.last_seq(m) < self._engine.last_seq(m) for m in self._states):
            return False
        self._engine = engine
        for market, state in self._states.items():
            applied = engine.last_seq(market)
            self.note_known(market, applied)
            state.buffer = {seq: entry for seq, entry in state.buffer.items() if seq > applied}
        for market, account, client_order_id, seq in client_order_ids:
            if market in self._states:
                self._states[market].client_order_ids.setdefault((account, client_order_id), seq)
        moved = {m: engine.last_seq(m) for m in self._states if engine.last_seq(m) != self.market_data.tape(m).seq}
        fresh = self.market_data.restore(market_data, moved)  # a market at the same sequence keeps its own
        if fresh:
            log.warning("the snapshot holds no market data of %s at its sequence: their trades, candles and ticker "
                        "start from there on this node", ", ".join(fresh))
        for market, state in self._states.items():
            state.resting_by_account = {}
            for view in engine.resting_orders(market):
                state.resting_by_account.setdefault(view.account, {})[view.order_id] = None
        while any(self._drain(state) for state in self._states.values()):
            pass
        return True

    def _drain(self, state: _MarketState) -> bool:
        """Applies buffered entries that have become next; returns whether any was."""
        following = state.buffer.pop(self._engine.last_seq(state.market) + 1, None)
        if following is None:
            return False
        self._apply(state, following)
        return True

    def _apply(self, state: _MarketState, entry: types_pb2.SequencedCommand) -> None:
        command = types_pb2.Command.FromString(entry.command)
        events = self._engine.apply(engine_command(command, entry.seq))
        traded = self.market_data.apply(state.market, entry.seq, command.time_ms, events)
        applied = Applied(entry.seq, command, events, traded)
        journal = state.journal
        journal[entry.seq] = (entry.command, tuple(events))
        if len(journal) > self.journal_size:
            journal.popitem(last=False)
        self._note_finished(state, events)
        if command.client_order_id and command.WhichOneof("kind") == "new_order":
            state.client_order_ids.setdefault((command.account, command.client_order_id), entry.seq)
        for listener in state.listeners:
            listener.put_nowait(applied)
        for callback in self._on_applied[state.market]:
            callback(applied)

    def _note_finished(self, state: _MarketState, events: list[eng.Event]) -> None:
        """Keeps each account's resting orders and the recently finished orders current."""
        finished = state.finished
        resting = state.resting_by_account
        for event in events:
            if type(event) is OrderFilled:
                if event.maker_remaining == 0:
                    finished[event.maker_order_id] = (FILLED, 0, event.maker_account)
                    resting.get(event.maker_account, {}).pop(event.maker_order_id, None)
                if event.taker_remaining == 0:
                    finished[event.taker_order_id] = (FILLED, 0, event.taker_account)
                    resting.get(event.taker_account, {}).pop(event.taker_order_id, None)
            elif type(event) is OrderRested:
                resting.setdefault(event.account, {})[event.order_id] = None
            elif type(event) is OrderCancelled:
                finished[event.order_id] = (CANCELLED, event.size, event.account)
                resting.get(event.account, {}).pop(event.order_id, None)
            elif type(event) is OrderRejected and event.order_id == event.seq:
                finished[event.order_id] = (REJECTED, 0, event.account)
        while len(finished) > self.journal_size:
            finished.popitem(last=False)
