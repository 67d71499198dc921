"""The core both client flavours share, without I/O: when to retry, and what each call is (which node to call:
`exchange.client.nodes`, where the client's one lookup, Consul's, lives).

`Client` (sync) and `AsyncClient` (asyncio) differ only in how they wait and call; every decision is made here:

* `NodeSet` (`exchange.client.nodes`) keeps the nodes (a fixed list, or Consul's passing `peer-server` set)
  and the one in use. A node that fails with UNAVAILABLE or DEADLINE_EXCEEDED is left for a backoff that
  doubles per failure, and the next one is used; the client stays on a node as long as it answers.
* `RetryPlan` is one operation's attempts: per attempt a node, a delay (backoff) and a timeout, all within the
  caller's deadline; `failed()` raises the typed error when the operation must not (or can no longer) be retried.
* `Operation` is one RPC: its request, how to read the answer, and how safe a retry is (`Safety`).
* `EntryWindow` is `submit_many`'s bookkeeping over the OrderEntryBatch stream: a bounded number of orders in
  flight, results in input order, and the orders of a broken stream sent again (their client_order_ids make
  that safe). It paces itself to the account's rate limit: an order answered RESOURCE_EXHAUSTED with a retry
  hint ("retry in N ms") goes back to be sent again, nothing is sent until the hint has passed, and then only as
  many orders at once as the limit let through last time, doubling while none is refused (so the excess costs
  a few refusals per refill of the account's bucket, not one per order and per wait).

What is retried (docs/client.md): a new order always carries a client_order_id, so it is retried after
any retriable failure, ambiguous or not (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED), on another node if need be;
the node answers a repeat with the first result. Reads are retried the same way. Cancels and amends carry no
idempotency key: a cancel is retried all the same (cancelling twice cannot do harm; a retry that finds the
order gone after an ambiguous failure gives an *uncertain* CancelResult), but an amend is retried only when it
surely did not take effect (ABORTED, or a connection that was never made), because an amend sets the absolute
remaining size: replayed after a fill it would enlarge the order again.
"""

from __future__ import annotations

import argparse
import enum
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from exchange.client import types as t
from exchange.client.nodes import NodeSet, NodeSource, RetryPolicy, node_source
from exchange.errors import (
    Aborted,
    DeadlineExceeded,
    ExchangeError,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_from_rpc,
    error_from_status,
)
from exchange.shared.tls import TlsConfig, add_tls_argument, load_tls
from exchange.shared.wire import (
    AUTHORIZATION,
    CHANNEL_OPTIONS,  # answers may be large (a whole L3 book): 64 MiB
    )
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import exchange_pb2_grpc

R = TypeVar("R")

DEFAULT_NODES = ("127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053")  # `make cluster-up`
# grpc's words for a call that failed because no connection could be made: the request never left.
NOT_CONNECTED = "failed to connect to all addresses"


def new_client_order_id() -> str:
    return uuid.uuid4().hex


# -- how to connect ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """How channels are made and what every call carries: the extension points for TLS and API keys.

    `credentials`: grpc channel credentials (e.g. `grpc.ssl_channel_credentials(root_ca)`); None: plaintext.
    `api_key`: sent on every call as `authorization: Bearer <key>` metadata (nodes that do not check keys ignore
    it). `metadata`: further headers for every call. `options`: grpc channel options."""

    credentials: grpc.ChannelCredentials | None = None
    api_key: str | None = field(default=None, repr=False)  # a secret: never in a repr that may be logged
    metadata: tuple[tuple[str, str], ...] = ()
    options: tuple[tuple[str, Any], ...] = tuple(CHANNEL_OPTIONS)

    def __post_init__(self) -> None:
        # grpc refuses any other character in metadata, with an error of its own core (not an RpcError)
        if self.api_key and not (self.api_key.isascii() and self.api_key.isprintable()):
            raise Unauthenticated("the API key holds a character no API key has (they are printable ASCII): "
                                  "check the key as it was given to you")

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        auth = ((AUTHORIZATION, f"Bearer {self.api_key}"),) if self.api_key else ()
        return auth + self.metadata


def connection_of(tls: TlsConfig | None = None, api_key: str | None = None) -> Connection:
    """The connection of a client of a cluster: mutual TLS with the files of a `--tls-dir` (exchange/shared/tls.py)
    when given, plaintext otherwise; `api_key` for the order-entry calls."""
    return Connection(credentials=None if tls is None else tls.channel_credentials(), api_key=api_key)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a program that connects to a cluster (exchange-cli, the examples): --api-key, --tls-dir."""
    parser.add_argument("--api-key", default=os.environ.get("EXCHANGE_API_KEY") or None,
                        help="the API key orders are placed with (env EXCHANGE_API_KEY)")
    add_tls_argument(parser)


