"""The convergence checker under faults: a real cluster, a randomized workload, real faults, then proof.

    python -m devtools.chaos --seed 7 --orders 2000 --duration 90 --clients 4 \\
        --faults kill,stop,partition,sequencer,consul,replay --workdir /tmp/chaos-7

It starts Consul, the Sequencer and 3 nodes (each node in its own network namespace when that is
possible, so partitions are real), drives several concurrent clients against every node (limit,
market, IOC, FOK and post-only orders, cancels and amends; every new order with a unique
client_order_id; ambiguous answers retried with the same id), injects faults on a schedule derived
from the seed, lets the cluster settle and then checks:

- every node reports the same last sequence and checksum for every market, equal to the Sequencer's;
- a fresh engine replaying the Sequencer's log reproduces those checksums and every answer the nodes
  gave to clients (trades included);
- every acknowledged order is in the log exactly once, every order definitely refused (INVALID_ARGUMENT,
  ABORTED, NOT_FOUND) is not, every ambiguous one (DEADLINE_EXCEEDED, UNAVAILABLE) at most once;
- no process died except those the checker killed, and no log holds "Traceback" or "CRITICAL";
- what each fault promises (others keep trading, UNAVAILABLE while the Sequencer is gone, resumption,
  re-registration in Consul, forged broadcasts refused).

The seed fixes the workload of every client and the fault schedule, and is printed first, so a failing
run is reproduced by running it again with the same seed (thread timing still varies between runs).
Exit status: 0 if nothing was violated, 1 otherwise (every violation is printed), 2 on a setup error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from devtools.cluster import Cluster, wait_until
from devtools.netns import NetNamespaces
from devtools.verify import read_log, replay
from exchange import engine as eng
from exchange.cluster import PEER_SERVICE, SEQUENCER_SERVICE, TOKEN_HEADER, parse_markets, peer_token
from exchange.node import convert
from exchange.runtime import CHANNEL_OPTIONS
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, types_pb2

FAULT_KINDS = ("kill", "stop", "partition", "sequencer", "consul", "replay")
AMBIGUOUS = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE})
AMBIGUOUS_NAMES = frozenset(code.name for code in AMBIGUOUS)
DEFINITE_FAILURES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND})
# Definite refusals of a cancel or amend by the market (amend AMEND_NO_CHANGE / POST_ONLY_WOULD_TAKE ...).
CHANGE_REFUSALS = DEFINITE_FAILURES | {grpc.StatusCode.FAILED_PRECONDITION}
CALL_TIMEOUT = 8.0  # probes: longer than a node's Sequencer retries (5 s), so they see its UNAVAILABLE
CLIENT_TIMEOUT = 3.0  # workload clients: short, so a stopped or cut-off node does not stall the load
MAX_ATTEMPTS = 6
PRICES = (95, 105)
LOG_ALARMS = re.compile(r"Traceback|CRITICAL")
# grpcio logs this (with a traceback) when a handler finishes after its client gave up (deadline passed,
# e.g. while the node was SIGSTOPped): the answer cannot be sent. Library behaviour (grpc/grpc#32551),
# reported but not a violation.
BENIGN_BEFORE_TRACEBACK = "ExecuteBatchError raised in core by servicer method"
AVOID_S = 2.0  # a client avoids a node for this long after an ambiguous answer from it (like a real client)


# -- what the clients did ---------------------------------------------------------------------------


@dataclass
class OrderRecord:
    """One new order and every attempt to place it (same client_order_id each time)."""

    client: str
    request: pb.CreateOrderRequest
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
    nodes: int = 3
    netns: bool | None = None  # None: use namespaces when available
    progress_interval: float = 2.0
    settle_timeout: float = 60.0


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


# -- the run ----------------------------------------------------------------------------------------


class Chaos:
    def __init__(self, config: Config, cluster: Cluster, out: Callable[[str], None] = print) -> None:
        self.config = config
        self.cluster = cluster
        self.out = out
        self.markets = [m.symbol for m in parse_markets(cluster.markets)]
        self.stats = Stats()
        self.lock = threading.Lock()
        self.orders: list[OrderRecord] = []
        self.changes: list[ChangeRecord] = []
        self.violations: list[str] = []
        self.expected_down: set[str] = set()
        self.load_stop = threading.Event()
        self.done = threading.Event()
        self.tickets = 0
        self.started = 0.0
        self.faults_done = threading.Event()
        self.channels: list[grpc.Channel] = []
        self.netem = cluster.netns is not None and cluster.netns.netem_available()
        if cluster.netns is not None and not self.netem:
            out("tc netem is not available in this kernel (no sch_netem): every partition cuts the link")

    # -- helpers --

    def violation(self, message: str) -> None:
        with self.lock:
            self.violations.append(message)
        self.out(f"!! VIOLATION: {message}")

    def note(self, message: str) -> None:
        self.out(f"[{time.monotonic() - self.started:7.1f}s] {message}")

    def stubs(self) -> list[exchange_pb2_grpc.ExchangeNodeStub]:
        stubs = []
        for address in self.cluster.node_addresses:
            channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            self.channels.append(channel)
            stubs.append(exchange_pb2_grpc.ExchangeNodeStub(channel))
        return stubs

    def take_ticket(self) -> int | None:
        with self.lock:
            if self.config.orders and self.tickets >= self.config.orders:
                return None
            self.tickets += 1
            return self.tickets - 1

    def place(self, stubs: list[exchange_pb2_grpc.ExchangeNodeStub], record: OrderRecord, node: int,
              attempts: int = MAX_ATTEMPTS, rotate: bool = True, timeout: float = CLIENT_TIMEOUT) -> None:
        """Places a new order; on an ambiguous answer retries (same client_order_id) on the next node."""
        for attempt in range(attempts):
            target = (node + attempt) % len(stubs) if rotate else node
            try:
                # wait_for_ready: a channel still in reconnect backoff from a node that was down would
                # otherwise fail at once with a stale "connection refused", which is not the node's answer
                response = stubs[target].CreateOrder(record.request, timeout=timeout, wait_for_ready=not rotate)
            except grpc.RpcError as error:
                code = error.code()
                record.attempts.append((target, code.name))
                if code in AMBIGUOUS:
                    self.stats.add("ambiguous")
                    if attempt + 1 < attempts:
                        time.sleep(min(0.25 * 2**attempt, 2.0))
                    continue
                record.final = code.name
                if code == grpc.StatusCode.ABORTED:
                    self.stats.add("aborted")
                elif code in DEFINITE_FAILURES:
                    self.stats.add("rejected")
                else:
                    self.stats.add("unexpected")
                    self.violation(f"CreateOrder {record.coid} on node-{target + 1} answered {code.name} "
                                   f"(not a status the contract allows here): {error.details()}")
                return
            record.attempts.append((target, "OK"))
            record.response, record.final = response, "OK"
            self.stats.ack(target)
            if response.status == pb.REJECTED:
                self.stats.add("market_rejected")
            return
        record.final = "AMBIGUOUS"

    def new_record(self, client: str, request: pb.CreateOrderRequest) -> OrderRecord:
        record = OrderRecord(client, request)
        with self.lock:
            self.orders.append(record)
        self.stats.add("sent")
        return record

    def probe(self, node: int, label: str, attempts: int = 1, timeout: float = CALL_TIMEOUT) -> OrderRecord:
        """A small resting order placed on exactly that node (part of the ledger like any other)."""
        self.stats.add("probes")
        request = pb.CreateOrderRequest(
            market=self.markets[0], side=types_pb2.BUY, size=1, limit_price=PRICES[0] - 5,
            client_order_id=f"s{self.config.seed}-probe-{label}-{time.monotonic_ns() % 10**9}",
        )
        record = self.new_record("probe", request)
        self.place(self.fault_stubs, record, node, attempts=attempts, rotate=False, timeout=timeout)
        return record

    # -- the workload --

    def random_order(self, rng: random.Random, client_order_id: str) -> pb.CreateOrderRequest:
        order_type = rng.choices(
            [types_pb2.LIMIT, types_pb2.MARKET, types_pb2.IOC, types_pb2.FOK, types_pb2.POST_ONLY],
            weights=[50, 8, 14, 14, 14],
        )[0]
        side = rng.choice([types_pb2.BUY, types_pb2.SELL])
        size = rng.randint(1, 20)
        price = 0 if order_type == types_pb2.MARKET else rng.randint(*PRICES)
        request = pb.CreateOrderRequest(market=rng.choice(self.markets), order_type=order_type,
                                        limit_price=price, client_order_id=client_order_id)
        if rng.random() < 0.5:
            request.side, request.size = side, size
        else:
            request.size = size if side == types_pb2.BUY else -size
        if rng.random() < 0.03:  # a deliberately invalid order: must be refused and never exist
            if rng.random() < 0.5:
                request.size = 0
            else:
                request.order_type, request.limit_price = types_pb2.LIMIT, -rng.randint(1, 100)
        return request

    def client(self, index: int) -> None:
        rng = random.Random(f"{self.config.seed}-client-{index}")
        stubs = self.stubs()
        resting: list[tuple[str, int]] = []
        rate = self.config.orders / self.config.duration if self.config.orders else 0.0
        number = 0
        avoid_until = [0.0] * len(stubs)
        while not self.load_stop.is_set():
            ticket = self.take_ticket()
            if ticket is None:
                return
            if rate:
                delay = self.started + ticket / rate - time.monotonic()
                if delay > 0 and self.load_stop.wait(delay):
                    return
            node = rng.randrange(len(stubs))
            for _ in range(len(stubs)):
                if avoid_until[node] <= time.monotonic():
                    break
                node = (node + 1) % len(stubs)
            choice = rng.random()
            if choice < 0.7 or not resting and choice < 0.9:
                number += 1
                request = self.random_order(rng, f"s{self.config.seed}-c{index}-{number}")
                record = self.new_record(f"c{index}", request)
                self.place(stubs, record, node)
                for target, code in record.attempts:
                    if code in AMBIGUOUS_NAMES:
                        avoid_until[target] = time.monotonic() + AVOID_S
                if record.response is not None and record.response.status == pb.RESTING:
                    resting.append((record.response.market, record.response.order_id))
                continue
            if resting and rng.random() < 0.9:
                market, order_id = resting.pop(rng.randrange(len(resting)))
            else:
                market, order_id = rng.choice(self.markets), rng.randint(1, 3000)
            if choice < 0.85:
                change = ChangeRecord("cancel", node, market, order_id)
                self.change(stubs, change, None)
            else:
                size, price = rng.randint(1, 20), rng.choice([0, rng.randint(*PRICES)])
                change = record = ChangeRecord("amend", node, market, order_id)
                self.change(stubs, record, pb.AmendOrderRequest(market=market, order_id=order_id, size=size,
                                                                 limit_price=price))
                if record.response is not None and record.response.remaining_size:
                    resting.append((market, order_id))
            if change.code in AMBIGUOUS_NAMES:
                avoid_until[node] = time.monotonic() + AVOID_S

    def change(self, stubs: list[exchange_pb2_grpc.ExchangeNodeStub], record: ChangeRecord,
               amend: pb.AmendOrderRequest | None) -> None:
        with self.lock:
            self.changes.append(record)
        self.stats.add("sent")
        try:
            if amend is None:
                record.response = stubs[record.node].CancelOrder(
                    pb.CancelOrderRequest(market=record.market, order_id=record.order_id), timeout=CLIENT_TIMEOUT)
            else:
                record.response = stubs[record.node].AmendOrder(amend, timeout=CLIENT_TIMEOUT)
        except grpc.RpcError as error:
            code = error.code()
            record.code = code.name
            if code in AMBIGUOUS:
                self.stats.add("ambiguous")
            elif code == grpc.StatusCode.ABORTED:
                self.stats.add("aborted")
            elif code in CHANGE_REFUSALS:
                self.stats.add("rejected")
            else:
                self.stats.add("unexpected")
                self.violation(f"{record.kind} of {record.market}#{record.order_id} on node-{record.node + 1} "
                               f"answered {code.name}: {error.details()}")
            return
        record.code = "OK"
        self.stats.ack(record.node)

    # -- faults --

    def schedule(self) -> list[tuple[float, str, int, float, str]]:
        """(start time, kind, node, hold seconds, variant) for each fault, all from the seed."""
        kinds = list(self.config.faults)
        if not kinds:
            return []
        rng = random.Random(f"{self.config.seed}-faults")
        window_start, window_end = 0.1 * self.config.duration, 0.8 * self.config.duration
        count = max(len(kinds), int((window_end - window_start) // 14))
        order: list[str] = []
        while len(order) < count:
            batch = kinds[:]
            rng.shuffle(batch)
            order.extend(batch)
        slot = (window_end - window_start) / count
        plan = []
        for number, kind in enumerate(order[:count]):
            at = window_start + number * slot + rng.uniform(0, slot * 0.2)
            hold = {"kill": rng.uniform(2, 5), "stop": rng.uniform(3, 6), "partition": rng.uniform(3, 6),
                    "sequencer": rng.uniform(6.5, 8), "consul": rng.uniform(3, 6), "replay": rng.uniform(2, 4)}[kind]
            variant = rng.choice(["cut", "netem"]) if kind == "partition" else ""
            if variant == "netem" and not self.netem:
                variant = "cut (no netem here)"
            plan.append((at, kind, rng.randrange(self.config.nodes), hold, variant))
        return plan

    def run_faults(self) -> None:
        try:
            for at, kind, node, hold, variant in self.schedule():
                if self.done.wait(max(0.0, self.started + at - time.monotonic())):
                    return
                self.stats.faults[kind] += 1
                self.note(f"fault {kind} node-{node + 1} hold {hold:.1f}s {variant}".rstrip())
                try:
                    getattr(self, f"fault_{kind}")(node, hold, variant)
                except Exception as error:  # noqa: BLE001 - a fault that cannot be injected is a finding
                    self.violation(f"fault {kind} on node-{node + 1} failed: {type(error).__name__}: {error}")
        finally:
            self.faults_done.set()

    def others_trade(self, node: int, what: str) -> None:
        """Every node but `node` must take an order while the fault lasts (`what` describes it)."""
        for other in range(self.config.nodes):
            if other != node:
                record = self.probe(other, f"{self.stats.faults.total()}-{other + 1}", attempts=2)
                if record.final != "OK":
                    self.violation(f"while {what}, node-{other + 1} did not take an order: {record.attempts}")

    def fault_kill(self, node: int, hold: float, variant: str) -> None:
        name = self.cluster.nodes[node].name
        self.expected_down.add(name)
        self.cluster.nodes[node].kill()
        time.sleep(hold)
        try:
            self.cluster.start_node(node)
        finally:
            self.expected_down.discard(name)

    def fault_stop(self, node: int, hold: float, variant: str) -> None:
        process = self.cluster.nodes[node]
        process.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            self.others_trade(node, f"node-{node + 1} was SIGSTOPped")
            time.sleep(max(0.0, hold - (time.monotonic() - started)))
        finally:
            process.signal(signal.SIGCONT)

    def fault_partition(self, node: int, hold: float, variant: str) -> None:
        netem = ["delay", "100ms", "30ms", "loss", "25%"] if variant == "netem" and self.netem else None
        self.cluster.partition(node, netem)
        variant = "netem " + " ".join(netem) if netem else "link cut"
        try:
            started = time.monotonic()
            self.others_trade(node, f"node-{node + 1} was partitioned ({variant})")
            time.sleep(max(0.0, hold - (time.monotonic() - started)))
        finally:
            self.cluster.heal(node)

    def fault_sequencer(self, node: int, hold: float, variant: str) -> None:
        assert self.cluster.sequencer is not None
        self.expected_down.add("sequencer")
        self.cluster.sequencer.kill()
        started = time.monotonic()
        try:
            # The node retries the Sequencer for a while, then must answer UNAVAILABLE (not hang).
            record = self.probe(node, "seq-down", timeout=15.0)
            if record.attempts != [(node, "UNAVAILABLE")]:
                self.violation(f"with the Sequencer down, node-{node + 1} answered {record.attempts} "
                               "instead of UNAVAILABLE")
            time.sleep(max(0.0, hold - (time.monotonic() - started)))
        finally:
            self.cluster.start_sequencer()
            self.expected_down.discard("sequencer")
        for other in range(self.config.nodes):  # every node resumes by itself
            record = self.probe(other, f"seq-back-{other + 1}", attempts=20, timeout=5.0)
            if record.final != "OK":
                self.violation(f"node-{other + 1} did not resume after the Sequencer restarted: {record.attempts}")

    def fault_consul(self, node: int, hold: float, variant: str) -> None:
        self.expected_down.add("consul")
        self.cluster.consul.stop()
        try:
            started = time.monotonic()
            self.others_trade(-1, "Consul was down")
            time.sleep(max(0.0, hold - (time.monotonic() - started)))
        finally:
            self.cluster.consul.start()
            self.expected_down.discard("consul")
        wanted = {self.cluster.node_id(i) for i in range(self.config.nodes)}
        try:
            wait_until(lambda: self.registered(PEER_SERVICE) >= wanted and self.registered(SEQUENCER_SERVICE), 30,
                       "the nodes and the Sequencer to re-register in Consul", interval=0.5)
        except TimeoutError as error:
            self.violation(f"after the Consul restart: {error} (registered: {sorted(self.registered(PEER_SERVICE))}, "
                           f"sequencer: {sorted(self.registered(SEQUENCER_SERVICE))})")

    def registered(self, service: str) -> set[str]:
        url = f"http://{self.cluster.consul_address}/v1/health/service/{service}?passing=true"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return {entry["Service"]["ID"] for entry in json.loads(response.read())}
        except (OSError, ValueError):
            return set()

    def fault_replay(self, node: int, hold: float, variant: str) -> None:
        """Genuine log entries sent again (shuffled, duplicated, delayed), then forged ones (refused)."""
        rng = random.Random(f"{self.config.seed}-replay-{self.stats.faults['replay']}")
        metadata = ((TOKEN_HEADER, peer_token(self.cluster.secret.encode())),)
        logs = {market: read_log(self.cluster.sequencer_address, market) for market in self.markets}
        genuine = [entry for entries in logs.values() for entry in entries[-300:]]
        if not genuine:
            return
        deadline = time.monotonic() + hold
        rounds = 0
        while time.monotonic() < deadline or rounds == 0:
            rounds += 1
            batch = rng.sample(genuine, min(len(genuine), 60)) + rng.choices(genuine, k=30)
            rng.shuffle(batch)
            for index, stub in enumerate(self.fault_stubs):
                for start in range(0, len(batch), 15):
                    request = pb.BroadcastOrderRequest(origin_node="chaos-replayer", commands=batch[start:start + 15])
                    self.replay_genuine(stub, index, request, metadata)
            time.sleep(rng.uniform(0.1, 0.6))
        for label, request, with_token in self.forgeries(rng, logs):
            for index, stub in enumerate(self.fault_stubs):
                try:
                    stub.BroadcastOrder(request, metadata=metadata if with_token else (), timeout=CALL_TIMEOUT,
                                        wait_for_ready=True)
                except grpc.RpcError as error:
                    if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
                        self.stats.add("forged_refused")
                        continue
                    self.violation(f"forged broadcast ({label}) to node-{index + 1}: {error.code().name} "
                                   f"{error.details()}")
                    continue
                self.violation(f"node-{index + 1} ACCEPTED a forged broadcast ({label})")

    def replay_genuine(self, stub: exchange_pb2_grpc.ExchangeNodeStub, index: int,
                       request: pb.BroadcastOrderRequest, metadata: tuple[tuple[str, str], ...]) -> None:
        """Sends genuine entries again. A transport failure (a connection that died while a fault lasted)
        is retried; a node that keeps failing, or refuses the content, is a violation."""
        for attempt in range(4):
            try:
                stub.BroadcastOrder(request, metadata=metadata, timeout=CALL_TIMEOUT, wait_for_ready=True)
                self.stats.add("replayed", len(request.commands))
                return
            except grpc.RpcError as error:
                if error.code() in AMBIGUOUS and attempt < 3:
                    time.sleep(0.5)
                    continue
                self.violation(f"node-{index + 1} refused genuine replayed entries: "
                               f"{error.code().name} {error.details()}")
                return

    def forgeries(self, rng: random.Random, logs: dict[str, list[types_pb2.SequencedCommand]]
                  ) -> list[tuple[str, pb.BroadcastOrderRequest, bool]]:
        market = rng.choice([m for m in self.markets if logs[m]])
        entries = logs[market]
        entry = rng.choice(entries)
        current = entries[-1].seq

        def copy(**changes: object) -> types_pb2.SequencedCommand:
            forged = types_pb2.SequencedCommand()
            forged.CopyFrom(entry)
            for name, value in changes.items():
                setattr(forged, name, value)
            return forged

        altered = bytearray(entry.command)
        altered[rng.randrange(len(altered))] ^= 0xFF
        command = types_pb2.Command.FromString(entry.command)
        if command.WhichOneof("kind") == "new_order":
            command.new_order.size += 1
        else:
            command.client_order_id = "forged"
        fabricated = types_pb2.Command(
            market=market, new_order=types_pb2.NewOrderCommand(side=types_pb2.BUY, order_type=types_pb2.LIMIT,
                                                               size=1, price=PRICES[1] + 50), origin_node="chaos")
        other = next((m for m in self.markets if m != market), "NO-SUCH-MARKET")
        cases = [
            ("altered command bytes", copy(command=bytes(altered))),
            ("re-encoded altered command", copy(command=command.SerializeToString())),
            ("wrong seq", copy(seq=entry.seq + rng.randint(1, 5))),
            ("next seq, copied MAC", copy(seq=current + 1)),
            ("far-ahead seq", copy(seq=current + 1_000_000)),
            ("wrong market", copy(market=other)),
            ("unknown market", copy(market="NO-SUCH-MARKET")),
            ("fabricated command, random MAC", types_pb2.SequencedCommand(
                market=market, seq=current + 1, command=fabricated.SerializeToString(), mac=rng.randbytes(32))),
            ("fabricated command, no MAC", types_pb2.SequencedCommand(
                market=market, seq=current + 1, command=fabricated.SerializeToString())),
        ]
        requests = [(label, pb.BroadcastOrderRequest(origin_node="chaos-forger", commands=[forged]), True)
                    for label, forged in cases]
        requests.append(("genuine entry followed by a forged one", pb.BroadcastOrderRequest(
            origin_node="chaos-forger", commands=[entry, cases[3][1]]), True))
        requests.append(("genuine entry without the cluster token", pb.BroadcastOrderRequest(
            origin_node="chaos-forger", commands=[entry]), False))
        return requests

    # -- monitoring --

    def monitor(self) -> None:
        reported: set[int] = set()
        while not self.done.wait(0.5):
            processes = [*self.cluster.processes()]
            for process in processes:
                if process.name not in self.expected_down and not process.running and id(process) not in reported:
                    reported.add(id(process))
                    self.violation(f"{process.name} exited unexpectedly (exit code {process.exit_code()})")
            if "consul" not in self.expected_down and not self.cluster.consul.running and -1 not in reported:
                reported.add(-1)
                self.violation("the Consul agent exited unexpectedly")

    def progress_header(self) -> None:
        self.out(f"{'elapsed':>8} {'sent':>7} {'acked':>7} {'rejected':>8} {'aborted':>7} {'ambig':>6} "
                 f"{'mkt-rej':>7} {'faults':>6}")

    def progress(self) -> None:
        with self.stats.lock:
            c, faults = self.stats.counts, sum(self.stats.faults.values())
            row = (f"{time.monotonic() - self.started:7.1f}s {c['sent']:7d} {c['acked']:7d} {c['rejected']:8d} "
                   f"{c['aborted']:7d} {c['ambiguous']:6d} {c['market_rejected']:7d} {faults:6d}")
        self.out(row)

    def progress_loop(self) -> None:
        self.progress_header()
        while not self.done.wait(self.config.progress_interval):
            self.progress()

    # -- phases --

    def run(self) -> Report:
        config = self.config
        self.started = time.monotonic()
        self.fault_stubs = self.stubs()
        threads = [threading.Thread(target=self.monitor, daemon=True, name="monitor"),
                   threading.Thread(target=self.progress_loop, daemon=True, name="progress")]
        fault_thread = threading.Thread(target=self.run_faults, daemon=True, name="faults")
        clients = [threading.Thread(target=self.client, args=(i,), daemon=True, name=f"client-{i}")
                   for i in range(config.clients)]
        for thread in [*threads, fault_thread, *clients]:
            thread.start()
        try:
            # The load runs for the duration and at least until the last fault has healed.
            while time.monotonic() - self.started < config.duration or not self.faults_done.is_set():
                time.sleep(0.2)
        finally:
            self.load_stop.set()
            for thread in clients:
                thread.join(timeout=MAX_ATTEMPTS * (CLIENT_TIMEOUT + 2))
            self.done.set()
            fault_thread.join(timeout=120)
        self.progress()
        self.note("load stopped; settling")
        return self.settle_and_check()

    def settle_and_check(self) -> Report:
        cluster = self.cluster
        report = Report(self.config.seed)
        for index, process in enumerate(cluster.nodes):
            process.signal(signal.SIGCONT)
            if cluster.netns is not None and index in cluster.netns.impaired:
                cluster.heal(index)
        # Orders whose every attempt was ambiguous: ask again now that the cluster is whole.
        unresolved = [r for r in self.orders if r.final == "AMBIGUOUS"]
        for number, record in enumerate(unresolved):
            self.place(self.fault_stubs, record, number % len(cluster.nodes), attempts=MAX_ATTEMPTS,
                       timeout=CALL_TIMEOUT)
        self.stats.add("unresolved", sum(1 for r in self.orders if r.final == "AMBIGUOUS"))
        try:
            views = cluster.wait_converged(timeout=self.config.settle_timeout,
                                           nodes=list(range(len(cluster.nodes))))
        except TimeoutError:
            report.divergences += 1
            statuses = []
            for index in range(len(cluster.nodes)):
                try:
                    status = cluster.status(index)
                    statuses.append(f"node-{index + 1} {status.state}: " + ", ".join(
                        f"{m.market} seq {m.applied_seq} known {m.known_seq} checksum {m.checksum} "
                        f"buffered {m.buffered}" for m in status.markets))
                except grpc.RpcError as error:
                    statuses.append(f"node-{index + 1}: {error.code().name}")
            self.violation("the nodes did not converge within "
                           f"{self.config.settle_timeout:.0f}s: " + " | ".join(statuses))
            views = {}
        report.final = views
        self.check_log(views, report)
        self.check_processes()
        report.violations = list(self.violations)
        with self.stats.lock:
            report.counts = dict(self.stats.counts)
            report.faults = dict(self.stats.faults)
        report.elapsed = time.monotonic() - self.started
        for channel in self.channels:
            channel.close()
        return report

    def check_log(self, views: dict[str, tuple[int, int]], report: Report) -> None:
        cluster = self.cluster
        logs = {market: read_log(cluster.sequencer_address, market) for market in self.markets}
        try:
            result = replay(parse_markets(cluster.markets), logs)
        except AssertionError as error:  # a gap or a number used twice
            report.divergences += 1
            self.violation(f"the Sequencer's log is not gap-free: {error}")
            return
        for market in self.markets:
            replayed = (result.engine.last_seq(market), result.engine.checksum(market))
            if views and views.get(market) != replayed:
                report.divergences += 1
                self.violation(f"{market}: the nodes report (seq, checksum) {views.get(market)} but replaying "
                               f"the log gives {replayed}")
        places: dict[tuple[str, str], list[int]] = {}
        origins: Counter[tuple[str, str, int]] = Counter()
        for market, commands in result.commands.items():
            for seq, command in commands.items():
                origins[(market, command.origin_node, command.origin_ref)] += 1
                if command.client_order_id:
                    places.setdefault((market, command.client_order_id), []).append(seq)
        for (market, node, ref), count in origins.items():
            if count > 1:
                self.violation(f"{market}: command {node}/{ref} was numbered {count} times")
        for (market, coid), seqs in places.items():
            if len(seqs) > 1:
                self.violation(f"{market}: client_order_id {coid} is in the log {len(seqs)} times: {seqs}")
        for record in self.orders:
            market = record.request.market or self.markets[0]
            seqs = places.get((market, record.coid), [])
            if record.final == "OK":
                response = record.response
                assert response is not None
                command = result.commands.get(response.market, {}).get(response.seq)
                if command is None or command.client_order_id != record.coid:
                    report.divergences += 1
                    self.violation(f"acknowledged order {record.coid} ({response.market}#{response.seq}) is not "
                                   f"in the log at that sequence (log holds {seqs})")
                    continue
                expected = result.expected_answer(response)
                if expected != response:
                    report.divergences += 1
                    self.violation(f"the answer to {record.coid} differs from the log's replay: told "
                                   f"{_short(response)}, replay gives {_short(expected)}")
            elif record.final in {code.name for code in DEFINITE_FAILURES} and seqs:
                history = " after an ambiguous attempt" if any(
                    code in {c.name for c in AMBIGUOUS} for _, code in record.attempts) else ""
                self.violation(f"order {record.coid} was refused with {record.final}{history} but is in the "
                               f"log at {market}#{seqs} (attempts {record.attempts})")
        for change in self.changes:
            if change.code != "OK":
                continue
            response = change.response
            assert response is not None
            command = result.commands.get(change.market, {}).get(response.seq)
            kind = "cancel_order" if change.kind == "cancel" else "amend_order"
            if command is None or command.WhichOneof("kind") != kind or \
                    getattr(command, kind).order_id != change.order_id:
                report.divergences += 1
                self.violation(f"acknowledged {change.kind} of {change.market}#{change.order_id} is not in the "
                               f"log at {response.seq}")
                continue
            events = result.events[change.market][response.seq]
            if isinstance(response, pb.CancelOrderResponse):
                cancelled = sum(e.size for e in events if isinstance(e, eng.OrderCancelled))
                if cancelled != response.cancelled_size:
                    report.divergences += 1
                    self.violation(f"cancel of {change.market}#{change.order_id}: told {response.cancelled_size} "
                                   f"cancelled, the replay cancels {cancelled}")
            else:
                trades = [convert.trade(e) for e in events if isinstance(e, eng.OrderFilled)]
                if list(response.trades) != trades:
                    report.divergences += 1
                    self.violation(f"amend of {change.market}#{change.order_id}: trades differ from the replay")
        current = {market: len(entries) for market, entries in logs.items()}
        if views and any(views[m][0] != current[m] for m in self.markets):
            report.divergences += 1
            self.violation(f"the nodes' sequences {views} differ from the Sequencer's {current}")

    def check_processes(self) -> None:
        cluster = self.cluster
        for process in cluster.processes():
            if not process.running:
                self.violation(f"{process.name} is not running at the end (exit code {process.exit_code()})")
        if not cluster.consul.running:
            self.violation("the Consul agent is not running at the end")
        for path in sorted((cluster.workdir / "logs").glob("*.log")):
            if path.name == "consul.log":
                continue
            lines = path.read_text(errors="replace").splitlines()
            for number, line in enumerate(lines):
                if LOG_ALARMS.search(line) and number and BENIGN_BEFORE_TRACEBACK in lines[number - 1]:
                    self.out(f"note: {path.name}:{number}: grpcio could not send an answer to a client that had "
                             "given up (benign, grpc/grpc#32551)")
                elif LOG_ALARMS.search(line):
                    context = " / ".join(lines[max(0, number - 1):number + 6])
                    self.violation(f"{path.name}:{number + 1}: {context[:1500]}")


def _short(response: pb.CreateOrderResponse) -> str:
    trades = [(t.price, t.size, t.maker_order_id) for t in response.trades]
    return (f"seq {response.seq} {pb.OrderStatus.Name(response.status)} filled {response.filled_size} "
            f"remaining {response.remaining_size} trades {trades}")


# -- entry points -----------------------------------------------------------------------------------


def make_cluster(config: Config, workdir: Path, out: Callable[[str], None] = print) -> Cluster:
    netns = config.netns
    reason = NetNamespaces.unavailable_reason() if netns in (None, True) else "disabled"
    if netns is None:
        netns = reason is None
    if not netns and "partition" in config.faults:
        out(f"network namespaces are not available ({reason}): running without the partition fault")
        config.faults = tuple(kind for kind in config.faults if kind != "partition")
    return Cluster(workdir, nodes=config.nodes, netns=netns)


def run_chaos(config: Config, cluster: Cluster, out: Callable[[str], None] = print) -> Report:
    """Runs the checker against a cluster built (not started) by make_cluster(); does not stop it."""
    out(f"chaos seed {config.seed}: {config.clients} clients, {config.orders or 'unlimited'} orders, "
        f"{config.duration:.0f}s, faults {','.join(config.faults) or 'none'}, workdir {cluster.workdir}, "
        f"netns {'yes' if cluster.netns is not None else 'no'}")
    out(f"reproduce with: python -m devtools.chaos --seed {config.seed} --orders {config.orders} "
        f"--duration {config.duration:g} --clients {config.clients} --faults {','.join(config.faults)}")
    cluster.start()
    out(f"cluster up: Consul {cluster.consul_address}, Sequencer {cluster.sequencer_address}, "
        f"nodes {' '.join(cluster.node_addresses)}")
    report = Chaos(config, cluster, out).run()
    print_summary(report, out)
    return report


def print_summary(report: Report, out: Callable[[str], None] = print) -> None:
    c = Counter(report.counts)
    rows = [
        ("seed", report.seed), ("elapsed", f"{report.elapsed:.1f}s"),
        ("operations sent", c["sent"]), ("acknowledged", c["acked"]),
        ("  of which market-rejected (REJECTED status)", c["market_rejected"]),
        ("rejected (INVALID_ARGUMENT / NOT_FOUND / ...)", c["rejected"]), ("aborted", c["aborted"]),
        ("ambiguous answers (retried)", c["ambiguous"]), ("unresolved after retries", c["unresolved"]),
        ("probe orders of the fault injector", c["probes"]), ("entries replayed", c["replayed"]),
        ("forged broadcasts refused", c["forged_refused"]),
    ]
    rows += [(f"faults: {kind}", count) for kind, count in sorted(report.faults.items())]
    rows += [(f"final {market} (seq, checksum)", view) for market, view in sorted(report.final.items())]
    rows += [("divergences", report.divergences), ("violations", len(report.violations))]
    width = max(len(name) for name, _ in rows)
    out("=" * (width + 20))
    for name, value in rows:
        out(f"{name:<{width}}  {value}")
    out("=" * (width + 20))
    for violation in report.violations:
        out(f"VIOLATION: {violation}")
    out("RESULT: " + ("OK, no violation" if report.ok else f"FAILED ({len(report.violations)} violations)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--orders", type=int, default=0,
                        help="operations to send, spread over the duration (0: as many as the cluster takes)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (faults fall inside)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--faults", default=",".join(FAULT_KINDS),
                        help=f"comma-separated subset of {','.join(FAULT_KINDS)} ('' for none)")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and data (default: a new temp dir)")
    parser.add_argument("--no-netns", action="store_true", help="run the nodes on loopback (no partitions)")
    args = parser.parse_args(argv)
    faults = tuple(kind for kind in args.faults.split(",") if kind)
    unknown = set(faults) - set(FAULT_KINDS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; choose among {','.join(FAULT_KINDS)}")
    seed = args.seed if args.seed is not None else random.randrange(1, 10**6)
    config = Config(seed=seed, orders=args.orders, duration=args.duration, clients=args.clients, faults=faults,
                    netns=False if args.no_netns else None)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    cluster = make_cluster(config, workdir)
    try:
        report = run_chaos(config, cluster)
    except KeyboardInterrupt:
        print(f"interrupted; logs in {workdir / 'logs'}")
        return 130
    except Exception:
        print(cluster.logs())
        raise
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
    print(f"logs in {workdir / 'logs'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
