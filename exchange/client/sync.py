# Generated from exchange/client/aio.py by devtools/unasync.py (`make client-sync`): edit aio.py, not this file.
"""The blocking client: `Client`, and `BookSubscription` (a local L2 book kept current by a background thread).

Every decision (which node, when and whether to retry, what a result means) is made by `exchange.client.core`
and `exchange.client.book`, which both clients share; this module only calls and waits.

One source, two clients: `exchange/client/sync.py` (the blocking client) is generated from `exchange/client/aio.py`
(the asyncio one) by devtools/unasync.py (`make client-sync`), which drops `async` and `await` and renames
(docs/client.md): edit aio.py only. What each does its own way (tasks or threads, the duplex order-entry stream)
is in `exchange.client.aio_concurrency` and its twin `sync_concurrency`, under the same names.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import grpc

from exchange.client import core
from exchange.client import market_data as md
from exchange.client import types as t
from exchange.client.sync_concurrency import Changes, Worker, entry_stream
from exchange.client.book import STREAM_ENDED, Diverged, SubscriptionBase
from exchange.client.core import ClientBase, Operation, RetryPlan, Safety
from exchange.client.nodes import ConsulNodes
from exchange.errors import DeadlineExceeded, ExchangeError, Unavailable, error_from_rpc
from exchange.v1 import exchange_pb2 as pb

R = TypeVar("R")
E = TypeVar("E")


class Client(ClientBase):
    """A connection to an exchange cluster: orders, books, events, with failover between nodes.

    `nodes`: addresses ("host:port", a list or a comma-separated string) or a NodeSource such as
    `ConsulNodes("127.0.0.1:8500")`. `connection`: TLS credentials, API key, metadata, channel options.
    `policy`: retry and failover timing. `stub_factory`: builds the ExchangeNode stub for an address (tests).
    Safe to use from several threads. Use as a context manager (`with`), or call `close()`."""

    @classmethod
    def from_consul(cls, consul: str = "127.0.0.1:8500", **options: Any) -> Client:
        """A client of the nodes Consul lists as passing `peer-server` instances."""
        return cls(ConsulNodes(consul), **options)

    # -- plumbing ---------------------------------------------------------------------------------------

    def _open_channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        if self.connection.credentials is None:
            return grpc.insecure_channel(address, options=options)
        return grpc.secure_channel(address, self.connection.credentials, options=options)

    def _run(self, operation: Operation[R], timeout: float | None) -> R:
        plan = RetryPlan(self.nodes, self.policy, operation.safety, timeout)
        while True:
            try:
                attempt = plan.next()
            except ExchangeError as final:
                return operation.resolve(final, plan)
            if attempt.delay:
                time.sleep(attempt.delay)
            method = getattr(self.stub(attempt.address), operation.method)
            try:
                answer = method(operation.request, timeout=attempt.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                try:
                    plan.failed(attempt, error)
                except ExchangeError as final:
                    return operation.resolve(final, plan)
                continue
            plan.succeeded(attempt)
            return operation.convert(answer)

    def close(self) -> None:
        for channel in self._take_channels():
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- orders -----------------------------------------------------------------------------------------

    def place(self, order: t.NewOrder, timeout: float | None = None) -> t.OrderResult:
        """Places `order`, retrying (on another node if need be) until `timeout` seconds have passed."""
        return self._run(core.create_order(order), timeout)

    def create_order(
        self, side: t.Side | str, size: int, price: int | None = None, *, order_type: t.OrderType | str = "LIMIT",
        market: str = "", client_order_id: str | None = None, timeout: float | None = None,
    ) -> t.OrderResult:
        return self.place(core.order_of(side, size, price, order_type, market, client_order_id), timeout)

    def buy(self, size: int, price: int | None = None, **options: Any) -> t.OrderResult:
        return self.create_order(t.Side.BUY, size, price, **options)

    def sell(self, size: int, price: int | None = None, **options: Any) -> t.OrderResult:
        return self.create_order(t.Side.SELL, size, price, **options)

    def cancel_order(self, order_id: int, *, market: str = "", timeout: float | None = None) -> t.CancelResult:
        return self._run(core.cancel_order(order_id, market), timeout)

    def amend_order(
        self, order_id: int, size: int, price: int | None = None, *, market: str = "", timeout: float | None = None,
    ) -> t.AmendResult:
        """New remaining `size` and (optionally) `price`. Not retried after an ambiguous failure: see core."""
        return self._run(core.amend_order(order_id, size, price, market), timeout)

    def submit_many(
        self, orders: Iterable[t.NewOrder], *, batch_size: int = 100, window: int = 1000, timeout: float | None = None,
    ) -> list[t.OrderResult | ExchangeError]:
        """Places many orders over the OrderEntryBatch stream, at most `window` in flight, in batches of
        `batch_size`; returns one result or error per order, in order. A broken stream is reopened (on another
        node if need be) and the orders it had not answered are sent again: their client_order_ids make that
        safe. Paced to the account's rate limit: an order refused with "retry in N ms" is sent again once that
        has passed (`stats.paced_orders`, `stats.paced_seconds`). `timeout`: the longest to go on without any
        answer (the policy's timeout by default)."""
        entries = core.EntryWindow(core.entry_requests(orders), batch_size, window)
        plan = RetryPlan(self.nodes, self.policy, Safety.IDEMPOTENT, timeout)
        while not entries.done:
            try:
                attempt = plan.next()
            except ExchangeError as final:
                entries.give_up(final)
                break
            if attempt.delay:
                time.sleep(attempt.delay)
            error = entry_stream(self.stub(attempt.address), self._metadata, attempt, entries, plan)
            if error is None:
                plan.succeeded(attempt)
                continue
            entries.stream_failed()
            try:
                plan.failed(attempt, error)
            except ExchangeError as final:
                entries.give_up(final)
        self.stats.resent_orders += entries.retried
        self.stats.paced_orders += entries.paced
        self.stats.paced_seconds += entries.paced_seconds
        return entries.final()

    # -- reads ------------------------------------------------------------------------------------------

    def get_order(self, order_id: int, *, market: str = "", timeout: float | None = None) -> t.Order:
        return self._run(core.get_order(order_id, market), timeout)

    def get_book(
        self, market: str = "", depth: int = 10, *, all_levels: bool = False, include_orders: bool = False,
        timeout: float | None = None,
    ) -> t.Book:
        """The node's book: `depth` levels per side (or `all_levels`), with each level's orders if
        `include_orders` (L3: order ids and sizes, no owners)."""
        return self._run(core.get_book(market, depth, all_levels, include_orders), timeout)

    def node_status(self, address: str, timeout: float = 3.0) -> t.NodeStatus:
        """GetStatus of the node at `address` itself (no failover: this asks about that node)."""
        operation = core.get_status(address)
        try:
            answer = self.stub(address).GetStatus(operation.request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return operation.convert(answer)

    def list_orders(self, market: str = "", *, timeout: float | None = None) -> list[t.Order]:
        """The caller's open orders in `market` (every page), oldest first."""
        orders: list[t.Order] = []
        token = ""
        while True:
            page, token = self._run(core.list_orders(market, token), timeout)
            orders += page
            if not token:
                return orders

    def events(self, market: str = "", from_seq: int = 0, *, timeout: float | None = None) -> Iterator[t.Event]:
        """Every event of `market` from `from_seq` (0: from now on), then live, without end. A broken stream is
        resumed where it stopped, on another node if need be, with no event lost or repeated; `timeout`: the
        longest to go on trying to reconnect."""
        return self._follow("StreamEvents", pb.StreamEventsRequest, t.event_from_pb, market, from_seq, timeout)

    def order_events(
        self, market: str = "", from_seq: int = 0, *, timeout: float | None = None,
    ) -> Iterator[t.OrderEvent]:
        """What happens to the caller's own orders in `market` (fills from their side), like `events`."""
        return self._follow("StreamOrders", pb.StreamOrdersRequest, t.order_event_from_pb, market, from_seq, timeout)

    def _follow(
        self, method: str, request_type: Callable[..., Any], convert: Callable[[Any], E], market: str, from_seq: int,
        timeout: float | None,
    ) -> Iterator[E]:
        if not from_seq:  # "from now on": now is a sequence, so a stream that breaks before its first event
            # resumes from there, not from a later "now" (the events between would be lost)
            from_seq = (self._run(core.get_book(market, 1), timeout)).seq + 1
        position = core.StreamPosition.starting_at(from_seq)
        plan = RetryPlan(self.nodes, self.policy, Safety.IDEMPOTENT, timeout)
        while True:
            attempt = plan.next()
            if attempt.delay:
                time.sleep(attempt.delay)
            request = t.request(request_type, market=market, from_seq=position.resume())
            try:
                for message in getattr(self.stub(attempt.address), method)(request, metadata=self._metadata):
                    plan.progress()
                    if position.accept(message.seq):
                        yield convert(message)
            except grpc.RpcError as error:
                plan.failed(attempt, error)
                continue
            plan.failed(attempt, Unavailable(f"{attempt.address} ended the stream"))

    # -- public market data: trades, candles, ticker (exchange.client.market_data) ----------------------

    def trades(
        self, market: str = "", from_seq: int = 0, *, timeout: float | None = None,
    ) -> Iterator[md.PublicTrade]:
        """The public trades of `market` from sequence `from_seq` (0: from now on), then live, without end. A
        broken stream resumes after the last trade seen, on another node if need be, with no trade lost or
        repeated; OutOfRange if the node no longer retains trades that far back. `timeout`: the longest to go
        on trying to reconnect."""
        position = md.TradePosition(from_seq)
        plan = RetryPlan(self.nodes, self.policy, Safety.IDEMPOTENT, timeout)
        while True:
            attempt = plan.next()
            if attempt.delay:
                time.sleep(attempt.delay)
            stream = self.stub(attempt.address).StreamTrades(position.request(market), metadata=self._metadata)
            try:
                for message in stream:
                    plan.progress()
                    for trade in message.trades:
                        if position.accept(trade):
                            yield md.public_trade_from_pb(trade)
            except grpc.RpcError as error:
                plan.failed(attempt, error)
                continue
            plan.failed(attempt, Unavailable(f"{attempt.address} ended the stream"))

    def get_trades(
        self, market: str = "", limit: int = 100, *, before: int = 0, timeout: float | None = None,
    ) -> md.TradesPage:
        """Recent trades, most recent first; `before`: a trade id, for the page of older ones."""
        return self._run(md.get_trades(market, limit, before), timeout)

    def get_candles(
        self, market: str = "", interval: str = "1m", *, from_ms: int = 0, to_ms: int = 0, limit: int = 100,
        timeout: float | None = None,
    ) -> md.Candles:
        """The latest `limit` candles of `interval` (1m, 5m, 15m, 1h, 1d) starting in [from_ms, to_ms)."""
        return self._run(md.get_candles(market, interval, from_ms, to_ms, limit), timeout)

    def get_ticker(self, market: str = "", *, timeout: float | None = None) -> md.Ticker:
        return self._run(md.get_ticker(market), timeout)

    def subscribe_book(
        self, market: str = "", depth: int = 10, *, timeout: float | None = None,
    ) -> BookSubscription:
        """A local L2 view of `market` (its best `depth` levels per side, 10 to 1000: the top-10 checksum needs 10;
        for fewer, read `book(depth=3)` of a depth-10 view) kept current from StreamBook by a background thread. Every
        message is checked (no gap, the node's top-10 checksum); a failed check or a broken stream makes it
        resubscribe for a new snapshot by itself, on another node if need be (counted in `stats`). Returns once the
        first snapshot is loaded. Use as a context manager
        (`with client.subscribe_book(...) as book:`), or call `close()`."""
        subscription = BookSubscription(self, market, depth, timeout)
        subscription.start()
        return subscription


class BookSubscription(SubscriptionBase):
    """See `Client.subscribe_book`: `book()` reads the local view, `wait_for(seq)` waits for a seq."""

    def __init__(self, client: Client, market: str, depth: int, timeout: float | None) -> None:
        super().__init__(market, depth, timeout)
        self.client = client
        self._changed = Changes()
        self._worker = Worker(self._follow, f"book-{market or 'default'}")

    def start(self) -> None:
        self._worker.start()
        timeout = self.timeout or self.client.policy.timeout
        self._changed.wait_until(lambda: self._tracker.book is not None or self._error is not None, timeout)
        if self._tracker.book is None:
            self.close()
            raise self._error or DeadlineExceeded(f"no snapshot of {self.market or 'the default market'}")

    def _guard(self) -> AbstractContextManager[Any]:
        return self._changed.guard()

    def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Waits until `condition()` (checked after each message) holds; False if it does not within `timeout`."""
        return self._changed.wait_until(condition, timeout)

    def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        """Waits until the local view reflects `seq` or later; False if it does not within `timeout`."""
        reached = self._changed.wait_until(
            lambda: self._error is not None or self._tracker.book is not None and self._tracker.seq >= seq, timeout)
        return reached and self._error is None

    def close(self) -> None:
        self._worker.stop(self._cancel_call)

    def __enter__(self) -> BookSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _cancel_call(self) -> None:
        call = self._call
        if call is not None:
            call.cancel()

    def _follow(self) -> None:
        """Follows StreamBook: a new stream (a new snapshot) after any gap, wrong checksum or break."""
        client, tracker = self.client, self._tracker
        plan = RetryPlan(client.nodes, client.policy, Safety.IDEMPOTENT, self.timeout)
        while not self._worker.stopped:
            try:
                attempt = plan.next()
            except ExchangeError as error:
                self._fail(error)
                return
            self._worker.pause(attempt.delay)
            self._address = attempt.address
            try:
                self._call = client.stub(attempt.address).StreamBook(self._request, metadata=client._metadata)
                for message in self._call:
                    with self._changed:
                        tracker.on_message(message)
                    plan.succeeded(attempt)
                    plan.progress()
                broken: ExchangeError | grpc.RpcError = Unavailable(f"{attempt.address} ended the stream")
                reason = STREAM_ENDED
            except Diverged as diverged:  # the node's failure too: a replica whose book never verifies is left
                broken, reason = Unavailable(f"{attempt.address}'s book stream did not verify: {diverged}"), \
                    diverged.reason
            except grpc.RpcError as failure:
                if self._worker.stopped:
                    return
                broken, reason = failure, STREAM_ENDED
            self._resync(reason)
            try:
                plan.failed(attempt, broken)
            except ExchangeError as final:
                self._fail(final)
                return

    def _resync(self, reason: str) -> None:
        self._cancel_call()
        with self._changed:
            if self._tracker.book is not None:
                self._tracker.resync(reason)
                if reason == STREAM_ENDED:
                    self._tracker.stats.reconnects += 1

    def _fail(self, error: ExchangeError) -> None:
        with self._changed:
            self._error = error