def connection_from_arguments(args: argparse.Namespace) -> Connection:
    """The Connection the options of add_connection_arguments describe."""
    return connection_of(load_tls(args.tls_dir), args.api_key)


# -- what both clients hold -------------------------------------------------------------------------------


class ClientBase:
    """The part of `Client` and `AsyncClient` that does not wait: nodes, policy, connection, stats, one stub per
    address. A flavour says how to open a channel (`_open_channel`) and how to call and wait."""

    def __init__(
        self, nodes: str | Sequence[str] | NodeSource = DEFAULT_NODES, *, connection: Connection | None = None,
        policy: RetryPolicy | None = None, stub_factory: Callable[[str], Any] | None = None,
    ) -> None:
        self.connection = connection or Connection()
        self.policy = policy or RetryPolicy()
        self.nodes = NodeSet(node_source(nodes), self.policy)
        self.stats = self.nodes.stats  # ClientStats: attempts, retries, node failures, resent orders
        self._metadata = self.connection.call_metadata()
        self._stub_factory = stub_factory or self._grpc_stub
        self._stubs: dict[str, Any] = {}
        self._channels: list[Any] = []
        self._lock = threading.Lock()

    def _open_channel(self, address: str, options: list[tuple[str, Any]]) -> Any:
        raise NotImplementedError

    def _grpc_stub(self, address: str) -> exchange_pb2_grpc.ExchangeNodeStub:
        channel = self._open_channel(address, list(self.connection.options))
        self._channels.append(channel)
        return exchange_pb2_grpc.ExchangeNodeStub(channel)

    def stub(self, address: str) -> Any:
        """The ExchangeNode stub of `address` (one channel per address, made once)."""
        with self._lock:
            if address not in self._stubs:
                self._stubs[address] = self._stub_factory(address)
            return self._stubs[address]

    def _take_channels(self) -> list[Any]:
        with self._lock:
            channels, self._channels = self._channels, []
            self._stubs.clear()
        return channels


# -- one operation's attempts ------------------------------------------------------------------------------


class Safety(enum.Enum):
    """How safe it is to send an operation again after a failure."""

    IDEMPOTENT = "idempotent"  # reads, new orders with their client_order_id: retry after any retriable error
    AT_MOST_ONCE = "at-most-once"  # amends: retry only when it surely had no effect


@dataclass(frozen=True)
class Attempt:
    address: str
    delay: float  # wait this long before calling
    timeout: float  # the attempt's own deadline
    number: int  # from 1


def was_sent(error: grpc.RpcError | ExchangeError) -> bool:
    """False only when the call surely never reached a node (no connection could be made)."""
    text = error.message if isinstance(error, ExchangeError) else str(getattr(error, "details", lambda: "")())
    return NOT_CONNECTED not in (text or "")


