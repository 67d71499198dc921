"""The chaos checker's clients: threads that place, retry, cancel and amend orders, and the probe orders.

Every new order has a unique client_order_id; an ambiguous answer (DEADLINE_EXCEEDED, UNAVAILABLE) is
retried with the same id on the next node, and a client then avoids that node for a while, like a real
client. Cancels and amends are not retried (they have no idempotency key). Every operation and its outcome
goes to the ledger.
"""

from __future__ import annotations

import random
import threading
import time

import grpc

from devtools.chaos.records import (
    AMBIGUOUS,
    AMBIGUOUS_NAMES,
    CALL_TIMEOUT,
    CHANGE_REFUSALS,
    CLIENT_TIMEOUT,
    DEFINITE_FAILURES,
    MAX_ATTEMPTS,
    PRICES,
    ChangeRecord,
    Config,
    Ledger,
    OrderRecord,
)
from devtools.local_cluster import DEFAULT_ACCOUNT, Cluster
from devtools.workload import Workload
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc, types_pb2

ACCOUNTS = 3  # the clients' accounts (client i trades as Cluster.trader(i % ACCOUNTS))
AVOID_S = 2.0  # a client avoids a node for this long after an ambiguous answer from it (like a real client)

Stubs = list[exchange_pb2_grpc.ExchangeNodeStub]


