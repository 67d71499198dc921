"""Client order entry: CreateOrder, the OrderEntry streams, CancelOrder and AmendOrder.

Each order is validated (order_messages.py), started on its market's pipeline (sequencing.py) and answered from
the events the replica applied for it. A client_order_id is placed at most once per market, however often
and on whichever node it is sent: a repeat gets the first result, marked `duplicate`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Mapping

import grpc

from exchange import engine as eng
from exchange.errors import (
    ExchangeError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    rpc,
    status_of,
)
from exchange.node import order_messages
from exchange.node.auth import AccessControl, Caller
from exchange.node.lifecycle import NodeState
from exchange.node.metrics import counters, order_rejected
from exchange.node.replica import Applied, Replica
from exchange.node.sequencer_link import Sequencer
from exchange.node.sequencing import MarketPipeline, Outcome, fail
from exchange.runtime import Malformed, answered_in_order, at_once, receives_malformed_items
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2

log = logging.getLogger(__name__)

# Orders of one OrderEntry stream in flight at once (started, or done but not yet sent back): bounds memory.
ENTRY_WINDOW = 1024
# The same for OrderEntryBatch, in batches of at most MAX_BATCH_ORDERS orders.
BATCH_WINDOW = 16
MAX_BATCH_ORDERS = 1000

# How a market rejection of a cancel or amend is reported (new orders report REJECTED in the answer).
REJECTION_ERRORS: dict[eng.RejectReason, type[ExchangeError]] = {
    eng.RejectReason.ORDER_NOT_FOUND: NotFound,
    eng.RejectReason.POST_ONLY_WOULD_TAKE: FailedPrecondition,
    eng.RejectReason.NOT_ORDER_OWNER: PermissionDenied,
}


def _order_response(outcome: Outcome) -> pb.CreateOrderResponse:
    applied = outcome.applied
    return order_messages.create_order_response(applied.command, outcome.seq, applied.events, outcome.duplicate)


def _settle_duplicate(duplicate: asyncio.Future[Outcome], first: asyncio.Future[Outcome]) -> None:
    """Gives a repeated client_order_id the outcome of the first order, marked as a duplicate."""
    if duplicate.done():
        return
    if first.cancelled():
        duplicate.cancel()
    elif (error := first.exception()) is not None:
        fail(duplicate, error)
    else:
        outcome = first.result()
        duplicate.set_result(Outcome(outcome.seq, outcome.applied, duplicate=True))


def _entry_error(error: Exception) -> pb.OrderEntryResult:
    """An order's failure as an OrderEntry result: the status CreateOrder would have answered."""
    if not isinstance(error, ExchangeError):
        log.error("unexpected error in OrderEntry", exc_info=error)
        error_code, message = grpc.StatusCode.INTERNAL, f"internal error in OrderEntry: {type(error).__name__}"
    else:
        error_code, message = status_of(error), str(error)
    return pb.OrderEntryResult(error=pb.OrderEntryError(code=error_code.name, message=message))


