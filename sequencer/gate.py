"""The sequencing gate: per-market gap-free numbering, the roles, and the log's in-memory tail.

The gate (docs/architecture.md, "The sequencing protocol"): a node states the sequence it has applied. If the market is
further, the node is behind. When what it lacks fits in one answer (MAX_MISSING_PER_ANSWER entries), the
request is granted at once: the answer carries the entries the node lacks, then the node's commands
numbered after them, and the node applies them in that order, so its orders are matched against exactly
the global state. Only a node further behind than that, or a request that repeats commands the log already
holds (an answer that was lost, a request that arrived twice), gets a "stale" answer: nothing is granted,
the answer carries what the node lacks (its own numbered commands among them), and the node retries the
rest. The check is exact and keeps no state: a command the node still waits for can only have been
numbered after the sequence the node states, so it is among the entries the answer would carry.

Every answer waits until what it mentions is durable (see log.py: fsynced by the embedded log, committed in
Consul by the replicated one), so no node ever applies an entry that a Sequencer crash could take back, and a
restarted Sequencer resumes at exactly the last number it handed out.

Time: every command the gate numbers is stamped with the Sequencer's wall clock (`Command.time_ms`, UNIX
milliseconds, part of the signed command bytes), never below the market's last stamped time: a restarted
Sequencer resumes from the time of its log's last entry, and a new HA leader from the last entry it adopted, so
a clock set back (or a leader whose clock is behind) stamps the last time again rather than an earlier one. The
clock is injected (`clock`), read once per request, and is the only one: replicas take time from the log.

Roles (the replicated log, HA mode): only the leader numbers; a standby answers Sequence with UNAVAILABLE (the
node retries on the leader it finds in Consul) and serves ReadLog and GetSequence from what it has adopted.
The backend tells the gate when it leads, when it must stop, and what the leader committed (`log.RoleCallbacks`).
Every change of role starts a new term; an answer prepared in one term is never sent in another, so an answer
never mentions a number that a lost leadership took back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily

from exchange.commands import command_error
from exchange.dedup import DEFAULT_WINDOW, DedupWindow, dedup_key
from exchange.entry_signing import entry_mac
from exchange.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from exchange.metrics import gauge
from exchange.runtime import LongLivedStreams, log_fields
from exchange.shared.markets import MarketConfig
from exchange.v1 import sequencer_pb2, types_pb2
from exchange.v1.sequencer_pb2 import SequenceResponse
from sequencer.log import LeadershipLost, LogBackend, StoredEntry
from sequencer.metrics import LEADER_CHANGES, SEQUENCER_COMMIT_SECONDS, SEQUENCER_ENTRIES

log = logging.getLogger(__name__)

MAX_COMMANDS_PER_REQUEST = 10_000
MAX_MISSING_PER_ANSWER = 10_000
TAIL_ENTRIES = 50_000
READ_CHUNK = 5_000


def add_entries(field: RepeatedCompositeFieldContainer[types_pb2.SequencedCommand],
                entries: Iterable[StoredEntry]) -> None:
    """Appends `entries` to a repeated SequencedCommand field, each built in place: half the time of building a
    message and adding it (which copies it), and answers carry thousands of entries a second."""
    add = field.add
    for entry in entries:
        add(market=entry.market, seq=entry.seq, command=entry.command, mac=entry.mac)


@dataclass(slots=True)
class MarketStats:
    """Counters of one market's gate since the last report (see ``SequencerService.report``)."""

    grants: int = 0  # granted Sequence calls
    granted_commands: int = 0  # commands numbered by them (duplicates excluded)
    caught_up: int = 0  # grants that also carried entries the node lacked
    carried: int = 0  # entries carried that way
    stale: int = 0  # "stale" answers: too far behind, or a request repeating numbered commands

    def line(self, seconds: float) -> str:
        batch = self.granted_commands / self.grants if self.grants else 0.0
        return (
            f"{self.granted_commands / seconds:,.0f} commands/s in {self.grants / seconds:,.0f} grants/s "
            f"(batch {batch:.1f}), {self.caught_up / seconds:,.0f} grants/s carried "
            f"{self.carried / seconds:,.0f} entries/s the node lacked, {self.stale / seconds:,.0f} stale answers/s"
        )


