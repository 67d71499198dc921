"""The log's contract (tests/unit/log_contract.py) against the embedded SQLite log, in-process."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest

from sequencer.log import StoredEntry, settle
from sequencer.service import SequencerService
from sequencer.store import LogStore
from tests.unit.log_contract import MARKETS, SECRET, LogContract


class HeldLogStore(LogStore):
    """The embedded log whose group commits the harness can hold back (they are queued, not written)."""

    def __init__(self, path: Path, harness: SQLiteHarness) -> None:
        super().__init__(path)
        self.harness = harness
        self.held: list[tuple[str, list[StoredEntry], asyncio.Future[None]]] = []

    def append(self, market: str, entries: list[StoredEntry]) -> asyncio.Future[None]:
        if not self.harness.holding:
            return super().append(market, entries)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.held.append((market, entries, done))
        return done

    def release(self) -> None:
        held, self.held = self.held, []
        for market, entries, done in held:
            super().append(market, entries).add_done_callback(partial(_settle_when_written, done))


def _settle_when_written(done: asyncio.Future[None], write: asyncio.Future[None]) -> None:
    settle(done, write.exception())


class SQLiteHarness:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.failures: list[BaseException] = []
        self.holding = False
        self.store: HeldLogStore | None = None

    async def start(self, window: int = 1_000) -> SequencerService:
        self.holding = False
        self.store = HeldLogStore(self.path, self)
        self.store.start(asyncio.get_running_loop())
        return SequencerService(self.store, SECRET, MARKETS, self.failures.append, dedup_window=window)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        assert self.store is not None
        self.store.release()

    def break_writes(self) -> None:
        assert self.store is not None
        self.store._writer.close()  # the disk goes away

    async def crash(self, service: SequencerService) -> None:
        assert self.store is not None
        self.store.held.clear()  # never fsynced
        self.store._pending.clear()
        self.store._writer.close()

    async def stop(self, service: SequencerService) -> None:
        assert self.store is not None
        self.store.close()


class TestEmbeddedLog(LogContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> SQLiteHarness:
        return SQLiteHarness(tmp_path / "log.sqlite3")
