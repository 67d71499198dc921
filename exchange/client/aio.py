"""The asyncio client: `AsyncClient` and `AsyncBookSubscription`, the same API as `Client` with `await`.

Every decision is made by `exchange.client.core` and `exchange.client.book` (shared with the sync client);
this module only calls and waits, on grpc.aio channels.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
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


class AsyncClient(ClientBase):
    """`Client` for asyncio: the same arguments, methods and results; calls are coroutines, `events()` an async
    iterator, `subscribe_book()` an awaitable async context manager. Make and use it inside one event loop."""

    @classmethod
    def from_consul(cls, consul: str = "127.0.0.1:8500", **options: Any) -> AsyncClient:
        return cls(ConsulNodes(consul), **options)

    def _open_channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
        if self.connection.credentials is None:
            return grpc.aio.insecure_channel(address, options=options)
        return grpc.aio.secure_channel(address, self.connection.credentials, options=options)

    async def _run(self, operation: Operation[R], timeout: float | None) -> R:
        plan = RetryPlan(self.nodes, self.policy, operation.safety, timeout)
        while True:
            try:
                attempt = plan.next()
            except ExchangeError as final:
                return operation.resolve(final, plan)
            if attempt.delay:
                await asyncio.sleep(attempt.delay)
            method = getattr(self.stub(attempt.address), operation.method)
            try:
                answer = await method(operation.request, timeout=attempt.timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                try:
                    plan.failed(attempt, error)
                except ExchangeError as final:
                    return operation.resolve(final, plan)
                continue
            plan.succeeded(attempt)
            return operation.convert(answer)

    async def close(self) -> None:
        for channel in self._take_channels():
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- orders -----------------------------------------------------------------------------------------

    async def place(self, order: t.NewOrder, timeout: float | None = None) -> t.OrderResult:
        return await self._run(core.create_order(order), timeout)

    async def create_order(
        self, side: t.Side | str, size: int, price: int | None = None, *, order_type: t.OrderType | str = "LIMIT",
        market: str = "", client_order_id: str | None = None, timeout: float | None = None,
    ) -> t.OrderResult:
        return await self.place(core.order_of(side, size, price, order_type, market, client_order_id), timeout)

    async def buy(self, size: int, price: int | None = None, **options: Any) -> t.OrderResult:
        return await self.create_order(t.Side.BUY, size, price, **options)

    async def sell(self, size: int, price: int | None = None, **options: Any) -> t.OrderResult:
        return await self.create_order(t.Side.SELL, size, price, **options)

    async def cancel_order(self, order_id: int, *, market: str = "", timeout: float | None = None) -> t.CancelResult:
        return await self._run(core.cancel_order(order_id, market), timeout)

    async def amend_order(self, order_id: int, size: int, price: int | None = None, *, market: str = "",
                          timeout: float | None = None) -> t.AmendResult:
        return await self._run(core.amend_order(order_id, size, price, market), timeout)

    async def submit_many(self, orders: Iterable[t.NewOrder], *, batch_size: int = 100, window: int = 1000,
                          timeout: float | None = None) -> list[t.OrderResult | ExchangeError]:
        """See `Client.submit_many`."""
        entries = core.EntryWindow(core.entry_requests(orders), batch_size, window)
        plan = RetryPlan(self.nodes, self.policy, Safety.IDEMPOTENT, timeout)
        while not entries.done:
            try:
                attempt = plan.next()
            except ExchangeError as final:
                entries.give_up(final)
                break
            if attempt.delay:
                await asyncio.sleep(attempt.delay)
            error = await self._entry_stream(attempt, entries, plan)
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

    async def _entry_stream(self, attempt: core.Attempt, entries: core.EntryWindow,
                            plan: RetryPlan) -> ExchangeError | grpc.RpcError | None:
        call = self.stub(attempt.address).OrderEntryBatch(metadata=self._metadata)
        room = asyncio.Event()
        room.set()

        async def write() -> None:
            while not entries.done:
                batch = entries.next_batch()
                if batch is None:
                    if (pause := entries.pause()) > 0:  # paced to the account's rate limit
                        await asyncio.sleep(pause)
                        continue
                    room.clear()
                    await room.wait()
                    continue
                await call.write(batch)
            await call.done_writing()

        writer = asyncio.ensure_future(write())
        try:
            while not entries.done:
                try:
                    result = await asyncio.wait_for(call.read(), attempt.timeout)
                except TimeoutError:
                    return core.DeadlineExceeded(f"no answer from {attempt.address} for {attempt.timeout:.1f}s")
                if result is grpc.aio.EOF:
                    return core.Unavailable("the order entry stream ended early")
                entries.on_result(result)
                plan.progress()
                room.set()
            return None
        except grpc.RpcError as error:
            return error
        except ExchangeError as error:
            return error
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError, Exception):
                await writer
            call.cancel()

    # -- reads ------------------------------------------------------------------------------------------

    async def get_order(self, order_id: int, *, market: str = "", timeout: float | None = None) -> t.Order:
        return await self._run(core.get_order(order_id, market), timeout)

    async def get_book(self, market: str = "", depth: int = 10, *, all_levels: bool = False,
                       include_orders: bool = False, timeout: float | None = None) -> t.Book:
        return await self._run(core.get_book(market, depth, all_levels, include_orders), timeout)

    async def node_status(self, address: str, timeout: float = 3.0) -> t.NodeStatus:
        operation = core.get_status(address)
        try:
            answer = await self.stub(address).GetStatus(operation.request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
        return operation.convert(answer)

    async def list_orders(self, market: str = "", *, timeout: float | None = None) -> list[t.Order]:
        """See `Client.list_orders`."""
        orders: list[t.Order] = []
        token = ""
        while True:
            page, token = await self._run(core.list_orders(market, token), timeout)
            orders += page
            if not token:
                return orders

    def events(self, market: str = "", from_seq: int = 0, *, timeout: float | None = None) -> AsyncIterator[t.Event]:
        """See `Client.events`."""
        return self._follow("StreamEvents", pb.StreamEventsRequest, t.event_from_pb, market, from_seq, timeout)

    def order_events(self, market: str = "", from_seq: int = 0, *,
                     timeout: float | None = None) -> AsyncIterator[t.OrderEvent]:
        """See `Client.order_events`."""
        return self._follow("StreamOrders", pb.StreamOrdersRequest, t.order_event_from_pb, market, from_seq, timeout)

    async def _follow(self, method: str, request_type: Callable[..., Any], convert: Callable[[Any], E], market: str,
                      from_seq: int, timeout: float | None) -> AsyncIterator[E]:
        position = core.StreamPosition.starting_at(from_seq)
        plan = RetryPlan(self.nodes, self.policy, Safety.IDEMPOTENT, timeout)
        while True:
            attempt = plan.next()
            if attempt.delay:
                await asyncio.sleep(attempt.delay)
            request = request_type(market=market, from_seq=position.resume())
            try:
                async for message in getattr(self.stub(attempt.address), method)(request, metadata=self._metadata):
                    plan.progress()
                    if position.accept(message.seq):
                        yield convert(message)
            except grpc.RpcError as error:
                plan.failed(attempt, error)
                continue
            plan.failed(attempt, core.Unavailable(f"{attempt.address} ended the stream"))

    # -- public market data: trades, candles, ticker (exchange.client.market_data) ----------------------

    async def trades(self, market: str = "", from_seq: int = 0, *,
                     timeout: float | None = None) -> AsyncIterator[md.PublicTrade]:
        """See `Client.trades`."""
        position = md.TradePosition(from_seq)
        plan = RetryPlan(self.nodes, self.policy, Safety.IDEMPOTENT, timeout)
        while True:
            attempt = plan.next()
            if attempt.delay:
                await asyncio.sleep(attempt.delay)
            try:
                async for message in self.stub(attempt.address).StreamTrades(position.request(market),
                                                                            metadata=self._metadata):
                    plan.progress()
                    for trade in message.trades:
                        if position.accept(trade):
                            yield md.public_trade_from_pb(trade)
            except grpc.RpcError as error:
                plan.failed(attempt, error)
                continue
            plan.failed(attempt, core.Unavailable(f"{attempt.address} ended the stream"))

    async def get_trades(self, market: str = "", limit: int = 100, *, before: int = 0,
                         timeout: float | None = None) -> md.TradesPage:
        """See `Client.get_trades`."""
        return await self._run(md.get_trades(market, limit, before), timeout)

    async def get_candles(self, market: str = "", interval: str = "1m", *, from_ms: int = 0, to_ms: int = 0,
                          limit: int = 100, timeout: float | None = None) -> md.Candles:
        """See `Client.get_candles`."""
        return await self._run(md.get_candles(market, interval, from_ms, to_ms, limit), timeout)

    async def get_ticker(self, market: str = "", *, timeout: float | None = None) -> md.Ticker:
        return await self._run(md.get_ticker(market), timeout)

    async def subscribe_book(self, market: str = "", depth: int = 10, *,
                             timeout: float | None = None) -> AsyncBookSubscription:
        """See `Client.subscribe_book`: `async with await client.subscribe_book(...) as book:`."""
        subscription = AsyncBookSubscription(self, market, depth, timeout)
        await subscription.start()
        return subscription


class AsyncBookSubscription(SubscriptionBase):
    """See `BookSubscription`; its background work runs as a task on the client's event loop."""

    def __init__(self, client: AsyncClient, market: str, depth: int, timeout: float | None) -> None:
        super().__init__(market, depth, timeout)
        self.client = client
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._follow())
        with contextlib.suppress(TimeoutError):
            await self.wait_until(lambda: self._tracker.book is not None or self._error is not None,
                                  self.timeout or self.client.policy.timeout)
        if self._tracker.book is None:
            await self.close()
            raise self._error or core.DeadlineExceeded(f"no snapshot of {self.market or 'the default market'}")

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Waits until `condition()` (checked after each message) holds; False if it does not within `timeout`."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(condition), timeout)
            except TimeoutError:
                return False
            return True

    async def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        """Waits until the local view reflects `seq` or later; False if it does not within `timeout`."""
        reached = await self.wait_until(
            lambda: self._error is not None or self._tracker.book is not None and self._tracker.seq >= seq, timeout)
        return reached and self._error is None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> AsyncBookSubscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _resync(self, reason: str) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._tracker.book is not None:
            self._tracker.resync(reason)
            if reason == STREAM_ENDED:
                self._tracker.stats.reconnects += 1

    async def _follow(self) -> None:
        """See `BookSubscription._follow`."""
        client, tracker = self.client, self._tracker
        plan = RetryPlan(client.nodes, client.policy, Safety.IDEMPOTENT, self.timeout)
        while True:
            try:
                attempt = plan.next()
            except ExchangeError as final:
                self._error = final
                await self._notify()
                return
            await asyncio.sleep(attempt.delay)
            self._address = attempt.address
            try:
                self._call = client.stub(attempt.address).StreamBook(self._request(), metadata=client._metadata)
                async for message in self._call:
                    tracker.on_message(message)
                    plan.succeeded(attempt)
                    plan.progress()
                    await self._notify()
                error: ExchangeError | grpc.RpcError = core.Unavailable(f"{attempt.address} ended the stream")
            except Diverged as diverged:
                self._resync(diverged.reason)
                await self._notify()
                continue
            except grpc.aio.AioRpcError as failure:
                error = failure
            self._resync(STREAM_ENDED)
            await self._notify()
            try:
                plan.failed(attempt, error)
            except ExchangeError as final:
                self._error = final
                await self._notify()
                return