class MarketLog:
    """In-memory state of one market's sequence: numbers assigned, numbers durable, recent tail, dedup window."""

    def __init__(self, market: str, current: int, dedup_window: int = DEFAULT_WINDOW) -> None:
        self.market = market
        self.current = current  # highest number assigned (maybe not yet durable)
        self.durable = current  # highest number known to be durable
        self.tail: deque[StoredEntry] = deque(maxlen=TAIL_ENTRIES)
        self.dedup = DedupWindow(dedup_window)
        self.dedup.last = current
        self.last_write: asyncio.Future[None] | None = None
        self.stats = MarketStats()
        self.entries_numbered = SEQUENCER_ENTRIES.labels(market)
        self.commit_seconds = SEQUENCER_COMMIT_SECONDS.labels(market)
        self.last_time = 0  # the highest time stamped on (or adopted with) an entry of this market, UNIX ms

    def tail_entry(self, seq: int) -> StoredEntry | None:
        first = self.current - len(self.tail) + 1
        if first <= seq <= self.current:
            return self.tail[seq - first]
        return None

    def tail_slice(self, from_seq: int, to_seq: int) -> list[StoredEntry]:
        """Entries from_seq..to_seq of the tail (the caller checked that from_seq is in it)."""
        first, tail = self.current - len(self.tail) + 1, self.tail
        return [tail[seq - first] for seq in range(from_seq, min(to_seq, self.current) + 1)]  # from either end

    def assign(self, entry: StoredEntry) -> None:
        """Takes the next number (`entry.seq`, not yet durable)."""
        self.current = entry.seq
        self.tail.append(entry)
        self.dedup.note(entry.seq, entry.dedup_key)

    def mark_durable(self, seq: int, write: asyncio.Future[None]) -> None:
        if write.cancelled() or write.exception() is not None:
            return
        self.durable = max(self.durable, seq)
        self.dedup.forget_before(self.durable)

    def adopt(self, entries: list[StoredEntry]) -> None:
        """Entries the leader committed (a standby's view): the next ones, durable."""
        for entry in entries:
            if entry.seq <= self.durable:
                continue
            if entry.seq != self.durable + 1:
                raise AssertionError(f"{self.market}: adopted entry {entry.seq} after {self.durable}")
            self.assign(entry)
            self.durable = entry.seq
        self.dedup.forget_before(self.durable)

    def truncate(self, durable: int) -> None:
        """Forgets every number after `durable` (assigned, never stored)."""
        self.durable = durable
        while self.tail and self.tail[-1].seq > durable:
            self.tail.pop()
        if self.tail and self.tail[-1].seq != durable:  # a gap: the tail can no longer be indexed by number
            self.tail.clear()
        self.dedup.truncate(durable)
        self.current = durable
        self.last_write = None



async def durable(write: asyncio.Future[None] | None) -> None:
    """Waits for a market's write (and so for every one before it: a backend makes them durable in order)."""
    if write is not None and not write.done():
        await asyncio.shield(write)


def _may_repeat_numbered_commands(request: sequencer_pb2.SequenceRequest, entries: list[StoredEntry]) -> bool:
    """Whether a command of the request may already be among `entries`: it is, by its origin node and
    reference; or it carries no reference (a tool's command), so a repeat could not be told apart and the
    request is granted only when the node is current, as a compare-and-set."""
    refs = {(c.origin_node, c.origin_ref) for c in request.commands}
    if any(ref == 0 for _, ref in refs):
        return True
    # A stored command holds its origin node's name verbatim (a string field): when the entries' bytes hold none
    # of the request's names, none is one of its commands, and none is parsed (most of what a node lacks is other
    # nodes' commands). One search through the joined bytes: a search per entry costs more than parsing it.
    stored = b"".join([entry.command for entry in entries])
    if not any(node.encode() in stored for node in {node for node, _ in refs}):
        return False
    parse = types_pb2.Command.FromString
    return any(((command := parse(e.command)).origin_node, command.origin_ref) in refs for e in entries)


def _observe_since(histogram: Histogram, began: float, _: object) -> None:
    histogram.observe(time.perf_counter() - began)


def wall_clock_ms() -> int:
    """The Sequencer's clock: UNIX time in milliseconds."""
    return time.time_ns() // 1_000_000


def entry_time(entry: StoredEntry) -> int:
    """The time stamped on a stored entry (0 for an entry of a log that predates stamping)."""
    return types_pb2.Command.FromString(entry.command).time_ms


