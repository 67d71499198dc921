"""Getting a node's commands into the log, and keeping the node current: one pipeline per market.

The gate batcher. Client commands queue up; while `gate_depth` Sequence calls are in flight (1 by default),
the next ones wait, and then all of them go in the next call. Calls in flight are pipelined on the market's gate
stream: written one behind the other without waiting for each other's answers, numbered and answered by the
Sequencer in that order, so a grant no longer waits for the round trip before it. A request states the
sequence the node has applied when it is sent; the entries of the grants still in flight ahead of it are
among what it "lacks" and come back in its answer (applying them twice is a no-op), and its own commands are
not among them, so it is granted, not stale: the node's own orders never invalidate each other. A node that
is behind (other nodes' orders
it has not applied yet) is granted all the same when what it lacks fits in one answer: the answer carries
those entries first, the node applies them, then its own, so its orders match against exactly the global
state, in one round trip: no order is ABORTED by load. A "stale" answer (nothing granted) comes only when
the node is further behind than one answer carries, or repeats commands the log already holds (an answer
that was lost); the node applies what it was sent, catches up and retries what is still unplaced. Only
when that happens `max_retries` times in a row to an order (a fault: the node cannot apply what it is
sent) is the order ABORTED, and then it was never numbered.

Gathering. After a request is answered, the gate waits (at most `gather_s`) until as many new orders are
queued as it just answered before it sends the next one: the clients it answered come back with their next
orders a client round trip later, and without the wait they would miss the request that goes out at once and
wait a whole round for the one after (at 8 in flight the requests alternated between two halves of the
clients: 1.3 orders each). A request costs the cluster far more than an order in it (the gate's messages, one
broadcast message to every peer and its receipt, a durable write). At low load this costs nothing: a request
answered one order, and the first order to arrive fills it; a request of more than GATHER_MAX_ANSWERED orders
(streaming entry) is not followed by a wait.

Results reach the waiting client through the replica: every applied entry whose origin is this node
resolves the pending command with the same `origin_ref`, whichever path delivered it (the grant, a
stale answer after a lost reply, a log read). So an ambiguous Sequence call never numbers a
command twice and never loses its answer.

Catch-up. A gap in front of buffered broadcasts, or a known Sequencer position ahead of the applied
one, that makes no progress for `gap_wait_s` is filled from the Sequencer's log; the Sequencer's
position is polled every `poll_s`, so even a lost broadcast of the last command is found.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from exchange import engine as eng
from exchange.errors import Aborted, ExchangeError, Unavailable, status_of
from exchange.node.metrics import counters, market_metrics, order_rejected
from exchange.node.replica import Applied, Replica
from exchange.node.sequencer_link import Peers, Sequencer
from exchange.runtime import log_fields
from exchange.v1 import sequencer_pb2, types_pb2

log = logging.getLogger(__name__)

MAX_BATCH = 2_000
# Gated requests per market in flight at once (the node's --gate-depth). 1: a request waits for the answer to
# the one before, and the orders that arrive meanwhile batch up. Deeper pipelines cut the wait but shrink the
# batches, and each request costs the cluster far more than an order in it (messages, broadcasts, a write):
# measured on this 2-core machine, depth 2 took 10-35% more CPU per order and did not raise throughput, embedded
# or HA (docs/benchmarks.md), so it is for machines where the gate's round trip waits rather than computes.
DEFAULT_GATE_DEPTH = 1
# The longest the gate waits, after an answer, for the orders of the clients it answered (the node's
# --gate-gather-ms; see "Gathering" above). Measured on this 2-core machine, 3 nodes, alternating runs: at 8 in
# flight the batch went from 1.3 to 2.4 orders and the cluster's CPU per order fell by 28% (p50 6.3 -> 4.7 ms); at
# 64 the batch grew by a third, the CPU per order within the noise; at 1 in flight nothing changed
# (docs/benchmarks.md, "Gathering"). uvloop's timers count whole milliseconds.
DEFAULT_GATE_GATHER_S = 0.004
# Only a request that answered at most this many orders is followed by gathering: past that a request's own cost
# is spread thin already, and holding the next one back would only add latency (streaming entry: hundreds of
# orders a request, each stream's window waiting on the answers).
GATHER_MAX_ANSWERED = 32


def fail(future: asyncio.Future[Outcome], error: BaseException) -> None:
    """Fails a command's future, its exception marked as retrieved: the caller may be gone (deadline), and
    asyncio must not log an expected failure as "Future exception was never retrieved". A caller that
    still awaits it gets the exception all the same."""
    if not future.done():
        future.set_exception(error)
        future.exception()


class Outcome(NamedTuple):
    """A command's place in the log and what it did."""

    seq: int
    applied: Applied
    duplicate: bool


@dataclass(slots=True)
class Pending:
    command: types_pb2.Command
    future: asyncio.Future[Outcome]
    since: float  # loop time it was taken
    attempts: int = 0


