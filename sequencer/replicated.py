"""The replicated log (HA mode, `exchange-sequencer --log consul`): the log's tail in a replicated store
(Consul KV, through `discovery.ReplicatedStore`), several Sequencer replicas, one leader.

Keys (README, "High availability"):

* `exchange/sequencer/leader`: the lock; held by the leader's session, its value names the leader (id and
  gRPC address: how nodes find it, `exchange.cluster.LeaderRecord`).
* `exchange/log/heads/<market>`: the market's head: the last number committed, the first number of the last
  batch, and the session that wrote it (`Head`).
* `exchange/log/batches/<market>/<first number, 20 digits>`: one group-commit batch: a `LogBatch` of signed
  entries, numbered first..last. Batches are contiguous: the next one starts at last + 1.

The commit point is one transaction per batch of a market: check-session on the leader key (fencing: a
replica that no longer holds the lock can write nothing), compare-and-set on the head (gap-free: one writer,
the next number), the batch, and the delete of the batches that fell out of the retained tail (`tail_entries`
entries: the store stays bounded). Only then is the batch durable: it is written to this replica's archive
(SQLite, store.LogStore) and its waiters answered. A transaction whose outcome is unknown (a timeout, a 5xx)
is resolved before anything else is answered: a consistent read of the head tells whether it committed; if
not, the same transaction is sent again, and its compare-and-set lets at most one of the two commit. A refused
transaction (409) means another replica leads: this one stops numbering, lets the writes in flight settle,
forgets what it numbered past them, releases the lock and follows as a standby.

Threads (the store's calls block): `follow` (a standby follows the heads with blocking queries, appends each
committed batch to its archive and hands it to the gate: its in-memory state stays a leader's), `election`
(takes the lock when it is free and this replica is current, renews the session, steps down), and one
`commit` thread per market (the leader's transactions, one in flight per market).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from discovery import (
    CheckSession,
    CompareAndSet,
    Delete,
    DiscoveryError,
    Put,
    ReplicatedStore,
    TransactionConflict,
    TransactionOp,
    TransactionRejected,
)
from exchange.cluster import SEQUENCER_LEADER_KEY, LeaderRecord
from exchange.dedup import dedup_key
from exchange.runtime import log_fields
from exchange.v1 import sequencer_pb2, types_pb2
from sequencer.log import Gate, LeadershipLost, Recovered, StoredEntry, settle_all
from sequencer.metrics import CONSUL_TXN_CONFLICTS, CONSUL_TXN_SECONDS, SESSION_RENEWALS
from sequencer.store import LogStore

log = logging.getLogger(__name__)

LOG_PREFIX = "exchange/log/"
HEADS_PREFIX = LOG_PREFIX + "heads/"
DEFAULT_TAIL_ENTRIES = 20_000
MAX_BATCH_BYTES = 256 * 1024  # raw bytes of one batch value (Consul: 512 KiB per request, values in base64)
MAX_DELETES = 32  # batches deleted per transaction (a transaction holds at most 64 operations)
# Group commit across nodes: each node has one gate request per market in flight, so a transaction that starts
# the moment the previous one ends holds only the requests that arrived meanwhile, and the nodes it just answered
# wait a whole transaction more. When recent transactions held several nodes' appends, the next one waits for as
# many to be queued, up to the recent median commit latency (at most LINGER_MAX_S). Measured at 64 in flight: 12
# -> 20 entries per transaction (README, "Benchmarks").
LINGER_MAX_S = 0.010
CONCURRENCY_WINDOW_S = 1.0
FOLLOW_WAIT_S = 5.0
# A standby reads the batches committed since its last round in one read, then waits this long before the next
# round: its cost (and the store's) is per round, not per commit, and it trails the leader by about this much.
FOLLOW_PACE_S = 0.1
RECENT = 32  # batch starts a head lists
BACKOFF_MAX_S = 1.0
STOPPING = "this replica is stopping"

# Reads another replica's archive: (market, from_seq, to_seq) -> batches of verified entries, in order.
PeerReader = Callable[[str, int, int], Iterator[list[StoredEntry]]]


def head_key(market: str) -> str:
    return f"{HEADS_PREFIX}{market}"


def batch_prefix(market: str) -> str:
    return f"{LOG_PREFIX}batches/{market}/"


def batch_key(market: str, first: int) -> str:
    return f"{batch_prefix(market)}{first:020d}"


class Head(NamedTuple):
    seq: int  # the last number committed
    batch: int  # the first number of the batch that ends at `seq`
    writer: str  # the session that wrote it
    recent: tuple[int, ...] = ()  # the first numbers of the last RECENT batches (a follower reads them at once)

    def encode(self) -> bytes:
        return json.dumps({"seq": self.seq, "batch": self.batch, "writer": self.writer,
                           "recent": list(self.recent)}).encode()

    @classmethod
    def decode(cls, value: bytes) -> Head:
        data = json.loads(value)
        return cls(int(data["seq"]), int(data["batch"]), str(data["writer"]),
                   tuple(int(first) for first in data.get("recent", [data["batch"]])))


def encode_batch(entries: list[StoredEntry]) -> bytes:
    return sequencer_pb2.LogBatch(entries=[
        types_pb2.SequencedCommand(market=e.market, seq=e.seq, command=e.command, mac=e.mac) for e in entries
    ]).SerializeToString()


def decode_batch(value: bytes) -> list[StoredEntry]:
    parse = types_pb2.Command.FromString
    return [StoredEntry(e.market, e.seq, dedup_key(parse(e.command)), e.command, e.mac)
            for e in sequencer_pb2.LogBatch.FromString(value).entries]


class LogUnavailable(RuntimeError):
    """A part of the log this replica lacks can be read neither from the store nor from another replica."""


class Fenced(RuntimeError):
    """The store refused a transaction of this replica: it does not lead."""


@dataclass
class _Pending:
    entries: list[StoredEntry]
    done: asyncio.Future[None]
    taken: int = 0  # entries already in a transaction (a large request spans several)


@dataclass
class _Market:
    """One market as this replica's threads see it."""

    name: str
    position: int  # the last number in the archive (durable)
    head_index: int = 0  # the head's version at the last commit or read (the leader's compare-and-set)
    batches: deque[tuple[int, int]] = field(default_factory=deque)  # (first, last) retained in the store
    retained: int = 0  # entries in `batches`
    in_sync: bool = False  # the follower reached the last head it read
    queue: deque[_Pending] = field(default_factory=deque)  # the leader's appends waiting for their transaction
    busy: bool = False  # a transaction of it is in flight
    wakeup: threading.Condition = field(default_factory=threading.Condition)
    commits: list[tuple[int, float]] = field(default_factory=list)  # (entries, seconds) since the last report
    reported: float = field(default_factory=time.monotonic)
    appends: deque[tuple[float, int, float]] = field(default_factory=deque)  # recent (when, appends, seconds)

    def linger(self) -> tuple[int, float]:
        """How many appends to wait for, and for how long at most: the most a transaction of the last
        CONCURRENCY_WINDOW_S held (how many nodes are busy), the median commit latency meanwhile."""
        limit = time.monotonic() - CONCURRENCY_WINDOW_S
        while self.appends and self.appends[0][0] < limit:
            self.appends.popleft()
        if not self.appends:
            return 1, 0.0
        latencies = sorted(seconds for _, _, seconds in self.appends)
        return max(count for _, count, _ in self.appends), min(LINGER_MAX_S, latencies[len(latencies) // 2])

    def report(self, entries: int, seconds: float, every_s: float = 10.0) -> None:
        """Notes a commit; every `every_s`, logs the market's commit figures (the leader's operator view)."""
        self.commits.append((entries, seconds))
        now = time.monotonic()
        if now - self.reported < every_s:
            return
        commits, self.commits, elapsed, self.reported = self.commits, [], now - self.reported, now
        latencies = sorted(seconds for _, seconds in commits)
        log.info("%s at %d: %.0f transactions/s, %.1f entries each, commit p50 %.1f ms, p99 %.1f ms",
                 self.name, self.position, len(commits) / elapsed, sum(n for n, _ in commits) / len(commits),
                 latencies[len(latencies) // 2] * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3,
                 extra=log_fields(self.name, self.position))


class ReplicatedLog:
    """The log in a replicated store, with this replica's archive (see the module docstring)."""

    leads_at_start = False

    def __init__(
        self, store: ReplicatedStore, archive: LogStore, markets: list[str], identity: LeaderRecord,
        checks: list[str], *, tail_entries: int = DEFAULT_TAIL_ENTRIES, session_ttl_s: float = 10.0,
        lock_delay_s: float = 1.0, read_peer: PeerReader | None = None,
    ) -> None:
        """`checks`: the health checks the session is tied to (the agent's node and this replica's own gRPC
        check: a crashed replica loses the lock within seconds). `read_peer`: copies entries this replica
        lacks and the store no longer keeps from another replica's archive."""
        if tail_entries < 1:
            raise ValueError("the retained tail must hold at least one entry")
        self.store = store
        self.archive = archive
        self.identity = identity
        self.checks = checks
        self.tail_entries = tail_entries
        self.session_ttl_s = session_ttl_s
        self.lock_delay_s = lock_delay_s
        self.renew_s = session_ttl_s / 4
        self.session_name = f"sequencer {identity.id}"
        # A leader that has not heard from the store for this long (no renewal, no commit) stops numbering (it
        # could not commit anyway, and another replica may lead by now) until a fenced probe decides.
        self.lease_s = session_ttl_s / 2
        self._confirmed = 0.0  # when the store last confirmed this replica's session (monotonic)
        self._paused = False  # the lease ran out: the gate numbers nothing until a probe commits
        self.read_peer = read_peer
        self._markets = {name: _Market(name, archive.position(name)) for name in markets}
        self.leading = False
        self.session: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: Gate | None = None
        self._state = threading.Lock()  # the follower's rounds and a takeover exclude each other
        self._stop = threading.Event()
        self._standby = threading.Event()  # set while not leading: the follower follows
        self._standby.set()
        self._step_down: str | None = None  # the reason, once a step-down is asked for
        self._suspicion: str | None = None  # why the gate doubts this replica leads (a fenced probe decides)
        self._election_wakeup = threading.Event()
        self._threads: list[threading.Thread] = []

    def describe(self) -> str:
        return f"replicated log (leader lock {SEQUENCER_LEADER_KEY}, tail {self.tail_entries} entries per " \
               f"market), archive {self.archive.path}"

    # -- LogBackend ------------------------------------------------------------------------------

    def recover(self, market: str, window: int) -> Recovered:
        return self.archive.recover(market, window)

    def markets(self) -> list[str]:
        return self.archive.markets()

    def start(self, loop: asyncio.AbstractEventLoop, gate: Gate | None = None) -> None:
        assert gate is not None, "a replicated log drives the gate's role"
        self._loop, self._gate = loop, gate
        self._threads = [self._thread("log-follow", self._follow), self._thread("log-election", self._elect)]
        self._threads += [self._thread(f"log-commit-{name}", functools.partial(self._commit_loop, market))
                          for name, market in self._markets.items()]
        for thread in self._threads:
            thread.start()

    def _thread(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """A thread of this log; one that crashes is a bug the gate must not outlive (Gate.fail)."""

        def run() -> None:
            try:
                target()
            except Exception as error:  # noqa: BLE001 - reported, then the process stops
                if self._stop.is_set():
                    return
                log.exception("thread %s of the replicated log crashed", name)
                assert self._gate is not None
                self._post(self._gate.fail, error)

        return threading.Thread(target=run, name=name, daemon=True)

    def append(self, market: str, entries: list[StoredEntry]) -> asyncio.Future[None]:
        assert self._loop is not None, "ReplicatedLog.start() was not called"
        done: asyncio.Future[None] = self._loop.create_future()
        state = self._markets[market]
        with state.wakeup:
            state.queue.append(_Pending(entries, done))
            state.wakeup.notify()
        return done

    def read(self, market: str, from_seq: int, to_seq: int, limit: int) -> list[StoredEntry]:
        return self.archive.read(market, from_seq, to_seq, limit)

    def suspect(self, why: str) -> bool:
        if self.leading:
            self._suspicion = why
            self._election_wakeup.set()
        return True

    def resign(self) -> None:
        """A leader steps down: lets its writes settle and releases the lock (an explicit release: the next
        leader need not wait for the lock-delay). Blocking, at most a few seconds."""
        if self.leading:
            self._ask_step_down(STOPPING)
            deadline = time.monotonic() + 5
            while (self.leading or self._step_down is not None) and time.monotonic() < deadline:
                time.sleep(0.01)

    def close(self) -> None:
        """Stops (after `resign`, if it led). The threads are daemons: one in a blocking query ends when it
        returns, touching nothing (the follower's round in progress is waited for)."""
        self.resign()
        self._stop.set()
        self._election_wakeup.set()
        self._standby.set()
        for market in self._markets.values():
            with market.wakeup:
                market.wakeup.notify_all()
        with self._state:
            self._release()
            self.archive.close()

    # -- posting to the gate (on the event loop, in order) --------------------------------------

    def _post(self, callback: Callable[..., object], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is stopping
            self._loop.call_soon_threadsafe(callback, *args)

    def _settle(self, pendings: list[_Pending], error: BaseException | None) -> None:
        if pendings:
            self._post(settle_all, [p.done for p in pendings], error)

    # -- following (a standby) --------------------------------------------------------------------

    def _follow(self) -> None:
        index, backoff, warned = 0, 0.05, False
        while not self._stop.is_set():
            if not self._standby.wait(1.0) or self.leading:
                index = 0
                continue
            try:
                new_index, heads = self.store.wait_prefix(HEADS_PREFIX, index, FOLLOW_WAIT_S)
                with self._state:
                    if self.leading or self._stop.is_set():
                        continue
                    moved = False
                    for market in self._markets.values():
                        found = heads.get(head_key(market.name))
                        head = Head.decode(found.value) if found is not None else Head(0, 0, "")
                        moved |= head.seq > market.position
                        self._read_recent(market, head)
                        self._catch_up(market, head.seq)
                        market.in_sync = market.position >= head.seq
                if moved:
                    self._stop.wait(FOLLOW_PACE_S)
            except (DiscoveryError, LogUnavailable) as error:
                if self._stop.is_set():
                    return
                if not warned:
                    log.warning("following the log: %s; retrying", error)
                    warned = True
                for market in self._markets.values():
                    market.in_sync = False
                index = 0
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if warned:
                log.info("following the log again")
            warned, backoff = False, 0.05
            index = new_index if new_index >= index else 0  # backwards: the store's state was replaced

    def _read_recent(self, market: _Market, head: Head) -> None:
        """The batches the head lists past this archive's end, in one read (when they follow it)."""
        wanted = [first for first in head.recent if first > market.position]
        if not wanted or wanted[0] != market.position + 1:
            return
        found = self.store.read_many([batch_key(market.name, first) for first in wanted])
        if found is None:  # one was deleted meanwhile: _catch_up reads them one by one
            return
        for first in wanted:
            entries = decode_batch(found[batch_key(market.name, first)].value)
            if entries and entries[0].seq == market.position + 1:
                self._archive(market, entries)

    def _catch_up(self, market: _Market, to_seq: int) -> None:
        """Brings the archive (and the gate) to `to_seq`: the store's batches, or another replica's archive
        for what the store no longer keeps. Raises LogUnavailable, DiscoveryError."""
        if market.position > to_seq:
            raise LogUnavailable(
                f"{market.name}: this replica's archive ends at {market.position} but the log's head in the "
                f"store is at {to_seq}: the store lost committed entries; this replica will not lead")
        while market.position < to_seq:
            first = market.position + 1
            found = self.store.read(batch_key(market.name, first)) or self.store.read(
                batch_key(market.name, first), consistent=True)
            if found is None:
                self._copy_from_peer(market, to_seq)
                continue
            entries = decode_batch(found.value)
            if not entries or entries[0].seq != first or entries[-1].seq != first + len(entries) - 1:
                raise LogUnavailable(f"{market.name}: the batch at {first} in the store is not the log's next")
            self._archive(market, entries)

    def _copy_from_peer(self, market: _Market, to_seq: int) -> None:
        """Copies the entries between this archive's end and the store's oldest retained batch."""
        firsts = [int(key.rsplit("/", 1)[1]) for key in self.store.keys(batch_prefix(market.name))]
        oldest = min((first for first in firsts if first > market.position), default=to_seq + 1)
        if self.read_peer is None:
            raise LogUnavailable(f"{market.name}: entries {market.position + 1}..{oldest - 1} are no longer in "
                                 "the store and no other replica can be asked")
        log.info("%s: copying entries %d..%d from another replica (the store keeps only its tail)",
                 market.name, market.position + 1, oldest - 1, extra=log_fields(market.name, market.position + 1))
        for entries in self.read_peer(market.name, market.position + 1, oldest - 1):
            if entries and entries[0].seq == market.position + 1:
                self._archive(market, entries)
        if market.position < oldest - 1:
            raise LogUnavailable(f"{market.name}: no other replica holds entries {market.position + 1}..{oldest - 1}")

    def _archive(self, market: _Market, entries: list[StoredEntry]) -> None:
        self.archive.write(entries)
        market.position = entries[-1].seq
        assert self._gate is not None
        self._post(self._gate.adopt, market.name, entries)

    # -- the election ----------------------------------------------------------------------------

    def _elect(self) -> None:
        gate = self._gate
        assert gate is not None
        renewed, backoff, previous_ended = 0.0, 0.2, False
        while not self._stop.is_set():
            try:
                if not previous_ended:
                    self._end_previous_sessions()
                    previous_ended = True
                if self._step_down is not None:
                    self._do_step_down(self._step_down)
                    continue
                if self.leading and time.monotonic() - self._confirmed > self.lease_s:
                    why = f"the store has not confirmed this replica's session for " \
                          f"{time.monotonic() - self._confirmed:.1f} s"
                    if not self._paused:
                        self._paused = True
                        self._post(gate.pause, why)
                    self._probe(why)
                    continue
                if self.session is not None and time.monotonic() - renewed >= self.renew_s:
                    try:
                        renewal = self.store.renew_session(self.session)
                    except DiscoveryError:
                        SESSION_RENEWALS.labels("failed").inc()
                        raise
                    SESSION_RENEWALS.labels("ok" if renewal else "refused").inc()
                    if renewal:
                        renewed = self._confirmed = time.monotonic()
                    elif self.leading:
                        self._probe("the session ended (its renewal was refused)")
                    else:
                        self.session = None
                if self.leading:
                    self._watch_leadership()
                    continue
                if not all(market.in_sync for market in self._markets.values()):
                    self._stop.wait(0.1)
                    continue
                if self.session is None:
                    self.session = self.store.create_session(
                        self.session_name, self.checks, self.session_ttl_s, self.lock_delay_s)
                    renewed = time.monotonic()
                holder = self.store.read(SEQUENCER_LEADER_KEY)
                if holder is None or holder.session is None:
                    if self.store.acquire(SEQUENCER_LEADER_KEY, self.identity.encode(), self.session):
                        self._take_over()
                    else:  # taken meanwhile, or the lock-delay of a lost leader
                        self._stop.wait(min(0.25, self.lock_delay_s))
                    continue
                if holder.session == self.session:  # ours, from before a takeover that failed
                    self._take_over()
                    continue
                self.store.wait_prefix(SEQUENCER_LEADER_KEY, holder.index, self.renew_s)
                backoff = 0.2
            except (DiscoveryError, LogUnavailable) as error:
                if self._stop.is_set():
                    return
                log.warning("leader election: %s; retrying", error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _end_previous_sessions(self) -> None:
        """Ends the sessions a previous run of this replica left: restarted at once on the same address, it answers
        the health check those sessions carry before the check ever fails, and its old session would hold the
        lock until its TTL ran out (measured: 19 s before anyone could lead)."""
        for stale in self.store.sessions(self.session_name):
            self.store.destroy_session(stale)
            log.info("ended session %s, left by a previous run of this replica", stale)

    def _watch_leadership(self) -> None:
        """While leading: wakes on a step-down request or when the lock's holder changes (then a fenced probe
        decides), else after `renew_s`."""
        if self._suspicion is not None:
            why, self._suspicion = self._suspicion, None
            self._probe(why)
            return
        holder = self.store.read(SEQUENCER_LEADER_KEY)
        if holder is not None and holder.session != self.session and self.leading:
            self._probe("the leader key is held by another session")
            return
        self._election_wakeup.wait(self.renew_s)
        self._election_wakeup.clear()

    def _probe(self, why: str) -> None:
        """A fenced transaction that writes nothing: refused, this replica steps down; committed, it still
        leads. Only the store's refusal of a fenced transaction ends a leadership."""
        assert self.session is not None and self._gate is not None
        try:
            self.store.transact([CheckSession(SEQUENCER_LEADER_KEY, self.session)])
            self._confirmed = time.monotonic()
        except TransactionConflict as error:
            log.warning("%s; the fenced probe was refused by the store (%s)", why, error)
            self._ask_step_down(f"the store refused this replica's transaction: {error}")
            return
        log.info("%s, but the fenced probe committed: still leading", why)
        if self._paused:
            self._paused = False
            self._post(self._gate.lead)

    def _take_over(self) -> None:
        """Holding the lock: the heads (a consistent read), what the archive lacks of them, then lead."""
        assert self.session is not None and self._gate is not None
        with self._state:
            try:
                for market in self._markets.values():
                    head = self.store.read(head_key(market.name), consistent=True)
                    seq = Head.decode(head.value).seq if head is not None else 0
                    self._catch_up(market, seq)
                    market.head_index = head.index if head is not None else 0
                    firsts = [int(key.rsplit("/", 1)[1]) for key in self.store.keys(batch_prefix(market.name))]
                    ends = [following - 1 for following in firsts[1:]] + [seq]
                    market.batches = deque(zip(firsts, ends[:len(firsts)], strict=True))
                    market.retained = sum(_count(batch) for batch in market.batches)
            except (DiscoveryError, LogUnavailable) as error:
                log.error("took the leader lock but cannot lead: %s; releasing it", error)
                self._release()
                raise
            self._confirmed = time.monotonic()
            self.leading = True
            self._standby.clear()
            self._post(self._gate.lead)
        log.info("took the leader lock: leading at %s",
                 ", ".join(f"{m.name}@{m.position}" for m in self._markets.values()))

    def _release(self) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        try:
            self.store.release(SEQUENCER_LEADER_KEY, session)
            self.store.destroy_session(session)
        except DiscoveryError as error:
            log.warning("could not release the leader lock (the store ends the session itself): %s", error)

    def _ask_step_down(self, reason: str) -> None:
        if self._step_down is None:
            self._step_down = reason
            if self._gate is not None:
                self._post(self._gate.pause, reason)
        self._election_wakeup.set()

    def _do_step_down(self, reason: str) -> None:
        """Stop numbering, let every transaction in flight settle, fail what waits, tell the gate the durable
        ends, release the lock, follow."""
        assert self._gate is not None
        self.leading = self._paused = False
        for market in self._markets.values():
            with market.wakeup:
                while market.busy:
                    market.wakeup.wait(0.1)
                failed, market.queue = list(market.queue), deque()
            self._settle(failed, LeadershipLost(f"this Sequencer replica no longer leads: {reason}"))
        self._post(self._gate.step_down, {name: m.position for name, m in self._markets.items()}, reason)
        self._release()
        self._step_down = None
        for market in self._markets.values():
            market.in_sync = False
        self._standby.set()
        if self._stop.is_set() or reason == STOPPING:
            log.info("released the leader lock: %s", reason)
        else:
            log.warning("stepped down (%s): following the log as a standby", reason)

    # -- committing (the leader) ------------------------------------------------------------------

    def _commit_loop(self, market: _Market) -> None:
        while not self._stop.is_set():
            with market.wakeup:
                while not market.queue and not self._stop.is_set():
                    market.wakeup.wait(1.0)
                if self._stop.is_set():
                    return
                wanted, linger = market.linger()
                deadline = time.monotonic() + linger
                while len(market.queue) < wanted and (left := deadline - time.monotonic()) > 0:
                    market.wakeup.wait(left)
                entries, finished = _take(market.queue)
                market.busy = True
            try:
                self._commit_batch(market, entries, finished)
            finally:
                with market.wakeup:
                    market.busy = False
                    market.wakeup.notify_all()

    def _commit_batch(self, market: _Market, entries: list[StoredEntry], finished: list[_Pending]) -> None:
        """Commits `entries`, then answers `finished` (the appends they complete)."""
        session = self.session
        if not self.leading or session is None or self._step_down is not None:
            self._fail_queue(market, finished, LeadershipLost("this Sequencer replica does not lead"))
            return
        started = time.monotonic()
        try:
            self._commit(market, session, entries)
            self.archive.write(entries)
        except Fenced as error:
            if self._stop.is_set():
                self._fail_queue(market, finished, LeadershipLost("this Sequencer replica is stopping"))
                return
            log.warning("%s: transaction of %d..%d refused by the store (%s): this replica no longer leads",
                        market.name, entries[0].seq, entries[-1].seq, error,
                        extra=log_fields(market.name, entries[0].seq))
            self._fail_queue(market, finished, LeadershipLost(f"the store refused this replica's transaction: {error}"))
            self._ask_step_down(f"the store refused a transaction: {error}")
            return
        except Exception as error:  # noqa: BLE001 - a write that failed for good: the gate stops the process
            log.error("%s: writing %d..%d failed: %s", market.name, entries[0].seq, entries[-1].seq, error,
                      extra=log_fields(market.name, entries[0].seq))
            self._fail_queue(market, finished, error)
            return
        market.position = entries[-1].seq
        self._settle(finished, None)
        market.appends.append((time.monotonic(), len(finished), time.monotonic() - started))
        market.report(len(entries), time.monotonic() - started)

    def _fail_queue(self, market: _Market, finished: list[_Pending], error: BaseException) -> None:
        """Fails `finished` and everything queued behind them: nothing after a failed write may commit."""
        with market.wakeup:
            failed, market.queue = [*finished, *market.queue], deque()
        self._settle(failed, error)

    def _commit(self, market: _Market, session: str, entries: list[StoredEntry]) -> None:
        """One transaction: check-session, compare-and-set of the head, the batch, the deletes. Returns once it
        committed; raises Fenced if it did not and never will."""
        first, last = entries[0].seq, entries[-1].seq
        if first != market.position + 1:
            raise Fenced(f"{market.name}: batch {first}..{last} does not follow the log's end {market.position}")
        recent = (*(batch[0] for batch in list(market.batches)[-(RECENT - 1):]), first)
        head = Head(last, first, session, recent)
        key = head_key(market.name)
        batches, retained = list(market.batches), market.retained + len(entries)
        deletes: list[TransactionOp] = []
        while batches and len(deletes) < MAX_DELETES and retained - _count(batches[0]) >= self.tail_entries:
            retained -= _count(batches[0])
            deletes.append(Delete(batch_key(market.name, batches.pop(0)[0])))
        ops = [CheckSession(SEQUENCER_LEADER_KEY, session), CompareAndSet(key, head.encode(), market.head_index),
               Put(batch_key(market.name, first), encode_batch(entries)), *deletes]
        resent = False
        while True:
            if self._stop.is_set():
                raise Fenced(f"{market.name}: stopping before batch {first}..{last} committed")
            began = time.perf_counter()
            try:
                versions = self.store.transact(ops)
                CONSUL_TXN_SECONDS.observe(time.perf_counter() - began)
                market.head_index = versions[key]
                self._confirmed = time.monotonic()
                break
            except TransactionConflict as error:
                CONSUL_TXN_CONFLICTS.inc()
                if not resent:
                    raise Fenced(str(error)) from error
                found = self._head_after_unknown(market, key, head)  # it may be the first that committed
                if found is None:
                    raise Fenced(str(error)) from error
                market.head_index = found
                break
            except TransactionRejected:
                raise
            except DiscoveryError as error:  # the outcome is unknown: resolved before anything is answered
                log.warning("%s: transaction of %d..%d has an unknown outcome (%s): resolving it with a "
                            "consistent read of the head", market.name, first, last, error,
                            extra=log_fields(market.name, first))
                found = self._head_after_unknown(market, key, head)
                if found is not None:
                    market.head_index = found
                    break
                resent = True  # not committed (yet): the same transaction again; its compare-and-set
        market.batches = deque([*batches, (first, last)])  # lets at most one of the two commit
        market.retained = retained

    def _head_after_unknown(self, market: _Market, key: str, head: Head) -> int | None:
        """The head's version if the head is `head` (the transaction committed), else None; retries the read
        until the store answers."""
        backoff = 0.05
        while True:
            try:
                found = self.store.read(key, consistent=True)
                return found.index if found is not None and Head.decode(found.value) == head else None
            except DiscoveryError as error:
                if self._stop.is_set():
                    raise Fenced(f"{market.name}: stopping with an unresolved transaction") from error
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)


def _take(queue: deque[_Pending]) -> tuple[list[StoredEntry], list[_Pending]]:
    """The entries of the next transaction (at most MAX_BATCH_BYTES, at least one entry), and the appends they
    complete (removed from the queue); an append too large for one transaction spans several."""
    entries: list[StoredEntry] = []
    finished: list[_Pending] = []
    size = 0
    while queue:
        pending = queue[0]
        for entry in pending.entries[pending.taken:]:
            cost = len(entry.command) + len(entry.mac) + 24
            if entries and size + cost > MAX_BATCH_BYTES:
                return entries, finished
            entries.append(entry)
            size += cost
            pending.taken += 1
        finished.append(queue.popleft())
    return entries, finished


def _count(batch: tuple[int, int]) -> int:
    return batch[1] - batch[0] + 1
