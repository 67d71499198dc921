"""The Sequencer's durable log: SQLite in WAL mode with synchronous=FULL, group-committed on the event loop.

Durability choice: a number may only be handed out once its command is on disk, and "on disk" must
survive a power cut, not just a process crash. WAL + synchronous=FULL fsyncs the WAL on every commit.

Group commit: `append` queues entries and schedules one flush per event-loop iteration; the flush writes
everything queued in one transaction (one fsync) and settles every waiter. The commit blocks the loop for
its fsync (~0.25 ms here), and the requests that arrive meanwhile go into the next commit, so durability
costs one fsync per batch rather than per order. Committing on the loop rather than on a writer thread
saves two thread hand-offs per commit (measured at 1 in flight: 0.78 -> 0.75 ms per Sequence round trip;
simpler, with no thread to stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    market TEXT NOT NULL,
    seq INTEGER NOT NULL,
    client_order_id TEXT,
    command BLOB NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (market, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS log_client_order_id ON log (market, client_order_id)
    WHERE client_order_id IS NOT NULL;
"""


class StoredEntry(NamedTuple):
    market: str
    seq: int
    client_order_id: str | None
    command: bytes
    mac: bytes


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


class LogStore:
    """Appends entries in group-committed transactions and reads them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _connect(path)
        self._writer.executescript(SCHEMA)
        self._pending: list[tuple[list[StoredEntry], asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- start-up ------------------------------------------------------------------------------

    def last_seqs(self) -> dict[str, int]:
        rows = self._writer.execute("SELECT market, MAX(seq) FROM log GROUP BY market").fetchall()
        return {market: seq for market, seq in rows}

    def client_order_ids(self) -> Iterator[tuple[str, str, int]]:
        yield from self._writer.execute(
            "SELECT market, client_order_id, seq FROM log WHERE client_order_id IS NOT NULL"
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def close(self) -> None:
        if self._pending:
            self._flush()
        self._writer.close()

    # -- writing -------------------------------------------------------------------------------

    def append(self, entries: list[StoredEntry]) -> asyncio.Future[None]:
        """Queues entries for the next group commit; the future resolves once they are durable."""
        assert self._loop is not None, "LogStore.start() was not called"
        done: asyncio.Future[None] = self._loop.create_future()
        self._pending.append((entries, done))
        if len(self._pending) == 1:
            self._loop.call_soon(self._flush)
        return done

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        error: BaseException | None = None
        try:
            self._writer.execute("BEGIN")
            self._writer.executemany(
                "INSERT INTO log (market, seq, client_order_id, command, mac) VALUES (?, ?, ?, ?, ?)",
                [(e.market, e.seq, e.client_order_id, e.command, e.mac) for entries, _ in batch for e in entries],
            )
            self._writer.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - reported to every waiter
            log.exception("log write failed")
            error = exc
            with contextlib.suppress(sqlite3.Error):
                self._writer.execute("ROLLBACK")
        for _, done in batch:
            _settle(done, error)

    # -- reading -------------------------------------------------------------------------------

    def read(self, market: str, from_seq: int, to_seq: int, limit: int) -> list[StoredEntry]:
        """Entries with from_seq <= seq <= to_seq, at most `limit` of them (blocking: call in a thread)."""
        connection = _connect(self.path)
        try:
            rows = connection.execute(
                "SELECT seq, client_order_id, command, mac FROM log"
                " WHERE market = ? AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
                (market, from_seq, to_seq, limit),
            ).fetchall()
        finally:
            connection.close()
        return [StoredEntry(market, seq, coid, command, mac) for seq, coid, command, mac in rows]


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
