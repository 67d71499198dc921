"""The sync client is generated from the asyncio one (devtools/unasync.py): the committed exchange/client/sync.py
must be what exchange/client/aio.py makes, blocking code throughout, and the two must behave alike where they
wait their own way (exchange/client/*_concurrency.py)."""

from __future__ import annotations

import ast
import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from devtools import unasync
from exchange.client import AsyncClient, Client
from exchange.client.book import GAP
from exchange.v1 import exchange_pb2 as pb
from tests.unit.fakes import FakeRpcError, run_scenario
from tests.unit.test_client_core import FAST, follow

CANCELLED = FakeRpcError(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")


def test_the_committed_sync_client_is_what_the_asyncio_one_generates() -> None:
    committed = (unasync.ROOT / unasync.TARGET).read_text()
    assert committed == unasync.expected(), "exchange/client/sync.py is out of date: run `make client-sync`"


def test_the_generated_client_has_no_asyncio_left() -> None:
    tree = ast.parse(unasync.expected())
    left = [type(node).__name__ for node in ast.walk(tree)
            if isinstance(node, ast.AsyncFunctionDef | ast.AsyncFor | ast.AsyncWith | ast.Await)]
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert left == []
    assert not {"asyncio", "exchange.client.aio_concurrency", "AsyncIterator"} & imported


def test_a_substitution_that_matches_nothing_is_an_error() -> None:
    source = (unasync.ROOT / unasync.SOURCE).read_text()
    with pytest.raises(ValueError, match="no_such_name"):
        unasync.unasync(source, [*unasync.SUBS, (r"\bno_such_name\b", "x")])


# -- both book subscriptions through a gap: the hand-written Worker and Changes of each flavour ---------------


HOLD = pb.BookUpdate()  # in a stream's messages: wait for the test to let the rest through (`go`)


class SyncBookStream:
    """A StreamBook call: its messages, then open (as a live stream) until cancelled."""

    def __init__(self, messages: list[pb.BookUpdate], go: threading.Event) -> None:
        self.messages, self.go, self.cancelled = messages, go, threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> Iterator[pb.BookUpdate]:
        for message in self.messages:
            if message is HOLD:
                self.go.wait(30)
            else:
                yield message
        self.cancelled.wait(30)
        raise CANCELLED


class AsyncBookStream:
    def __init__(self, messages: list[pb.BookUpdate], go: asyncio.Event) -> None:
        self.messages, self.go, self.cancelled = messages, go, asyncio.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def __aiter__(self) -> AsyncIterator[pb.BookUpdate]:
        return self._read()

    async def _read(self) -> AsyncIterator[pb.BookUpdate]:
        for message in self.messages:
            await asyncio.sleep(0)  # a real stream yields to the loop
            if message is HOLD:
                await self.go.wait()
            else:
                yield message
        await self.cancelled.wait()
        raise CANCELLED


class BookNode:
    """A node's stub whose StreamBook calls answer the given streams in turn (the last one again after them)."""

    def __init__(self, stream: Any, go: Any, answers: list[list[pb.BookUpdate]]) -> None:
        self.stream, self.go, self.answers = stream, go, answers
        self.calls: list[Any] = []

    def StreamBook(self, request: pb.StreamBookRequest, metadata: Any = None) -> Any:
        self.calls.append(self.stream(self.answers[min(len(self.calls), len(self.answers) - 1)], self.go))
        return self.calls[-1]


def test_both_clients_keep_a_book_through_a_gap_and_stop_when_closed() -> None:
    engine, tracker, messages = follow(10, 9, 400)
    first = [messages[0], messages[1], messages[3]]  # messages[2] lost: a gap, then a new snapshot
    second = [messages[0], HOLD, *messages[1:]]  # the rest once the test waits for it: the waiter must be woken
    want = tracker.snapshot()
    sync_node = BookNode(SyncBookStream, threading.Event(), [first, second])
    with Client(["n1:1"], policy=FAST, stub_factory=lambda _: sync_node) as client:
        with client.subscribe_book("M", depth=10) as book:
            sync_node.go.set()
            assert book.wait_for(messages[-1].last_seq, timeout=10)
            sync_seen = (book.book(), book.stats)
        assert all(call.cancelled.is_set() for call in sync_node.calls) and not book._worker._thread.is_alive()

    async def run() -> tuple[Any, Any]:
        async_node = BookNode(AsyncBookStream, asyncio.Event(), [first, second])
        async with AsyncClient(["n1:1"], policy=FAST, stub_factory=lambda _: async_node) as client:
            async with await client.subscribe_book("M", depth=10) as book:
                async_node.go.set()  # the stream goes on once this waits
                assert await book.wait_for(messages[-1].last_seq, timeout=10)
                seen = (book.book(), book.stats)
            assert all(call.cancelled.is_set() for call in async_node.calls)
            assert book._worker._task is not None and book._worker._task.done()
            return seen

    async_seen = run_scenario(run())
    for view, stats in (sync_seen, async_seen):
        assert (view.bids, view.asks, view.seq) == (want.bids, want.asks, want.seq)
        assert stats.resyncs_by_reason == {GAP: 1} and stats.verified == 2 + len(messages), stats