class MarketPipeline:
    def __init__(
        self, market: str, replica: Replica, sequencer: Sequencer, peers: Peers, node_id: str,
        max_retries: int = 5, gap_wait_s: float = 0.1, poll_s: float = 1.0, gate_depth: int = DEFAULT_GATE_DEPTH,
        gather_s: float = DEFAULT_GATE_GATHER_S,
    ) -> None:
        self.market = market
        self.replica = replica
        self.sequencer = sequencer
        self.peers = peers
        self.node_id = node_id
        self.max_retries = max_retries
        self.gap_wait_s = gap_wait_s
        self.poll_s = poll_s
        self.gate_depth = gate_depth
        self.gather_s = gather_s
        self._gather_to = 0  # while gathering: the queue length the next request waits for (0: not gathering)
        self._gather_timer: asyncio.TimerHandle | None = None  # ends the gathering at its deadline
        self._rounds: set[asyncio.Task[None]] = set()  # the gated requests in flight
        self._incarnation = random.getrandbits(31) << 32
        self._next_ref = 0
        self._queue: deque[Pending] = deque()
        self._by_ref: dict[int, Pending] = {}
        self._wakeup = asyncio.Event()
        self._catch_up_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics = market_metrics(market)
        replica.on_applied(market, self._resolve_own)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._gate_loop(), name=f"gate-{self.market}"),
            asyncio.create_task(self._sync_loop(), name=f"sync-{self.market}"),
        ]

    async def stop(self) -> None:
        if self._gather_timer is not None:
            self._gather_timer.cancel()
        for task in [*self._tasks, *self._rounds]:
            task.cancel()
        for task in [*self._tasks, *self._rounds]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in self._by_ref.values():
            fail(pending.future, Unavailable("node is shutting down; retry on another node"))

    # -- the gate ---------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Commands taken and not yet applied here: queued for the gate or at the Sequencer."""
        return len(self._by_ref)

    def oldest_pending_s(self) -> float:
        """How long the oldest of those commands has waited (0 if there is none)."""
        oldest = next(iter(self._by_ref.values()), None)
        return 0.0 if oldest is None else asyncio.get_running_loop().time() - oldest.since

    def enqueue(self, command: types_pb2.Command) -> asyncio.Future[Outcome]:
        """Queues a command for the gate; the future resolves with its outcome once it is applied here.

        The command is placed even if nobody awaits the future any more (a client that went away)."""
        self._next_ref += 1
        command.origin_ref = self._incarnation | self._next_ref
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()  # failed only by fail()
        pending = Pending(command, future, loop.time())
        self._by_ref[command.origin_ref] = pending
        self._queue.append(pending)
        self._wakeup.set()
        return future

    async def submit(self, command: types_pb2.Command) -> Outcome:
        """Sequences a command through the gate and returns its outcome once applied here. Cancelling
        the caller does not withdraw the command."""
        return await asyncio.shield(self.enqueue(command))

    def _resolve_own(self, applied: Applied) -> None:
        command = applied.command
        if command.origin_node != self.node_id:
            return
        pending = self._by_ref.pop(command.origin_ref, None)
        if pending is None:
            return  # taken by an earlier run of this node, or already answered
        if not pending.future.done():
            pending.future.set_result(Outcome(applied.seq, applied, duplicate=False))
        if command.HasField("new_order"):
            self._count_order(applied.events)

    def _count_order(self, events: list[eng.Event]) -> None:
        """The metrics of one of this node's new orders, applied (each is applied here once)."""
        metrics = self.metrics
        for event in events:
            if isinstance(event, eng.OrderFilled):
                metrics.trades += 1
                metrics.traded_size += event.size
            elif isinstance(event, eng.OrderRejected):
                order_rejected(event.reason.name)
                return
        metrics.accepted += 1

    async def _gate_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._gather_to:
                if len(self._queue) < self._gather_to:
                    continue  # an order arrived: still gathering (the timer ends it at the deadline)
                self._end_gathering()
            while self._queue and len(self._rounds) < self.gate_depth:
                batch: list[Pending] = []
                while self._queue and len(batch) < MAX_BATCH:
                    pending = self._queue.popleft()
                    if not pending.future.done():
                        batch.append(pending)
                if batch:
                    round_ = asyncio.create_task(self._round(batch), name=f"gate-round-{self.market}")
                    self._rounds.add(round_)
                    round_.add_done_callback(functools.partial(self._round_done, len(batch)))

    def _round_done(self, answered: int, round_: asyncio.Task[None]) -> None:
        self._rounds.discard(round_)
        if self.gather_s and not self._rounds and answered <= GATHER_MAX_ANSWERED:
            self._gather_to = len(self._queue) + answered
            self._gather_timer = asyncio.get_running_loop().call_later(self.gather_s, self._end_gathering)
        if self._queue:
            self._wakeup.set()

    def _end_gathering(self) -> None:
        """Ends the gathering: when enough orders are queued, or at its deadline (its timer calls this; the
        deadline is the timer, never a reading of the clock: uvloop's clock has millisecond resolution, and a
        timer due "now" can find it still short of a deadline computed from it, which once held 2,048 orders until
        another came, and none did)."""
        if self._gather_timer is not None:
            self._gather_timer.cancel()
            self._gather_timer = None
        self._gather_to = 0
        self._wakeup.set()

    async def _round(self, batch: list[Pending]) -> None:
        """One gated request and its retries (a stale answer: catch up, then the commands still unplaced)."""
        try:
            await self._sequence(batch)
        except Exception as error:  # noqa: BLE001 - a failed round fails its orders, not the node
            if not isinstance(error, ExchangeError):
                log.exception("%s: sequencing round failed", self.market, extra=log_fields(self.market))
                error = Unavailable(f"sequencing failed on this node: {type(error).__name__}")
            reason = status_of(error).name
            for pending in batch:
                if pending.command.origin_ref in self._by_ref and pending.command.HasField("new_order"):
                    order_rejected(reason)
            self._fail(batch, error)

    def _fail(self, batch: list[Pending], error: Exception) -> None:
        for pending in batch:
            self._by_ref.pop(pending.command.origin_ref, None)
            fail(pending.future, error)

    async def _sequence(self, batch: list[Pending]) -> None:
        while batch:
            request = sequencer_pb2.SequenceRequest(
                market=self.market,
                applied_seq=self.replica.applied_seq(self.market),
                node_id=self.node_id,
                commands=[pending.command for pending in batch],
            )
            counters["gate_requests"] += 1
            counters["gate_commands"] += len(batch)
            self.metrics.gate_batch.observe(len(batch))
            began = time.perf_counter()
            response = await self.sequencer.sequence(request)
            self.metrics.gate_seconds.observe(time.perf_counter() - began)
            self.replica.note_known(self.market, response.current_seq)
            for entry in response.missing:  # what this node lacked, before anything granted after it
                self.replica.offer(entry)
            if response.granted:
                self._granted(batch, response)
                return
            counters["gate_stale"] += 1
            if self.replica.applied_seq(self.market) < response.current_seq:
                await self.catch_up(response.current_seq)
            retry: list[Pending] = []
            for pending in batch:
                if pending.future.done():
                    continue
                pending.attempts += 1
                if pending.attempts > self.max_retries:
                    self.metrics.aborted.inc()
                    if pending.command.HasField("new_order"):
                        order_rejected("ABORTED")
                    self._fail([pending], Aborted(
                        f"order invalidated {pending.attempts} times by a stale view of {self.market} "
                        f"(Sequencer at {response.current_seq}, node at "
                        f"{self.replica.applied_seq(self.market)}); it was not placed, retry it"
                    ))
                else:
                    retry.append(pending)
            batch = retry

    def _granted(self, batch: list[Pending], response: sequencer_pb2.SequenceResponse) -> None:
        fresh: list[types_pb2.SequencedCommand] = []
        for pending, assignment in zip(batch, response.assignments, strict=True):
            if assignment.duplicate:
                self._by_ref.pop(pending.command.origin_ref, None)
                try:
                    applied = self.replica.retained_result(
                        self.market, assignment.seq, pending.command.client_order_id
                    )
                except ExchangeError as error:
                    fail(pending.future, error)
                    continue
                if not pending.future.done():
                    pending.future.set_result(Outcome(assignment.seq, applied, duplicate=True))
                continue
            self.replica.offer(assignment.entry)  # resolves the pending command via _resolve_own
            fresh.append(assignment.entry)
        self.peers.broadcast(fresh)

    # -- catch-up ---------------------------------------------------------------------------------

    async def catch_up(self, to_seq: int = 0) -> None:
        """Reads the log from the first entry not applied here up to `to_seq` (0: the current end)."""
        async with self._catch_up_lock:
            start = self.replica.applied_seq(self.market) + 1
            if to_seq and start > to_seq:
                return
            async for entries in self.sequencer.read_log(self.market, start, to_seq):
                self.metrics.catch_up_entries.inc(len(entries))
                for entry in entries:
                    self.replica.offer(entry)

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_applied = self.replica.applied_seq(self.market)
        stuck_since = loop.time()
        next_poll = 0.0
        while True:
            await asyncio.sleep(self.gap_wait_s / 2)
            now = loop.time()
            try:
                if now >= next_poll:
                    next_poll = now + self.poll_s
                    self.replica.note_known(self.market, await self.sequencer.current_seq(self.market))
                applied = self.replica.applied_seq(self.market)
                if applied != last_applied or (
                    self.replica.lag(self.market) == 0 and self.replica.first_gap(self.market) is None
                ):
                    last_applied, stuck_since = applied, now
                    continue
                if now - stuck_since >= self.gap_wait_s:
                    log.info("%s: filling gap after %d from the Sequencer's log", self.market, applied,
                             extra=log_fields(self.market, applied))
                    await self.catch_up()
                    stuck_since = loop.time()
            except ExchangeError as error:
                log.warning("%s: catch-up check failed: %s", self.market, error, extra=log_fields(self.market))
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("%s: catch-up check crashed", self.market, extra=log_fields(self.market))
