"""A node's gate pipeline and order entry against an in-memory Sequencer (no network)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY

from exchange import engine as eng
from exchange.errors import Aborted, FailedPrecondition
from exchange.node.auth import AccessControl, Caller
from exchange.node.lifecycle import SERVING, NodeState
from exchange.node.orders import OrderEntryRPCs
from exchange.node.replica import Replica
from exchange.node.sequencing import MarketPipeline
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import sequencer_pb2, types_pb2
from tests.unit.fakes import InMemorySequencer, RecordingPeers, run_scenario

M = "BTC-USD"
T = TypeVar("T")


def buy(price: int = 100, client_order_id: str = "") -> types_pb2.Command:
    order = types_pb2.NewOrderCommand(side=types_pb2.BUY, order_type=types_pb2.LIMIT, size=1, price=price)
    return types_pb2.Command(market=M, client_order_id=client_order_id, origin_node="node-1", new_order=order)


def run(scenario: Callable[[MarketPipeline, Any, RecordingPeers], Awaitable[T]],
        max_retries: int = 5, journal_size: int = 1000, gate_depth: int = 2,
        sequencer: InMemorySequencer | None = None, gather_s: float = 0.0) -> T:
    async def main() -> T:
        peers = RecordingPeers()
        pipeline = MarketPipeline(M, Replica([eng.MarketConfig(M)], journal_size=journal_size),
                                  sequencer or InMemorySequencer(), peers, "node-1", max_retries=max_retries,
                                  gate_depth=gate_depth, gather_s=gather_s)
        pipeline.start()
        try:
            return await scenario(pipeline, pipeline.sequencer, peers)
        finally:
            await pipeline.stop()

    return run_scenario(main(), timeout_s=10)


def test_a_granted_command_is_applied_answered_and_broadcast() -> None:
    async def scenario(pipeline: MarketPipeline, sequencer: InMemorySequencer, peers: RecordingPeers) -> None:
        outcome = await pipeline.submit(buy())
        assert (outcome.seq, outcome.duplicate) == (1, False)
        assert isinstance(outcome.applied.events[-1], eng.OrderRested)
        assert [e.seq for e in peers.sent] == [1]
        assert pipeline.replica.applied_seq(M) == 1

    run(scenario)


def test_a_node_behind_applies_what_it_lacks_then_its_own_order_in_one_round_trip() -> None:
    async def scenario(pipeline: MarketPipeline, sequencer: InMemorySequencer, peers: RecordingPeers) -> None:
        for price in (90, 91, 92):  # three orders of other nodes the node has not heard of
            sequencer.append(buy(price))
        outcome = await pipeline.submit(buy(93))
        assert outcome.seq == 4
        assert pipeline.replica.applied_seq(M) == 4
        assert [r.applied_seq for r in sequencer.requests] == [0]
        assert [e.seq for e in peers.sent] == [4], "only the node's own entries are broadcast"

    run(scenario)


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_an_order_the_sequencer_keeps_calling_stale_is_aborted_after_max_retries_and_never_placed(
    max_retries: int,
) -> None:
    async def scenario(pipeline: MarketPipeline, sequencer: InMemorySequencer, peers: RecordingPeers) -> None:
        sequencer.stale = True
        with pytest.raises(Aborted, match=f"invalidated {max_retries + 1} times"):
            await pipeline.submit(buy())
        assert len(sequencer.requests) == max_retries + 1, "one request, then max_retries retries"
        logged = [types_pb2.Command.FromString(e.command) for e in sequencer.log[M]]
        assert not [c for c in logged if c.WhichOneof("kind") == "new_order"], "an aborted order is not in the log"
        assert not peers.sent

    run(scenario, max_retries=max_retries)


def test_a_repeated_client_order_id_whose_result_is_gone_is_failed_precondition_on_every_path() -> None:
    """The Sequencer's duplicate answer and the node's own map must say the same (both paths once drifted:
    UNAVAILABLE on one, FAILED_PRECONDITION on the other)."""

    async def scenario(pipeline: MarketPipeline, sequencer: InMemorySequencer, peers: RecordingPeers) -> None:
        first = await pipeline.submit(buy(client_order_id="k-1"))
        for price in range(50, 60):  # push the first result out of the 4-entry journal
            await pipeline.submit(buy(price))
        # the Sequencer's path: the node does not consult its own map (a command sent straight to the gate)
        with pytest.raises(FailedPrecondition, match=f"'k-1' is order {first.seq} of {M}"):
            await pipeline.submit(buy(client_order_id="k-1"))
        # the node's path: order entry finds the client_order_id in the replica's map first
        rpcs = OrderEntryRPCs(NodeState("node-1", SERVING), pipeline.replica, {M: pipeline}, sequencer,
                              AccessControl(None, None))
        with pytest.raises(FailedPrecondition, match=f"'k-1' is order {first.seq} of {M}"):
            await rpcs._place(pb.CreateOrderRequest(size=1, limit_price=100, client_order_id="k-1"), Caller("", ""))
        assert sum(1 for e in sequencer.log[M] if types_pb2.Command.FromString(e.command).client_order_id) == 1

    run(scenario, journal_size=4)


class HeldSequencer(InMemorySequencer):
    """Takes gated requests and answers them, in order, once `open` is set; counts how many wait at once."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.waiting = 0
        self.most_waiting = 0

    async def sequence(self, request: sequencer_pb2.SequenceRequest) -> sequencer_pb2.SequenceResponse:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            await self.open.wait()
            return await super().sequence(request)
        finally:
            self.waiting -= 1


