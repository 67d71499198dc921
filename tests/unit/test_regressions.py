"""Regressions found by the convergence checker (exchange/chaos.py), one test per bug."""

from __future__ import annotations

import asyncio
import gc

from exchange import engine as eng
from exchange.errors import Unavailable
from exchange.node.replica import Replica
from exchange.node.service import ExchangeNodeService
from exchange.v1 import types_pb2


class _StuckPipeline:
    """A pipeline whose submit() fails (Sequencer gone) only after the client has given up."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def submit(self, command: types_pb2.Command) -> None:
        await self.release.wait()
        raise Unavailable("no passing Sequencer is registered in Consul (service 'sequencer')")


def test_cancelled_create_order_with_client_order_id_logs_no_unretrieved_task_exception() -> None:
    """chaos seed 2: a client's deadline expired (CreateOrder cancelled) while its order, which has a
    client_order_id, waited for the Sequencer; the order then failed with UNAVAILABLE and asyncio logged
    "Task exception was never retrieved" with a traceback (an ERROR for an expected outcome)."""
    reported: list[dict[str, object]] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context))
        pipeline = _StuckPipeline()
        service = ExchangeNodeService("node-1", Replica([eng.MarketConfig("BTC-USD")]), {"BTC-USD": pipeline},
                                      None, None, b"secret")  # type: ignore[arg-type]
        command = types_pb2.Command(market="BTC-USD", client_order_id="c-1", new_order=types_pb2.NewOrderCommand(
            side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1, price=100))
        call = asyncio.ensure_future(service._once_per_client_id(command))
        await asyncio.sleep(0.01)
        call.cancel()  # the client's deadline: grpc cancels the handler
        await asyncio.sleep(0.01)
        pipeline.release.set()  # now the order fails
        await asyncio.sleep(0.01)
        assert not service._in_flight
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    gc.collect()
    assert not [c for c in reported if "never retrieved" in str(c.get("message"))], reported


def test_cancelled_submit_logs_no_unretrieved_future_exception() -> None:
    """The same for commands without a client_order_id (cancels, amends): the caller of
    MarketPipeline.submit() gave up, then the command failed; its future's exception was never retrieved."""
    from exchange.node.sequencing import MarketPipeline

    reported: list[dict[str, object]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: reported.append(context))
        pipeline = MarketPipeline("BTC-USD", Replica([eng.MarketConfig("BTC-USD")]), None, None,  # type: ignore[arg-type]
                                  "node-1")
        command = types_pb2.Command(market="BTC-USD", cancel_order=types_pb2.CancelOrderCommand(order_id=7))
        call = asyncio.ensure_future(pipeline.submit(command))
        await asyncio.sleep(0.01)
        call.cancel()  # the client's deadline
        await asyncio.sleep(0.01)
        pipeline._fail(list(pipeline._queue), Unavailable("Sequencer unreachable"))
        pipeline._queue.clear()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    gc.collect()
    assert not [c for c in reported if "never retrieved" in str(c.get("message"))], reported
