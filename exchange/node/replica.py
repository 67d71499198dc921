"""A node's replica of every book: applies sequenced log entries strictly in sequence order.

Entries arrive from three places (the node's own grants, peers' BroadcastOrder, the Sequencer's log)
in any order and any number of times. `offer` applies an entry only when it is the next one of its
market, buffers it when it is ahead, and ignores it when it is already applied, so replication is
idempotent and order-insensitive, and the books are a pure function of the log.

Besides the engine, the replica keeps what is derived from the log and needed to answer clients, each part
bounded by what is live or by the window of the last `journal_size` commands of each market (docs/operations.md,
"A node's memory"), never by the age of the exchange:

* the window: the events of those commands (the journal: results of retried orders, StreamEvents/StreamOrders
  resume), the (account, client_order_id) -> order id keys placed in it (exchange/dedup.py: a retry is answered
  with the first result without asking the Sequencer), and how each order submitted in it finished (GetOrder);
* what is live: each account's resting orders with their order type and client_order_id (ListOrders,
  GetOrder), entries buffered ahead of a gap, and the open subscriptions of the event streams;
* the public market data by Sequencer time (market_data.py: trades, candles, ticker; bounded, in the snapshot),
  and the L2 levels of a market while StreamBook subscribers watch it (`watch_book`, exchange/engine/l2.py).

A replica that adopts a snapshot keeps the keys it carries (a peer's carries the window's) and starts its
journal at the snapshot's position. Callers use its query methods; the state behind them is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from exchange import engine as eng
from exchange.dedup import DedupWindow, client_key, dedup_key, split_key
from exchange.engine.l2 import BookFeed, ViewDiff
from exchange.errors import FailedPrecondition
from exchange.node.market_data import MarketData
from exchange.node.order_messages import engine_command, proto_side
from exchange.node.order_records import (
    RESTING,
    FinishedRecord,
    OrderState,
    RestingRecord,
    SizeAndPrice,
    finished_state,
    note_finished,
)
from exchange.node.pacing import Pulse, SharedMessages
from exchange.v1 import types_pb2

log = logging.getLogger(__name__)

MAX_BUFFERED = 200_000
DEFAULT_JOURNAL_SIZE = 100_000  # commands per market: the window (`--journal-size`)
PlaceOrder, AmendOrder = eng.PlaceOrder, eng.AmendOrder
Level = tuple[int, int, int]  # (price, total open size, order count)


@dataclass(slots=True)
class Applied:
    """One applied log entry: its command and the events it produced."""

    seq: int
    command: types_pb2.Command
    events: list[eng.Event]
    traded: bool = False  # whether it made trades (set when it is applied; a journaled one's is not kept)


@dataclass(eq=False, slots=True)
class BookWatchers:
    """A market's StreamBook subscribers and their shared levels (pure, exchange/engine/l2.py). The apply path
    updates the levels and notifies the market's `pulse` (exchange/node/pacing.py), which wakes them together at
    most every 50 ms; it never waits for a subscriber."""

    feed: BookFeed
    watches: set[BookWatch] = field(default_factory=set)
    pulse: Pulse = field(default_factory=Pulse)
    # the updates' messages, serialised once for the views in step (exchange/node/book_stream.py)
    messages: SharedMessages = field(default_factory=SharedMessages)


@dataclass(eq=False, slots=True)
class BookWatch:
    """One StreamBook subscriber: its view, and the market's watchers (whose `changed` event wakes it)."""

    watchers: BookWatchers
    view: ViewDiff
    ended: str = ""  # why the node ended the stream (the book was replaced by a snapshot)

    @property
    def feed(self) -> BookFeed:
        return self.watchers.feed


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


# A journal record: the command's bytes as logged (parsed again only when asked for: a retried order,
# GetOrder) and its events. Bytes rather than the parsed message: the journal holds up to `journal_size`
# records per market, a parsed message is larger and is one more object for every full garbage collection to
# scan.
JournalRecord = tuple[bytes, tuple[eng.Event, ...]]


@dataclass
class _MarketState:
    market: str
    client_order_ids: DedupWindow  # the keys of the new orders among the window's commands
    buffer: dict[int, types_pb2.SequencedCommand] = field(default_factory=dict)
    # seq -> record of the window's commands from `journal_start` on (a plain dict: its keys are consecutive,
    # so the oldest is dropped by its number as each command is applied)
    journal: dict[int, JournalRecord] = field(default_factory=dict)
    journal_start: int = 1  # the first command journaled since this replica started or adopted a snapshot
    # account -> its resting orders' ids, oldest first, each with what the book does not keep of it
    resting_by_account: dict[str, dict[int, RestingRecord]] = field(default_factory=dict)
    known_seq: int = 0
    listeners: set[asyncio.Queue[Applied]] = field(default_factory=set)
    # order id -> how it left the book, for the orders whose submit is journaled (dropped with it)
    finished: dict[int, FinishedRecord] = field(default_factory=dict)
    # order id -> its size and price, for the resting orders whose submit is journaled and whose size or price
    # is no longer the submit's (dropped with the submit, or moved into `finished` when the order leaves)
    changed: dict[int, SizeAndPrice] = field(default_factory=dict)


