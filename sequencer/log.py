"""The log's contract: what the gate (service.py) needs of a log backend, and what a backend may tell the gate.

Two backends implement `LogBackend`: `store.LogStore` (the embedded SQLite log, one machine) and
`replicated.ReplicatedLog` (the log in a replicated store, Consul: several Sequencer replicas, one leader).
What both promise (tests/unit/test_log_contract.py runs one suite against both):

* `append` resolves its future only once the entries are durable (SQLite: fsynced; Consul: committed), and
  fails it if they are not and never will be; entries are appended in number order, gap-free.
* `read` returns only durable entries.
* `recover` gives the last durable number and the dedup keys of the window: a restarted Sequencer resumes at
  exactly the last durable number, with the same window.

A replicated backend also drives the gate's role through `RoleCallbacks`: only a leader numbers commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from exchange.errors import Unavailable


class StoredEntry(NamedTuple):
    market: str
    seq: int
    dedup_key: str | None  # exchange.dedup.dedup_key of the command
    command: bytes
    mac: bytes


class Recovered(NamedTuple):
    """What a market's log holds at start: its last durable number, and (seq, dedup key) of the entries with
    a key among the last `window` ones, in number order."""

    position: int
    keys: list[tuple[int, str]]


class LeadershipLost(Unavailable):
    """The replicated store refused this replica's write: another replica leads (or none does). Nothing of
    the write was stored; the node retries on the leader."""


class RoleCallbacks(Protocol):
    """What a replicated backend tells the gate, always on the event loop, in the order it happened."""

    def adopt(self, market: str, entries: list[StoredEntry]) -> None:
        """Entries another replica committed (this one is a standby): the next ones of the market, in order."""
        ...

    def lead(self, resumed: bool = False) -> None:
        """This replica now leads: its positions are the store's heads; it may number commands. `resumed`: it
        led all along and numbers again after a pause (no change of leader)."""
        ...

    def pause(self, reason: str) -> None:
        """Stop numbering at once (leadership is being lost); writes in flight still settle."""
        ...

    def step_down(self, positions: dict[str, int], reason: str) -> None:
        """This replica no longer leads; `positions` are the markets' durable ends (every write has settled):
        numbers assigned past them were never stored and are forgotten."""
        ...

    def fail(self, error: BaseException) -> None:
        """The backend broke (a bug): like a failed write, the process must stop."""
        ...


class LogBackend(Protocol):
    # Whether this replica numbers commands from the start (the embedded log) or only once `RoleCallbacks.lead` says so.
    leads_at_start: bool

    def recover(self, market: str, window: int) -> Recovered: ...

    def markets(self) -> list[str]:
        """The markets the log holds entries of."""
        ...

    def start(self, loop: asyncio.AbstractEventLoop, gate: RoleCallbacks) -> None: ...

    def append(self, market: str, entries: list[StoredEntry]) -> asyncio.Future[None]:
        """Queues the market's next entries; the future resolves once they are durable, or fails (then they
        never will be: LeadershipLost, or any other error for a write that failed)."""
        ...

    def read(self, market: str, from_seq: int, to_seq: int, limit: int) -> list[StoredEntry]:
        """Durable entries from_seq <= seq <= to_seq, at most `limit` (blocking: call it in a thread)."""
        ...

    def describe(self) -> str: ...

    def suspect(self, why: str) -> bool:
        """The gate saw a sign that this replica may no longer lead (a node ahead of it). A replicated backend
        verifies its leadership (a fenced transaction) and returns True; the embedded one returns False."""
        ...

    def close(self) -> None: ...


def settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def settle_all(futures: Iterable[asyncio.Future[None]], error: BaseException | None) -> None:
    for done in futures:
        settle(done, error)
