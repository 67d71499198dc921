"""The replicated log's records: the keys in the store, the head and batch values, the errors, and the
per-market state of this replica's threads (see `sequencer.replicated`)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from exchange.dedup import dedup_key
from exchange.entry_signing import entry_is_authentic
from exchange.runtime import log_fields
from exchange.v1 import sequencer_pb2, types_pb2
from sequencer.log import StoredEntry

log = logging.getLogger(__name__)

LOG_PREFIX = "exchange/log/"
HEADS_PREFIX = LOG_PREFIX + "heads/"
DEFAULT_TAIL_ENTRIES = 20_000
MAX_BATCH_BYTES = 256 * 1024  # raw bytes of one batch value (Consul: 512 KiB per request, values in base64)
MAX_DELETES = 32  # batches deleted per transaction (a transaction holds at most 64 operations)
# Group commit across nodes: each node has one gate request per market in flight, so a transaction that starts
# the moment the previous one ends holds only the requests that arrived meanwhile, and the nodes it just answered
# wait a whole transaction more. When recent transactions held several nodes' appends, the next one waits for as
# many to be queued, up to the recent median commit latency (at most LINGER_MAX_S). Measured at 64 in flight: 12
# -> 20 entries per transaction (docs/benchmarks.md). Under a load where transactions carry more than
# LONG_LINGER_ENTRIES entries each (more than 8 orders in flight), the Consul transaction is most of an order's
# cost, so it waits up to LONG_LINGER times as long (still at most LINGER_MAX_S) for the last busy node:
# measured at 64 in flight, CPU per order 1,006 -> 871 us (means of three runs on a loaded machine); at 8 in
# flight, where latency is what counts, transactions carry fewer entries and the linger stays as it was.
LINGER_MAX_S = 0.010
LONG_LINGER_ENTRIES = 10
LONG_LINGER = 3
CONCURRENCY_WINDOW_S = 1.0
FOLLOW_WAIT_S = 5.0
# A standby reads the batches committed since its last round in one read, then waits this long before the next
# round: its cost (and the store's) is per round, not per commit, and it trails the leader by about this much.
FOLLOW_PACE_S = 0.1
RECENT = 32  # batch starts a head lists
BACKOFF_MAX_S = 1.0
STOPPING = "this replica is stopping"

# Reads another replica's archive: (market, from_seq, to_seq) -> batches of verified entries, in order.
PeerReader = Callable[[str, int, int], Iterator[list[StoredEntry]]]


def head_key(market: str) -> str:
    return f"{HEADS_PREFIX}{market}"


def batch_prefix(market: str) -> str:
    return f"{LOG_PREFIX}batches/{market}/"


def batch_key(market: str, first: int) -> str:
    return f"{batch_prefix(market)}{first:020d}"


def batch_firsts(keys: Iterable[str], market: str) -> list[int]:
    """The first numbers of `market`'s batches among `keys` (a listing of its batch_prefix), in order. A market
    whose symbol extends this one's past a '/' ("BTC/USD" of "BTC") lists its batches under the same prefix."""
    prefix = batch_prefix(market)
    digits = (key[len(prefix):] for key in keys if key.startswith(prefix))
    return sorted(int(rest) for rest in digits if len(rest) == 20 and rest.isascii() and rest.isdigit())


class Head(NamedTuple):
    seq: int  # the last number committed
    batch: int  # the first number of the batch that ends at `seq`
    writer: str  # the session that wrote it
    recent: tuple[int, ...] = ()  # the first numbers of the last RECENT batches (a follower reads them at once)

    def encode(self) -> bytes:
        return json.dumps({"seq": self.seq, "batch": self.batch, "writer": self.writer,
                           "recent": list(self.recent)}).encode()

    @classmethod
    def decode(cls, value: bytes) -> Head:
        data = json.loads(value)
        return cls(int(data["seq"]), int(data["batch"]), str(data["writer"]),
                   tuple(int(first) for first in data.get("recent", [data["batch"]])))


