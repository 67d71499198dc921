"""What only the asyncio client does its own way: tasks and asyncio conditions, and the duplex order-entry stream.

`exchange/client/aio.py` imports these; the sync client, generated from it (devtools/unasync.py), imports the same
names from `exchange.client.sync_concurrency`, which does the same with threads. Everything else is one source.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from exchange.client import core
from exchange.errors import DeadlineExceeded, ExchangeError, Unavailable


class Changes:
    """A book subscription's changes, and the waits for them. `async with changes:` makes a change: whoever waits
    is woken on the way out. The follower and the readers share one event loop, so reading needs no lock."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()

    def guard(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    async def __aenter__(self) -> None:
        await self._condition.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._condition.notify_all()
        self._condition.release()

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Waits until `condition()` (checked after each change) holds; False if it does not within `timeout`."""
        async with self._condition:
            try:
                await asyncio.wait_for(self._condition.wait_for(condition), timeout)
            except TimeoutError:
                return False
            return True


class Worker:
    """The background work of a book subscription: a task on the running event loop."""

    def __init__(self, target: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._target = target
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self.stopped = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._target(), name=self._name)

    async def pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def stop(self, interrupt: Callable[[], None]) -> None:
        """Stops the work: `interrupt` unblocks what it waits on; returns once it has ended."""
        self.stopped = True
        interrupt()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def entry_stream(stub: Any, metadata: tuple[tuple[str, str], ...], attempt: core.Attempt,
                       entries: core.EntryWindow, plan: core.RetryPlan) -> ExchangeError | grpc.RpcError | None:
    """One OrderEntryBatch stream: a task writes while the window has room, this reads, until every order has its
    result or the stream fails (returned). No answer for an attempt's timeout counts as DEADLINE_EXCEEDED."""
    call = stub.OrderEntryBatch(metadata=metadata)
    room = asyncio.Event()
    room.set()

    async def write() -> None:
        while not entries.done:
            batch = entries.next_batch()
            if batch is None:
                if (pause := entries.pause()) > 0:  # paced to the account's rate limit
                    await asyncio.sleep(pause)
                    continue
                room.clear()
                await room.wait()
                continue
            await call.write(batch)
        await call.done_writing()

    writer = asyncio.ensure_future(write())
    try:
        while not entries.done:
            try:
                result = await asyncio.wait_for(call.read(), attempt.timeout)
            except TimeoutError:
                return DeadlineExceeded(f"no answer from {attempt.address} for {attempt.timeout:.1f}s")
            if result is grpc.aio.EOF:
                return Unavailable("the order entry stream ended early")
            entries.on_result(result)
            plan.progress()
            room.set()
        return None
    except grpc.RpcError as error:
        return error
    except ExchangeError as error:
        return error
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.RpcError, Exception):
            await writer
        call.cancel()