class Clients:
    """The workload: `config.clients` client threads (`client`), and `place`/`probe` for the other parts."""

    def __init__(self, config: Config, cluster: Cluster, ledger: Ledger, markets: list[str]) -> None:
        self.config = config
        self.cluster = cluster
        self.ledger = ledger
        self.stats = ledger.stats
        self.markets = markets
        # ~3% of the orders are invalid on purpose: they must be refused and never exist
        # every self-trade prevention mode: clients share accounts (account), so their orders meet their own
        self.workload = Workload(markets=tuple(markets), prices=PRICES, sides="either", invalid_share=0.03, types={
            types_pb2.LIMIT: 50, types_pb2.MARKET: 8, types_pb2.IOC: 14, types_pb2.FOK: 14, types_pb2.POST_ONLY: 14},
            stp={types_pb2.SELF_TRADE_PREVENTION_UNSPECIFIED: 4, types_pb2.CANCEL_TAKER: 1, types_pb2.CANCEL_MAKER: 2,
                 types_pb2.CANCEL_BOTH: 1, types_pb2.DECREMENT: 2})
        self.stop = threading.Event()  # set when the load phase ends
        self.tickets = 0
        self.channels: list[grpc.Channel] = []
        self._shared: dict[str, Stubs] = {}
        self.probe_stubs = self.shared_stubs(DEFAULT_ACCOUNT)

    @staticmethod
    def account(index: int) -> str:
        """Client `index`'s account: three accounts for all clients, so some clients share one."""
        return Cluster.trader(index % ACCOUNTS)

    def stubs(self, account: str) -> Stubs:
        stubs = []
        for address in self.cluster.node_addresses:
            channel = self.cluster.channel(address, account)
            self.channels.append(channel)
            stubs.append(exchange_pb2_grpc.ExchangeNodeStub(channel))
        return stubs

    def shared_stubs(self, account: str) -> Stubs:
        """Stubs of `account` shared by the parts other than the client threads (the probes, and the last attempts
        at ambiguous orders once the cluster is whole)."""
        if account not in self._shared:
            self._shared[account] = self.stubs(account)
        return self._shared[account]

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def take_ticket(self) -> int | None:
        with self.ledger.lock:
            if self.config.orders and self.tickets >= self.config.orders:
                return None
            self.tickets += 1
            return self.tickets - 1

    def place(self, stubs: Stubs, record: OrderRecord, node: int, attempts: int = MAX_ATTEMPTS,
              rotate: bool = True, timeout: float = CLIENT_TIMEOUT) -> None:
        """Places a new order; on an ambiguous answer retries (same client_order_id) on the next node.
        Once the run's time limit has passed, no further attempt is made (the order stays AMBIGUOUS)."""
        for attempt in range(attempts):
            if self.ledger.expired.is_set():
                break
            target = (node + attempt) % len(stubs) if rotate else node
            try:
                # wait_for_ready: a channel still in reconnect backoff from a node that was down would
                # otherwise fail at once with a stale "connection refused", which is not the node's answer
                response = stubs[target].CreateOrder(record.request, timeout=timeout, wait_for_ready=not rotate)
            except grpc.RpcError as error:
                code = error.code()
                record.attempts.append((target, code.name))
                outcome = self.count_failure(code, DEFINITE_FAILURES)
                if outcome == "ambiguous":
                    if attempt + 1 < attempts:
                        time.sleep(min(0.25 * 2**attempt, 2.0))
                    continue
                record.final = code.name
                if outcome == "unexpected":
                    self.ledger.violation(f"CreateOrder {record.coid} on node-{target + 1} answered {code.name} "
                                          f"(not a status the contract allows here): {error.details()}")
                return
            record.attempts.append((target, "OK"))
            record.response, record.final = response, "OK"
            self.stats.ack(target)
            if response.status == pb.REJECTED:
                self.stats.add("market_rejected")
            return
        record.final = "AMBIGUOUS"

    def count_failure(self, code: grpc.StatusCode, refusals: frozenset[grpc.StatusCode]) -> str:
        """Counts a failed call by its status (`refusals`: the definite ones) and says which count it went to:
        ambiguous, aborted, rejected or unexpected (the caller reports an unexpected one as a violation)."""
        if code in AMBIGUOUS:
            outcome = "ambiguous"
        elif code == grpc.StatusCode.ABORTED:
            outcome = "aborted"
        else:
            outcome = "rejected" if code in refusals else "unexpected"
        self.stats.add(outcome)
        return outcome

    def probe(self, node: int, label: str, attempts: int = 1, timeout: float = CALL_TIMEOUT) -> OrderRecord:
        """A small resting order placed on exactly that node (part of the ledger like any other)."""
        self.stats.add("probes")
        request = pb.CreateOrderRequest(
            market=self.markets[0], side=types_pb2.BUY, size=1, limit_price=PRICES[0] - 5,
            client_order_id=f"s{self.config.seed}-probe-{label}-{time.monotonic_ns() % 10**9}",
        )
        record = self.ledger.add_order("probe", DEFAULT_ACCOUNT, request)
        self.place(self.probe_stubs, record, node, attempts=attempts, rotate=False, timeout=timeout)
        return record

    def client(self, index: int) -> None:
        """One client thread: until the load stops, new orders (70%), cancels and amends of its resting ones."""
        rng = random.Random(f"{self.config.seed}-client-{index}")
        account = self.account(index)
        stubs = self.stubs(account)
        resting: list[tuple[str, int]] = []
        rate = self.config.orders / self.config.duration if self.config.orders else 0.0
        orders = self.workload.orders(rng, ids=f"s{self.config.seed}-c{index}-")
        avoid_until = [0.0] * len(stubs)
        while not self.stop.is_set():
            ticket = self.take_ticket()
            if ticket is None:
                return
            if rate:
                delay = self.ledger.started + ticket / rate - time.monotonic()
                if delay > 0 and self.stop.wait(delay):
                    return
            node = rng.randrange(len(stubs))
            for _ in range(len(stubs)):
                if avoid_until[node] <= time.monotonic():
                    break
                node = (node + 1) % len(stubs)
            choice = rng.random()
            if choice < 0.7 or not resting and choice < 0.9:
                order = orders.next()
                record = self.ledger.add_order(f"c{index}", account, order.request, order.error)
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
                change = ChangeRecord("amend", node, market, order_id)
                self.change(stubs, change, pb.AmendOrderRequest(market=market, order_id=order_id, size=size,
                                                                 limit_price=price))
                if isinstance(change.response, pb.AmendOrderResponse) and change.response.remaining_size:
                    resting.append((market, order_id))
            if change.code in AMBIGUOUS_NAMES:
                avoid_until[node] = time.monotonic() + AVOID_S

    def change(self, stubs: Stubs, record: ChangeRecord, amend: pb.AmendOrderRequest | None) -> None:
        self.ledger.add_change(record)
        try:
            if amend is None:
                record.response = stubs[record.node].CancelOrder(
                    pb.CancelOrderRequest(market=record.market, order_id=record.order_id), timeout=CLIENT_TIMEOUT)
            else:
                record.response = stubs[record.node].AmendOrder(amend, timeout=CLIENT_TIMEOUT)
        except grpc.RpcError as error:
            code = error.code()
            record.code = code.name
            if self.count_failure(code, CHANGE_REFUSALS) == "unexpected":
                self.ledger.violation(f"{record.kind} of {record.market}#{record.order_id} on node-{record.node + 1} "
                                      f"answered {code.name}: {error.details()}")
            return
        record.code = "OK"
        self.stats.ack(record.node)