def encode_batch(entries: list[StoredEntry]) -> bytes:
    return sequencer_pb2.LogBatch(entries=[
        types_pb2.SequencedCommand(market=e.market, seq=e.seq, command=e.command, mac=e.mac) for e in entries
    ]).SerializeToString()


def decode_batch(value: bytes, secret: bytes, market: str) -> list[StoredEntry]:
    """The entries of a batch read from the store, each checked against its MAC: the store is writable by more
    than the Sequencer (a management token), and a replica that archived a forged entry would serve it."""
    parse = types_pb2.Command.FromString
    entries = sequencer_pb2.LogBatch.FromString(value).entries
    for entry in entries:
        if entry.market != market or not entry_is_authentic(secret, entry):
            raise LogUnavailable(f"{market}: entry {entry.seq} of a batch in the store is not signed with the "
                                 "cluster secret for this market: it is not the log's (written by someone else)")
    return [StoredEntry(e.market, e.seq, dedup_key(parse(e.command)), e.command, e.mac) for e in entries]


class LogUnavailable(RuntimeError):
    """A part of the log this replica lacks can be read neither from the store nor from another replica."""


class Fenced(RuntimeError):
    """The store refused a transaction of this replica: it does not lead."""


@dataclass
class Pending:
    entries: list[StoredEntry]
    done: asyncio.Future[None]
    taken: int = 0  # entries already in a transaction (a large request spans several)


@dataclass
class MarketState:
    """One market as this replica's threads see it."""

    name: str
    position: int  # the last number in the archive (durable)
    head_index: int = 0  # the head's version at the last commit or read (the leader's compare-and-set)
    batches: deque[tuple[int, int]] = field(default_factory=deque)  # (first, last) retained in the store
    retained: int = 0  # entries in `batches`
    in_sync: bool = False  # the follower reached the last head it read
    queue: deque[Pending] = field(default_factory=deque)  # the leader's appends waiting for their transaction
    busy: bool = False  # a transaction of it is in flight
    wakeup: threading.Condition = field(default_factory=threading.Condition)
    commits: list[tuple[int, float]] = field(default_factory=list)  # (entries, seconds) since the last report
    reported: float = field(default_factory=time.monotonic)
    appends: deque[tuple[float, int, int, float]] = field(default_factory=deque)  # (when, appends, entries, s)

    def linger(self) -> tuple[int, float]:
        """How many appends to wait for, and for how long at most: the most a transaction of the last
        CONCURRENCY_WINDOW_S held (how many nodes are busy), the median commit latency meanwhile (LONG_LINGER
        times that when the transactions carried more than LONG_LINGER_ENTRIES entries on average)."""
        limit = time.monotonic() - CONCURRENCY_WINDOW_S
        while self.appends and self.appends[0][0] < limit:
            self.appends.popleft()
        if not self.appends:
            return 1, 0.0
        latencies = sorted(seconds for _, _, _, seconds in self.appends)
        busy = sum(entries for _, _, entries, _ in self.appends) > LONG_LINGER_ENTRIES * len(self.appends)
        linger = latencies[len(latencies) // 2] * (LONG_LINGER if busy else 1)
        return max(count for _, count, _, _ in self.appends), min(LINGER_MAX_S, linger)

    def report(self, entries: int, seconds: float, every_s: float = 10.0) -> None:
        """Notes a commit; every `every_s`, logs the market's commit figures (the leader's operator view)."""
        self.commits.append((entries, seconds))
        now = time.monotonic()
        if now - self.reported < every_s:
            return
        commits, self.commits, elapsed, self.reported = self.commits, [], now - self.reported, now
        latencies = sorted(seconds for _, seconds in commits)
        log.info("%s at %d: %.0f transactions/s, %.1f entries each, commit p50 %.1f ms, p99 %.1f ms",
                 self.name, self.position, len(commits) / elapsed, sum(n for n, _ in commits) / len(commits),
                 latencies[len(latencies) // 2] * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3,
                 extra=log_fields(self.name, self.position))


def batch_count(batch: tuple[int, int]) -> int:
    """How many entries a retained batch (first, last) holds."""
    return batch[1] - batch[0] + 1