def exit_on_write_failure(error: BaseException) -> None:
    """A number was assigned but could not be stored: stop at once, so that no later number is handed out
    past a hole. A restart resumes from what is durable."""
    log.critical("log write failed (%s); exiting so no number is handed out past a hole", error)
    os._exit(70)


STANDBY = ("this Sequencer replica is a standby: only the leader numbers commands (nodes find it in Consul, "
           "exchange/sequencer/leader); retry")


class SequencingGate:
    """The gate's state and rules (see the module docstring): the markets' logs, the roles, the numbering;
    `sequencer.service.SequencerService` serves it over gRPC."""

    def __init__(
        self, store: LogBackend, secret: bytes, markets: Iterable[MarketConfig],
        on_write_failure: Callable[[BaseException], None] = exit_on_write_failure,
        dedup_window: int = DEFAULT_WINDOW, clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        """Numbers commands of the cluster's `markets` only, in the log `store`. `on_write_failure` is called
        when a write fails (other than a lost leadership); in a service it must stop the process (the
        default), tests record the failure instead. `dedup_window`: see exchange/dedup.py. `clock`: UNIX
        milliseconds (tests set it back and forth)."""
        self.store = store
        self.clock = clock
        self.on_write_failure = on_write_failure
        self.secret = secret
        self.configs = {config.symbol: config for config in markets}
        self.markets: dict[str, MarketLog] = {}
        for symbol in self.configs:
            recovered = store.recover(symbol, dedup_window)
            market = self.markets[symbol] = MarketLog(symbol, recovered.position, dedup_window)
            for seq, key in recovered.keys:
                market.dedup.note(seq, key)
            market.dedup.last = recovered.position
            market.last_time = self._last_time(symbol, recovered.position)
        for other in set(store.markets()) - set(self.configs):
            log.warning("the log holds entries of %r, which is not one of the cluster's markets %s: they are kept "
                        "but no longer served", other, ", ".join(self.configs))
        self.leading = store.leads_at_start
        self.standby_reason = STANDBY
        self.term = 0  # changes with every change of role
        self.streams = LongLivedStreams()  # open SequenceStreams

    def _last_time(self, market: str, position: int) -> int:
        """The time stamped on the market's last durable entry (one indexed read at start)."""
        last = self.store.read(market, position, position, 1) if position else []
        return entry_time(last[0]) if last else 0

    # -- roles (log.RoleCallbacks) -------------------------------------------------------------------------

    def adopt(self, market: str, entries: list[StoredEntry]) -> None:
        if self.leading:
            raise AssertionError(f"{market}: a leader was given entries another replica committed")
        state = self.markets[market]
        state.adopt(entries)
        if entries:  # times never decrease along the log: the last entry holds the highest
            state.last_time = max(state.last_time, entry_time(entries[-1]))

    def lead(self, resumed: bool = False) -> None:
        self.term += 1
        self.leading = True
        if not resumed:  # a pause that ended in a committed probe is not a change of leader
            LEADER_CHANGES.inc()
        log.info("%s: numbering from %s", "leading again after a pause" if resumed else "leading",
                 ", ".join(f"{m.market}@{m.current}" for m in self.markets.values()))

    def pause(self, reason: str) -> None:
        self.term += 1
        self.leading = False
        self.standby_reason = f"this Sequencer replica no longer leads ({reason}); retry"

    def step_down(self, positions: dict[str, int], reason: str) -> None:
        self.pause(reason)
        for name, market in self.markets.items():
            market.truncate(positions[name])
        self.standby_reason = STANDBY
        asyncio.get_running_loop().create_task(self.streams.end_all(f"the Sequencer stepped down: {reason}"))

    def fail(self, error: BaseException) -> None:
        self.on_write_failure(error)

    def _check_term(self, term: int) -> None:
        """Refuses to answer if the role changed since the request was taken (an answer of the old term may
        mention numbers the change took back)."""
        if self.term != term or not self.leading:
            raise Unavailable(self.standby_reason if not self.leading else "the Sequencer's leadership changed; retry")

    def market(self, name: str) -> MarketLog:
        if not name:
            raise InvalidArgument("market is empty: name one of the cluster's markets")
        market = self.markets.get(name)
        if market is None:
            raise NotFound(f"unknown market {name!r}; this cluster trades: {', '.join(self.configs)}")
        return market

    async def _entries(self, market: MarketLog, from_seq: int, to_seq: int) -> list[StoredEntry]:
        """Entries from_seq..to_seq (inclusive), from the in-memory tail or the store."""
        if from_seq > to_seq:
            return []
        if market.tail_entry(from_seq) is not None:
            return market.tail_slice(from_seq, to_seq)
        return await asyncio.to_thread(self.store.read, market.market, from_seq, to_seq, to_seq - from_seq + 1)

    async def _sequence(self, request: sequencer_pb2.SequenceRequest) -> sequencer_pb2.SequenceResponse:
        """The gate (see the module docstring), for Sequence: one request, numbered and answered."""
        answer = await self._begin(request)
        return await answer()

    async def _begin(self, request: sequencer_pb2.SequenceRequest) -> Callable[[], Awaitable[SequenceResponse]]:
        """The first half of the gate, for Sequence and each request of SequenceStream: checks the request and
        numbers its commands (or decides on a stale answer), and returns the second half, which waits until
        what the answer mentions is durable and builds it. A stream calls the first half of each request in
        the order received, and the next one's while the one before waits for its write: a node's pipelined
        requests are numbered in their order and share group commits."""
        if not self.leading:
            raise Unavailable(self.standby_reason)
        term = self.term
        market = self.market(request.market)
        self._check_request(request, market)
        missing: list[StoredEntry] = []
        while (lacking := market.current - request.applied_seq) > len(missing):
            first = request.applied_seq + len(missing) + 1
            if lacking > MAX_MISSING_PER_ANSWER:  # further behind than one answer may carry
                missing += await self._entries(market, first, request.applied_seq + MAX_MISSING_PER_ANSWER)
                return functools.partial(self._stale, market, missing, term, market.last_write, market.current)
            missing += await self._entries(market, first, market.current)
            self._check_term(term)
        # No await since the loop's last check: `missing` is exactly what the node lacks, up to `current`.
        if missing and _may_repeat_numbered_commands(request, missing):
            return functools.partial(self._stale, market, missing, term, market.last_write, market.current)

        assignments, fresh = self._number(market, request.commands)
        stats = market.stats
        stats.grants += 1
        stats.granted_commands += len(fresh)
        if missing:
            stats.caught_up += 1
            stats.carried += len(missing)
        if fresh:
            market.entries_numbered.inc(len(fresh))
            write = self.store.append(market.market, fresh)
            write.add_done_callback(functools.partial(_observe_since, market.commit_seconds, time.perf_counter()))
            write.add_done_callback(functools.partial(market.mark_durable, fresh[-1].seq))
            write.add_done_callback(self._check_write)
            market.last_write = write
        return functools.partial(self._granted, market, missing, assignments, term, market.last_write,
                                 market.current)

    async def _granted(
        self, market: MarketLog, missing: list[StoredEntry], assignments: list[tuple[StoredEntry | int, bool]],
        term: int, write: asyncio.Future[None] | None, end: int,
    ) -> SequenceResponse:
        """A grant's answer, once `write` (the last one when it was numbered, holding `end`, the market's last
        number then) is durable, in the same term."""
        await durable(write)
        response = SequenceResponse(granted=True)
        add_entries(response.missing, missing)
        assign = response.assignments.add
        for assigned, duplicate in assignments:
            if isinstance(assigned, int):  # a duplicate's durable entry, read back
                (entry,) = await self._entries(market, assigned, assigned)
            else:
                entry = assigned
            assign(seq=entry.seq, duplicate=duplicate,
                   entry={"market": entry.market, "seq": entry.seq, "command": entry.command, "mac": entry.mac})
        # No await from here on. The durable end, not the last number assigned: an answer never names a number a
        # step-down could take back (the node raises its known_seq from it), and it is at least every number
        # this answer names: `end` is durable with `write`, and `market.durable` may not know it yet (a finished
        # write's callbacks run after `durable` saw it done).
        self._check_term(term)
        response.current_seq = max(market.durable, end)
        return response

    def _check_request(self, request: sequencer_pb2.SequenceRequest, market: MarketLog) -> None:
        """Refuses a request the gate must number nothing of: no or too many commands, a command that may not
        enter the log, or a node that has applied past this replica's log."""
        if not request.commands:
            raise InvalidArgument("no commands to sequence")
        if len(request.commands) > MAX_COMMANDS_PER_REQUEST:
            raise InvalidArgument(f"at most {MAX_COMMANDS_PER_REQUEST} commands per request")
        config = self.configs[market.market]
        for number, command in enumerate(request.commands):
            if command.market != request.market:
                raise InvalidArgument(
                    f"command {number} is for market {command.market!r} in a request for {request.market!r}; "
                    "nothing of the request was numbered"
                )
            if (error := command_error(command, config)) is not None:
                raise InvalidArgument(f"command {number}: {error}; nothing of the request was numbered")
        if request.applied_seq < 0:
            raise InvalidArgument(f"applied_seq {request.applied_seq} is negative: it is the last sequence number the "
                                  "node has applied, 0 when none")
        if request.applied_seq > market.current:
            if self.store.suspect(f"node {request.node_id} has applied {market.market} up to {request.applied_seq}, "
                                  f"past this replica's {market.current}"):
                raise Unavailable(f"node {request.node_id} has applied {market.market} up to {request.applied_seq} "
                                  f"but this Sequencer replica's log ends at {market.current}: it may no longer "
                                  "lead (it checks); retry")
            raise FailedPrecondition(
                f"node {request.node_id} has applied {market.market} up to {request.applied_seq} but the "
                f"Sequencer's log ends at {market.current}: the node's state is not from this log"
            )

    def _number(self, market: MarketLog, commands: Iterable[types_pb2.Command],
                 ) -> tuple[list[tuple[StoredEntry | int, bool]], list[StoredEntry]]:
        """Numbers `commands` in `market` (no await: nothing interleaves): per command its entry (or the seq
        of an earlier one with the same client_order_id, a duplicate), and the fresh entries to write."""
        assignments: list[tuple[StoredEntry | int, bool]] = []
        fresh: list[StoredEntry] = []
        stamp = market.last_time = max(self.clock(), market.last_time)
        for command in commands:
            key = dedup_key(command)
            if key is not None and (earlier := market.dedup.get(key)) is not None:
                assignments.append((earlier, True))
                continue
            seq = market.current + 1
            command.time_ms = stamp
            data = command.SerializeToString(deterministic=True)
            entry = StoredEntry(market.market, seq, key, data, entry_mac(self.secret, market.market, seq, data))
            market.assign(entry)
            fresh.append(entry)
            assignments.append((entry, False))
        return assignments, fresh

    async def _stale(self, market: MarketLog, missing: list[StoredEntry], term: int,
                     write: asyncio.Future[None] | None, end: int) -> SequenceResponse:
        """Grants nothing; the answer carries what the node lacks (at most MAX_MISSING_PER_ANSWER entries)."""
        market.stats.stale += 1
        await durable(write)
        self._check_term(term)
        response = SequenceResponse(granted=False, current_seq=max(market.durable, end))  # see _granted
        add_entries(response.missing, missing)
        return response

    def gauges(self) -> list[GaugeMetricFamily]:
        """What a scrape reads from the Sequencer's state (on its event loop)."""
        role = gauge("exchange_sequencer_role", "1 for this replica's role (leader or standby), 0 for the other.",
                     ["role"])
        role.add_metric(["leader"], 1 if self.leading else 0)
        role.add_metric(["standby"], 0 if self.leading else 1)
        size = gauge("exchange_sequencer_log_entries", "Entries in the log (its durable end).", ["market"])
        fill = gauge("exchange_sequencer_dedup_window_fill",
                     "Share of the dedup window in use (client_order_ids remembered / window).", ["market"])
        for name, market in self.markets.items():
            size.add_metric([name], market.durable)
            fill.add_metric([name], len(market.dedup) / max(1, market.dedup.size))
        return [role, size, fill]

    def _check_write(self, write: asyncio.Future[None]) -> None:
        if not write.cancelled() and (error := write.exception()) is not None and not isinstance(error, LeadershipLost):
            self.on_write_failure(error)

    async def report(self, every_s: float = 10.0) -> None:
        """Logs each busy market's gate figures every `every_s` (an operator's view of the load)."""
        while True:
            await asyncio.sleep(every_s)
            for market in self.markets.values():
                stats, market.stats = market.stats, MarketStats()
                if stats.grants or stats.stale:
                    log.info("%s at %d: %s", market.market, market.current, stats.line(every_s),
                             extra=log_fields(market.market, market.current))
