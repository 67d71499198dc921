"""A node's snapshots: the replica's state as a peer receives it (GetSnapshot) and as the node keeps it on disk.

A restarted node starts from its own latest snapshot and reads only the log after it, so its start does not
grow with the age of the exchange. Every `--snapshot-every` applied entries (all markets together) and on a
graceful stop the node writes a `ReplicaSnapshot` (the engine, the client_order_ids of the resting orders (a
peer's GetSnapshot also has the window's), and the market data) to `--data-dir`, atomically (a temporary file,
fsynced, renamed), and keeps the last KEEP. At start it adopts the newest one that reads back (an older one if
that one is damaged); a snapshot ahead of the Sequencer's log (a data directory of another cluster, or a log
that was reset) is set aside, never used.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from google.protobuf.message import DecodeError

from exchange import engine as eng
from exchange.node.replica import Replica
from exchange.v1 import exchange_pb2 as pb

log = logging.getLogger(__name__)

KEEP = 2  # snapshots kept on disk: the newest, and one before it in case the newest cannot be read
DEFAULT_EVERY = 100_000  # applied entries (all markets) between two snapshots
_PREFIX, _SUFFIX = "snapshot-", ".pb"
SET_ASIDE = "ahead-of-log-"  # before the name of a snapshot of another log: kept for a person, never adopted


def replica_snapshot(node_id: str, replica: Replica, window_keys: bool = True) -> pb.ReplicaSnapshot:
    """The replica's state at its applied sequences: what a node needs to start there (Replica.snapshot)."""
    engine, client_order_ids = replica.snapshot(window_keys)
    return pb.ReplicaSnapshot(
        node_id=node_id, engine=engine,
        client_order_ids=[pb.ClientOrderId(market=m, account=a, client_order_id=c, seq=s)
                          for m, a, c, s in client_order_ids],
        market_data=replica.market_data.snapshot(),
    )


def adopt(replica: Replica, snapshot: pb.ReplicaSnapshot) -> bool:
    """Replica.adopt of a ReplicaSnapshot: whether it was adopted (not if it is behind); ValueError if corrupt."""
    ids = [(c.market, c.account, c.client_order_id, c.seq) for c in snapshot.client_order_ids]
    return replica.adopt(snapshot.engine, ids, snapshot.market_data)


def position(replica: Replica) -> int:
    """The number of entries the replica has applied, all markets together (grows with every entry)."""
    return sum(replica.applied_seq(market) for market in replica.markets)


class SnapshotStore:
    """The snapshots of one node in a directory, named by their position, the last KEEP of them."""

    def __init__(self, directory: Path, keep: int = KEEP) -> None:
        self.directory = directory
        self.keep = keep

    def _files(self) -> list[Path]:
        """Every snapshot file, newest first."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"{_PREFIX}*{_SUFFIX}"), reverse=True)

    def save(self, data: bytes, at: int) -> Path:
        """Writes a snapshot at position `at` durably and drops all but the last `keep` ones."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{_PREFIX}{at:020d}{_SUFFIX}"
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        for old in self._files()[self.keep:]:
            old.unlink(missing_ok=True)
        return path

    def snapshots(self) -> Iterator[tuple[Path, pb.ReplicaSnapshot]]:
        """The snapshots that read back, newest first (a damaged one is skipped, and said so)."""
        for path in self._files():
            try:
                yield path, pb.ReplicaSnapshot.FromString(path.read_bytes())
            except (OSError, ValueError, DecodeError) as error:
                log.warning("ignoring snapshot %s: %s", path, error)

    def restore(self, replica: Replica, current: Mapping[str, int]) -> Path | None:
        """Adopts the newest usable snapshot that is not ahead of the log's `current` positions. One ahead is of
        another log (another cluster's, or one that was reset): it is set aside (renamed with SET_ASIDE before
        its name), never to be adopted once the new log passes its position nor to count among the last `keep`."""
        for path, snapshot in self.snapshots():
            try:
                if any(current.get(market, 0) < seq for market, seq in _positions(snapshot).items()):
                    aside = path.with_name(f"{SET_ASIDE}{path.name}")
                    log.warning("setting snapshot %s aside as %s: it is ahead of the Sequencer's log %s (another "
                                "cluster's, or a log that was reset)", path, aside.name, dict(current))
                    os.replace(path, aside)
                    continue
                if adopt(replica, snapshot):
                    return path
            except ValueError as error:
                log.warning("ignoring snapshot %s: %s", path, error)
        return None


def _positions(snapshot: pb.ReplicaSnapshot) -> dict[str, int]:
    """Each market's applied sequence in a snapshot (ValueError if its engine part is not readable); its books
    are read once, by the adoption."""
    return eng.Engine.positions(snapshot.engine)


class Snapshotter:
    """Takes the node's snapshots: every `every` applied entries (0: only when asked, at a graceful stop)."""

    def __init__(self, store: SnapshotStore, replica: Replica, node_id: str, every: int = DEFAULT_EVERY) -> None:
        self.store = store
        self.replica = replica
        self.node_id = node_id
        self.every = every
        self.saved_at = -1  # the position of the last snapshot written or adopted (none yet)

    def _data(self) -> tuple[bytes, int]:
        snapshot = replica_snapshot(self.node_id, self.replica, window_keys=False)
        return snapshot.SerializeToString(), position(self.replica)

    async def run(self, poll_s: float = 0.5) -> None:
        """Takes a snapshot whenever `every` entries were applied since the last one, until cancelled."""
        while self.every:
            await asyncio.sleep(poll_s)
            if position(self.replica) - self.saved_at >= self.every:
                data, at = self._data()  # on the event loop: the replica does not change meanwhile
                try:
                    await asyncio.to_thread(self.store.save, data, at)
                    self.saved_at = at
                except OSError as error:
                    log.error("could not write a snapshot to %s: %s", self.store.directory, error)

    def save_now(self) -> None:
        """Writes a snapshot of the current state unless the last one is already at it (a graceful stop)."""
        data, at = self._data()
        if at != self.saved_at:
            try:
                self.store.save(data, at)
                self.saved_at = at
            except OSError as error:
                log.error("could not write a snapshot to %s: %s", self.store.directory, error)
