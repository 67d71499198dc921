"""The blocking client: `Client`, and `BookSubscription` (a local L2 book kept current by a background thread).

Every decision (which node, when and whether to retry, what a result means) is made by `exchange.client.core`
and `exchange.client.book`, which `AsyncClient` shares; this module only calls and waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from exchange.client import core
from exchange.client import market_data as md
from exchange.client import types as t
from exchange.client.book import STREAM_ENDED, Diverged, SubscriptionBase
from exchange.client.core import ClientBase, Operation, RetryPlan, Safety
from exchange.client.nodes import ConsulNodes
from exchange.errors import ExchangeError, error_from_rpc
from exchange.v1 import exchange_pb2 as pb

R = TypeVar("R")
E = TypeVar("E")


class Client(ClientBase):
    """A connection to an exchange cluster: orders, books, events, with failover between nodes.

    `nodes`: addresses ("host:port", a list or a comma-separated string) or a NodeSource such as
    `ConsulNodes("127.0.0.1:8500")`. `connection`: TLS credentials, API key, metadata, channel options.
    `policy`: retry and failover timing. `stub_factory`: builds the ExchangeNode stub for an address (tests).
    Safe to use from several threads. Use as a context manager, or call `close()`."""

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

    def amend_order(self, order_id: int, size: int, price: int | None = None, *, market: str = "",
                    timeout: float | None = None) -> t.AmendResult:
        """New remaining `size` and (optionally) `price`. Not retried after an ambiguous failure: see core."""
        return self._run(core.amend_order(order_id, size, price, market), timeout)

    def submit_many(self, orders: Iterable[t.NewOrder], *, batch_size: int = 100, window: int = 1000,
                    timeout: float | None = None) -> list[t.OrderResult | ExchangeError]:
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
            error = self._entry_stream(attempt, entries, plan)
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

    def _entry_stream(self, attempt: core.Attempt, entries: core.EntryWindow,
                      plan: RetryPlan) -> ExchangeError | grpc.RpcError | None:
        """One OrderEntryBatch stream: sends while the window has room, until every order has its result or the
        stream fails (returned). A stream with orders in flight and no answer for an attempt's timeout is
        cancelled and counts as DEADLINE_EXCEEDED."""
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

        call = self.stub(attempt.address).OrderEntryBatch(requests(), metadata=self._metadata)
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
            return None if entries.done else core.Unavailable("the order entry stream ended early")
        except grpc.RpcError as error:
            if stalled.is_set():
                return core.DeadlineExceeded(f"no answer from {attempt.address} for {attempt.timeout:.1f}s")
            return error
        except ExchangeError as error:
            return error
        finally:
            with changed:
                state["closed"] = True
                changed.notify_all()
            call.cancel()
            guard.join()

    # -- reads ------------------------------------------------------------------------------------------

    def get_order(self, order_id: int, *, market: str = "", timeout: float | None = None) -> t.Order:
        return self._run(core.get_order(order_id, market), timeout)

    def get_book(self, market: str = "", depth: int = 10, *, all_levels: bool = False, include_orders: bool = False,
                 timeout: float | None = None) -> t.Book:
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

    def order_events(self, market: str = "", from_seq: int = 0, *,
                     timeout: float | None = None) -> Iterator[t.OrderEvent]:
        """What happens to the caller's own orders in `market` (fills from their side), like `events`."""
        return self._follow("StreamOrders", pb.StreamOrdersRequest, t.order_event_from_pb, market, from_seq, timeout)

    def _follow(self, method: str, request_type: Callable[..., Any], convert: Callable[[Any], E], market: str,
                from_seq: int, timeout: float | None) -> Iterator[E]:
        position = core.StreamPosition.starting_at(from_seq)
        plan = RetryPlan(self.nodes, self.policy, Safety.IDEMPOTENT, timeout)
        while True:
            attempt = plan.next()
            if attempt.delay:
                time.sleep(attempt.delay)
            request = request_type(market=market, from_seq=position.resume())
            try:
                for message in getattr(self.stub(attempt.address), method)(request, metadata=self._metadata):
                    plan.progress()
                    if position.accept(message.seq):
                        yield convert(message)
            except grpc.RpcError as error:
                plan.failed(attempt, error)
                continue
            plan.failed(attempt, core.Unavailable(f"{attempt.address} ended the stream"))

    # -- public market data: trades, candles, ticker (exchange.client.market_data) ----------------------

    def trades(self, market: str = "", from_seq: int = 0, *,
               timeout: float | None = None) -> Iterator[md.PublicTrade]:
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
            try:
                for message in self.stub(attempt.address).StreamTrades(position.request(market),
                                                                      metadata=self._metadata):
                    plan.progress()
                    for trade in message.trades:
                        if position.accept(trade):
                            yield md.public_trade_from_pb(trade)
            except grpc.RpcError as error:
                plan.failed(attempt, error)
                continue
            plan.failed(attempt, core.Unavailable(f"{attempt.address} ended the stream"))

    def get_trades(self, market: str = "", limit: int = 100, *, before: int = 0,
                   timeout: float | None = None) -> md.TradesPage:
        """Recent trades, most recent first; `before`: a trade id, for the page of older ones."""
        return self._run(md.get_trades(market, limit, before), timeout)

    def get_candles(self, market: str = "", interval: str = "1m", *, from_ms: int = 0, to_ms: int = 0,
                    limit: int = 100, timeout: float | None = None) -> md.Candles:
        """The latest `limit` candles of `interval` (1m, 5m, 15m, 1h, 1d) starting in [from_ms, to_ms)."""
        return self._run(md.get_candles(market, interval, from_ms, to_ms, limit), timeout)

    def get_ticker(self, market: str = "", *, timeout: float | None = None) -> md.Ticker:
        return self._run(md.get_ticker(market), timeout)

    def subscribe_book(self, market: str = "", depth: int = 10, *, timeout: float | None = None) -> BookSubscription:
        """A local L2 view of `market` (its best `depth` levels per side, 10 to 1000: the top-10 checksum needs 10;
        for fewer, read `book(depth=3)` of a depth-10 view) kept current from StreamBook in a background thread.
        Every message is checked (no gap, the node's top-10 checksum); a failed check or a broken stream makes it
        resubscribe for a new snapshot by itself, on another node if need be (counted in `stats`). Returns once the
        first snapshot is loaded. Use as a context manager, or call `close()`."""
        subscription = BookSubscription(self, market, depth, timeout)
        subscription.start()
        return subscription


