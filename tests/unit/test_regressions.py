"""Regressions found by the convergence checker (devtools/chaos), one test per bug."""

from __future__ import annotations

import asyncio
import gc

from exchange import engine as eng
from exchange.errors import Unavailable
from exchange.node.auth import AccessControl, Caller
from exchange.node.lifecycle import SERVING, NodeState
from exchange.node.orders import OrderEntryRPCs
from exchange.node.replica import Replica
from exchange.node.sequencing import MarketPipeline
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import InMemorySequencer, RecordingPeers, run_scenario


def test_cancelled_create_order_with_client_order_id_logs_no_unretrieved_exception() -> None:
    """chaos seed 2: a client's deadline expired (CreateOrder cancelled) while its order, which has a
    client_order_id, waited for the Sequencer; the order then failed with UNAVAILABLE and asyncio logged
    "Task exception was never retrieved" with a traceback (an ERROR for an expected outcome). The same must
    hold for a repeat of that client_order_id sent while the first was in flight."""
    reported: list[dict[str, object]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context))
        replica = Replica([eng.MarketConfig("BTC-USD")])
        sequencer = InMemorySequencer()
        pipeline = MarketPipeline("BTC-USD", replica, sequencer, RecordingPeers(), "node-1")  # not started
        service = OrderEntryRPCs(NodeState("node-1", SERVING), replica, {"BTC-USD": pipeline}, sequencer,
                                 AccessControl(None, None))
        request = pb.CreateOrderRequest(client_order_id="c-1", side=types_pb2.BUY, size=1, limit_price=100)
        calls = [asyncio.ensure_future(service._place(request, Caller("", ""))) for _ in range(2)]  # first, repeat
        await asyncio.sleep(0.01)
        assert len(pipeline._queue) == 1, "the repeat waits for the first order, it is not sequenced again"
        for call in calls:
            call.cancel()  # the client's deadline: grpc cancels the handler
        await asyncio.sleep(0.01)
        pipeline._fail(list(pipeline._queue), Unavailable("no passing Sequencer is registered in Consul"))
        pipeline._queue.clear()
        await asyncio.sleep(0.01)
        assert not service._in_flight
        gc.collect()
        await asyncio.sleep(0)

    run_scenario(scenario())
    gc.collect()
    assert not [c for c in reported if "never retrieved" in str(c.get("message"))], reported


def test_cancelled_submit_logs_no_unretrieved_future_exception() -> None:
    """The same for commands without a client_order_id (cancels, amends): the caller of
    MarketPipeline.submit() gave up, then the command failed; its future's exception was never retrieved."""
    reported: list[dict[str, object]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: reported.append(context))
        pipeline = MarketPipeline("BTC-USD", Replica([eng.MarketConfig("BTC-USD")]), InMemorySequencer(),
                                  RecordingPeers(), "node-1")
        command = types_pb2.Command(market="BTC-USD", cancel_order=types_pb2.CancelOrderCommand(order_id=7))
        call = asyncio.ensure_future(pipeline.submit(command))
        await asyncio.sleep(0.01)
        call.cancel()  # the client's deadline
        await asyncio.sleep(0.01)
        pipeline._fail(list(pipeline._queue), Unavailable("Sequencer unreachable"))
        pipeline._queue.clear()
        await asyncio.sleep(0)

    run_scenario(scenario())
    gc.collect()
    assert not [c for c in reported if "never retrieved" in str(c.get("message"))], reported