class RetryPlan:
    """One operation's attempts within its deadline. Use: `attempt = plan.next()`, wait `attempt.delay`, call
    `attempt.address` with `attempt.timeout`; then `plan.succeeded(attempt)` or `plan.failed(attempt, error)`,
    which raises when there is to be no other attempt."""

    def __init__(self, nodes: NodeSet, policy: RetryPolicy, safety: Safety, timeout: float | None = None,
                 rng: random.Random | None = None) -> None:
        self.nodes = nodes
        self.policy = policy
        self.safety = safety
        self.timeout = policy.timeout if timeout is None else timeout
        self.deadline = nodes.clock() + self.timeout
        self.rng = rng or random.Random()
        self.attempts = 0
        self.failures = 0  # in a row
        self.ambiguous = False  # an earlier attempt may have taken effect
        self.last_error: ExchangeError | None = None

    def progress(self) -> None:
        """Something was achieved (a stream answered): the deadline counts from now, the backoff starts again."""
        self.deadline = self.nodes.clock() + self.timeout
        self.failures = 0

    def next(self) -> Attempt:
        now = self.nodes.clock()
        address, wait = self.nodes.pick()
        backoff = self.policy.backoff(self.failures, self.rng) if self.failures else 0.0
        delay = max(wait, backoff)
        remaining = self.deadline - now - delay
        if remaining <= 0.001:
            raise self._give_up()
        self.attempts += 1
        self.nodes.stats.attempts += 1
        self.nodes.stats.retries += self.attempts > 1
        return Attempt(address, delay, min(self.policy.attempt_timeout, remaining), self.attempts)

    def _give_up(self) -> ExchangeError:
        if self.last_error is not None:
            return self.last_error
        return DeadlineExceeded(f"no node answered within {self.timeout:.1f}s")

    def succeeded(self, attempt: Attempt) -> None:
        self.nodes.succeeded(attempt.address)
        self.failures = 0

    def failed(self, attempt: Attempt, error: ExchangeError | grpc.RpcError) -> ExchangeError:
        """Records a failed attempt; raises the typed error unless another attempt may follow (then returns it)."""
        typed = error if isinstance(error, ExchangeError) else error_from_rpc(error)
        sent = was_sent(typed)
        if isinstance(typed, Unavailable | DeadlineExceeded):
            self.nodes.failed(attempt.address)
        self.last_error = typed
        if not typed.retriable:
            raise typed
        may_have_acted = sent and not isinstance(typed, Aborted)  # ABORTED: nothing of it exists
        if self.safety is Safety.AT_MOST_ONCE and may_have_acted:
            raise typed
        self.ambiguous = self.ambiguous or may_have_acted
        self.failures += 1
        return typed


@dataclass(frozen=True)
class Operation(Generic[R]):
    """One unary RPC of ExchangeNode: the method, its request, how to read the answer, how safe a retry is, and
    (optional) what a non-retriable error means after an earlier attempt may have taken effect."""

    method: str
    request: Any
    convert: Callable[[Any], R]
    safety: Safety = Safety.IDEMPOTENT
    after_ambiguity: Callable[[ExchangeError], R] | None = None

    def resolve(self, error: ExchangeError, plan: RetryPlan) -> R:
        """The result to return for a final error, or raises it."""
        if plan.ambiguous and self.after_ambiguity is not None:
            return self.after_ambiguity(error)
        raise error


def create_order(order: t.NewOrder) -> Operation[t.OrderResult]:
    request = order.to_pb(order.client_order_id or new_client_order_id())
    return Operation("CreateOrder", request, t.order_result_from_pb)


def cancel_order(order_id: int, market: str = "") -> Operation[t.CancelResult]:
    def gone(error: ExchangeError) -> t.CancelResult:
        if isinstance(error, NotFound):  # an earlier attempt may have removed it: it does not rest any more
            return t.CancelResult(market, order_id, None, None)
        raise error

    return Operation("CancelOrder", t.request(pb.CancelOrderRequest, market=market, order_id=order_id),
                     t.cancel_result_from_pb, after_ambiguity=gone)


def amend_order(order_id: int, size: int, price: int | None = None, market: str = "") -> Operation[t.AmendResult]:
    request = t.request(pb.AmendOrderRequest, market=market, order_id=order_id, size=size, limit_price=price or 0)
    return Operation("AmendOrder", request, t.amend_result_from_pb, Safety.AT_MOST_ONCE)


