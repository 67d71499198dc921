"""A trader's own view: GetOrder, ListOrders and StreamOrders, for the caller's account only.

Every call needs the caller's API key (exchange/node/auth.py); another account's order is PERMISSION_DENIED,
and the listings and the stream show only the caller's orders. Answered from this node's replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import grpc

from exchange import engine as eng
from exchange.errors import InvalidArgument, NotFound, PermissionDenied, rpc
from exchange.node import order_messages
from exchange.node.auth import AccessControl
from exchange.node.lifecycle import NodeState
from exchange.node.order_records import OrderState
from exchange.node.reads import applied_entries
from exchange.node.replica import Replica
from exchange.v1 import exchange_pb2 as pb

DEFAULT_PAGE, MAX_PAGE = 100, 1000


def _order(state: OrderState) -> pb.Order:
    return pb.Order(
        market=state.market, order_id=state.order_id, side=state.side, order_type=state.order_type,
        price=state.price, size=state.size, filled_size=state.filled, remaining_size=state.remaining,
        status=state.status, client_order_id=state.client_order_id,
    )


class TraderViewRPCs:
    """The caller's own orders (see exchange/node/service.py for the other parts of ExchangeNode)."""

    def __init__(self, node: NodeState, replica: Replica, access: AccessControl) -> None:
        self.node = node
        self.replica = replica
        self.access = access

    @property
    def markets(self) -> Mapping[str, eng.MarketConfig]:
        return self.replica.markets

    def _account(self, context: grpc.aio.ServicerContext) -> str:
        return self.access.account(self.access.caller(context))

    @rpc
    async def GetOrder(self, request: pb.GetOrderRequest, context: grpc.aio.ServicerContext) -> pb.Order:
        account = self._account(context)
        market = order_messages.resolve_market(self.markets, request.market).symbol
        order_messages.check_order_id(request.order_id)
        self.node.require_serving()  # a node catching up would answer from a stale book (its answer has no seq)
        state = self.replica.order_state(market, request.order_id)
        if state is None:
            oldest = self.replica.oldest_journaled(market)
            if request.order_id < oldest:
                raise NotFound(
                    f"order {request.order_id} of {market} is not resting, and this node keeps finished orders "
                    f"only from sequence {oldest} on (the last {self.replica.journal_size} commands of the market, "
                    f"since it started from a snapshot): ask ListOrders for open orders, StreamOrders for news"
                )
            raise NotFound(f"there is no order {request.order_id} in {market} (as of sequence "
                           f"{self.replica.applied_seq(market)})")
        if state.account != account:
            raise PermissionDenied(f"order {request.order_id} of {market} belongs to another account")
        return _order(state)

    @rpc
    async def ListOrders(
        self, request: pb.ListOrdersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOrdersResponse:
        account = self._account(context)
        market = order_messages.resolve_market(self.markets, request.market).symbol
        if not 0 <= request.page_size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE} (0 means {DEFAULT_PAGE}), "
                                  f"got {request.page_size}")
        if request.page_token and not (request.page_token.isascii() and request.page_token.isdigit()):
            raise InvalidArgument("page_token must be the next_page_token of a previous answer")
        self.node.require_serving()
        size = request.page_size or DEFAULT_PAGE
        orders = self.replica.resting_orders_of(market, account, int(request.page_token or 0), size + 1)
        more = len(orders) > size
        orders = orders[:size]
        return pb.ListOrdersResponse(
            market=market, seq=self.replica.applied_seq(market), orders=[_order(o) for o in orders],
            next_page_token=str(orders[-1].order_id) if more else "",
        )

    @rpc
    async def StreamOrders(
        self, request: pb.StreamOrdersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.OrderEvent]:
        caller = self.access.caller(context)
        account = self.access.account(caller)
        market = order_messages.resolve_market(self.markets, request.market).symbol
        async for applied in applied_entries(self.replica, market, request.from_seq,
                                             lambda: self.access.account(caller)):  # a key disabled meanwhile
            # another account's command (the taker that filled the caller's resting order) keeps its id to itself
            command = applied.command
            client_order_id = command.client_order_id if command.account == account else ""
            for event in order_messages.order_events(market, applied.seq, applied.events, account, client_order_id):
                yield event