class OrderEntryRPCs:
    """The order-entry RPCs of ExchangeNode (see exchange/node/service.py for the other parts)."""

    def __init__(
        self, node: NodeState, replica: Replica, pipelines: Mapping[str, MarketPipeline], sequencer: Sequencer,
        access: AccessControl,
    ) -> None:
        self.node = node
        self.access = access
        self.replica = replica
        self.pipelines = pipelines
        self.sequencer = sequencer
        self._in_flight: dict[tuple[str, str, str], asyncio.Future[Outcome]] = {}  # (market, account, coid)

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def markets(self) -> Mapping[str, eng.MarketConfig]:
        return self.replica.markets

    @rpc
    async def CreateOrder(
        self, request: pb.CreateOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateOrderResponse:
        caller = self.access.caller(context)
        return await self._place(request, caller)

    @rpc
    @receives_malformed_items
    async def OrderEntry(
        self, request_iterator: AsyncIterator[pb.CreateOrderRequest | Malformed], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.OrderEntryResult]:
        """Starts each order of the stream as it arrives (up to ENTRY_WINDOW at once) and answers them in
        request order, one result each; a failed order is an error result and the stream goes on. A key
        disabled while the stream is open ends it with UNAUTHENTICATED: nothing after is placed."""
        caller = self.access.caller(context)
        async for result in answered_in_order(
            request_iterator, at_once(functools.partial(self._start_entry, caller=caller)), self._entry_result,
            ENTRY_WINDOW,
        ):
            yield result

    @rpc
    @receives_malformed_items
    async def OrderEntryBatch(
        self, request_iterator: AsyncIterator[pb.OrderBatch | Malformed], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.OrderBatchResult]:
        """OrderEntry with batches: each order of a batch is an OrderEntry item, the batch one message."""
        caller = self.access.caller(context)
        async for result in answered_in_order(
            request_iterator, at_once(functools.partial(self._start_batch, caller=caller)), self._batch_result,
            BATCH_WINDOW,
        ):
            yield result

    def _start_batch(
        self, batch: pb.OrderBatch | Malformed, caller: Caller
    ) -> list[asyncio.Future[Outcome] | pb.OrderEntryResult]:
        if isinstance(batch, Malformed):
            return [_entry_error(InvalidArgument(f"this stream item is not a valid OrderBatch: {batch.error}"))]
        if len(batch.orders) > MAX_BATCH_ORDERS:
            refused = _entry_error(InvalidArgument(
                f"a batch holds at most {MAX_BATCH_ORDERS} orders, this one {len(batch.orders)}; none was placed"
            ))
            return [refused] * len(batch.orders)
        return [self._start_entry(order, caller) for order in batch.orders]

    async def _batch_result(self, started: list[asyncio.Future[Outcome] | pb.OrderEntryResult]) -> pb.OrderBatchResult:
        return pb.OrderBatchResult(results=[await self._entry_result(order) for order in started])

    def _start_entry(
        self, request: pb.CreateOrderRequest | Malformed, caller: Caller
    ) -> asyncio.Future[Outcome] | pb.OrderEntryResult:
        """Starts one order of an OrderEntry stream; an order refused at once gets its error result. A key that
        no longer works raises (UNAUTHENTICATED), which ends the stream."""
        account = self.access.account(caller)
        try:
            if isinstance(request, Malformed):
                raise InvalidArgument(f"this stream item is not a valid CreateOrderRequest: {request.error}")
            return self._place_order(request, account)
        except Exception as error:  # noqa: BLE001 - a bad order must not end the stream
            return _entry_error(error)

    async def _entry_result(self, started: asyncio.Future[Outcome] | pb.OrderEntryResult) -> pb.OrderEntryResult:
        """The result of a started order of an OrderEntry stream, as CreateOrder would have answered it."""
        if isinstance(started, pb.OrderEntryResult):  # refused when it was started
            return started
        try:
            # shielded: if the stream ends meanwhile, the order still completes
            outcome = started.result() if started.done() else await asyncio.shield(started)
            return pb.OrderEntryResult(order=_order_response(outcome))
        except Exception as error:  # noqa: BLE001 - a failed order must not end the stream
            return _entry_error(error)

    def _place_order(self, request: pb.CreateOrderRequest, account: str) -> asyncio.Future[Outcome]:
        """Validates a new order of `account` and starts placing it (CreateOrder and each item of OrderEntry)."""
        counters["orders"] += 1  # also exchange_orders_received_total (exchange.node.metrics.OrderCounts)
        try:
            self.access.spend(account)
            command = order_messages.new_order_command(request, self.markets, self.node_id, account)
            self.node.require_serving()
        except ExchangeError as error:
            order_rejected(status_of(error).name)
            raise
        if command.client_order_id:
            return self._once_per_client_id(command)
        return self.pipelines[command.market].enqueue(command)

    async def _place(self, request: pb.CreateOrderRequest, caller: Caller) -> pb.CreateOrderResponse:
        """Validates, sequences and applies one new order; cancelling the caller does not withdraw it."""
        return _order_response(await asyncio.shield(self._place_order(request, self.access.account(caller))))

    def _once_per_client_id(self, command: types_pb2.Command) -> asyncio.Future[Outcome]:
        """The first outcome for a client_order_id, however many times and wherever it is sent (a
        duplicate's outcome is marked so)."""
        market, account, client_order_id = command.market, command.account, command.client_order_id
        seq = self.replica.order_of_client_id(market, account, client_order_id)
        loop = asyncio.get_running_loop()
        if seq is not None:
            applied = self.replica.retained_result(market, seq, client_order_id)
            known: asyncio.Future[Outcome] = loop.create_future()
            known.set_result(Outcome(seq, applied, duplicate=True))
            return known
        key = (market, account, client_order_id)
        running = self._in_flight.get(key)
        if running is not None:
            duplicate: asyncio.Future[Outcome] = loop.create_future()
            running.add_done_callback(lambda first: _settle_duplicate(duplicate, first))
            return duplicate
        future = self.pipelines[market].enqueue(command)
        self._in_flight[key] = future
        future.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return future

    async def _sequenced_change(self, command: types_pb2.Command, order_id: int) -> Applied:
        """Sequences a cancel or amend and raises the matching error if the market rejected it."""
        self.node.require_serving()
        market = command.market
        await self._require_may_rest(market, order_id)
        owner = self.replica.owner(market, order_id)
        if owner is not None and owner != command.account:
            raise PermissionDenied(f"order {order_id} of {market} belongs to another account")
        outcome = await self.pipelines[market].submit(command)
        rejected = order_messages.rejection(outcome.applied.events)
        if rejected is not None:
            error = REJECTION_ERRORS.get(rejected.reason, InvalidArgument)
            raise error(f"order {order_id} in {market}: {rejected.reason.name} (sequence {outcome.seq})")
        return outcome.applied

    async def _require_may_rest(self, market: str, order_id: int) -> None:
        """NOT_FOUND without touching the log when the order cannot be resting anywhere: an order's id
        is its sequence number, so an id this node has applied but does not hold is finished, and an id
        past the Sequencer's current number does not exist yet. Only ids in between are sequenced."""
        if order_id <= self.replica.applied_seq(market):
            if not self.replica.is_resting(market, order_id):
                raise NotFound(f"order {order_id} is not resting in {market}: it is unknown, filled or cancelled")
            return
        if order_id > self.replica.known_seq(market):
            self.replica.note_known(market, await self.sequencer.current_seq(market))
            if order_id > self.replica.known_seq(market):
                raise NotFound(f"there is no order {order_id} in {market} (its sequence is only at "
                               f"{self.replica.known_seq(market)})")

    @rpc
    async def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelOrderResponse:
        account = self._admit(context)
        command = order_messages.cancel_command(request, self.markets, self.node_id, account)
        applied = await self._sequenced_change(command, request.order_id)
        cancelled = sum(e.size for e in applied.events if isinstance(e, eng.OrderCancelled))
        return pb.CancelOrderResponse(
            market=command.market, order_id=request.order_id, seq=applied.seq, cancelled_size=cancelled
        )

    @rpc
    async def AmendOrder(
        self, request: pb.AmendOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.AmendOrderResponse:
        account = self._admit(context)
        command = order_messages.amend_command(request, self.markets, self.node_id, account)
        applied = await self._sequenced_change(command, request.order_id)
        response = pb.AmendOrderResponse(market=command.market, order_id=request.order_id, seq=applied.seq)
        for event in applied.events:
            if isinstance(event, eng.OrderAmended):
                response.price, response.remaining_size = event.price, event.size
                response.priority_kept = event.priority_kept
            elif isinstance(event, eng.OrderFilled):
                response.trades.append(order_messages.trade(event))
                response.remaining_size = event.taker_remaining
            elif isinstance(event, eng.OrderRested):
                response.remaining_size = event.size
            elif isinstance(event, eng.OrderReduced) and event.order_id == request.order_id:
                response.remaining_size = event.remaining  # decremented against an order of its own account
            elif isinstance(event, eng.OrderCancelled) and event.order_id == request.order_id:
                response.remaining_size = 0  # self-trade prevention cancelled what was left
        return response

    def _admit(self, context: grpc.aio.ServicerContext) -> str:
        """The account of a cancel's or an amend's caller, within its rate limit (they count as orders)."""
        account = self.access.account(self.access.caller(context))
        self.access.spend(account)
        return account
