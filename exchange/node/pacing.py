"""How the public streams (StreamBook, StreamTrades) pace themselves: one wake-up per market for all their
subscribers, at most every UPDATE_INTERVAL, and each message serialised once for the subscribers that read in
step.

A subscriber's cost is about one gRPC message (its serialisation and write, and waking its task), whatever the
market does. So the apply path only notes that something happened (`Pulse.notify`: O(1), no task woken); the
market's subscribers wake together at the next pulse, at most 1 / UPDATE_INTERVAL times a second, and between two
messages each waits for the next pulse if one is due: what happens meanwhile merges into its next message
(absolute sizes for levels, every trade since its cursor for trades: CONTRACT section 8 allows it). Subscribers
that wake together from the same place get the same update, whose message is built and serialised once
(`SharedMessages`); a subscriber whose write was still in flight at the pulse of what it lacks takes it at once
after the write (no pulse is due then), and rejoins the others at the next pulse.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable

from google.protobuf.message import Message

# The shortest time between two pulses of a market: at most 20 messages per second per subscriber.
UPDATE_INTERVAL = 0.05


class Pulse:
    """Wakes the waiting subscribers of one market at most every `interval` seconds while it changes: at once if
    the previous pulse is older than that, else when it is `interval` old."""

    __slots__ = ("interval", "_event", "_last", "_timer")

    def __init__(self, interval: float = UPDATE_INTERVAL) -> None:
        self.interval = interval
        self._event = asyncio.Event()
        self._last = float("-inf")
        self._timer: asyncio.TimerHandle | None = None

    def notify(self) -> None:
        """Something changed (the apply path): a pulse follows within `interval`."""
        if self._timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # applied outside the event loop (a replay at start): nobody can be waiting
            return
        due = self._last + self.interval
        if loop.time() >= due:
            self._fire()
        else:
            self._timer = loop.call_at(due, self._fire)

    def fire(self) -> None:
        """A pulse now (a stream must end: its subscribers must not wait)."""
        if self._timer is not None:
            self._timer.cancel()
        self._fire()

    def _fire(self) -> None:
        self._timer = None
        self._last = asyncio.get_running_loop().time()
        event, self._event = self._event, asyncio.Event()
        event.set()

    @property
    def pending(self) -> bool:
        """Whether a pulse is due (something changed since the last one): it comes within `interval`."""
        return self._timer is not None

    async def wait(self, timeout: float | None = None) -> None:
        """Until the next pulse, or `timeout` seconds."""
        if timeout is None:
            await self._event.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._event.wait()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class SharedMessages:
    """Messages serialised once for every subscriber that sends the same update, by a key naming that update;
    the last `limit` kept. The streams yield the bytes (the server sends them as they are: exchange/runtime.py)."""

    __slots__ = ("limit", "_built")

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._built: dict[Hashable, bytes] = {}

    def get(self, key: Hashable, build: Callable[[], Message]) -> bytes:
        data = self._built.get(key)
        if data is None:
            data = self._built[key] = build().SerializeToString()
            while len(self._built) > self.limit:
                del self._built[next(iter(self._built))]
        return data

    def clear(self) -> None:
        self._built.clear()
