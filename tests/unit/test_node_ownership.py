"""Ownership on one node, in-process: another account's order can be neither cancelled, amended nor read, and
the refusal is the node's own (exchange/node/orders.py, trader_view.py): nothing of it reaches the log. The
engine would refuse a cancel or amend of another account too (NOT_ORDER_OWNER), but only after it was
sequenced: a log entry and a number spent on every attempt."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest

from exchange import engine as eng
from exchange.accounts import ACCOUNTS_PREFIX, Account, encode, key_hash, new_api_key
from exchange.node.auth import AccessControl, AccountRegistry
from exchange.node.lifecycle import SERVING, NodeState
from exchange.node.orders import OrderEntryRPCs
from exchange.node.replica import Replica
from exchange.node.sequencing import MarketPipeline
from exchange.node.trader_view import TraderViewRPCs
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import SECRET, Aborted, FakeContext, InMemorySequencer, RecordingPeers, run_scenario

M = "BTC-USD"
KEYS = {"alice": new_api_key(), "bob": new_api_key()}


def as_account(name: str) -> FakeContext:
    return FakeContext((("authorization", f"Bearer {KEYS[name]}"),))


def test_another_accounts_order_cannot_be_cancelled_amended_or_read_and_nothing_reaches_the_log() -> None:
    async def scenario() -> None:
        registry = AccountRegistry(SECRET)
        registry.update({ACCOUNTS_PREFIX + name: encode(SECRET, Account(name, True, (key_hash(key),)))
                         for name, key in KEYS.items()})
        gate, node = AccessControl(registry, None), NodeState("node-1", SERVING)
        replica, sequencer = Replica([eng.MarketConfig(M)]), InMemorySequencer()
        pipeline = MarketPipeline(M, replica, sequencer, RecordingPeers(), "node-1")
        pipeline.start()
        orders = OrderEntryRPCs(node, replica, {M: pipeline}, sequencer, gate)
        view = TraderViewRPCs(node, replica, gate)
        try:
            placed = await orders.CreateOrder(
                pb.CreateOrderRequest(side=types_pb2.BUY, size=3, limit_price=100), as_account("alice"))
            before = (replica.applied_seq(M), replica.checksum(M), sequencer.current(M))
            bob, order_id = as_account("bob"), placed.order_id
            attempts: list[Callable[[], Awaitable[object]]] = [
                lambda: orders.CancelOrder(pb.CancelOrderRequest(order_id=order_id), bob),
                lambda: orders.AmendOrder(pb.AmendOrderRequest(order_id=order_id, size=1), bob),
                lambda: view.GetOrder(pb.GetOrderRequest(order_id=order_id), bob),
            ]
            for attempt in attempts:
                with pytest.raises(Aborted) as refused:
                    await attempt()
                assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
            after = (replica.applied_seq(M), replica.checksum(M), sequencer.current(M))
            assert after == before, "a refused cancel or amend was sequenced (the node did not check ownership)"
            alice = as_account("alice")
            assert (await view.GetOrder(pb.GetOrderRequest(order_id=placed.order_id), alice)).remaining_size == 3
            cancelled = await orders.CancelOrder(pb.CancelOrderRequest(order_id=placed.order_id), alice)
            assert cancelled.cancelled_size == 3
        finally:
            await pipeline.stop()

    run_scenario(scenario())