@pytest.mark.parametrize("gate_depth", [1, 2, 3])
def test_up_to_gate_depth_requests_are_in_flight_and_their_orders_are_numbered_in_the_order_taken(
    gate_depth: int,
) -> None:
    async def scenario(pipeline: MarketPipeline, sequencer: HeldSequencer, peers: RecordingPeers) -> None:
        placed = []
        for price in range(90, 96):  # one order per loop iteration: each may start a request of its own
            placed.append(pipeline.enqueue(buy(price)))
            await asyncio.sleep(0.01)
        assert sequencer.most_waiting == gate_depth
        sequencer.open.set()
        outcomes = await asyncio.gather(*placed)
        assert [o.seq for o in outcomes] == [1, 2, 3, 4, 5, 6], "numbered in the order the node took them"
        assert [o.applied.command.new_order.price for o in outcomes] == list(range(90, 96))
        assert len(sequencer.requests) == gate_depth + 1, "the orders that waited went in one request"
        assert [r.applied_seq for r in sequencer.requests[:gate_depth]] == [0] * gate_depth, \
            "requests in flight state what the node had applied when they were sent"
        assert pipeline.replica.applied_seq(M) == 6 and [e.seq for e in peers.sent] == [1, 2, 3, 4, 5, 6]
        assert sequencer.most_waiting == gate_depth

    run(scenario, gate_depth=gate_depth, sequencer=HeldSequencer())


def test_after_an_answer_the_gate_gathers_as_many_orders_as_it_answered_before_its_next_request() -> None:
    async def scenario(pipeline: MarketPipeline, sequencer: InMemorySequencer, peers: RecordingPeers) -> None:
        await asyncio.gather(*(pipeline.enqueue(buy(price)) for price in (90, 91, 92)))
        assert [len(r.commands) for r in sequencer.requests] == [3]
        returning = [pipeline.enqueue(buy(price)) for price in (93, 94)]
        await asyncio.sleep(0.05)
        assert len(sequencer.requests) == 1, "two of the three answered clients are back: the gate still waits"
        returning.append(pipeline.enqueue(buy(95)))
        outcomes = await asyncio.gather(*returning)
        assert [len(r.commands) for r in sequencer.requests] == [3, 3], "the three went in one request"
        assert [o.seq for o in outcomes] == [4, 5, 6]

    run(scenario, gate_depth=1, gather_s=60.0)


def test_gathering_ends_at_its_deadline_and_a_lone_order_after_a_lone_answer_goes_at_once() -> None:
    async def scenario(pipeline: MarketPipeline, sequencer: InMemorySequencer, peers: RecordingPeers) -> None:
        await asyncio.gather(*(pipeline.enqueue(buy(price)) for price in (90, 91)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await pipeline.submit(buy(92))  # one of the two answered clients came back; the other never does
        assert loop.time() - started >= 0.6, "the gate waited for the second one until its deadline"
        started = loop.time()
        await pipeline.submit(buy(93))  # the last request answered one order, and one has come
        assert loop.time() - started < 0.6, "a lone order after a lone answer is not held (for the 0.6 s)"
        assert [len(r.commands) for r in sequencer.requests] == [2, 1, 1]

    run(scenario, gate_depth=1, gather_s=0.6)


def test_gathering_ends_when_its_timer_fires_even_if_the_clock_reads_a_hair_before_the_deadline() -> None:
    """uvloop's clock has millisecond resolution: a timer due at the deadline can run while loop.time() is still
    short of a deadline computed from it. Here every timer runs a millisecond early, and no order comes after the
    one that started the gathering (streaming clients whose window is full wait for answers): the gate must send it
    anyway. (It once held 2,048 orders of a node this way, for good.)"""
    async def scenario(pipeline: MarketPipeline, sequencer: InMemorySequencer, peers: RecordingPeers) -> None:
        loop = asyncio.get_running_loop()
        call_later = loop.call_later

        def early(delay: float, callback: Callable[..., object], *args: object) -> asyncio.TimerHandle:
            return call_later(max(0.0, delay - 0.001), callback, *args)

        loop.call_later = early  # type: ignore[method-assign,assignment]
        try:
            await asyncio.gather(*(pipeline.enqueue(buy(price)) for price in (90, 91)))
            outcome = await asyncio.wait_for(pipeline.submit(buy(92)), 2.0)  # the other answered client never returns
        finally:
            loop.call_later = call_later  # type: ignore[method-assign]
        assert outcome.seq == 3
        assert [len(r.commands) for r in sequencer.requests] == [2, 1]

    run(scenario, gate_depth=1, gather_s=0.05)


def test_the_nodes_own_orders_count_in_the_scraped_series_and_other_nodes_orders_do_not() -> None:
    def series(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"market": M}) or 0.0

    names = ("exchange_orders_accepted_total", "exchange_trades_total", "exchange_traded_size_total")

    async def scenario(pipeline: MarketPipeline, sequencer: InMemorySequencer, peers: RecordingPeers) -> None:
        before = [series(name) for name in names]
        other = buy(100)
        other.origin_node = "node-2"
        sequencer.append(other)  # another node's resting buy: applied here, not counted here
        sell = buy(100)
        sell.new_order.side, sell.new_order.size = types_pb2.SELL, 3
        await pipeline.submit(sell)  # trades 1 against it, rests 2
        await pipeline.submit(buy(90))
        assert [series(name) - value for name, value in zip(names, before, strict=True)] == [2, 1, 1]

    run(scenario)
