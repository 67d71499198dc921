"""The election: the lock `exchange/sequencer/leader` and this replica's session; taking it when it is free
and this replica is current, renewing the session, probing when the lease runs out, stepping down."""

from __future__ import annotations

import logging
import time
from collections import deque

from discovery import CheckSession, DiscoveryError, TransactionConflict
from exchange.cluster_common import SEQUENCER_LEADER_KEY
from sequencer.ha.records import (
    STOPPING,
    Head,
    LogUnavailable,
    batch_count,
    batch_firsts,
    batch_prefix,
    head_key,
)
from sequencer.ha.standby import Standby
from sequencer.log import LeadershipLost
from sequencer.metrics import SESSION_RENEWALS

log = logging.getLogger(__name__)


class Election(Standby):
    """The election thread (`election`) and the step-down every part may ask for."""

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
            self._post(self._gate.lead, True)

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
                    firsts = batch_firsts(self.store.keys(batch_prefix(market.name)), market.name)
                    ends = [following - 1 for following in firsts[1:]] + [seq]
                    market.batches = deque(zip(firsts, ends[:len(firsts)], strict=True))
                    market.retained = sum(batch_count(batch) for batch in market.batches)
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