def get_order(order_id: int, market: str = "") -> Operation[t.Order]:
    return Operation("GetOrder", t.request(pb.GetOrderRequest, market=market, order_id=order_id), t.order_from_pb)


def list_orders(market: str = "", page_token: str = "") -> Operation[tuple[list[t.Order], str]]:
    """One page of the caller's open orders, and the token of the next page ("" after the last)."""
    return Operation("ListOrders", t.request(pb.ListOrdersRequest, market=market, page_token=page_token),
                     lambda answer: ([t.order_from_pb(o) for o in answer.orders], answer.next_page_token))


def get_book(market: str = "", depth: int = 10, all_levels: bool = False,
             include_orders: bool = False) -> Operation[t.Book]:
    request = t.request(pb.GetOrderBookRequest, market=market, depth=depth, all_levels=all_levels,
                        include_orders=include_orders)
    return Operation("GetOrderBook", request, t.book_from_pb)


def get_status(address: str) -> Operation[t.NodeStatus]:
    return Operation("GetStatus", pb.GetStatusRequest(), lambda answer: t.node_status_from_pb(address, answer))


def order_of(side: t.Side | str, size: int, price: int | None, order_type: t.OrderType | str, market: str,
             client_order_id: str | None) -> t.NewOrder:
    """A NewOrder from the loose arguments of `Client.create_order` (names or enums); the node validates it."""
    return t.NewOrder(t.Side[side.upper()] if isinstance(side, str) else t.Side(side), size, price,
                      t.OrderType[order_type.upper()] if isinstance(order_type, str) else t.OrderType(order_type),
                      market, client_order_id)


# -- resuming an event stream ------------------------------------------------------------------------------


@dataclass
class StreamPosition:
    """Where a StreamEvents subscription is, so that a broken stream resumes without a gap or a repeat, on any
    node (sequence numbers are the cluster's): the last seq seen and how many of its events. A stream may break
    between two events of one command; the resumed stream starts at that seq and its first events are skipped."""

    seq: int = -1  # the last seq whose events were (partly) seen; -1: none yet
    in_seq: int = 0  # events of `seq` seen
    skip: int = 0  # events of `seq` still to skip on the resumed stream

    @classmethod
    def starting_at(cls, from_seq: int) -> StreamPosition:
        """Before the events of `from_seq` (0: only what happens from now on)."""
        return cls(seq=from_seq - 1 if from_seq else -1)

    def resume(self) -> int:
        """The from_seq to (re)open the stream with (0: from now on, nothing seen yet)."""
        if self.in_seq:
            self.skip = self.in_seq
            return self.seq
        self.skip = 0
        return self.seq + 1 if self.seq >= 0 else 0

    def accept(self, seq: int) -> bool:
        """Whether an event of `seq` is new (then it counts as seen)."""
        if seq < self.seq:
            return False
        if seq == self.seq:
            if self.skip:
                self.skip -= 1
                return False
            if not self.in_seq:  # the seq a snapshot was taken at, or a resume point before it
                return False
            self.in_seq += 1
            return True
        self.seq, self.in_seq, self.skip = seq, 1, 0
        return True


# -- submit_many over OrderEntryBatch ----------------------------------------------------------------------


