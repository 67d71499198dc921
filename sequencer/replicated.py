"""The replicated log (HA mode, `exchange-sequencer --log consul`): the log's tail in a replicated store
(Consul KV, through `discovery.ReplicatedStore`), several Sequencer replicas, one leader.

Keys (docs/ha.md):

* `exchange/sequencer/leader`: the lock; held by the leader's session, its value names the leader (id and
  gRPC address: how nodes find it, `exchange.cluster_common.LeaderRecord`).
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
import functools
import logging
import time

from exchange.cluster_common import SEQUENCER_LEADER_KEY
from sequencer.ha.commit import Committer
from sequencer.ha.records import STOPPING, Pending
from sequencer.log import Recovered, RoleCallbacks, StoredEntry

log = logging.getLogger(__name__)


class ReplicatedLog(Committer):
    """The log in a replicated store, with this replica's archive (see the module docstring): a standby,
    the election and the leader's commits (`sequencer.ha`)."""

    leads_at_start = False

    def describe(self) -> str:
        return f"replicated log (leader lock {SEQUENCER_LEADER_KEY}, tail {self.tail_entries} entries per " \
               f"market), archive {self.archive.path}"

    # -- LogBackend ------------------------------------------------------------------------------

    def recover(self, market: str, window: int) -> Recovered:
        return self.archive.recover(market, window)

    def markets(self) -> list[str]:
        return self.archive.markets()

    def start(self, loop: asyncio.AbstractEventLoop, gate: RoleCallbacks | None = None) -> None:
        assert gate is not None, "a replicated log drives the gate's role"
        self._loop, self._gate = loop, gate
        self._threads = [self._thread("log-follow", self._follow), self._thread("log-election", self._elect)]
        self._threads += [self._thread(f"log-commit-{name}", functools.partial(self._commit_loop, market))
                          for name, market in self._markets.items()]
        for thread in self._threads:
            thread.start()

    def append(self, market: str, entries: list[StoredEntry]) -> asyncio.Future[None]:
        assert self._loop is not None, "ReplicatedLog.start() was not called"
        done: asyncio.Future[None] = self._loop.create_future()
        state = self._markets[market]
        with state.wakeup:
            state.queue.append(Pending(entries, done))
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