class BookSubscription(SubscriptionBase):
    """See `Client.subscribe_book`. `book()` reads the local view; `wait_for(seq)` waits until it reaches a seq."""

    def __init__(self, client: Client, market: str, depth: int, timeout: float | None) -> None:
        super().__init__(market, depth, timeout)
        self.client = client
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"book-{market or 'default'}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        with self._changed:
            self._changed.wait_for(lambda: self._tracker.book is not None or self._error is not None,
                                   timeout=self.timeout or self.client.policy.timeout)
        if self._tracker.book is None:
            self.close()
            raise self._error or core.DeadlineExceeded(f"no snapshot of {self.market or 'the default market'}")

    def _guard(self) -> threading.Condition:
        return self._changed

    def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        """Waits until the local view reflects `seq` or later; False if it does not within `timeout`."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._error is not None or self._tracker.book is not None and self._tracker.seq >= seq,
                timeout) and self._error is None

    def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Waits until `condition()` (called under the subscription's lock, after each message) holds."""
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    def close(self) -> None:
        self._stopped.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> BookSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _follow(self) -> None:
        """Follows StreamBook: a new stream (a new snapshot) after any gap, wrong checksum or break."""
        client, tracker = self.client, self._tracker
        plan = RetryPlan(client.nodes, client.policy, Safety.IDEMPOTENT, self.timeout)
        while not self._stopped.is_set():
            try:
                attempt = plan.next()
            except ExchangeError as error:
                self._fail(error)
                return
            self._stopped.wait(attempt.delay)
            self._address = attempt.address
            try:
                self._call = client.stub(attempt.address).StreamBook(self._request(), metadata=client._metadata)
                for message in self._call:
                    with self._changed:
                        tracker.on_message(message)
                        self._changed.notify_all()
                    plan.succeeded(attempt)
                    plan.progress()
                broken: ExchangeError | grpc.RpcError = core.Unavailable(f"{attempt.address} ended the stream")
            except Diverged as diverged:
                self._resync(diverged.reason)
                continue
            except grpc.RpcError as failure:
                if self._stopped.is_set():
                    return
                broken = failure
            self._resync(STREAM_ENDED)
            try:
                plan.failed(attempt, broken)
            except ExchangeError as final:
                self._fail(final)
                return

    def _resync(self, reason: str) -> None:
        call = self._call
        if call is not None:
            call.cancel()
        with self._changed:
            if self._tracker.book is not None:
                self._tracker.resync(reason)
                if reason == STREAM_ENDED:
                    self._tracker.stats.reconnects += 1
            self._changed.notify_all()

    def _fail(self, error: ExchangeError) -> None:
        with self._changed:
            self._error = error
            self._changed.notify_all()