class Replica:
    def __init__(self, markets: Iterable[eng.MarketConfig], journal_size: int = DEFAULT_JOURNAL_SIZE) -> None:
        if journal_size < 1:
            raise ValueError(f"the journal must hold at least 1 command per market, got {journal_size}")
        self._engine = eng.Engine(markets)
        self.journal_size = journal_size
        self._states = {name: _MarketState(name, DedupWindow(journal_size)) for name in self._engine.markets}
        self.market_data = MarketData(self._engine.markets)
        # market -> what to call with every entry applied in that market
        self._on_applied: dict[str, list[Callable[[Applied], None]]] = {name: [] for name in self._states}
        # market -> its StreamBook subscribers and their levels, only while it has any
        self._book_watchers: dict[str, BookWatchers] = {}

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
        """The order as this node knows it: resting, or finished within the window (its submit is among the
        commands `oldest_journaled` on); None if neither."""
        state = self._states[market]
        view = self._engine.order(market, order_id)
        if view is not None:
            order_type, client_order_id = state.resting_by_account.get(view.account, {}).get(
                order_id, (types_pb2.ORDER_TYPE_UNSPECIFIED, ""))
            return OrderState(market, order_id, RESTING, proto_side(view.side), order_type, view.price, view.size,
                              view.filled, view.remaining, client_order_id, view.account)
        finished = state.finished.get(order_id)
        record = state.journal.get(order_id)
        if finished is None or record is None:
            return None
        return finished_state(market, order_id, finished, types_pb2.Command.FromString(record[0]))

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
        """The first sequence whose events are still journaled (the next one if the journal is empty): the
        window's first command, or the first one applied after the snapshot this replica adopted."""
        return max(self._states[market].journal_start, self.applied_seq(market) - self.journal_size + 1)

    def order_of_client_id(self, market: str, account: str, client_order_id: str) -> int | None:
        """The order `account` placed with `client_order_id` among the window's commands, if any."""
        return self._states[market].client_order_ids.get(client_key(account, client_order_id))

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
    def subscribe(self, market: str, limit: int = 0) -> Iterator[asyncio.Queue[Applied]]:
        """A queue that receives every entry applied in `market` while the context is open. With a `limit`, a
        reader that falls that many entries behind (a client that stopped reading) is dropped: its queue gets
        nothing more, and `dropped(queue)` says so (its memory is bounded by the limit)."""
        queue: asyncio.Queue[Applied] = asyncio.Queue(limit)
        listeners = self._states[market].listeners
        listeners.add(queue)
        try:
            yield queue
        finally:
            listeners.discard(queue)

    def dropped(self, market: str, queue: asyncio.Queue[Applied]) -> bool:
        """Whether a subscription of `market` was dropped for falling behind (see `subscribe`)."""
        return queue not in self._states[market].listeners

    @contextlib.contextmanager
    def watch_book(self, market: str, depth: int) -> Iterator[BookWatch]:
        """A StreamBook subscriber's view of `depth` levels per side from the applied sequence on; the market's
        levels are kept (exchange/engine/l2.py BookFeed) only while someone watches."""
        watchers = self._book_watchers.get(market)
        if watchers is None:
            watchers = self._book_watchers[market] = BookWatchers(BookFeed(self._engine, market))
        watch = BookWatch(watchers, watchers.feed.subscribe(depth))
        watchers.watches.add(watch)
        try:
            yield watch
        finally:
            watchers.watches.discard(watch)
            if not watchers.watches and self._book_watchers.get(market) is watchers:
                del self._book_watchers[market]
                watchers.pulse.close()

    def book_watchers(self, market: str) -> int:
        watchers = self._book_watchers.get(market)
        return 0 if watchers is None else len(watchers.watches)

    def offer(self, entry: types_pb2.SequencedCommand) -> bool:
        """Applies or buffers an entry; returns False if it was already known (applied or buffered)."""
        market = entry.market
        state = self._states[market]
        seq = entry.seq
        applied = self._engine.last_seq(market)
        if seq <= applied or seq in state.buffer:
            return False
        self.note_known(market, seq)
        if seq != applied + 1:
            if seq - applied <= MAX_BUFFERED:
                state.buffer[seq] = entry
            return True
        self._apply(state, entry)
        while state.buffer and self._drain(state):
            pass
        return True

    def snapshot(self, window_keys: bool = True) -> tuple[bytes, list[tuple[str, str, str, int]]]:
        """The replicated state a node needs to start here: the engine (with every resting order's owner),
        and the (market, account, client_order_id, order id) of the resting orders and, with `window_keys`, of
        every order of the window (a peer's snapshot has them; the node's own, written every so often, does not:
        they cost a second per 100k, and after a restart the Sequencer's dedup window keeps those orders from
        being placed again, answered as when the node has the key but no longer the result)."""
        client_order_ids = []
        for market, state in self._states.items():
            in_window = state.client_order_ids.items() if window_keys else []
            client_order_ids += [(market, *split_key(key), seq) for key, seq in in_window]
            floor = in_window[0][1] if in_window else self.applied_seq(market) + 1
            client_order_ids += [
                (market, account, client_order_id, order_id)
                for account, orders in state.resting_by_account.items()
                for order_id, (_, client_order_id) in orders.items()
                if client_order_id and order_id < floor
            ]
        return self._engine.snapshot(), client_order_ids

    def adopt(self, engine_snapshot: bytes, client_order_ids: Iterable[tuple[str, str, str, int]],
              market_data: bytes = b"") -> bool:
        """Replaces this replica's state by a peer's snapshot if it trades the same markets and is not
        behind in any of them; returns whether it did. Raises ValueError for a corrupt snapshot.

        The journal starts empty (results of older orders, StreamEvents before the snapshot and GetOrder of
        orders finished before it are not available on this node); the snapshot's client_order_ids are kept;
        buffered entries the snapshot already covers are dropped. `market_data`: the peer's MarketData.snapshot()
        at the same sequences (a market it lacks starts its market data afresh)."""
        engine = eng.Engine.restore(engine_snapshot)
        if dict(engine.markets) != dict(self._engine.markets):
            raise ValueError(
                f"the snapshot's markets {list(engine.markets)} differ from this node's {list(self._states)}"
            )
        if any(engine.last_seq(m) < self._engine.last_seq(m) for m in self._states):
            return False
        self._engine = engine
        for watchers in self._book_watchers.values():  # their levels were the old engine's: they start again
            for watch in watchers.watches:
                watch.ended = "this node replaced its book by a peer's snapshot; subscribe again"
            watchers.pulse.fire()
        self._book_watchers = {}
        keys: dict[str, list[tuple[int, str, str]]] = {market: [] for market in self._states}
        for market, account, client_order_id, seq in client_order_ids:
            if market in keys:
                keys[market].append((seq, account, client_order_id))
        for market, state in self._states.items():
            applied = engine.last_seq(market)
            self.note_known(market, applied)
            state.buffer = {seq: entry for seq, entry in state.buffer.items() if seq > applied}
            state.journal, state.finished, state.changed, state.journal_start = {}, {}, {}, applied + 1
            window = DedupWindow(self.journal_size)
            resting_ids: dict[int, str] = {}
            for seq, account, client_order_id in sorted(keys[market]):
                if seq <= applied:
                    window.note(seq, client_key(account, client_order_id))
                    resting_ids[seq] = client_order_id
            window.note(applied, None)
            window.forget_before(applied)
            state.client_order_ids = window
            # oldest first, as when they rested one by one: ListOrders pages by order id
            by_account: dict[str, dict[int, RestingRecord]] = {}
            for order_id, account in engine.resting_owners(market):
                by_account.setdefault(account, {})[order_id] = (
                    types_pb2.ORDER_TYPE_UNSPECIFIED, resting_ids.get(order_id, ""))
            state.resting_by_account = by_account
        moved = {m: (engine.last_seq(m), engine.next_trade_id(m)) for m in self._states
                 if engine.last_seq(m) != self.market_data.tape(m).seq}
        fresh = self.market_data.restore(market_data, moved)  # a market at the same sequence keeps its own
        if fresh:
            log.warning("the snapshot holds no market data of %s at its sequence: their trades, candles and ticker "
                        "start from there on this node", ", ".join(fresh))
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
        data, seq = entry.command, entry.seq
        command = types_pb2.Command.FromString(data)
        order = engine_command(command, seq)
        # what an amended order had filled before (its size and price after are in the events and the book)
        before = self._engine.order(state.market, order.order_id) if type(order) is AmendOrder else None
        watchers = self._book_watchers.get(state.market)
        events = self._engine.apply(order) if watchers is None else self._apply_watched(order, watchers)
        traded = self.market_data.apply(state.market, seq, command.time_ms, events)
        applied = Applied(seq, command, events, traded)
        journal = state.journal
        journal[seq] = (data, tuple(events))
        gone = seq - self.journal_size  # the command that leaves the window, and its order's record
        if gone in journal:
            del journal[gone]
            state.finished.pop(gone, None)
            if state.changed:
                state.changed.pop(gone, None)
        new_order = type(order) is PlaceOrder
        note_finished(state.finished, state.resting_by_account, state.changed, self._engine, state.market, command,
                      new_order, events, max(state.journal_start, gone + 1), before)
        window = state.client_order_ids
        window.note(seq, dedup_key(command) if new_order else None)
        window.forget_before(seq)
        if state.listeners:
            for behind in [listener for listener in state.listeners if listener.full()]:
                state.listeners.discard(behind)  # fell `limit` entries behind: dropped (see subscribe)
            for listener in state.listeners:
                listener.put_nowait(applied)
        for callback in self._on_applied[state.market]:
            callback(applied)

    def _apply_watched(self, command: eng.Command, watchers: BookWatchers) -> list[eng.Event]:
        """Applies a command of a market with StreamBook subscribers: their levels follow, and they are woken."""
        feed = watchers.feed
        hint = feed.before(command)
        events = self._engine.apply(command)
        feed.after(command, events, hint)
        watchers.pulse.notify()
        return events