@dataclass
class EntryWindow:
    """The orders of one `submit_many`: which wait to be sent, which are in flight (as batches, on the current
    stream, answered in order), and each one's final result. At most `window` orders are in flight at once."""

    requests: list[pb.CreateOrderRequest]
    batch_size: int = 100
    window: int = 1000
    results: list[t.OrderResult | ExchangeError | None] = field(init=False)
    unsent: deque[int] = field(init=False)
    in_flight: deque[list[int]] = field(init=False)
    in_flight_orders: int = 0
    retried: int = 0  # orders sent again (a broken stream, a retriable per-order error)
    paced: int = 0  # orders sent again after a rate limit's retry hint
    paced_seconds: float = 0.0  # how long sending was held back by those hints, in all
    clock: Callable[[], float] = time.monotonic
    paced_until: float = 0.0  # (clock) nothing is sent before this
    credit: int | None = None  # while pacing: the orders that may be in flight at once (None: `window`)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.window < 1:
            raise ValueError("batch_size and window must be at least 1")
        self.results = [None] * len(self.requests)
        self.unsent = deque(range(len(self.requests)))
        self.in_flight = deque()

    @property
    def done(self) -> bool:
        return not self.unsent and not self.in_flight

    def pause(self) -> float:
        """Seconds until the rate limit lets orders be sent again (0: now)."""
        return max(0.0, self.paced_until - self.clock())

    def next_batch(self) -> pb.OrderBatch | None:
        """The next batch to send, or None if nothing may be sent now (all sent, the window is full, or the
        rate limit's hint has not passed: see `pause`)."""
        room = min(self.batch_size, (self.credit or self.window) - self.in_flight_orders)
        if not self.unsent or room <= 0 or self.pause() > 0:
            return None
        batch = [self.unsent.popleft() for _ in range(min(room, len(self.unsent)))]
        self.in_flight.append(batch)
        self.in_flight_orders += len(batch)
        return pb.OrderBatch(orders=[self.requests[i] for i in batch])

    def on_result(self, result: pb.OrderBatchResult) -> None:
        """The answer to the oldest batch in flight; orders that failed retriably go back to be sent again."""
        batch = self.in_flight[0]
        if len(result.results) != len(batch):  # the batch stays in flight: the broken stream sends it again
            raise Unavailable(f"a batch of {len(batch)} orders got {len(result.results)} results")
        self.in_flight.popleft()
        self.in_flight_orders -= len(batch)
        again = []
        accepted = limited = 0
        for index, item in zip(batch, result.results, strict=True):
            if item.HasField("order"):
                self.results[index] = t.order_result_from_pb(item.order)
                accepted += 1
                continue
            error = error_from_status(item.error.code, item.error.message)
            self.results[index] = error
            wait = error.retry_after_s if isinstance(error, ResourceExhausted) else None
            if wait is not None:  # the account's rate limit: send it again once the hint has passed
                again.append(index)
                limited += 1
                self.paced += 1
                until = self.clock() + wait
                self.paced_seconds += max(0.0, until - max(self.paced_until, self.clock()))
                self.paced_until = max(self.paced_until, until)
            elif error.retriable:
                again.append(index)
                self.retried += 1
        if limited:  # as many at once as the limit let through in this batch
            self.credit = max(1, accepted)
        elif self.credit is not None:
            self.credit = None if self.credit * 2 >= self.window else self.credit * 2
        self.unsent.extendleft(reversed(again))

    def stream_failed(self) -> None:
        """The stream broke: every order in flight is sent again on the next one (its client_order_id makes
        the repeat safe: an order that was placed gets its first result back)."""
        batches = list(self.in_flight)
        self.in_flight.clear()
        self.in_flight_orders = 0
        again = [index for batch in batches for index in batch]
        self.retried += len(again)
        self.unsent.extendleft(reversed(again))

    def give_up(self, error: ExchangeError) -> None:
        """No more attempts: orders without a result get `error` (or the per-order error they last had)."""
        for index in [*self.unsent, *(i for batch in self.in_flight for i in batch)]:
            if not isinstance(self.results[index], t.OrderResult):
                self.results[index] = self.results[index] or error
        self.unsent.clear()
        self.in_flight.clear()
        self.in_flight_orders = 0

    def final(self) -> list[t.OrderResult | ExchangeError]:
        return [result if result is not None else Unavailable("not sent") for result in self.results]


def entry_requests(orders: Iterable[t.NewOrder]) -> list[pb.CreateOrderRequest]:
    return [order.to_pb(order.client_order_id or new_client_order_id()) for order in orders]
