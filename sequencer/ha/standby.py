"""A standby follows the heads with blocking queries, appends each committed batch to its archive (copying
what the store no longer keeps from another replica) and hands it to the gate: its in-memory state stays a
leader's."""

from __future__ import annotations

import logging

from discovery import DiscoveryError
from exchange.runtime import log_fields
from sequencer.ha.base import LogState
from sequencer.ha.records import (
    BACKOFF_MAX_S,
    FOLLOW_PACE_S,
    FOLLOW_WAIT_S,
    HEADS_PREFIX,
    Head,
    LogUnavailable,
    MarketState,
    batch_firsts,
    batch_key,
    batch_prefix,
    decode_batch,
    head_key,
)
from sequencer.log import StoredEntry

log = logging.getLogger(__name__)


class Standby(LogState):
    """The follower's thread (`follow`)."""

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

    def _read_recent(self, market: MarketState, head: Head) -> None:
        """The batches the head lists past this archive's end, in one read (when they follow it)."""
        wanted = [first for first in head.recent if first > market.position]
        if not wanted or wanted[0] != market.position + 1:
            return
        found = self.store.read_many([batch_key(market.name, first) for first in wanted])
        if found is None:  # one was deleted meanwhile: _catch_up reads them one by one
            return
        following: list[StoredEntry] = []  # archived and handed to the gate at once: one write, one post
        for first in wanted:
            entries = decode_batch(found[batch_key(market.name, first)].value, self.secret, market.name)
            if not entries or entries[0].seq != market.position + len(following) + 1:
                break
            following += entries
        if following:
            self._archive(market, following)

    def _catch_up(self, market: MarketState, to_seq: int) -> None:
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
            entries = decode_batch(found.value, self.secret, market.name)
            if not entries or entries[0].seq != first or entries[-1].seq != first + len(entries) - 1:
                raise LogUnavailable(f"{market.name}: the batch at {first} in the store is not the log's next")
            self._archive(market, entries)

    def _copy_from_peer(self, market: MarketState, to_seq: int) -> None:
        """Copies the entries between this archive's end and the store's oldest retained batch."""
        firsts = batch_firsts(self.store.keys(batch_prefix(market.name)), market.name)
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

    def _archive(self, market: MarketState, entries: list[StoredEntry]) -> None:
        self.archive.write(entries)
        market.position = entries[-1].seq
        assert self._gate is not None
        self._post(self._gate.adopt, market.name, entries)
