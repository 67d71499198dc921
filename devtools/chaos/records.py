"""The chaos checker's ledger: what the clients did and what the run found.

`OrderRecord` and `ChangeRecord` are the operations the clients sent and how each ended; `Stats` counts
them; `Ledger` holds all of it plus the violations found so far and the run's time limit (every part of
the checker writes to the one ledger); `Config` is how the run is set up and `Report` what it returns.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from exchange.v1 import exchange_pb2 as pb

FAULT_KINDS = ("kill", "stop", "partition", "sequencer", "consul", "replay")
# --ha: the Sequencer replicated in Consul (three servers). The faults of the one Sequencer and the one Consul
# agent give way to: kill-leader (SIGKILL the leading replica, restart it as a standby), stall-leader (SIGSTOP it
# past its session's TTL: a standby takes over and Consul refuses the old one when it wakes), kill-consul-server
# (SIGKILL the Consul Raft leader, restart it).
HA_FAULT_KINDS = ("kill", "stop", "partition", "replay", "kill-leader", "stall-leader", "kill-consul-server")
AMBIGUOUS = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE})
AMBIGUOUS_NAMES = frozenset(code.name for code in AMBIGUOUS)
DEFINITE_FAILURES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND})
# Definite refusals of a cancel or amend by the market (amend AMEND_NO_CHANGE / POST_ONLY_WOULD_TAKE ...).
CHANGE_REFUSALS = DEFINITE_FAILURES | {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED}
CALL_TIMEOUT = 8.0  # probes: longer than a node's Sequencer retries (5 s), so they see its UNAVAILABLE
CLIENT_TIMEOUT = 3.0  # workload clients: short, so a stopped or cut-off node does not stall the load
MAX_ATTEMPTS = 6
PRICES = (95, 105)
# Added to the load's duration and the settle timeout to make the default time limit: the cluster's start,
# faults that outlast the duration, retries of ambiguous orders and the log checks.
TIME_LIMIT_MARGIN = 180.0


@dataclass
class OrderRecord:
    """One new order and every attempt to place it (same client_order_id each time)."""

    client: str
    account: str  # whose key placed it: every attempt, the settling one too, is made with it
    request: pb.CreateOrderRequest
    expected_error: str = ""  # the workload's: "" for a valid order, else the status it must be refused with
    attempts: list[tuple[int, str]] = field(default_factory=list)  # (node index, status code name)
    response: pb.CreateOrderResponse | None = None
    final: str = ""  # OK, a definite failure code name, or AMBIGUOUS (gave up)

    @property
    def coid(self) -> str:
        return self.request.client_order_id


@dataclass
class ChangeRecord:
    """One cancel or amend (not retried: it has no idempotency key)."""

    kind: str
    node: int
    market: str
    order_id: int
    code: str = ""
    response: pb.CancelOrderResponse | pb.AmendOrderResponse | None = None


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)
    acks_by_node: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)

    def add(self, key: str, amount: int = 1) -> None:
        with self.lock:
            self.counts[key] += amount

    def ack(self, node: int) -> None:
        with self.lock:
            self.counts["acked"] += 1
            self.acks_by_node[node] += 1

    def get(self, key: str) -> int:
        with self.lock:
            return self.counts[key]


@dataclass
class Config:
    seed: int
    orders: int = 0  # 0: as many as fit in the duration
    duration: float = 60.0
    clients: int = 4
    faults: tuple[str, ...] = FAULT_KINDS
    workdir: Path | None = None
    ha: bool = False  # the Sequencer's HA mode (HA_FAULT_KINDS)
    nodes: int = 3
    netns: bool | None = None  # None: use namespaces when available
    progress_interval: float = 2.0
    settle_timeout: float = 60.0
    time_limit: float = 0.0  # seconds for the whole run; 0: duration + settle_timeout + TIME_LIMIT_MARGIN
    # The nodes' --snapshot-every and --snapshot-threshold: small, so that a killed node restarts from its own
    # snapshot, and from a peer's when it fell that far behind, rather than from the log alone (the defaults,
    # 100,000 and 10,000, are more than a run's load)
    snapshot_every: int = 2_000
    snapshot_threshold: int = 1_000

    @property
    def limit(self) -> float:
        return self.time_limit or self.duration + self.settle_timeout + TIME_LIMIT_MARGIN


@dataclass
class Report:
    seed: int
    violations: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    divergences: int = 0
    final: dict[str, tuple[int, int]] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations and self.divergences == 0


class Ledger:
    """Everything the run recorded: operations, counters, violations; and whether its time is up."""

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.stats = Stats()
        self.orders: list[OrderRecord] = []
        self.changes: list[ChangeRecord] = []
        self.violations: list[str] = []
        self.expected_down: set[str] = set()  # processes a fault is holding down right now
        self.started = time.monotonic()
        self.expired = threading.Event()  # set once the run's time limit has passed

    def violation(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)
        self.out(f"!! VIOLATION: {message}")

    def note(self, message: str) -> None:
        self.out(f"[{time.monotonic() - self.started:7.1f}s] {message}")

    def add_order(self, client: str, account: str, request: pb.CreateOrderRequest,
                  expected_error: str = "") -> OrderRecord:
        record = OrderRecord(client, account, request, expected_error)
        with self.lock:
            self.orders.append(record)
        self.stats.add("sent")
        return record

    def add_change(self, record: ChangeRecord) -> None:
        with self.lock:
            self.changes.append(record)
        self.stats.add("sent")
