"""The client library's rules without a network: retries, failover, what is retried after an ambiguous failure,
submit_many's window and resends, stream resumption, and the local L2 book against the engine itself."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from exchange import engine as eng
from exchange.client import AsyncClient, Client, NewOrder, OrderStatus, RetryPolicy, Side
from exchange.client import types as t
from exchange.client.book import CHECKSUM, GAP, BookTracker, Diverged
from exchange.client.core import EntryWindow, StreamPosition, entry_requests
from exchange.client.nodes import NodeSet, StaticNodes
from exchange.engine.l2 import BookFeed
from exchange.errors import (
    Aborted,
    DeadlineExceeded,
    ExchangeError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from exchange.node.auth import RateLimiter
from exchange.node.book_stream import book_update
from exchange.v1 import exchange_pb2 as pb
from exchange.v1 import types_pb2
from tests.unit.fakes import FakeRpcError, run_scenario

NODES = ["n1:1", "n2:1", "n3:1"]
FAST = RetryPolicy(timeout=2.0, attempt_timeout=0.5, backoff_initial=0.001, backoff_max=0.01,
                   node_backoff_initial=0.05, node_backoff_max=0.2)


DROPPED = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed")
REFUSED = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: refused")


def answer(request: pb.CreateOrderRequest, order_id: int = 7, duplicate: bool = False) -> pb.CreateOrderResponse:
    return pb.CreateOrderResponse(market="BTC-USD", order_id=order_id, seq=order_id, status=pb.RESTING,
                                  remaining_size=request.size, client_order_id=request.client_order_id,
                                  side=request.side, duplicate=duplicate)


class FakeNode:
    """A node's stub: each method answers from its script (an exception is raised, anything else returned or
    called with the request); every call is recorded."""

    def __init__(self, name: str, script: dict[str, list[Any]], calls: list[tuple[str, str, Any]]) -> None:
        self.name, self.script, self.calls = name, script, calls

    def __getattr__(self, method: str) -> Any:
        def call(request: Any, timeout: float | None = None, metadata: Any = None) -> Any:
            self.calls.append((self.name, method, request))
            outcomes = self.script.get(method) or [DROPPED]
            outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
            if isinstance(outcome, Exception):
                raise outcome
            return outcome(request) if callable(outcome) else outcome

        return call


def make_client(scripts: dict[str, dict[str, list[Any]]], policy: RetryPolicy = FAST) -> tuple[Client, list]:
    calls: list[tuple[str, str, Any]] = []
    nodes = {name: FakeNode(name, scripts.get(name, {}), calls) for name in NODES}
    return Client(NODES, policy=policy, stub_factory=nodes.__getitem__), calls


def test_a_new_order_fails_over_to_the_next_node_with_the_same_client_order_id() -> None:
    client, calls = make_client({"n1:1": {"CreateOrder": [DROPPED]}, "n2:1": {"CreateOrder": [answer]}})
    result = client.buy(5, 100)
    assert [(node, method) for node, method, _ in calls] == [("n1:1", "CreateOrder"), ("n2:1", "CreateOrder")]
    ids = {request.client_order_id for _, _, request in calls}
    assert len(ids) == 1 and len(ids.pop()) == 32, "one generated id, the same on every attempt"
    assert result == t.OrderResult("BTC-USD", 7, 7, OrderStatus.RESTING, Side.BUY, 0, 5, 0, (), "", False,
                                   calls[0][2].client_order_id)
    client.buy(1, 100)  # stays on the node that answered
    assert calls[-1][0] == "n2:1"


def test_the_callers_client_order_id_is_kept_and_deadline_exceeded_and_aborted_are_retried() -> None:
    timeout = FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    aborted = FakeRpcError(grpc.StatusCode.ABORTED, "stale")
    client, calls = make_client({"n1:1": {"CreateOrder": [timeout, aborted, lambda r: answer(r, duplicate=True)]}})
    result = client.place(NewOrder(Side.SELL, 3, 101, client_order_id="mine"))
    assert result.duplicate and result.client_order_id == "mine"
    assert [request.client_order_id for _, _, request in calls] == ["mine"] * len(calls)
    assert len(calls) >= 3


@pytest.mark.parametrize(("code", "error"), [(grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
                                             (grpc.StatusCode.NOT_FOUND, NotFound)])
def test_a_definite_refusal_is_raised_at_once_as_its_typed_error(
    code: grpc.StatusCode, error: type[ExchangeError]
) -> None:
    client, calls = make_client({"n1:1": {"CreateOrder": [FakeRpcError(code, "no such thing")]}})
    with pytest.raises(error) as raised:
        client.buy(1, 100)
    assert raised.value.code == code and raised.value.message == "no such thing" and not raised.value.retriable
    assert len(calls) == 1


def test_retries_stop_at_the_callers_deadline_with_the_last_error() -> None:
    client, calls = make_client({})
    with pytest.raises(Unavailable) as raised:
        client.buy(1, 100, timeout=0.3)
    assert raised.value.retriable
    assert {node for node, _, _ in calls} == set(NODES), "every node was tried"
    assert 3 <= len(calls) < 100, "with backoff, not a busy loop"


def test_an_amend_is_not_retried_when_it_may_have_taken_effect() -> None:
    client, calls = make_client({"n1:1": {"AmendOrder": [DROPPED]}})
    with pytest.raises(Unavailable):
        client.amend_order(4, 2, 100)
    assert len(calls) == 1


def test_an_amend_is_retried_when_it_surely_did_not_take_effect() -> None:
    amended = pb.AmendOrderResponse(market="BTC-USD", order_id=4, seq=9, price=100, remaining_size=2)
    aborted = FakeRpcError(grpc.StatusCode.ABORTED, "stale")
    client, calls = make_client({"n1:1": {"AmendOrder": [REFUSED]}, "n2:1": {"AmendOrder": [aborted, amended]}})
    assert client.amend_order(4, 2, 100) == t.AmendResult("BTC-USD", 4, 9, 100, 2, False, ())
    assert [node for node, _, _ in calls] == ["n1:1", "n2:1", "n2:1"]


def test_a_cancel_retried_after_an_ambiguous_failure_that_finds_the_order_gone_is_uncertain() -> None:
    gone = FakeRpcError(grpc.StatusCode.NOT_FOUND, "order 4 is not resting")
    client, _ = make_client({"n1:1": {"CancelOrder": [DROPPED]}, "n2:1": {"CancelOrder": [gone]}})
    result = client.cancel_order(4)
    assert result.uncertain and result.order_id == 4 and result.seq is None
    client, _ = make_client({"n1:1": {"CancelOrder": [gone]}})
    with pytest.raises(NotFound):  # without an earlier attempt, NOT_FOUND is what it says
        client.cancel_order(4)


def test_a_failed_node_is_avoided_for_a_backoff_then_used_again() -> None:
    now = [0.0]
    nodes = NodeSet(StaticNodes(tuple(NODES)), FAST, clock=lambda: now[0])
    assert nodes.pick() == ("n1:1", 0.0)
    nodes.failed("n1:1")
    assert nodes.pick() == ("n2:1", 0.0)
    nodes.failed("n2:1")
    nodes.failed("n3:1")
    address, wait = nodes.pick()  # all avoided: the one back first, after its backoff
    assert address == "n1:1" and wait == pytest.approx(0.05)
    now[0] = 0.06
    assert nodes.pick() == ("n1:1", 0.0)
    nodes.failed("n1:1")  # a second failure in a row doubles its backoff
    assert nodes.health["n1:1"].down_until == pytest.approx(0.06 + 0.1)


def test_a_node_source_is_asked_again_when_every_known_node_failed() -> None:
    class Rotating:
        def __init__(self) -> None:
            self.lists = [["a:1"], ["b:1"]]

        def addresses(self) -> list[str]:
            return self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]

    nodes = NodeSet(Rotating(), RetryPolicy(refresh_interval=0))
    assert nodes.pick()[0] == "a:1"
    nodes.failed("a:1")
    assert nodes.pick()[0] == "b:1"


# -- submit_many ------------------------------------------------------------------------------------------


class FakeEntryStream:
    """OrderEntryBatch: answers each batch with a result per order (`per_order` decides it), and breaks
    (UNAVAILABLE) after `break_after` batches."""

    def __init__(self, requests: Iterator[pb.OrderBatch], node: str, log: list, break_after: int | None,
                 per_order: Any) -> None:
        self.requests, self.node, self.log = requests, node, log
        self.break_after, self.per_order, self.answered = break_after, per_order, 0

    def __iter__(self) -> FakeEntryStream:
        return self

    def __next__(self) -> pb.OrderBatchResult:
        if self.break_after is not None and self.answered >= self.break_after:
            raise DROPPED
        batch = next(self.requests)
        self.answered += 1
        self.log.append((self.node, [order.client_order_id for order in batch.orders]))
        return pb.OrderBatchResult(results=[self.per_order(order) for order in batch.orders])

    def cancel(self) -> None:
        pass


def test_submit_many_resends_what_a_broken_stream_left_unanswered_on_another_node() -> None:
    log: list[tuple[str, list[str]]] = []
    retried_once: set[str] = set()

    def per_order(order: pb.CreateOrderRequest) -> pb.OrderEntryResult:
        if order.size == 0:
            return pb.OrderEntryResult(error=pb.OrderEntryError(code="INVALID_ARGUMENT", message="size 0"))
        if order.size == 2 and order.client_order_id not in retried_once:  # a per-order retriable failure
            retried_once.add(order.client_order_id)
            return pb.OrderEntryResult(error=pb.OrderEntryError(code="UNAVAILABLE", message="sequencer"))
        return pb.OrderEntryResult(order=answer(order))

    class Stub:
        def __init__(self, node: str, break_after: int | None) -> None:
            self.node, self.break_after = node, break_after

        def OrderEntryBatch(self, requests: Iterator[pb.OrderBatch], metadata: Any = None) -> FakeEntryStream:
            return FakeEntryStream(requests, self.node, log, self.break_after, per_order)

    stubs = {"n1:1": Stub("n1:1", 2), "n2:1": Stub("n2:1", None), "n3:1": Stub("n3:1", None)}
    client = Client(NODES, policy=FAST, stub_factory=stubs.__getitem__)
    orders = [NewOrder(Side.BUY, size=i % 5, price=100) for i in range(50)]
    results = client.submit_many(orders, batch_size=7, window=21)
    assert len(results) == 50
    for order, result in zip(orders, results, strict=True):
        if order.size == 0:
            assert isinstance(result, InvalidArgument)
        else:
            assert isinstance(result, t.OrderResult) and result.remaining_size == order.size
    assert {node for node, _ in log} == {"n1:1", "n2:1"}
    assert [len(ids) for node, ids in log if node == "n1:1"] == [7, 7]
    ids_by_order = [r.client_order_id for r in results if isinstance(r, t.OrderResult)]
    assert len(set(ids_by_order)) == len(ids_by_order), "each order its own id"


def test_the_entry_window_bounds_the_orders_in_flight() -> None:
    window = EntryWindow(entry_requests(NewOrder(Side.BUY, 1, 100) for _ in range(30)), batch_size=4, window=10)
    sent = [window.next_batch() for _ in range(5)]
    assert [len(b.orders) if b else 0 for b in sent] == [4, 4, 2, 0, 0] and window.in_flight_orders == 10
    first = sent[0]
    assert first is not None
    window.on_result(pb.OrderBatchResult(results=[pb.OrderEntryResult(order=answer(o)) for o in first.orders]))
    assert window.in_flight_orders == 6
    again = window.next_batch()
    assert again is not None and len(again.orders) == 4
    window.stream_failed()
    assert window.in_flight_orders == 0 and len(window.unsent) == 26 and window.retried == 10
    assert list(window.unsent)[:10] == list(range(4, 14)), "resent first, in their order"


def test_the_async_client_fails_over_like_the_sync_one() -> None:
    class AsyncNode:
        def __init__(self, outcome: Any, calls: list[str], name: str) -> None:
            self.outcome, self.calls, self.name = outcome, calls, name

        async def CreateOrder(self, request: pb.CreateOrderRequest, timeout: float = 0,
                              metadata: Any = None) -> pb.CreateOrderResponse:
            await asyncio.sleep(0)  # a real call yields to the loop (tests/unit/fakes.py)
            self.calls.append(self.name)
            if isinstance(self.outcome, Exception):
                raise self.outcome
            return answer(request)

    async def run() -> tuple[t.OrderResult, list[str]]:
        calls: list[str] = []
        nodes = {"n1:1": AsyncNode(DROPPED, calls, "n1:1"), "n2:1": AsyncNode(None, calls, "n2:1"),
                 "n3:1": AsyncNode(None, calls, "n3:1")}
        async with AsyncClient(NODES, policy=FAST, stub_factory=nodes.__getitem__) as client:
            result = await client.sell(2, 100)
            with pytest.raises(Aborted):  # typed errors as in the sync client
                nodes["n2:1"].outcome = FakeRpcError(grpc.StatusCode.ABORTED, "stale")
                nodes["n3:1"].outcome = nodes["n2:1"].outcome
                nodes["n1:1"].outcome = nodes["n2:1"].outcome
                await client.sell(2, 100, timeout=0.2)
            return result, calls

    result, calls = run_scenario(run())
    assert result.side is Side.SELL and calls[:2] == ["n1:1", "n2:1"]


def test_deadline_exceeded_names_the_timeout_when_no_attempt_was_possible() -> None:
    client, calls = make_client({})
    with pytest.raises(DeadlineExceeded):
        client.buy(1, 100, timeout=0)
    assert calls == []


# -- streams and the local book ---------------------------------------------------------------------------


def test_a_stream_resumes_where_it_broke_even_between_two_events_of_one_command() -> None:
    position = StreamPosition.starting_at(5)
    assert position.resume() == 5
    assert [position.accept(seq) for seq in (5, 5, 6)] == [True, True, True]
    assert position.resume() == 6  # broke after the first event of seq 6: resume at 6, skip that one
    assert [position.accept(seq) for seq in (6, 6, 6, 7)] == [False, True, True, True]
    assert StreamPosition.starting_at(0).resume() == 0


def random_commands(rng: random.Random, count: int) -> Iterator[eng.Command]:
    for seq in range(1, count + 1):
        roll = rng.random()
        target = rng.randint(max(1, seq - 40), seq) if seq > 1 else 1
        if roll < 0.65:
            order_type = rng.choice([eng.OrderType.LIMIT] * 6 + [eng.OrderType.IOC, eng.OrderType.MARKET,
                                                                 eng.OrderType.FOK, eng.OrderType.POST_ONLY])
            price = None if order_type is eng.OrderType.MARKET else rng.randint(95, 105)
            yield eng.PlaceOrder("M", seq, rng.choice(list(eng.Side)), order_type, rng.randint(1, 20), price)
        elif roll < 0.8:
            yield eng.CancelOrder("M", seq, target)
        else:
            yield eng.AmendOrder("M", seq, target, rng.randint(1, 25), rng.choice([None, rng.randint(95, 105)]))


def follow(depth: int, seed: int, count: int = 1500) -> tuple[eng.Engine, BookTracker, list[pb.BookUpdate]]:
    """A BookTracker fed by the node's own stream logic (exchange/engine/l2.py, book_stream's messages) over
    random commands; returns the engine, the tracker and every message sent."""
    engine = eng.Engine([eng.MarketConfig("M")])
    feed = BookFeed(engine, "M")
    view = feed.subscribe(depth)
    tracker = BookTracker("M", depth)
    messages = [book_update("M", view.snapshot(feed), depth, snapshot=True)]
    tracker.on_message(messages[0])
    for command in random_commands(random.Random(seed), count):
        hint = feed.before(command)
        feed.after(command, engine.apply(command), hint)
        update = view.take(feed)
        if update is not None:
            messages.append(book_update("M", update, depth))
            tracker.on_message(messages[-1])
    return engine, tracker, messages


@pytest.mark.parametrize(("depth", "seed"), [(10, 0), (11, 1), (10, 2), (50, 3)])
def test_the_local_l2_book_follows_the_engine_and_verifies_every_message(depth: int, seed: int) -> None:
    engine, tracker, messages = follow(depth, seed)
    bids, asks = engine.depth("M", depth)
    book = tracker.snapshot()
    assert [(x.price, x.size, x.order_count) for x in book.bids] == bids
    assert [(x.price, x.size, x.order_count) for x in book.asks] == asks
    assert tracker.stats.verified == len(messages) and tracker.stats.updates == len(messages) - 1 > 100
    assert tracker.seq == messages[-1].last_seq


def test_a_gap_or_a_wrong_checksum_is_a_divergence_with_its_reason() -> None:
    _, _, messages = follow(10, 5, 300)
    tracker = BookTracker("M", 10)
    tracker.on_message(messages[0])
    tracker.on_message(messages[1])
    with pytest.raises(Diverged) as gap:
        tracker.on_message(messages[3])  # messages[2] lost
    assert gap.value.reason == GAP
    tracker.resync(gap.value.reason)
    assert tracker.book is None and tracker.stats.resyncs_by_reason == {GAP: 1}
    with pytest.raises(Diverged):
        tracker.on_message(messages[4])  # no update before a new snapshot
    tracker.on_message(messages[0])
    wrong = pb.BookUpdate()
    wrong.CopyFrom(messages[1])
    wrong.checksum ^= 1
    with pytest.raises(Diverged) as mismatch:
        tracker.on_message(wrong)
    assert mismatch.value.reason == CHECKSUM


def test_every_public_name_is_there() -> None:
    import exchange.client

    assert all(hasattr(exchange.client, name) for name in exchange.client.__all__)


def test_the_entry_window_paces_orders_refused_by_the_rate_limit_until_its_hint_has_passed() -> None:
    now = [100.0]
    window = EntryWindow(entry_requests(NewOrder(Side.BUY, 1, 100) for _ in range(6)), batch_size=3, window=6,
                         clock=lambda: now[0])
    first = window.next_batch()
    assert first is not None
    limited = pb.OrderEntryResult(error=pb.OrderEntryError(
        code="RESOURCE_EXHAUSTED", message="account 'a' is over its rate limit of 100 orders/s: retry in 20 ms"))
    too_big = pb.OrderEntryResult(error=pb.OrderEntryError(code="RESOURCE_EXHAUSTED", message="over 1 MiB"))
    window.on_result(pb.OrderBatchResult(results=[pb.OrderEntryResult(order=answer(first.orders[0])), limited,
                                                  too_big]))
    assert window.paced == 1 and window.retried == 0 and window.pause() == pytest.approx(0.02)
    assert window.next_batch() is None, "nothing is sent before the hint has passed"
    now[0] += 0.02
    again = window.next_batch()
    assert again is not None and again.orders[0] == first.orders[1], "the paced order goes first"
    assert isinstance(window.results[2], ResourceExhausted), "an error without a hint is final"


def test_submit_many_paces_itself_to_the_accounts_rate_limit_instead_of_returning_the_excess() -> None:
    limiter = RateLimiter(rate=2_000, burst=50)

    def per_order(order: pb.CreateOrderRequest) -> pb.OrderEntryResult:
        try:
            limiter.take("a")
        except ResourceExhausted as error:
            return pb.OrderEntryResult(error=pb.OrderEntryError(code="RESOURCE_EXHAUSTED", message=error.message))
        return pb.OrderEntryResult(order=answer(order))

    class Stub:
        def OrderEntryBatch(self, requests: Iterator[pb.OrderBatch], metadata: Any = None) -> FakeEntryStream:
            return FakeEntryStream(requests, "n1:1", [], None, per_order)

    client = Client(["n1:1"], policy=FAST, stub_factory=lambda address: Stub())
    results = client.submit_many([NewOrder(Side.BUY, 1, 100) for _ in range(300)], batch_size=50, window=300)
    assert all(isinstance(result, t.OrderResult) for result in results), [r for r in results if
                                                                          not isinstance(r, t.OrderResult)][:3]
    assert client.stats.paced_orders > 0 and client.stats.paced_seconds > 0
    assert client.stats.resent_orders == 0


def test_the_trade_iterator_resumes_on_another_node_after_the_last_trade_seen_without_loss_or_repeat() -> None:
    def trade(trade_id: int, seq: int) -> pb.PublicTrade:
        return pb.PublicTrade(market="M", trade_id=trade_id, seq=seq, price=100 + trade_id, size=1,
                              aggressor_side=types_pb2.BUY, time_ms=1_000 + seq)

    requests: list[tuple[str, int]] = []

    class Stub:
        def __init__(self, node: str) -> None:
            self.node = node

        def StreamTrades(self, request: pb.StreamTradesRequest, metadata: Any = None) -> Iterator[pb.TradeBatch]:
            requests.append((self.node, request.from_seq))
            if self.node == "n1:1":  # breaks between two trades of sequence 5
                yield pb.TradeBatch(market="M", trades=[trade(1, 4), trade(2, 5)])
                raise DROPPED
            yield pb.TradeBatch(market="M", trades=[trade(2, 5), trade(3, 5)])  # from seq 5: trade 2 again
            yield pb.TradeBatch(market="M", trades=[trade(4, 6)])

    client = Client(NODES, policy=FAST, stub_factory=Stub)
    seen = list(itertools.islice(client.trades("M", from_seq=4), 4))
    assert [(t.trade_id, t.seq, t.time_ms) for t in seen] == [(1, 4, 1004), (2, 5, 1005), (3, 5, 1005), (4, 6, 1006)]
    assert requests == [("n1:1", 4), ("n2:1", 5)], "resumed from the sequence of the last trade seen"
    assert seen[0].aggressor_side is Side.BUY and isinstance(seen[0].price, int)
