"""The leader's commit point: one fenced transaction per batch of a market (check-session, compare-and-set of
the head, the batch, the deletes of what left the retained tail), one in flight per market; an unknown
outcome is resolved (a consistent read of the head, else the same transaction again) before anything else is
answered, and a refused one deposes the leader."""

from __future__ import annotations

import logging
import time
from collections import deque

from discovery import (
    AccessDenied,
    CheckSession,
    CompareAndSet,
    Delete,
    DiscoveryError,
    Put,
    TransactionConflict,
    TransactionOp,
    TransactionRejected,
)
from exchange.cluster_common import SEQUENCER_LEADER_KEY
from exchange.runtime import log_fields
from sequencer.ha.election import Election
from sequencer.ha.records import (
    BACKOFF_MAX_S,
    MAX_BATCH_BYTES,
    MAX_DELETES,
    RECENT,
    Fenced,
    Head,
    MarketState,
    Pending,
    batch_count,
    batch_key,
    encode_batch,
    head_key,
)
from sequencer.log import LeadershipLost, StoredEntry
from sequencer.metrics import CONSUL_TXN_CONFLICTS, CONSUL_TXN_SECONDS

log = logging.getLogger(__name__)


class Committer(Election):
    """One commit thread per market (`commit`)."""

    # -- committing (the leader) ------------------------------------------------------------------

    def _commit_loop(self, market: MarketState) -> None:
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

    def _commit_batch(self, market: MarketState, entries: list[StoredEntry], finished: list[Pending]) -> None:
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
        market.appends.append((time.monotonic(), len(finished), len(entries), time.monotonic() - started))
        market.report(len(entries), time.monotonic() - started)

    def _fail_queue(self, market: MarketState, finished: list[Pending], error: BaseException) -> None:
        """Fails `finished` and everything queued behind them: nothing after a failed write may commit."""
        with market.wakeup:
            failed, market.queue = [*finished, *market.queue], deque()
        self._settle(failed, error)

    def _commit(self, market: MarketState, session: str, entries: list[StoredEntry]) -> None:
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
        while batches and len(deletes) < MAX_DELETES and retained - batch_count(batches[0]) >= self.tail_entries:
            retained -= batch_count(batches[0])
            deletes.append(Delete(batch_key(market.name, batches.pop(0)[0])))
        ops = [CheckSession(SEQUENCER_LEADER_KEY, session), CompareAndSet(key, head.encode(), market.head_index),
               Put(batch_key(market.name, first), encode_batch(entries)), *deletes]
        resent = False
        backoff = 0.05  # between resends of a transaction whose outcome was unknown and is not committed
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
            except TransactionRejected:  # nothing applied, and sending it again cannot help
                raise
            except AccessDenied as error:  # nor here; but a Consul agent may refuse a valid token for a while
                # after a Consul server restarted (a cached "ACL not found"): this replica steps down (another may
                # lead) and contends again once its token works, as its election does, instead of stopping.
                raise Fenced(str(error)) from error
            except DiscoveryError as error:  # the outcome is unknown: resolved before anything is answered
                log.warning("%s: transaction of %d..%d has an unknown outcome (%s): resolving it with a "
                            "consistent read of the head", market.name, first, last, error,
                            extra=log_fields(market.name, first))
                found = self._head_after_unknown(market, key, head)
                if found is not None:
                    market.head_index = found
                    break
                # Not committed (yet): the same transaction again (its compare-and-set lets at most one of the two
                # commit), after a pause: a store that fails writes at once while its reads answer is not flooded.
                resent = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        market.batches = deque([*batches, (first, last)])
        market.retained = retained

    def _head_after_unknown(self, market: MarketState, key: str, head: Head) -> int | None:
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


def _take(queue: deque[Pending]) -> tuple[list[StoredEntry], list[Pending]]:
    """The entries of the next transaction (at most MAX_BATCH_BYTES, at least one entry), and the appends they
    complete (removed from the queue); an append too large for one transaction spans several."""
    entries: list[StoredEntry] = []
    finished: list[Pending] = []
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
