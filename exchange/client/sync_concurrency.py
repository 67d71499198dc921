"""What only the sync client does its own way: threads and their conditions, and the duplex order-entry stream.

The sync client (`exchange/client/sync.py`, generated from `aio.py` by devtools/unasync.py) imports these where
`aio.py` imports `exchange.client.aio_concurrency`: the same names, with threads instead of tasks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from exchange.client import core
from exchange.errors import DeadlineExceeded, ExchangeError, Unavailable
from exchange.v1 import exchange_pb2 as pb


class Changes:
    """A book subscription's lock and changes, and the waits for them. `with changes:` makes a change under the lock:
    whoever waits is woken on the way out. Its thread writes while others read, so readers take the lock too
    (`guard()`)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()

    def guard(self) -> threading.Condition:
        return self._condition

    def __enter__(self) -> None:
        self._condition.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._condition.notify_all()
        self._condition.release()

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Waits until `condition()` (called under the lock, after each change) holds; False if it does not within
        `timeout`."""
        with self._condition:
            return self._condition.wait_for(condition, timeout)


class Worker:
    """The background work of a book subscription: a daemon thread."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=target, name=name, daemon=True)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def start(self) -> None:
        self._thread.start()

    def pause(self, seconds: float) -> None:
        self._stopped.wait(seconds)

    def stop(self, interrupt: Callable[[], None]) -> None:
        """Stops the work: `interrupt` unblocks what it waits on; returns once it has ended (at most 5 s)."""
        self._stopped.set()
        interrupt()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def entry_stream(stub: Any, metadata: tuple[tuple[str, str], ...], attempt: core.Attempt,
                 entries: core.EntryWindow, plan: core.RetryPlan) -> ExchangeError | grpc.RpcError | None:
    """One OrderEntryBatch stream: sends while the window has room, until every order has its result or the stream
    fails (returned). A stream with orders in flight and no answer for an attempt's timeout is cancelled and counts
    as DEADLINE_EXCEEDED."""
    changed = threading.Condition()
    state = {"closed": False, "last_answer": time.monotonic()}

    def requests() -> Iterator[pb.OrderBatch]:
        while True:
            with changed:
                batch = entries.next_batch()
                while batch is None and not state["closed"] and not entries.done:
                    changed.wait(entries.pause() or 0.5)  # paced to the rate limit, or the window is full
                    batch = entries.next_batch()
                if batch is None:
                    return
            yield batch

    call = stub.OrderEntryBatch(requests(), metadata=metadata)
    stalled = threading.Event()

    def watchdog() -> None:
        while not state["closed"]:
            time.sleep(0.05)
            with changed:
                waiting = bool(entries.in_flight)
                silent = time.monotonic() - float(state["last_answer"])
            if waiting and silent > attempt.timeout:
                stalled.set()
                call.cancel()
                return

    guard = threading.Thread(target=watchdog, name="submit-many-watchdog", daemon=True)
    guard.start()
    try:
        for result in call:
            with changed:
                entries.on_result(result)
                state["last_answer"] = time.monotonic()
                plan.progress()
                changed.notify_all()
                if entries.done:
                    break
        return None if entries.done else Unavailable("the order entry stream ended early")
    except grpc.RpcError as error:
        if stalled.is_set():
            return DeadlineExceeded(f"no answer from {attempt.address} for {attempt.timeout:.1f}s")
        return error
    except ExchangeError as error:
        return error
    finally:
        with changed:
            state["closed"] = True
            changed.notify_all()
        call.cancel()
        guard.join()
